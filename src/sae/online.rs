//! Training an SAE from a stream of activations that no file holds: rows arrive once, in dataset
//! order, from an encoder running in a dataflow.
//!
//! [`LayerFit`] draws its batches from the same [`BatchSchedule`] as `saeshare sae train`, so an
//! SAE fitted in the pipeline equals the one trained from the same activations on disk. Passes
//! after the first replay the rows from memory when they fit in the replay budget: the encoder
//! never runs twice.
//!
//! The steps are taken on the caller's thread, or queued to a [`StepThreads`] lane
//! ([`LayerFit::on_threads`]) so that the caller goes on producing rows meanwhile.

use super::buffer::RowBatch;
use super::config::SaeConfig;
use super::schedule::BatchSchedule;
use super::step_threads::{QueuedTrainer, StepThreads};
use super::trainer::{SaeSource, SaeTrainer, TrainError};

/// One SAE being fitted on one layer of one encoder.
pub struct LayerFit {
    training: Training,
    schedule: BatchSchedule,
    width: usize,
    /// The first pass's rows and their samples while they fit in the budget and may be
    /// needed; `None` once they do not fit or every step has its batch.
    replay: Option<RowBatch>,
    replay_budget_rows: usize,
    rows_first_pass: usize,
    /// Passes after which the fit ends even with steps left (the reference's one epoch).
    max_passes: Option<usize>,
}

impl LayerFit {
    /// A new SAE with `config` on rows of `width`, mixing through `buffer_rows` rows, keeping at
    /// most `replay_budget_rows` rows for passes after the first.
    pub fn new(
        config: &SaeConfig,
        width: usize,
        source: SaeSource,
        device: tch::Device,
        buffer_rows: usize,
        replay_budget_rows: usize,
    ) -> LayerFit {
        LayerFit {
            training: Training::Here(Box::new(SaeTrainer::new(config, width, device, source))),
            schedule: BatchSchedule::new(config, width, buffer_rows),
            width,
            replay: Some(RowBatch::default()),
            replay_budget_rows,
            rows_first_pass: 0,
            max_passes: None,
        }
    }

    /// Ends the fit after `passes` passes over the rows even if steps are left: the learning
    /// rate schedule still follows the configured steps.
    pub fn with_max_passes(mut self, passes: Option<usize>) -> LayerFit {
        self.max_passes = passes;
        if passes == Some(1) {
            self.replay = None;
        }
        self
    }

    /// Takes the steps on a lane of `threads` instead of the caller's thread: the same batches
    /// in the same order, so the same SAE.
    pub fn on_threads(mut self, threads: &StepThreads) -> LayerFit {
        if let Training::Here(trainer) = self.training {
            self.training = Training::Queued(threads.adopt(*trainer));
        }
        self
    }

    /// Adds rows of the first pass, in dataset order, with the sample each comes from, and
    /// trains on every batch that is ready.
    pub fn push(&mut self, rows: &[f32], samples: &[u64]) -> Result<(), TrainError> {
        assert_eq!(rows.len(), samples.len() * self.width, "whole rows only");
        self.rows_first_pass += samples.len();
        if let Some(replay) = self.replay.as_mut() {
            if self.rows_first_pass <= self.replay_budget_rows {
                replay.values.extend_from_slice(rows);
                replay.samples.extend_from_slice(samples);
            } else {
                self.replay = None;
            }
        }
        let training = &mut self.training;
        self.schedule
            .push(rows, samples, &mut |_, batch| training.step(batch))?;
        if self.schedule.is_done() {
            self.replay = None;
        }
        Ok(())
    }

    /// Ends the first pass, trains the remaining steps (replaying the rows from memory) and
    /// gives the trained SAE. Fails when one pass holds fewer rows than a batch, when more
    /// passes are needed and the rows did not fit the replay budget, or when a step failed.
    pub fn finish(mut self) -> Result<SaeTrainer, FitError> {
        self.train_to_the_end()?;
        Ok(self.training.into_trainer()?)
    }

    fn train_to_the_end(&mut self) -> Result<(), FitError> {
        let batch_size = self.schedule.batch_size();
        if self.rows_first_pass < batch_size {
            return Err(FitError::TooFewRows {
                rows: self.rows_first_pass,
                batch_size,
            });
        }
        let training = &mut self.training;
        let mut train = |_: usize, batch: RowBatch| training.step(batch);
        self.schedule.end_pass(&mut train)?;
        if self.schedule.is_done() || passes_reached(self.max_passes, &self.schedule) {
            return Ok(());
        }
        let Some(replay) = self.replay.take() else {
            return Err(FitError::ReplayTooLarge {
                rows: self.rows_first_pass,
                budget: self.replay_budget_rows,
                steps_done: self.schedule.drawn(),
            });
        };
        while !self.schedule.is_done() && !passes_reached(self.max_passes, &self.schedule) {
            self.schedule
                .push(&replay.values, &replay.samples, &mut train)?;
            self.schedule.end_pass(&mut train)?;
        }
        Ok(())
    }

    /// Rows of the first pass.
    pub fn rows(&self) -> usize {
        self.rows_first_pass
    }
}

/// Where a fit's steps are taken.
enum Training {
    Here(Box<SaeTrainer>),
    Queued(QueuedTrainer),
}

impl Training {
    fn step(&mut self, batch: RowBatch) -> Result<(), TrainError> {
        match self {
            Training::Here(trainer) => trainer.train_batch(&batch).map(drop),
            Training::Queued(queued) => queued.step(batch),
        }
    }

    fn into_trainer(self) -> Result<SaeTrainer, TrainError> {
        match self {
            Training::Here(trainer) => Ok(*trainer),
            Training::Queued(queued) => queued.into_trainer(),
        }
    }
}

fn passes_reached(max_passes: Option<usize>, schedule: &BatchSchedule) -> bool {
    max_passes.is_some_and(|max| schedule.passes_done() >= max)
}

/// Why a fit could not take all its steps.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(
        "{rows} rows in the data, fewer than one batch ({batch_size}); lower the SAE's batch_size"
    )]
    TooFewRows { rows: usize, batch_size: usize },
    #[error(
        "one pass over {rows} rows gave {steps_done} steps, and keeping the rows for more passes \
         needs more than the replay budget of {budget} rows; raise the study's \
         fit.replay_memory_mib, or lower the SAE's steps"
    )]
    ReplayTooLarge {
        rows: usize,
        budget: usize,
        steps_done: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn config() -> SaeConfig {
        SaeConfig {
            k: 2,
            expansion: 2,
            batch_size: 8,
            steps: 12,
            ..SaeConfig::default()
        }
    }

    fn source() -> SaeSource {
        SaeSource {
            encoder: "enc".into(),
            layer: "0".into(),
        }
    }

    #[test]
    fn passes_after_the_first_replay_from_memory_until_every_step_is_taken() {
        // 20 rows give 2 steps a pass; 12 steps need the replay.
        let rows: Vec<f32> = (0..80).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut fit = LayerFit::new(&config(), 4, source(), Device::Cpu, 16, 1000);
        let samples: Vec<u64> = (0..20).collect();
        fit.push(&rows[..40], &samples[..10]).unwrap();
        fit.push(&rows[40..], &samples[10..]).unwrap();
        assert_eq!(fit.rows(), 20);
        let trainer = fit.finish().unwrap();
        assert_eq!(trainer.steps_done(), 12);
    }

    #[test]
    fn rows_beyond_the_replay_budget_are_an_error_that_says_what_to_change() {
        let rows = vec![0.5f32; 80];
        let threads = StepThreads::start(1).unwrap();
        let mut fit =
            LayerFit::new(&config(), 4, source(), Device::Cpu, 16, 10).on_threads(&threads);
        fit.push(&rows, &[0; 20]).unwrap();
        let error = fit.finish().err().expect("replay needed").to_string();
        assert!(error.contains("replay_memory_mib"), "{error}");
    }
}
