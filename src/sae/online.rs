//! Training an SAE from a stream of activations that no file holds: rows arrive once, in dataset
//! order, from an encoder running in a dataflow.
//!
//! [`LayerFit`] draws batches exactly as `saeshare sae train` does from a file (rows pushed in
//! chunks of [`FILE_CHUNK_ROWS`], the mixing buffer capped to one pass after the first), so an
//! SAE fitted in the pipeline equals the one trained from the same activations on disk. Passes
//! after the first replay the rows from memory when they fit in the replay budget: the encoder
//! never runs twice.

use tch::Tensor;

use super::buffer::MixingBuffer;
use super::config::SaeConfig;
use super::trainer::{SaeSource, SaeTrainer, TrainError};

/// Rows per push: the batch size of the activation file reader in `sae train`.
pub const FILE_CHUNK_ROWS: usize = 1024;

/// One SAE being fitted on one layer of one encoder.
pub struct LayerFit {
    trainer: SaeTrainer,
    buffer: MixingBuffer,
    width: usize,
    pending: Vec<f32>,
    /// The first pass's rows while they fit in the budget; `None` once they do not.
    replay: Option<Vec<f32>>,
    replay_budget_rows: usize,
    rows_first_pass: usize,
    drawn: usize,
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
            trainer: SaeTrainer::new(config, width, device, source),
            buffer: MixingBuffer::new(width, buffer_rows, config.seed),
            width,
            pending: Vec::new(),
            replay: Some(Vec::new()),
            replay_budget_rows,
            rows_first_pass: 0,
            drawn: 0,
        }
    }

    /// Adds rows of the first pass, in dataset order, and trains on every batch that is ready.
    pub fn push(&mut self, rows: &[f32]) -> Result<(), TrainError> {
        assert_eq!(rows.len() % self.width, 0, "whole rows only");
        self.rows_first_pass += rows.len() / self.width;
        if let Some(replay) = self.replay.as_mut() {
            if self.rows_first_pass <= self.replay_budget_rows {
                replay.extend_from_slice(rows);
            } else {
                self.replay = None;
            }
        }
        self.pending.extend_from_slice(rows);
        let chunk = FILE_CHUNK_ROWS * self.width;
        while self.pending.len() >= chunk {
            let rest = self.pending.split_off(chunk);
            let full = std::mem::replace(&mut self.pending, rest);
            self.train_on(&full)?;
        }
        Ok(())
    }

    /// Ends the first pass and trains the remaining steps, replaying the rows from memory.
    /// Fails when one pass holds fewer rows than a batch, or when more passes are needed and
    /// the rows did not fit the replay budget.
    pub fn finish(&mut self) -> Result<(), FitError> {
        let pending = std::mem::take(&mut self.pending);
        if !pending.is_empty() {
            self.train_on(&pending)?;
        }
        let (batch_size, steps) = self.batch_and_steps();
        if self.rows_first_pass < batch_size {
            return Err(FitError::TooFewRows {
                rows: self.rows_first_pass,
                batch_size,
            });
        }
        self.buffer.cap_at(self.rows_first_pass);
        while self.drawn < steps {
            let Some(batch) = self.buffer.pop_when_mixed(batch_size) else {
                break;
            };
            self.step(&batch)?;
        }
        if self.drawn >= steps {
            return Ok(());
        }
        let Some(replay) = self.replay.take() else {
            return Err(FitError::ReplayTooLarge {
                rows: self.rows_first_pass,
                budget: self.replay_budget_rows,
                steps_done: self.drawn,
            });
        };
        while self.drawn < steps {
            for chunk in replay.chunks(FILE_CHUNK_ROWS * self.width) {
                self.train_on(chunk)?;
                if self.drawn >= steps {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The trainer, to save.
    pub fn trainer(&self) -> &SaeTrainer {
        &self.trainer
    }

    /// Rows of the first pass.
    pub fn rows(&self) -> usize {
        self.rows_first_pass
    }

    fn batch_and_steps(&self) -> (usize, usize) {
        let config = &self.trainer.sae.config;
        (config.batch_size, config.steps)
    }

    fn train_on(&mut self, rows: &[f32]) -> Result<(), TrainError> {
        let (batch_size, steps) = self.batch_and_steps();
        self.buffer.push(rows);
        while self.drawn < steps {
            let Some(batch) = self.buffer.pop_when_mixed(batch_size) else {
                break;
            };
            self.step(&batch)?;
        }
        Ok(())
    }

    fn step(&mut self, batch: &[f32]) -> Result<(), TrainError> {
        let x = Tensor::from_slice(batch).reshape([-1, self.width as i64]);
        self.trainer.train_step(&x)?;
        self.drawn += 1;
        Ok(())
    }
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
        fit.push(&rows[..40]).unwrap();
        fit.push(&rows[40..]).unwrap();
        fit.finish().unwrap();
        assert_eq!(fit.trainer().steps_done(), 12);
        assert_eq!(fit.rows(), 20);
    }

    #[test]
    fn rows_beyond_the_replay_budget_are_an_error_that_says_what_to_change() {
        let rows = vec![0.5f32; 80];
        let mut fit = LayerFit::new(&config(), 4, source(), Device::Cpu, 16, 10);
        fit.push(&rows).unwrap();
        let error = fit.finish().unwrap_err().to_string();
        assert!(error.contains("replay_memory_mib"), "{error}");
    }
}
