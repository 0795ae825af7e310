//! Adding a batch's cross products to the sums on several threads, without locks and without
//! changing a bit of any sum.
//!
//! The batch's updates are first grouped by source feature (a counting sort, which keeps the
//! samples of each feature in batch order). Each thread then owns a contiguous range of source
//! features, that is of rows of the sums, and walks its rows' updates in sample order: every
//! pair `(i, j)` is added to by one thread only, in the order of the samples, so its f64 sum is
//! the same left-to-right sum whatever the thread count and the layout, and the same as adding
//! the samples one by one.

use std::ops::Range;

use crate::codes::CodeBatch;

use super::sparse_rows::{add_to_row, RowMap};

/// Below this many products per thread, another thread costs more to start than it saves.
/// Tests use small codes and still need every thread count to run.
const MIN_PRODUCTS_PER_THREAD: u64 = if cfg!(test) { 64 } else { 1 << 16 };

/// A batch's cross updates grouped by source feature: for feature `i`, the samples (in batch
/// order) where it is active and the target code is not empty, and its value there.
pub(crate) struct RowUpdates {
    /// The updates of feature `i` are `starts[i]..starts[i + 1]`.
    starts: Vec<usize>,
    /// The sample of each update, an index into the batch.
    samples: Vec<u32>,
    /// The source value of each update.
    values: Vec<f32>,
}

impl RowUpdates {
    /// Groups the updates of aligned batches `a` (source, `d_a` features) and `b` (target).
    pub fn of(a: &CodeBatch, b: &CodeBatch, d_a: usize) -> Self {
        assert!(
            a.len() <= u32::MAX as usize,
            "a batch holds at most 2^32 samples"
        );
        let mut starts = vec![0usize; d_a + 1];
        for (x, y) in a.iter().zip(b.iter()) {
            if !y.features.is_empty() {
                for &i in x.features {
                    starts[i as usize + 1] += 1;
                }
            }
        }
        for i in 0..d_a {
            starts[i + 1] += starts[i];
        }
        let total = starts[d_a];
        let mut next = starts.clone();
        let (mut samples, mut values) = (vec![0u32; total], vec![0f32; total]);
        for (n, (x, y)) in a.iter().zip(b.iter()).enumerate() {
            if y.features.is_empty() {
                continue;
            }
            for (&i, &v) in x.features.iter().zip(x.values) {
                let slot = &mut next[i as usize];
                samples[*slot] = n as u32;
                values[*slot] = v;
                *slot += 1;
            }
        }
        RowUpdates {
            starts,
            samples,
            values,
        }
    }

    fn row(&self, i: usize) -> Range<usize> {
        self.starts[i]..self.starts[i + 1]
    }

    /// Products of feature `i` with target latents in this batch.
    fn products(&self, i: usize, b: &CodeBatch) -> u64 {
        self.row(i)
            .map(|u| b.get(self.samples[u] as usize).features.len() as u64)
            .sum()
    }

    /// Splits the source features into at most `threads` contiguous ranges of about equal
    /// products: the bounds, from 0 to `d_a`.
    fn partition(&self, b: &CodeBatch, threads: usize) -> Vec<usize> {
        let d_a = self.starts.len() - 1;
        let products: Vec<u64> = (0..d_a).map(|i| self.products(i, b)).collect();
        let total: u64 = products.iter().sum();
        let threads = (threads as u64).min(total / MIN_PRODUCTS_PER_THREAD).max(1);
        let mut bounds = vec![0];
        let mut done = 0u64;
        for (i, &p) in products.iter().enumerate() {
            done += p;
            // The next range starts once this one holds its share of the products.
            let share = total * bounds.len() as u64 / threads;
            if done >= share && (bounds.len() as u64) < threads && i + 1 < d_a {
                bounds.push(i + 1);
            }
        }
        bounds.push(d_a);
        bounds
    }
}

/// Updates ahead of the one being added whose target codes are asked into the caches: a
/// feature's samples are scattered over the batch, so each update's codes would otherwise be a
/// cache miss the adds wait for.
const PREFETCH_AHEAD: usize = 8;

/// Adds the batch's products to dense row-major sums of `d_b` target features.
pub(crate) fn fill_dense(
    cross: &mut [f64],
    d_b: usize,
    updates: &RowUpdates,
    b: &CodeBatch,
    threads: usize,
) {
    let bounds = updates.partition(b, threads);
    let parts = split(cross, &bounds, d_b);
    on_threads(parts, |first, rows: &mut [f64]| {
        for (r, row) in rows.chunks_exact_mut(d_b).enumerate() {
            for u in updates.row(first + r) {
                if let Some(&ahead) = updates.samples.get(u + PREFETCH_AHEAD) {
                    b.prefetch(ahead as usize);
                }
                let y = b.get(updates.samples[u] as usize);
                let x = updates.values[u] as f64;
                for (&j, &v) in y.features.iter().zip(y.values) {
                    row[j as usize] += x * v as f64;
                }
            }
        }
        0
    });
}

/// Adds the batch's products to sparse rows of `d_b` target features; returns the pairs added.
pub(crate) fn fill_sparse(
    rows: &mut [RowMap],
    d_b: usize,
    updates: &RowUpdates,
    b: &CodeBatch,
    threads: usize,
) -> usize {
    let bounds = updates.partition(b, threads);
    let parts = split(rows, &bounds, 1);
    on_threads(parts, |first, rows: &mut [RowMap]| {
        let mut added = 0;
        for (r, row) in rows.iter_mut().enumerate() {
            let i = first + r;
            if updates.row(i).is_empty() {
                continue;
            }
            if row.capacity() == 0 {
                // A row's first batch sizes its table from the pairs it can reach (at most its
                // products, at most d_B), so the table does not grow while the updates land.
                row.reserve((updates.products(i, b) as usize).min(d_b));
            }
            for u in updates.row(i) {
                if let Some(&ahead) = updates.samples.get(u + PREFETCH_AHEAD) {
                    b.prefetch(ahead as usize);
                }
                let y = b.get(updates.samples[u] as usize);
                added += add_to_row(row, updates.values[u] as f64, y.features, y.values);
            }
        }
        added
    })
}

/// `slice` cut at `bounds` (in rows of `row_len` items): each part with its first row.
fn split<'a, T>(
    mut slice: &'a mut [T],
    bounds: &[usize],
    row_len: usize,
) -> Vec<(usize, &'a mut [T])> {
    let mut parts = Vec::with_capacity(bounds.len());
    for w in bounds.windows(2) {
        let (part, rest) = std::mem::take(&mut slice).split_at_mut((w[1] - w[0]) * row_len);
        parts.push((w[0], part));
        slice = rest;
    }
    parts
}

/// Runs `work` on every part, the first on this thread and each other on a thread of its
/// own; returns the sum of what they return. A panic in any part is raised here.
fn on_threads<T: Send>(
    parts: Vec<(usize, &mut [T])>,
    work: impl Fn(usize, &mut [T]) -> usize + Sync,
) -> usize {
    let work = &work;
    std::thread::scope(|scope| {
        let mut parts = parts.into_iter();
        let first = parts.next();
        let others: Vec<_> = parts
            .map(|(row, part)| scope.spawn(move || work(row, part)))
            .collect();
        let mut total = first.map_or(0, |(row, part)| work(row, part));
        for handle in others {
            total += handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        }
        total
    })
}
