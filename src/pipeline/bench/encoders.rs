//! `saeshare bench encoders`: per encoder of a study, the forward pass alone (the same
//! TorchScript in this process, on random inputs of the right shape) at several batch sizes,
//! on one lane of every thread and, on a CPU, on the lanes the encoding runs (forward passes
//! side by side), beside the rate of the encoding a study runs (decoding, preprocessing,
//! tokenizing, the forward and pooling) on the study's own samples. The ratio to the best of
//! them says how much of the model's speed the encoding keeps.

use std::path::Path;
use std::time::Instant;

use tch::{Kind, Tensor};

use crate::encoder::{Encoder, Lanes, Modality, StageTimes};
use crate::ids::EncoderId;
use crate::pipeline::bench::fit::{batch_head, plan_and_encoders, read_samples};
use crate::pipeline::encoding::WorkerModels;
use crate::pipeline::plan::Plan;

/// The forward pass alone at one batch size and lane layout.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct ForwardFigure {
    pub batch_size: usize,
    /// Forward passes side by side, and the libtorch threads of each.
    pub lanes: usize,
    pub threads_each: usize,
    /// Samples a second, over all lanes.
    pub rate: f64,
}

/// One encoder's figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EncoderFigure {
    pub encoder: String,
    /// The forward pass alone, at each batch size tried, on each lane layout.
    pub forward: Vec<ForwardFigure>,
    /// The lanes the encoding ran on, and their threads each.
    pub lanes: usize,
    pub threads_each: usize,
    /// The study's batch size for it, and distinct inputs a second of its encoding at that
    /// size: the figure to hold against the forward's, since identical inputs are run once.
    pub batch_size: usize,
    pub encode: f64,
    /// Samples a second of the same encoding (above `encode` where the samples repeat inputs).
    pub encode_samples: f64,
    /// Distinct inputs a second of the helper thread's work alone (decoding and preprocessing
    /// images, or tokenizing and padding captions), on the threads it has on this device: what
    /// the model can be fed at most.
    pub prepare: f64,
    /// The encoding's wall time.
    pub seconds: f64,
    /// Where that time went.
    pub stages: StageTimes,
    /// Text: the mean tokens a caption takes, the length of the forward's random captions.
    pub tokens: Option<usize>,
    /// Text: the share of the positions the encoding computes that is padding (its batches are
    /// padded to their longest caption; the forward alone has none).
    pub padding: Option<f64>,
    /// Text: captions a second of the forward alone on random captions in the shapes of the
    /// encoding's own model batches (up to [`SHAPES_TIMED`] of them, spread over the set), on
    /// the encoding's lanes: the model's speed on the work the encoding gives it, padding and
    /// varied lengths included, against which `encode` measures the encoding's own overhead.
    pub forward_on_batches: Option<f64>,
}

/// Model batches of the encoding timed again by the forward alone: enough to sample the
/// lengths, few enough to take seconds on a CPU.
pub const SHAPES_TIMED: usize = 48;

impl EncoderFigure {
    /// The forward pass's best configuration.
    pub fn best_forward(&self) -> ForwardFigure {
        let first = self.forward[0];
        (self.forward.iter().copied())
            .fold(first, |best, f| if f.rate > best.rate { f } else { best })
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
    anyhow::ensure!(
        !batch_sizes.is_empty() && !batch_sizes.contains(&0),
        "bench encoders: give batch sizes of at least 1"
    );
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
        // Every thread on one forward, and the encoding's own lanes where it has several.
        let encoding_lanes = model.lanes();
        let mut layouts = vec![Lanes::new(model.device(), Some(1))];
        layouts.extend(Some(encoding_lanes).filter(|l| l.count > 1));
        let mut forward = Vec::new();
        for &b in batch_sizes {
            for lanes in &layouts {
                forward.push(ForwardFigure {
                    batch_size: b,
                    lanes: lanes.count,
                    threads_each: lanes.threads_each,
                    rate: forward_rate(&model, b, tokens, lanes)?,
                });
            }
        }
        let started = Instant::now();
        let prepared = model.prepare_only(&batch, encoder.batch_size, &encoder.layers)?;
        let prepare = prepared.inputs as f64 / started.elapsed().as_secs_f64();
        let forward_on_batches = if prepared.caption_batches.is_empty() {
            None
        } else {
            let shapes = spread(&prepared.caption_batches, SHAPES_TIMED);
            Some(batches_rate(&model, &shapes, &encoding_lanes)?)
        };
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
            lanes: encoding_lanes.count,
            threads_each: encoding_lanes.threads_each,
            batch_size: encoder.batch_size,
            encode: rows.inputs as f64 / seconds,
            encode_samples: rows.sample_ids.len() as f64 / seconds,
            prepare,
            seconds,
            stages,
            tokens,
            padding: prepared.padding_share(),
            forward_on_batches,
        });
    }
    Ok(figures)
}

/// Samples a second through `model.forward` alone on random inputs of `batch` samples: images
/// of the package's input size, or captions of `tokens` tokens, for about two seconds after
/// two untimed runs (TorchScript specialises on its first calls); on `lanes`, each running
/// its own forward passes, the samples of all of them.
fn forward_rate(
    model: &Encoder,
    batch: usize,
    tokens: Option<usize>,
    lanes: &Lanes,
) -> anyhow::Result<f64> {
    let warm = std::sync::Barrier::new(lanes.count);
    let (mut samples, mut seconds) = (0, 0.0f64);
    for lane in lanes.side_by_side(|| lane_forward(model, batch, tokens, &warm)) {
        let (done, took) = lane?;
        samples += done;
        seconds = seconds.max(took);
    }
    Ok(samples as f64 / seconds)
}

/// One lane of [`forward_rate`]: the samples it ran, and in how many seconds, timed from when
/// every lane is warm.
fn lane_forward(
    model: &Encoder,
    batch: usize,
    tokens: Option<usize>,
    warm: &std::sync::Barrier,
) -> anyhow::Result<(usize, f64)> {
    let warming = random_inputs(model, batch, tokens).and_then(|inputs| {
        (0..2).try_for_each(|_| model.forward(&inputs).map(drop))?;
        Ok(inputs)
    });
    // Every lane reaches the barrier, failed or not, or the others would wait for ever.
    warm.wait();
    let inputs = warming?;
    let started = Instant::now();
    let mut done = 0;
    while done == 0 || started.elapsed().as_secs_f64() < 2.0 {
        let outputs = model.forward(&inputs)?;
        // Waits for the device: the rate counts finished batches.
        let _ = outputs.last().map(|t| t.sum(Kind::Float).double_value(&[]));
        done += batch;
    }
    Ok((done, started.elapsed().as_secs_f64()))
}

/// Captions a second through `model.forward` alone on random captions of `shapes` (captions,
/// length), each run once, the lanes taking the next shape when free, after each lane ran the
/// first shape twice untimed.
fn batches_rate(model: &Encoder, shapes: &[(usize, usize)], lanes: &Lanes) -> anyhow::Result<f64> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let Some(&(first, first_length)) = shapes.first() else {
        anyhow::bail!("{}: no batches to time", model.manifest.name)
    };
    let warm = std::sync::Barrier::new(lanes.count);
    let next = AtomicUsize::new(0);
    let lane = || -> anyhow::Result<(usize, Instant)> {
        let warming = random_inputs(model, first, Some(first_length))
            .and_then(|inputs| Ok((0..2).try_for_each(|_| model.forward(&inputs).map(drop))?));
        warm.wait();
        warming?;
        let (started, mut done) = (Instant::now(), 0);
        while let Some(&(captions, length)) = shapes.get(next.fetch_add(1, Ordering::Relaxed)) {
            let outputs = model.forward(&random_inputs(model, captions, Some(length))?)?;
            let _ = outputs.last().map(|t| t.sum(Kind::Float).double_value(&[]));
            done += captions;
        }
        Ok((done, started))
    };
    let mut captions = 0;
    let mut seconds = 0.0f64;
    for result in lanes.side_by_side(lane) {
        let (done, started) = result?;
        captions += done;
        seconds = seconds.max(started.elapsed().as_secs_f64());
    }
    Ok(captions as f64 / seconds)
}

/// At most `most` of `items`, evenly spread over them in order (all of them when there are no
/// more).
fn spread<T: Copy>(items: &[T], most: usize) -> Vec<T> {
    let n = items.len();
    if n <= most {
        return items.to_vec();
    }
    (0..most).map(|k| items[k * n / most]).collect()
}

/// Random inputs of `batch` samples: images of the package's input size, or captions of
/// `tokens` tokens.
fn random_inputs(
    model: &Encoder,
    batch: usize,
    tokens: Option<usize>,
) -> anyhow::Result<Vec<Tensor>> {
    let device = model.device();
    Ok(match (&model.manifest.image, tokens) {
        (Some(image), _) => {
            let [h, w] = image.input_size;
            let shape = [batch as i64, 3, h as i64, w as i64];
            vec![Tensor::f_randn(shape, (Kind::Float, device))?]
        }
        (None, Some(t)) => {
            let shape = [batch as i64, t as i64];
            // Ids from the common part of any vocabulary; every position attended.
            let ids = Tensor::f_randint_low(1000, 2000, shape, (Kind::Int64, device))?;
            vec![ids, Tensor::f_ones(shape, (Kind::Int64, device))?]
        }
        (None, None) => anyhow::bail!("{}: neither images nor captions", model.manifest.name),
    })
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

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn a_spread_keeps_the_order_and_reaches_across() {
        let items: Vec<usize> = (0..100).collect();
        assert_eq!(spread(&items, 4), [0, 25, 50, 75]);
        assert_eq!(spread(&items[..3], 4), [0, 1, 2]);
        assert_eq!(spread(&items[..7], 3), [0, 2, 4]);
        assert!(spread(&items, 48).windows(2).all(|p| p[0] < p[1]));
    }
}
