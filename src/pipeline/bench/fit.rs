//! `saeshare bench fit`: per encoder of a study, how fast it encodes, how fast its SAEs take
//! the rows it gives, and what overlapping the two gains: the fit pass on one worker with the
//! SAE steps on the worker's thread, then on step threads, interleaved in one process.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::dataset::SampleBatch;
use crate::encoder::EncodedRows;
use crate::ids::{EncoderId, LayerId};
use crate::pipeline::encoding::{worker_device, WorkerModels};
use crate::pipeline::fit::fit_rows;
use crate::pipeline::plan::Plan;
use crate::pipeline::run_folder::RunFolder;
use crate::pipeline::stage::projection_for;
use crate::pipeline::study::Study;
use crate::sae::{LayerFit, SaeConfig, SaeSource, SaeTrainer, StepThreads};

/// One encoder's figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FitFigure {
    pub encoder: String,
    pub layers: usize,
    pub samples: usize,
    /// Rows each of its SAEs is fitted on (token rows, or one pooled row a sample).
    pub rows_per_layer: u64,
    /// Steps each SAE took (one pass: every row drawn once).
    pub steps: usize,
    /// Encoding alone: the forward and the extraction of the rows.
    pub encode_seconds: f64,
    /// Every layer's SAE steps alone, on rows already in memory.
    pub sae_seconds: f64,
    /// Encoding and fitting, the steps on the worker's thread.
    pub inline_seconds: f64,
    /// Encoding and fitting, the steps on step threads.
    pub overlapped_seconds: f64,
    /// Whether both ways gave bit-identical SAEs.
    pub same_saes: bool,
}

impl FitFigure {
    /// Rows a second the encoder gives each layer.
    pub fn encoder_rows_per_second(&self) -> f64 {
        self.rows_per_layer as f64 / self.encode_seconds
    }

    /// Rows a second the SAEs of every layer take together (each row goes to every layer).
    pub fn sae_rows_per_second(&self) -> f64 {
        self.rows_per_layer as f64 / self.sae_seconds
    }
}

/// Runs the benchmark on the first `samples` rows of `study`'s dataset for the encoders named
/// in `only` (all when empty), with `sae_threads` step threads.
pub fn bench_fit(
    study: &Path,
    samples: usize,
    only: &[String],
    sae_threads: usize,
) -> anyhow::Result<Vec<FitFigure>> {
    bench_fit_of(Study::read(study)?, study, samples, only, sae_threads)
}

/// [`bench_fit`] of a study already read from `file` (and perhaps changed: a plan's
/// stand-ins).
pub fn bench_fit_of(
    study: Study,
    file: &Path,
    samples: usize,
    only: &[String],
    sae_threads: usize,
) -> anyhow::Result<Vec<FitFigure>> {
    let (plan, chosen, _folder) = encoders_of(study, file, only)?;
    let batch = read_samples(&plan, &chosen, samples)?;
    let threads = StepThreads::start(sae_threads.max(1))?;
    let mut figures = Vec::new();
    for e in chosen {
        let mut models = WorkerModels::new(plan.clone(), 0);
        tracing::info!(
            "bench fit: {} on {} samples",
            plan.encoder(e).name,
            batch.len()
        );
        figures.push(bench_encoder(&plan, &mut models, e, &batch, &threads)?);
    }
    Ok(figures)
}

fn bench_encoder(
    plan: &Plan,
    models: &mut WorkerModels,
    e: EncoderId,
    batch: &SampleBatch,
    threads: &StepThreads,
) -> anyhow::Result<FitFigure> {
    let encoder = plan.encoder(e);
    // Loads the package and lets TorchScript's first runs (profiling, fusion) pass untimed.
    let warm_up = batch_head(batch, encoder.batch_size.max(1));
    encode(plan, models, e, &warm_up, &mut |_| Ok(()))?;

    let started = Instant::now();
    let mut layers: Vec<(Vec<f32>, Vec<u64>)> = vec![Default::default(); encoder.layers.len()];
    encode(plan, models, e, batch, &mut |rows| {
        for (layer, (values, samples)) in layers.iter_mut().zip(fit_rows(rows)) {
            layer.0.extend(values);
            layer.1.extend(samples);
        }
        Ok(())
    })?;
    let encode_seconds = started.elapsed().as_secs_f64();
    let rows_per_layer = layers.first().map_or(0, |l| l.1.len() as u64);
    let config = one_pass(&encoder.sae, rows_per_layer as usize)?;

    let started = Instant::now();
    for (layer, (values, samples)) in LayerId::all(layers.len()).zip(&layers) {
        let mut fit = new_fit(plan, e, layer, &config);
        fit.push(values, samples)?;
        fit.finish()?;
    }
    let sae_seconds = started.elapsed().as_secs_f64();
    drop(layers);

    let (inline_seconds, inline) = timed_fit(plan, models, e, batch, &config, None)?;
    let (overlapped_seconds, overlapped) =
        timed_fit(plan, models, e, batch, &config, Some(threads))?;
    let same_saes = inline.iter().zip(&overlapped).all(|(a, b)| same_sae(a, b));
    Ok(FitFigure {
        encoder: encoder.name.clone(),
        layers: encoder.layers.len(),
        samples: batch.len(),
        rows_per_layer,
        steps: config.steps,
        encode_seconds,
        sae_seconds,
        inline_seconds,
        overlapped_seconds,
        same_saes,
    })
}

/// The fit pass of one worker over `batch`: encode, push each layer's rows into its fit.
fn timed_fit(
    plan: &Plan,
    models: &mut WorkerModels,
    e: EncoderId,
    batch: &SampleBatch,
    config: &SaeConfig,
    threads: Option<&StepThreads>,
) -> anyhow::Result<(f64, Vec<SaeTrainer>)> {
    let started = Instant::now();
    let mut fits: Vec<LayerFit> = (plan.encoder(e).layer_ids())
        .map(|layer| {
            let fit = new_fit(plan, e, layer, config);
            match threads {
                Some(threads) => fit.on_threads(threads),
                None => fit,
            }
        })
        .collect();
    encode(plan, models, e, batch, &mut |rows| {
        for (fit, (values, samples)) in fits.iter_mut().zip(fit_rows(rows)) {
            fit.push(&values, &samples)?;
        }
        Ok(())
    })?;
    let trainers = (fits.into_iter())
        .map(|fit| fit.finish())
        .collect::<Result<Vec<_>, _>>()?;
    Ok((started.elapsed().as_secs_f64(), trainers))
}

fn encode(
    plan: &Plan,
    models: &mut WorkerModels,
    e: EncoderId,
    batch: &SampleBatch,
    sink: &mut dyn FnMut(EncodedRows) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let tokens = plan.encoder(e).token_selection().copied();
    models.encode_slices(e, batch, tokens.as_ref(), sink)
}

/// The plan of `study` (its dataset built and packages exported where missing) and the
/// encoders named in `only` (all but the ceiling's twins when empty).
///
/// The study's output folder is claimed as a run does (and held until the returned folder is
/// dropped): planning builds a missing dataset and runs missing exports, which may land inside
/// it, and a folder holding files saeshare made without its marker would be refused by the
/// next `saeshare run`.
pub(in crate::pipeline) fn plan_and_encoders(
    study: &Path,
    only: &[String],
) -> anyhow::Result<(Arc<Plan>, Vec<EncoderId>, RunFolder)> {
    encoders_of(Study::read(study)?, study, only)
}

fn encoders_of(
    parsed: Study,
    study: &Path,
    only: &[String],
) -> anyhow::Result<(Arc<Plan>, Vec<EncoderId>, RunFolder)> {
    let (output, dataset) = Plan::folders(&parsed, study);
    let run_id = format!("bench-{}", std::process::id());
    let folder = RunFolder::claim(&output, &dataset, &run_id, "saeshare bench")?;
    let plan = Arc::new(Plan::resolve(parsed, study)?);
    let chosen: Vec<EncoderId> = (plan.named_encoders())
        .filter(|(_, e)| e.twin_of.is_none())
        .filter(|(_, e)| only.is_empty() || only.contains(&e.name))
        .map(|(id, _)| id)
        .collect();
    anyhow::ensure!(
        !chosen.is_empty(),
        "{}: no encoder named {only:?}; the study has {:?}",
        study.display(),
        plan.encoders.iter().map(|e| &e.name).collect::<Vec<_>>()
    );
    Ok((plan, chosen, folder))
}

/// The study's SAE with as many steps as one pass over `rows` gives.
fn one_pass(sae: &SaeConfig, rows: usize) -> anyhow::Result<SaeConfig> {
    let steps = rows / sae.batch_size.max(1);
    anyhow::ensure!(
        steps > 0,
        "{rows} rows give no batch of {}: bench more samples (--samples)",
        sae.batch_size
    );
    Ok(SaeConfig {
        steps,
        ..sae.clone()
    })
}

fn new_fit(plan: &Plan, e: EncoderId, layer: LayerId, config: &SaeConfig) -> LayerFit {
    let encoder = plan.encoder(e);
    let width = encoder.layer_width(layer);
    let source = SaeSource {
        encoder: encoder.name.clone(),
        layer: encoder.layer_name(layer).to_string(),
    };
    let buffer_rows = plan.study.fit.buffer_rows_for(width);
    let device = worker_device(encoder.device, 0);
    LayerFit::new(config, width, source, device, buffer_rows, 0).with_max_passes(Some(1))
}

fn same_sae(a: &SaeTrainer, b: &SaeTrainer) -> bool {
    let (pa, pb) = (a.sae.parameters(), b.sae.parameters());
    pa.len() == pb.len() && pa.iter().zip(&pb).all(|(x, y)| x.equal(y))
}

/// The first `samples` rows of the dataset, read with what `encoders` need, decoded before
/// any clock starts.
pub(in crate::pipeline) fn read_samples(
    plan: &Plan,
    encoders: &[EncoderId],
    samples: usize,
) -> anyhow::Result<SampleBatch> {
    let projection = projection_for(encoders.iter().map(|&e| plan.encoder(e)));
    let mut all = SampleBatch {
        shard: 0,
        sample_ids: Vec::new(),
        captions: Vec::new(),
        images: Vec::new(),
        skipped: Vec::new(),
    };
    'shards: for shard in plan.shard_ids() {
        for batch in plan.shard(shard).reader(projection, 1024)? {
            let batch = batch?;
            all.shard = batch.shard;
            all.sample_ids.extend(batch.sample_ids);
            all.captions.extend(batch.captions);
            all.images.extend(batch.images);
            if all.len() >= samples {
                break 'shards;
            }
        }
    }
    anyhow::ensure!(!all.is_empty(), "the study's dataset has no rows");
    Ok(batch_head(&all, samples))
}

/// The first `n` samples of a batch.
pub(in crate::pipeline) fn batch_head(batch: &SampleBatch, n: usize) -> SampleBatch {
    let n = n.min(batch.len());
    SampleBatch {
        shard: batch.shard,
        sample_ids: batch.sample_ids[..n].to_vec(),
        captions: batch.captions[..n].to_vec(),
        images: batch.images.get(..n).map_or_else(Vec::new, <[_]>::to_vec),
        skipped: Vec::new(),
    }
}
