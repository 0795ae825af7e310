//! Co-activation sums between two code streams aligned by sample id.
//!
//! For TopK codes a sample touches `k_A * k_B` pairs, so cross sums cost `k_A * k_B` updates
//! per sample instead of `d_A * d_B`. They live in a dense `d_A x d_B` array of f64 when it
//! fits the memory budget and the samples would touch much of it anyway, in one hash table per
//! source feature otherwise ([`AccumulatorOptions`]); either way the accumulator's size is
//! bounded by the feature counts, never by the number of samples. Batches are added on several
//! threads, each owning a range of source features, with every sum the same bit for bit
//! whatever the layout and the thread count ([`super::fill`]).

use crate::codes::{CodeBatch, SparseCode};

use super::fill::{fill_dense, fill_sparse, RowUpdates};
use super::layout::{AccumulatorOptions, Layout};
use super::sparse_rows::{add_to_row, SparseRows};
use super::{Moments, StatsError};

/// Moments of both streams and cross sums `Sxy_ij = sum_n f_i^A(n) f_j^B(n)` over the samples
/// both streams hold. Accumulators of disjoint sample sets merge into the accumulator of their
/// union ([`merge`](Self::merge)), in any order and grouping.
#[derive(Clone, Debug)]
pub struct CoactivationAccumulator {
    pub(crate) source: Moments,
    pub(crate) target: Moments,
    pub(crate) cross: Cross,
    pub(crate) options: AccumulatorOptions,
}

/// Where cross sums live.
#[derive(Clone, Debug)]
pub(crate) enum Cross {
    /// Pairs that fired together at least once, one table per source feature.
    Sparse(SparseRows),
    /// Every pair, row-major `d_A x d_B`.
    Dense(Vec<f64>),
}

impl CoactivationAccumulator {
    /// An empty accumulator between a source SAE of `d_a` features and a target SAE of `d_b`,
    /// sparse, with the default options (one thread).
    pub fn new(d_a: usize, d_b: usize) -> Self {
        Self::with_options(d_a, d_b, 0, AccumulatorOptions::default())
    }

    /// An empty accumulator sized for about `pair_updates` updates (`N * k_A * k_B` for TopK
    /// codes), with the default options: when they would touch a good part of the `d_A x d_B`
    /// pairs anyway, it starts with the dense array, skipping the tables and the switch.
    pub fn with_expected_updates(d_a: usize, d_b: usize, pair_updates: u64) -> Self {
        Self::with_options(d_a, d_b, pair_updates, AccumulatorOptions::default())
    }

    /// An empty accumulator expecting about `pair_updates` updates (0: unknown), in the layout
    /// [`AccumulatorOptions::layout_for`] picks, filled on `options.threads` threads.
    pub fn with_options(
        d_a: usize,
        d_b: usize,
        pair_updates: u64,
        options: AccumulatorOptions,
    ) -> Self {
        let cross = match options.layout_for(d_a, d_b, pair_updates) {
            Layout::Dense => Cross::Dense(dense_zeros(d_a * d_b)),
            Layout::Sparse => Cross::Sparse(SparseRows::new(d_a)),
        };
        CoactivationAccumulator {
            source: Moments::new(d_a),
            target: Moments::new(d_b),
            cross,
            options,
        }
    }

    /// How this accumulator is filled (layout budget, threads).
    pub fn options(&self) -> AccumulatorOptions {
        self.options
    }

    /// Fills later batches with these options (a loaded or merged accumulator gets the
    /// defaults). A smaller budget does not make dense sums sparse again.
    pub fn set_options(&mut self, options: AccumulatorOptions) {
        self.options = options;
    }

    /// Samples accumulated, `N`.
    pub fn samples(&self) -> u64 {
        self.source.samples()
    }

    /// Moments of the source stream.
    pub fn source(&self) -> &Moments {
        &self.source
    }

    /// Moments of the target stream.
    pub fn target(&self) -> &Moments {
        &self.target
    }

    /// Whether cross sums are held as a dense array.
    pub fn is_dense(&self) -> bool {
        matches!(self.cross, Cross::Dense(_))
    }

    /// Number of pairs held: pairs that fired together, or `d_A * d_B` once dense.
    pub fn pairs(&self) -> usize {
        match &self.cross {
            Cross::Sparse(rows) => rows.pairs(),
            Cross::Dense(v) => v.len(),
        }
    }

    /// `Sxy_ij`: the sum over samples of `f_i^A * f_j^B`.
    pub fn cross_sum(&self, i: usize, j: usize) -> f64 {
        match &self.cross {
            Cross::Sparse(rows) => rows.get(i, j),
            Cross::Dense(v) => v[i * self.target.d() + j],
        }
    }

    /// Adds one sample, given by both streams. The caller aligns the two codes by sample id
    /// ([`super::align`] does); this method does not look at the ids.
    pub fn add(&mut self, a: &SparseCode<'_>, b: &SparseCode<'_>) {
        self.source.add(a);
        self.target.add(b);
        let d_b = self.target.d();
        match &mut self.cross {
            Cross::Sparse(rows) => {
                let mut added = 0;
                for (&i, &x) in a.features.iter().zip(a.values) {
                    let row = &mut rows.rows_mut()[i as usize];
                    added += add_to_row(row, x as f64, b.features, b.values);
                }
                rows.added(added);
                self.maybe_densify();
            }
            Cross::Dense(v) => {
                for (&i, &x) in a.features.iter().zip(a.values) {
                    let row = &mut v[i as usize * d_b..(i as usize + 1) * d_b];
                    let x = x as f64;
                    for (&j, &y) in b.features.iter().zip(b.values) {
                        row[j as usize] += x * y as f64;
                    }
                }
            }
        }
    }

    /// Adds aligned batches, sample `n` of `a` with sample `n` of `b`, on the threads of
    /// [`options`](Self::options). The sums are those of adding the samples one by one.
    pub fn add_batch(&mut self, a: &CodeBatch, b: &CodeBatch) {
        assert_eq!(a.len(), b.len(), "aligned batches have the same length");
        for (x, y) in a.iter().zip(b.iter()) {
            self.source.add(&x);
            self.target.add(&y);
        }
        let (d_a, d_b) = (self.source.d(), self.target.d());
        if a.is_empty() || d_a == 0 || d_b == 0 {
            return;
        }
        // Grouped by source feature: each row of the sums is visited once per batch, by one
        // thread, instead of once per sample (rows are scattered over hundreds of MiB).
        let updates = RowUpdates::of(a, b, d_a);
        let threads = self.options.threads.max(1);
        match &mut self.cross {
            Cross::Dense(cross) => fill_dense(cross, d_b, &updates, b, threads),
            Cross::Sparse(rows) => {
                let added = fill_sparse(rows.rows_mut(), d_b, &updates, b, threads);
                rows.added(added);
                self.maybe_densify();
            }
        }
    }

    /// Turns the cross sums into a dense array (no-op when dense already), whatever the
    /// memory budget.
    pub fn densify(&mut self) {
        if let Cross::Sparse(rows) = &self.cross {
            let d_b = self.target.d();
            let mut dense = dense_zeros(self.source.d() * d_b);
            rows.for_each(|i, j, s| dense[i * d_b + j] += s);
            self.cross = Cross::Dense(dense);
        }
    }

    fn maybe_densify(&mut self) {
        if let Cross::Sparse(rows) = &self.cross {
            let (d_a, d_b) = (self.source.d(), self.target.d());
            if self.options.densify_at(d_a, d_b, rows.pairs()) {
                self.densify();
            }
        }
    }

    /// Adds the sums of other samples. Both must compare the same feature counts.
    pub fn merge(&mut self, other: &CoactivationAccumulator) -> Result<(), StatsError> {
        if other.source.d() != self.source.d() || other.target.d() != self.target.d() {
            return Err(StatsError::ShapeMismatch(format!(
                "an accumulator of {}x{} features cannot be merged into one of {}x{}",
                other.source.d(),
                other.target.d(),
                self.source.d(),
                self.target.d()
            )));
        }
        self.source.merge(&other.source)?;
        self.target.merge(&other.target)?;
        if other.is_dense() {
            self.densify();
        }
        let d_b = self.target.d();
        match (&mut self.cross, &other.cross) {
            (Cross::Sparse(mine), Cross::Sparse(theirs)) => {
                mine.merge(theirs);
                self.maybe_densify();
            }
            (Cross::Dense(mine), Cross::Sparse(theirs)) => {
                theirs.for_each(|i, j, s| mine[i * d_b + j] += s);
            }
            (Cross::Dense(mine), Cross::Dense(theirs)) => {
                for (m, t) in mine.iter_mut().zip(theirs) {
                    *m += t;
                }
            }
            (Cross::Sparse(_), Cross::Dense(_)) => unreachable!("densified above"),
        }
        Ok(())
    }

    /// Calls `f(i, j, Sxy_ij)` for every pair held (in no particular order).
    pub(crate) fn for_each_pair(&self, mut f: impl FnMut(usize, usize, f64)) {
        let d_b = self.target.d();
        match &self.cross {
            Cross::Sparse(rows) => rows.for_each(f),
            Cross::Dense(v) => {
                for (key, &s) in v.iter().enumerate() {
                    f(key / d_b, key % d_b, s);
                }
            }
        }
    }

    /// The dense cross sums, row-major `d_A x d_B`, when held densely.
    pub(crate) fn dense_cross(&self) -> Option<&[f64]> {
        match &self.cross {
            Cross::Dense(v) => Some(v),
            Cross::Sparse(_) => None,
        }
    }

    /// Whether the pair `(i, j)` ever fired together (always true once dense, where every pair
    /// is held and its correlation is computed from its sums).
    pub(crate) fn holds(&self, i: usize, j: usize) -> bool {
        match &self.cross {
            Cross::Sparse(rows) => rows.holds(i, j),
            Cross::Dense(_) => true,
        }
    }
}

/// `cells` zeros for dense sums. The pages are the kernel's zero pages until first written;
/// where transparent huge pages are opt-in (`madvise`), the array asks for them, which makes
/// its first writes (the fill's page faults) and its random access (TLB misses) cheaper.
fn dense_zeros(cells: usize) -> Vec<f64> {
    let zeros = vec![0.0f64; cells];
    advise_huge_pages(&zeros);
    zeros
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(values: &[f64]) {
    const HUGE_PAGE: usize = 2 << 20;
    let (start, len) = (values.as_ptr() as usize, std::mem::size_of_val(values));
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = (start + len) / HUGE_PAGE * HUGE_PAGE;
    if end > first {
        // SAFETY: madvise only advises the kernel on pages of memory this Vec owns (the huge
        // page aligned part of it); it neither reads nor changes their contents. A failure
        // (no transparent huge pages) only leaves the default.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: &[f64]) {}
