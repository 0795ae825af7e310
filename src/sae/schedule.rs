//! The order in which an SAE sees its rows, whoever provides them: `saeshare sae train` reading
//! an activation file pass after pass, or the pipeline's [`super::LayerFit`] fed by an encoder
//! in a dataflow. Both drive this one schedule, so the same rows give the same SAE.
//!
//! Rows of a pass enter a [`MixingBuffer`] in chunks of [`FILE_CHUNK_ROWS`]; after each chunk
//! every batch that is mixed is drawn. The end of the first pass caps the buffer to the rows of
//! one pass (it never needs more than one copy of the data) and drains it. Later passes push
//! the same rows again through the capped buffer. The draws are a pure function of the seed and
//! the rows, which is what makes a resumed run continue exactly where it stopped.
//!
//! Once every step has its batch, rows still pushed are counted and dropped: a stream longer
//! than the training never grows the buffer.

use super::buffer::{MixingBuffer, RowBatch};
use super::config::SaeConfig;

/// Rows per chunk pushed into the mixing buffer: the batch size of the activation file reader.
pub const FILE_CHUNK_ROWS: usize = 1024;

/// Batches for one SAE, drawn from the rows of its passes.
pub struct BatchSchedule {
    buffer: MixingBuffer,
    width: usize,
    batch_size: usize,
    steps: usize,
    /// Rows of this pass not yet pushed into the buffer, and their samples: less than a chunk.
    pending: RowBatch,
    rows_this_pass: usize,
    passes_done: usize,
    drawn: usize,
}

impl BatchSchedule {
    /// The schedule of an SAE with `config` on rows of `width`, mixing through `buffer_rows`.
    pub fn new(config: &SaeConfig, width: usize, buffer_rows: usize) -> BatchSchedule {
        BatchSchedule {
            buffer: MixingBuffer::new(width, buffer_rows, config.seed),
            width,
            batch_size: config.batch_size,
            steps: config.steps,
            pending: RowBatch::default(),
            rows_this_pass: 0,
            passes_done: 0,
            drawn: 0,
        }
    }

    /// Adds rows of the current pass, in order, with the sample each comes from, and calls
    /// `step(index, batch)` for every batch they make ready, `index` counting from 0 over the
    /// whole training.
    pub fn push<E>(
        &mut self,
        rows: &[f32],
        samples: &[u64],
        step: &mut impl FnMut(usize, RowBatch) -> Result<(), E>,
    ) -> Result<(), E> {
        assert_eq!(rows.len(), samples.len() * self.width, "whole rows only");
        self.rows_this_pass += samples.len();
        if self.is_done() {
            return Ok(());
        }
        self.pending.values.extend_from_slice(rows);
        self.pending.samples.extend_from_slice(samples);
        while self.pending.samples.len() >= FILE_CHUNK_ROWS {
            let rest = RowBatch {
                values: self.pending.values.split_off(FILE_CHUNK_ROWS * self.width),
                samples: self.pending.samples.split_off(FILE_CHUNK_ROWS),
            };
            let full = std::mem::replace(&mut self.pending, rest);
            self.buffer.push(&full.values, &full.samples);
            self.draw_mixed(step)?;
        }
        Ok(())
    }

    /// Ends the current pass: its last partial chunk enters the buffer; after the first pass the
    /// buffer is capped to one pass and drained. The caller checks [`Self::rows_this_pass`]
    /// against the batch size first: a pass smaller than one batch cannot train.
    pub fn end_pass<E>(
        &mut self,
        step: &mut impl FnMut(usize, RowBatch) -> Result<(), E>,
    ) -> Result<(), E> {
        let rest = std::mem::take(&mut self.pending);
        if !rest.samples.is_empty() {
            self.buffer.push(&rest.values, &rest.samples);
            self.draw_mixed(step)?;
        }
        if self.passes_done == 0 {
            self.buffer.cap_at(self.rows_this_pass);
            self.draw_mixed(step)?;
        }
        self.passes_done += 1;
        self.rows_this_pass = 0;
        Ok(())
    }

    /// Rows pushed in the current pass.
    pub fn rows_this_pass(&self) -> usize {
        self.rows_this_pass
    }

    /// Passes ended so far.
    pub fn passes_done(&self) -> usize {
        self.passes_done
    }

    /// Batches drawn so far, trained or skipped by the caller.
    pub fn drawn(&self) -> usize {
        self.drawn
    }

    /// Whether every step has its batch.
    pub fn is_done(&self) -> bool {
        self.drawn >= self.steps
    }

    /// The configured batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn draw_mixed<E>(
        &mut self,
        step: &mut impl FnMut(usize, RowBatch) -> Result<(), E>,
    ) -> Result<(), E> {
        while self.drawn < self.steps {
            let Some(batch) = self.buffer.pop_when_mixed(self.batch_size) else {
                break;
            };
            let index = self.drawn;
            self.drawn += 1;
            step(index, batch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(steps: usize) -> SaeConfig {
        SaeConfig {
            batch_size: 8,
            steps,
            ..SaeConfig::default()
        }
    }

    /// The batches a schedule draws from `passes` passes over `rows`, pushed in `pieces`.
    fn batches(rows: &[f32], pieces: usize, steps: usize) -> Vec<Vec<f32>> {
        let mut schedule = BatchSchedule::new(&config(steps), 2, 64);
        let mut out = Vec::new();
        let mut take = |_: usize, b: RowBatch| -> Result<(), ()> {
            out.push(b.values);
            Ok(())
        };
        let samples: Vec<u64> = (0..rows.len() as u64 / 2).collect();
        while !schedule.is_done() {
            let piece = (rows.len() / 2).div_ceil(pieces);
            for (part, ids) in rows.chunks(piece * 2).zip(samples.chunks(piece)) {
                schedule.push(part, ids, &mut take).unwrap();
            }
            schedule.end_pass(&mut take).unwrap();
        }
        out
    }

    #[test]
    fn the_batches_do_not_depend_on_how_the_rows_are_cut() {
        let rows: Vec<f32> = (0..2 * 3000).map(|i| i as f32).collect();
        let whole = batches(&rows, 1, 900);
        assert_eq!(whole.len(), 900);
        assert_eq!(whole, batches(&rows, 7, 900));
        assert_eq!(whole, batches(&rows, 3000, 900));
    }

    #[test]
    fn a_pass_smaller_than_the_buffer_still_gives_every_step() {
        // 20 rows, a buffer of 64: only the cap at the end of the first pass lets batches out.
        let rows: Vec<f32> = (0..40).map(|i| i as f32).collect();
        let drawn = batches(&rows, 1, 12);
        assert_eq!(drawn.len(), 12);
        assert!(drawn.iter().all(|b| b.len() == 16));
    }
}
