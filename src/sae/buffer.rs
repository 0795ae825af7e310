//! The mixing buffer between an encoder and its SAEs: activations arrive in dataset order and
//! leave in random batches, so that consecutive steps do not see consecutive shards.

use rand::{Rng, SeedableRng};

/// Rows drawn together: `values` is `[rows x width]` row-major, `samples` the sample id each
/// row comes from (tokens of one sample are alike, so how many samples a batch mixes matters).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowBatch {
    pub values: Vec<f32>,
    pub samples: Vec<u64>,
}

impl RowBatch {
    /// How many different samples the batch's rows come from.
    pub fn distinct_samples(&self) -> usize {
        let mut samples = self.samples.clone();
        samples.sort_unstable();
        samples.dedup();
        samples.len()
    }
}

/// Rows of `width` floats, each with its sample id; batches are drawn uniformly from what the
/// buffer holds.
pub struct MixingBuffer {
    width: usize,
    capacity: usize,
    rows: Vec<f32>,
    samples: Vec<u64>,
    rng: rand::rngs::StdRng,
}

impl MixingBuffer {
    /// A buffer of `capacity` rows (tokens), drawing with `seed`.
    pub fn new(width: usize, capacity: usize, seed: u64) -> MixingBuffer {
        MixingBuffer {
            width,
            capacity: capacity.max(1),
            rows: Vec::new(),
            samples: Vec::new(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len() / self.width
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Adds rows (`values.len()` a multiple of the width) and their samples.
    pub fn push(&mut self, values: &[f32], samples: &[u64]) {
        assert_eq!(values.len(), samples.len() * self.width, "whole rows only");
        self.rows.extend_from_slice(values);
        self.samples.extend_from_slice(samples);
    }

    /// A batch of `batch` random rows once the buffer is half full (or holds `batch` rows, if
    /// that is more): half a buffer of other rows is what each draw is mixed with.
    pub fn pop_when_mixed(&mut self, batch: usize) -> Option<RowBatch> {
        if self.len() >= batch.max(self.capacity / 2) {
            Some(self.draw(batch))
        } else {
            None
        }
    }

    /// A batch of `batch` random rows if there are that many: for the end of a stream.
    pub fn pop_any(&mut self, batch: usize) -> Option<RowBatch> {
        (self.len() >= batch).then(|| self.draw(batch))
    }

    /// Lowers the capacity to `rows` when a whole pass over the data holds fewer rows: a buffer
    /// never needs to hold more than one copy of the data to mix it.
    pub fn cap_at(&mut self, rows: usize) {
        self.capacity = self.capacity.min(rows.max(1));
    }

    /// Whether the producer should wait: the buffer is at capacity.
    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    fn draw(&mut self, batch: usize) -> RowBatch {
        let w = self.width;
        let mut out = RowBatch {
            values: Vec::with_capacity(batch * w),
            samples: Vec::with_capacity(batch),
        };
        for _ in 0..batch {
            let n = self.len();
            let i = self.rng.random_range(0..n);
            out.values.extend_from_slice(&self.rows[i * w..(i + 1) * w]);
            out.samples.push(self.samples.swap_remove(i));
            // Swap-remove row i: O(width), order does not matter in a mixing buffer.
            if i != n - 1 {
                let (head, tail) = self.rows.split_at_mut((n - 1) * w);
                head[i * w..(i + 1) * w].copy_from_slice(&tail[..w]);
            }
            self.rows.truncate((n - 1) * w);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_leaves_once_and_not_in_arrival_order() {
        let mut buffer = MixingBuffer::new(2, 100, 7);
        let mut out = Vec::new();
        for i in 0..300 {
            buffer.push(&[i as f32, -(i as f32)], &[i as u64]);
            while let Some(batch) = buffer.pop_when_mixed(10) {
                assert!(batch
                    .values
                    .chunks(2)
                    .zip(&batch.samples)
                    .all(|(r, &s)| r[0] as u64 == s));
                out.extend(batch.values.chunks(2).map(|r| r[0] as i64));
            }
        }
        while let Some(batch) = buffer.pop_any(10) {
            out.extend(batch.values.chunks(2).map(|r| r[0] as i64));
        }
        assert_eq!(out.len(), 300);
        let mut sorted = out.clone();
        sorted.sort();
        assert_eq!(sorted, (0..300).collect::<Vec<_>>());
        assert_ne!(out, sorted, "batches came out in arrival order");
    }
}
