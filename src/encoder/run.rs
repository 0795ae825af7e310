//! `saeshare encode`: a dataset through an encoder into an activation file.

use std::path::PathBuf;
use std::time::Instant;

use tch::Device;

use super::{Encoder, Modality, Pooling};
use crate::activations::{ActivationWriter, ActivationsMeta, LayerWidth};
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
    let layers = encoder.manifest.select_layers(&options.layers)?;
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
    let batch_size = options.batch_size.max(1);
    let batches = dataset.shards().iter().flat_map(|shard| {
        let batches: Box<dyn Iterator<Item = anyhow::Result<SampleBatch>> + Send> =
            match shard.reader(projection, batch_size) {
                Ok(reader) => Box::new(reader.map(|b| b.map_err(anyhow::Error::from))),
                Err(e) => Box::new(std::iter::once(Err(e.into()))),
            };
        batches
    });
    let chosen: Vec<(String, usize)> = (layers.iter())
        .map(|&l| &encoder.manifest.layers[l])
        .map(|layer| (layer.name.clone(), layer.width))
        .collect();
    encoder.encode_batches(batches, &layers, pooling, |pooled| {
        for (i, id) in pooled.sample_ids.iter().enumerate() {
            for ((name, width), values) in chosen.iter().zip(&pooled.layers) {
                writer.push(*id, name, &values[i * width..(i + 1) * width])?;
            }
        }
        samples += pooled.sample_ids.len() as u64;
        skipped += pooled.skipped;
        bar.inc(pooled.rows());
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
