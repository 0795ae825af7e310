//! `saeshare bench encoders`: per encoder of a study, the forward pass alone (the same
//! TorchScript in this process, on random inputs of the right shape) at several batch sizes,
//! beside the rate of the encoding a study runs (decoding, preprocessing, tokenizing, the
//! forward and pooling) on the study's own samples. The ratio says how much of the model's
//! speed the encoding keeps.

use std::path::Path;
use std::time::Instant;

use tch::{Kind, Tensor};

use super::bench_fit::{batch_head, plan_and_encoders, read_samples};
use super::encoding::WorkerModels;
use super::plan::Plan;
use crate::encoder::{Encoder, Modality, StageTimes};
use crate::ids::EncoderId;

/// One encoder's figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EncoderFigure {
    pub encoder: String,
    /// Samples a second of the forward pass alone, at each batch size tried.
    pub forward: Vec<(usize, f64)>,
    /// The study's batch size for it, and distinct inputs a second of its encoding at that
    /// size: the figure to hold against the forward's, since identical inputs are run once.
    pub batch_size: usize,
    pub encode: f64,
    /// Samples a second of the same encoding (above `encode` where the samples repeat inputs).
    pub encode_samples: f64,
    /// The encoding's wall time.
    pub seconds: f64,
    /// Where that time went.
    pub stages: StageTimes,
    /// Text: the mean tokens a caption takes, the length of the forward's random captions.
    pub tokens: Option<usize>,
}

impl EncoderFigure {
    /// The forward pass's best rate, and the batch size that gave it.
    pub fn best_forward(&self) -> (usize, f64) {
        (self.forward.iter().copied()).fold((0, 0.0), |best, f| if f.1 > best.1 { f } else { best })
    }
}

/// Runs the benchmark on the first `samples` rows of `study`'s dataset for the encoders named
/// in `only` (all when empty), the forward alone at each of `batch_sizes`.
pub fn bench_encoders(
    study: &Path,
    samples: usize,
    only: &[String],
    batch_sizes: &[usize],
) -> anyhow::Result<Vec<EncoderFigure>> {
    let (plan, chosen, _folder) = plan_and_encoders(study, only)?;
    let batch = read_samples(&plan, &chosen, samples)?;
    let mut figures = Vec::new();
    for e in chosen {
        let encoder = plan.encoder(e);
        tracing::info!(
            "bench encoders: {} on {} samples",
            encoder.name,
            batch.len()
        );
        let mut models = WorkerModels::new(plan.clone(), 0);
        let tokens = model_tokens(&plan, e, &batch.captions)?;
        let model = encoder.load(models.device(e))?;
        let forward = (batch_sizes.iter())
            .map(|&b| Ok((b, forward_rate(&model, b, tokens)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        drop(model);
        // Loaded and run once untimed, as the forward above.
        models.pooled(e, &batch_head(&batch, encoder.batch_size))?;
        models.take_stage_times(e);
        let started = Instant::now();
        let rows = models.pooled(e, &batch)?;
        let seconds = started.elapsed().as_secs_f64();
        let stages = models.take_stage_times(e);
        figures.push(EncoderFigure {
            encoder: encoder.name.clone(),
            forward,
            batch_size: encoder.batch_size,
            encode: rows.inputs as f64 / seconds,
            encode_samples: rows.sample_ids.len() as f64 / seconds,
            seconds,
            stages,
            tokens,
        });
    }
    Ok(figures)
}

/// Samples a second through `model.forward` alone on random inputs of `batch` samples: images
/// of the package's input size, or captions of `tokens` tokens, for about two seconds after
/// two untimed runs (TorchScript specialises on its first calls).
fn forward_rate(model: &Encoder, batch: usize, tokens: Option<usize>) -> anyhow::Result<f64> {
    let device = model.device();
    let inputs = match (&model.manifest.image, tokens) {
        (Some(image), _) => {
            let [h, w] = image.input_size;
            vec![Tensor::randn(
                [batch as i64, 3, h as i64, w as i64],
                (Kind::Float, device),
            )]
        }
        (None, Some(t)) => {
            let shape = [batch as i64, t as i64];
            // Ids from the common part of any vocabulary; every position attended.
            let ids = Tensor::randint_low(1000, 2000, shape, (Kind::Int64, device));
            vec![ids, Tensor::ones(shape, (Kind::Int64, device))]
        }
        (None, None) => anyhow::bail!("{}: neither images nor captions", model.manifest.name),
    };
    for _ in 0..2 {
        model.forward(&inputs)?;
    }
    let started = Instant::now();
    let mut done = 0;
    while done == 0 || started.elapsed().as_secs_f64() < 2.0 {
        let outputs = model.forward(&inputs)?;
        // Waits for the device: the rate counts finished batches.
        let _ = outputs.last().map(|t| t.sum(Kind::Float).double_value(&[]));
        done += batch;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// Text: the tokens a caption takes in the model, on average (its fixed length, for a package
/// that pads to one).
fn model_tokens(plan: &Plan, e: EncoderId, captions: &[String]) -> anyhow::Result<Option<usize>> {
    let encoder = plan.encoder(e);
    let (Modality::Text, Some(spec)) = (encoder.manifest.modality, &encoder.manifest.text) else {
        return Ok(None);
    };
    if !encoder.manifest.pads_to_longest() {
        return Ok(Some(spec.max_length));
    }
    let tokenizer = crate::encoder::text::TextTokenizer::load(&encoder.package, spec)?;
    let lengths = tokenizer.lengths(captions)?;
    let mean = lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64;
    Ok(Some(mean.round().max(1.0) as usize))
}
