//! `saeshare sae train`: one SAE trained from a layer of an activation file, with checkpoints,
//! resume and a progress bar.
//!
//! The data order is the [`BatchSchedule`] the pipeline's fits also follow: rows stream from the
//! file, pass after pass, through a mixing buffer seeded with the SAE's seed. A resumed run
//! replays that order and skips the batches already trained on, so it continues exactly where
//! the checkpoint stopped.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tch::Device;

use super::buffer::RowBatch;
use super::config::SaeConfig;
use super::schedule::{BatchSchedule, FILE_CHUNK_ROWS};
use super::trainer::{SaeSource, SaeTrainer, TrainingMetrics};
use crate::activations::{read_meta, LayerReader};

/// Where the data comes from and where the SAE goes.
#[derive(Clone, Debug)]
pub struct TrainFileOptions {
    pub activations: PathBuf,
    pub layer: String,
    /// The SAE's folder: the final checkpoint, and `checkpoints/step-N/` along the way.
    pub out: PathBuf,
    pub device: Device,
    /// Rows (tokens) the mixing buffer holds.
    pub buffer_rows: usize,
    /// Steps between checkpoints; 0: only the final one.
    pub checkpoint_every: usize,
    /// Continue from the newest checkpoint in `out` if there is one.
    pub resume: bool,
    /// Steps between recorded (and logged) metrics.
    pub log_every: usize,
}

/// What a training run did.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub out: PathBuf,
    pub steps: usize,
    pub tokens: u64,
    /// Steps run by this call (fewer than `steps` when resumed).
    pub steps_run: usize,
    pub passes: usize,
    pub last: Option<TrainingMetrics>,
}

/// Trains an SAE on `options.layer` of `options.activations`.
pub fn train_from_file(
    config: &SaeConfig,
    options: &TrainFileOptions,
) -> anyhow::Result<TrainReport> {
    let meta = read_meta(&options.activations)?;
    let width = LayerReader::open(&options.activations, &options.layer, 1)?.width();
    config.validate(width)?;
    let source = SaeSource {
        encoder: meta.encoder.clone(),
        layer: options.layer.clone(),
    };
    let mut trainer = open_trainer(config, options, width, source)?.log_every(options.log_every);
    let start = trainer.steps_done();
    if start >= config.steps {
        tracing::info!(
            "{}: already trained for {start} steps; nothing to do",
            options.out.display()
        );
        return Ok(TrainReport {
            out: options.out.clone(),
            steps: start,
            tokens: trainer.tokens_seen(),
            steps_run: 0,
            passes: 0,
            last: trainer.history().last().cloned(),
        });
    }
    let bar = crate::progress::bar(Some(config.steps as u64), "training SAE", "steps");
    bar.set_position(start as u64);
    let mut schedule = BatchSchedule::new(config, width, options.buffer_rows);
    let mut last = None;
    // The batches before `start` are drawn again, untrained: the order depends on them.
    let mut train = |index: usize, batch: RowBatch| -> anyhow::Result<()> {
        if index >= start {
            last = Some(step(&mut trainer, &batch, options, &bar)?);
        }
        Ok(())
    };
    while !schedule.is_done() {
        for batch in LayerReader::open(&options.activations, &options.layer, FILE_CHUNK_ROWS)? {
            let batch = batch?;
            schedule.push(&batch.values, &batch.sample_ids, &mut train)?;
            if schedule.is_done() {
                break;
            }
        }
        anyhow::ensure!(
            schedule.rows_this_pass() >= config.batch_size,
            "{}: layer {} has {} rows, fewer than one batch ({}); lower --batch-size",
            options.activations.display(),
            options.layer,
            schedule.rows_this_pass(),
            config.batch_size
        );
        schedule.end_pass(&mut train)?;
    }
    let passes = schedule.passes_done();
    bar.finish_and_clear();
    trainer.save(&options.out)?;
    tracing::info!(
        "trained {} steps ({} this run, {passes} pass(es) over the data); SAE in {}",
        trainer.steps_done(),
        trainer.steps_done() - start,
        options.out.display()
    );
    Ok(TrainReport {
        out: options.out.clone(),
        steps: trainer.steps_done(),
        tokens: trainer.tokens_seen(),
        steps_run: trainer.steps_done() - start,
        passes,
        last: last.or_else(|| trainer.history().last().cloned()),
    })
}

/// The trainer to continue: the newest checkpoint in `options.out` when resuming (refused if it
/// was trained with other settings or data), else a new SAE.
fn open_trainer(
    config: &SaeConfig,
    options: &TrainFileOptions,
    width: usize,
    source: SaeSource,
) -> anyhow::Result<SaeTrainer> {
    let existing = latest_checkpoint(&options.out);
    anyhow::ensure!(
        options.resume || existing.is_none(),
        "{}: already holds an SAE or checkpoints; pass --resume to continue training it, or \
         choose another --out",
        options.out.display()
    );
    Ok(match existing {
        Some(dir) => {
            let trainer = SaeTrainer::load(&dir, options.device)?;
            anyhow::ensure!(
                trainer.sae.config == *config && trainer.source == source,
                "{}: this checkpoint was trained with other settings or data; \
                 train into another --out, or pass the same settings",
                dir.display()
            );
            tracing::info!(
                "resuming from {} at step {}",
                dir.display(),
                trainer.steps_done()
            );
            trainer
        }
        None => SaeTrainer::new(config, width, options.device, source),
    })
}

fn step(
    trainer: &mut SaeTrainer,
    batch: &RowBatch,
    options: &TrainFileOptions,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<TrainingMetrics> {
    let metrics = trainer.train_batch(batch)?;
    bar.inc(1);
    let done = trainer.steps_done();
    if options.checkpoint_every > 0
        && done.is_multiple_of(options.checkpoint_every)
        && !trainer.is_done()
    {
        save_checkpoint(trainer, &options.out)?;
    }
    Ok(metrics)
}

const KEEP_CHECKPOINTS: usize = 2;

/// Writes `out/checkpoints/step-N/` (whole: a temporary folder renamed) and keeps the newest two.
fn save_checkpoint(trainer: &SaeTrainer, out: &Path) -> anyhow::Result<()> {
    let dir = out.join("checkpoints");
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let temp = tempfile::Builder::new()
        .prefix(".step-")
        .tempdir_in(&dir)
        .with_context(|| dir.display().to_string())?;
    trainer.save(temp.path())?;
    let name = dir.join(format!("step-{:09}", trainer.steps_done()));
    std::fs::rename(temp.keep(), &name).with_context(|| name.display().to_string())?;
    let mut all = checkpoints(out);
    while all.len() > KEEP_CHECKPOINTS {
        let old = all.remove(0);
        std::fs::remove_dir_all(&old).with_context(|| old.display().to_string())?;
    }
    tracing::debug!("checkpoint {}", name.display());
    Ok(())
}

fn checkpoints(out: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(out.join("checkpoints")) else {
        return Vec::new();
    };
    let mut all: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
                && p.join("sae.json").is_file()
        })
        .collect();
    all.sort();
    all
}

/// The newest checkpoint of a training folder: the final SAE if training finished, else the
/// newest `checkpoints/step-N`.
fn latest_checkpoint(out: &Path) -> Option<PathBuf> {
    if out.join("sae.json").is_file() {
        return Some(out.to_path_buf());
    }
    checkpoints(out).pop()
}
