//! `saeshare encode`: a dataset through an encoder into an activation file.

use std::path::PathBuf;
use std::time::Instant;

use tch::Device;

use super::{prepare, Encoder, Modality, Pooling, Prepared};
use crate::activations::{ActivationWriter, ActivationsMeta, LayerWidth};
use crate::dataset::{Dataset, Projection};

/// The inputs of `saeshare encode`.
#[derive(Clone, Debug)]
pub struct EncodeOptions {
    pub encoder: PathBuf,
    pub dataset: PathBuf,
    /// `all`, `last`, or a comma-separated list of layer names.
    pub layers: String,
    /// The encoder's default when `None`.
    pub pooling: Option<Pooling>,
    pub device: Device,
    pub batch_size: usize,
    pub out: PathBuf,
}

/// What `encode` did.
#[derive(Clone, Debug)]
pub struct EncodeReport {
    pub samples: u64,
    pub skipped: u64,
    pub truncated_captions: u64,
    pub layers: usize,
    pub seconds: f64,
    pub out: PathBuf,
}

/// Encodes every row of the dataset, shard by shard, writing one pooled row per sample and layer.
pub fn encode_dataset(options: &EncodeOptions) -> anyhow::Result<EncodeReport> {
    let mut encoder = Encoder::load(&options.encoder, options.device)?;
    let layers = encoder
        .manifest
        .select_layers(&options.layers)
        .map_err(anyhow::Error::msg)?;
    let pooling = options.pooling.unwrap_or(encoder.manifest.default_pooling);
    let dataset = Dataset::open(&options.dataset)?;
    dataset.check_unique_ids()?;
    let projection = match encoder.manifest.modality {
        Modality::Image => Projection::ALL,
        Modality::Text => Projection::TEXT,
    };
    let meta = ActivationsMeta {
        encoder: encoder.manifest.name.clone(),
        pooling: format!("{pooling:?}").to_lowercase(),
        layers: layers
            .iter()
            .map(|&i| LayerWidth {
                name: encoder.manifest.layers[i].name.clone(),
                width: encoder.manifest.layers[i].width,
            })
            .collect(),
    };
    let mut writer = ActivationWriter::create(&options.out, meta)?;
    let bar = crate::progress::bar(
        Some(dataset.rows()),
        &format!("encoding with {}", encoder.manifest.name),
        "samples",
    );
    let start = Instant::now();
    let (mut samples, mut skipped) = (0u64, 0u64);
    // Reading, decoding and preprocessing run on their own thread, one bounded step ahead of
    // the model, so the CPU prepares the next batch while libtorch runs this one.
    let (prepared_tx, prepared_rx) =
        crossbeam_channel::bounded::<anyhow::Result<(Prepared, u64)>>(2);
    let manifest = encoder.manifest.clone();
    let dataset = &dataset;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        scope.spawn(move || {
            for shard in dataset.shards() {
                let reader = match shard.reader(projection, options.batch_size.max(1)) {
                    Ok(reader) => reader,
                    Err(e) => {
                        let _ = prepared_tx.send(Err(e.into()));
                        return;
                    }
                };
                for batch in reader {
                    let item = batch.map_err(anyhow::Error::from).and_then(|batch| {
                        let read_skips = batch.skipped.len() as u64;
                        Ok((prepare(&manifest, &batch)?, read_skips))
                    });
                    // A closed channel means the consumer failed; its error is the one to report.
                    if prepared_tx.send(item).is_err() {
                        return;
                    }
                }
            }
        });
        for item in prepared_rx {
            let (prepared, read_skips) = item?;
            let rows = prepared.sample_ids.len() + prepared.skipped.len() + read_skips as usize;
            let pooled = encoder.encode_prepared(prepared, &layers, pooling)?;
            skipped += read_skips + pooled.skipped.len() as u64;
            let values: Vec<(usize, Vec<f32>)> = pooled
                .layers
                .iter()
                .map(|(layer, t)| {
                    (
                        *layer,
                        Vec::<f32>::try_from(t.reshape([-1])).expect("float32"),
                    )
                })
                .collect();
            for (i, id) in pooled.sample_ids.iter().enumerate() {
                for (layer, values) in &values {
                    let layer = &encoder.manifest.layers[*layer];
                    writer.push(
                        *id,
                        &layer.name,
                        &values[i * layer.width..(i + 1) * layer.width],
                    )?;
                }
            }
            samples += pooled.sample_ids.len() as u64;
            bar.inc(rows as u64);
        }
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
    let out = writer.finish()?;
    let report = EncodeReport {
        samples,
        skipped,
        truncated_captions: encoder.truncated_captions(),
        layers: layers.len(),
        seconds: start.elapsed().as_secs_f64(),
        out,
    };
    tracing::info!(
        samples = report.samples,
        skipped = report.skipped,
        truncated = report.truncated_captions,
        "encoded {} with {}",
        options.dataset.display(),
        encoder.manifest.name
    );
    Ok(report)
}
