//! `saeshare encode`: a dataset through an encoder into an activation file.

use std::path::PathBuf;
use std::time::Instant;

use tch::Device;

use super::{
    EncodedRows, Encoder, Modality, Pooling, Precision, TokenSelection, READER_BATCH_ROWS,
};
use crate::activations::{ActivationWriter, ActivationsMeta, FileMeta, LayerWidth};
use crate::dataset::{Dataset, Projection, SampleBatch};

/// The inputs of `saeshare encode`.
#[derive(Clone, Debug)]
pub struct EncodeOptions {
    pub encoder: PathBuf,
    pub dataset: PathBuf,
    /// `all`, `last`, or a comma-separated list of layer names.
    pub layers: String,
    /// The encoder's default when `None`.
    pub pooling: Option<Pooling>,
    /// Token rows instead of pooled ones, chosen so (`saeshare encode --tokens`): one row per
    /// kept position of each sample and layer, as a study with `fit_on = "tokens"` fits on.
    pub tokens: Option<TokenSelection>,
    pub device: Device,
    /// Samples per forward pass; `None`: a study's default for the device and input size.
    pub batch_size: Option<usize>,
    /// A CNN run on square images of this side instead of its package's size.
    pub image_size: Option<u32>,
    /// What the forward pass runs in.
    pub precision: Precision,
    /// Forward passes side by side on a CPU; `None`: the encoder's choice.
    pub lanes: Option<usize>,
    pub out: PathBuf,
}

/// What `encode` did.
#[derive(Clone, Debug)]
pub struct EncodeReport {
    pub samples: u64,
    /// Rows written: samples x layers when pooled, the token rows of every layer otherwise.
    pub rows: u64,
    pub skipped: u64,
    pub truncated_captions: u64,
    pub layers: usize,
    pub seconds: f64,
    pub out: PathBuf,
}

/// Encodes every row of the dataset, shard by shard, writing one pooled row per sample and layer,
/// or with `tokens` one row per kept token of each sample and layer.
pub fn encode_dataset(options: &EncodeOptions) -> anyhow::Result<EncodeReport> {
    let mut encoder = Encoder::load(&options.encoder, options.device)?;
    if let Some(side) = options.image_size {
        encoder = encoder.at_image_size(side)?;
    }
    encoder = (encoder.with_precision(options.precision)?).with_lanes(options.lanes)?;
    let layers = encoder.manifest.select_layers(&options.layers)?;
    let pooling = options.pooling.unwrap_or(encoder.manifest.default_pooling);
    let dataset = Dataset::open(&options.dataset)?;
    dataset.check_unique_ids()?;
    let projection = match encoder.manifest.modality {
        Modality::Image => Projection::ALL,
        Modality::Text => Projection::TEXT,
    };
    let input_size = encoder.manifest.input_size_at(None);
    let meta = ActivationsMeta {
        encoder: encoder.manifest.name.clone(),
        pooling: match options.tokens {
            Some(_) => "none".to_string(),
            None => format!("{pooling:?}").to_lowercase(),
        },
        layers: layers
            .iter()
            .map(|&i| LayerWidth {
                name: encoder.manifest.layers[i].name.clone(),
                width: encoder.manifest.layers[i].width,
            })
            .collect(),
        input_size,
        precision: options.precision,
    };
    let meta = match options.tokens {
        Some(selection) => FileMeta::tokens(meta, selection),
        None => FileMeta::from(meta),
    };
    let mut writer = ActivationWriter::create(&options.out, meta)?;
    let bar = crate::progress::bar(
        Some(dataset.rows()),
        &format!("encoding with {}", encoder.manifest.name),
        "samples",
    );
    let start = Instant::now();
    let (mut samples, mut skipped, mut rows) = (0u64, 0u64, 0u64);
    let batch_size = (options.batch_size)
        .unwrap_or_else(|| crate::pipeline::default_batch_size(options.device, input_size));
    anyhow::ensure!(batch_size >= 1, "--batch-size 0: give at least 1");
    let batches = dataset.shards().iter().flat_map(|shard| {
        let batches: Box<dyn Iterator<Item = anyhow::Result<SampleBatch>> + Send> =
            match shard.reader(projection, READER_BATCH_ROWS) {
                Ok(reader) => Box::new(reader.map(|b| b.map_err(anyhow::Error::from))),
                Err(e) => Box::new(std::iter::once(Err(e.into()))),
            };
        batches
    });
    let chosen: Vec<(String, usize)> = (layers.iter())
        .map(|&l| &encoder.manifest.layers[l])
        .map(|layer| (layer.name.clone(), layer.width))
        .collect();
    let tokens = options.tokens.as_ref();
    encoder.encode_batches(batches, batch_size, &layers, pooling, tokens, |encoded| {
        rows += write_rows(&mut writer, &chosen, &encoded)?;
        samples += encoded.sample_ids.len() as u64;
        skipped += encoded.skipped;
        bar.inc(encoded.rows());
        Ok(())
    })?;
    bar.finish_and_clear();
    if samples == 0 {
        let what = match encoder.manifest.modality {
            Modality::Image => "an image encoder, and no row has a readable image",
            Modality::Text => "a text encoder, and no row has a caption",
        };
        anyhow::bail!(
            "{}: nothing encoded: {} is {what} ({skipped} rows skipped); check that the dataset and the encoder go together",
            options.dataset.display(),
            encoder.manifest.name
        );
    }
    anyhow::ensure!(
        rows > 0,
        "{}: nothing written: no token of the {samples} samples encoded was kept; keep more \
         (special, class or register tokens)",
        options.out.display()
    );
    let out = writer.finish()?;
    let report = EncodeReport {
        samples,
        rows,
        skipped,
        truncated_captions: encoder.truncated_captions(),
        layers: layers.len(),
        seconds: start.elapsed().as_secs_f64(),
        out,
    };
    tracing::info!(
        samples = report.samples,
        rows = report.rows,
        skipped = report.skipped,
        truncated = report.truncated_captions,
        "encoded {} with {}",
        options.dataset.display(),
        encoder.manifest.name
    );
    Ok(report)
}

/// Writes a batch's rows: for each sample, its pooled row of each layer; or for each layer, its
/// token rows in order (sample by sample, positions in order), so that a layer read alone gives
/// them in dataset order. Returns the rows written.
fn write_rows(
    writer: &mut ActivationWriter,
    layers: &[(String, usize)],
    encoded: &EncodedRows,
) -> anyhow::Result<u64> {
    let ids = &encoded.sample_ids;
    if encoded.tokens.is_empty() {
        for (i, id) in ids.iter().enumerate() {
            for ((name, width), values) in layers.iter().zip(&encoded.layers) {
                writer.push(*id, name, &values[i * width..(i + 1) * width])?;
            }
        }
        return Ok((ids.len() * layers.len()) as u64);
    }
    let mut written = 0;
    for ((name, width), tokens) in layers.iter().zip(&encoded.tokens) {
        let values = tokens.values.chunks_exact(*width);
        for ((&sample, &position), row) in tokens.sample.iter().zip(&tokens.position).zip(values) {
            writer.push_token(ids[sample as usize], position, name, row)?;
        }
        written += tokens.rows() as u64;
    }
    Ok(written)
}
