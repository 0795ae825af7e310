//! The sparse layout of cross sums: one hash table per source feature, keyed by target
//! feature, holding the pairs that fired together.
//!
//! A table per row rather than one table for all pairs: a batch's updates arrive grouped by
//! source feature, so each table is hot in cache while its updates land, and a table that
//! grows rehashes one row, not every pair (a single table of millions of pairs spent more time
//! rehashing and faulting in pages than adding).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The cross sums of one source feature: target feature -> `Sxy`.
pub(crate) type RowMap = HashMap<u32, f64, BuildHasherDefault<PairHasher>>;

/// A multiplicative hash for feature indices: the std SipHash costs more than the whole update,
/// and keys are not attacker-chosen.
#[derive(Default, Clone, Copy)]
pub(crate) struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    fn write_u32(&mut self, key: u32) {
        self.write_u64(key as u64);
    }

    fn write_u64(&mut self, key: u64) {
        // Fibonacci hashing, folded so the high bits (which hashbrown uses as tags) and the low
        // bits (which pick the bucket) both depend on every key bit.
        let h = (self.0 ^ key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
}

/// Sparse cross sums of `d_A` source features.
#[derive(Clone, Debug)]
pub(crate) struct SparseRows {
    rows: Vec<RowMap>,
    /// Pairs held, summed over the rows (kept, as counting them walks every row).
    pairs: usize,
}

impl SparseRows {
    /// No pair yet, for `d_a` source features.
    pub fn new(d_a: usize) -> Self {
        SparseRows {
            rows: vec![RowMap::default(); d_a],
            pairs: 0,
        }
    }

    /// Rows built elsewhere (loading); `pairs` is recounted.
    pub fn from_rows(rows: Vec<RowMap>) -> Self {
        let pairs = rows.iter().map(HashMap::len).sum();
        SparseRows { rows, pairs }
    }

    /// Pairs held.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// The table of source feature `i`.
    pub fn row(&self, i: usize) -> &RowMap {
        &self.rows[i]
    }

    /// Every row, for a fill that splits them between threads; the fill reports the pairs it
    /// added through [`added`](Self::added).
    pub fn rows_mut(&mut self) -> &mut [RowMap] {
        &mut self.rows
    }

    /// Counts `pairs` pairs added to the rows through [`rows_mut`](Self::rows_mut).
    pub fn added(&mut self, pairs: usize) {
        self.pairs += pairs;
    }

    /// `Sxy_ij`, 0 for a pair that never fired together.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.rows[i].get(&(j as u32)).copied().unwrap_or(0.0)
    }

    /// Whether the pair `(i, j)` ever fired together.
    pub fn holds(&self, i: usize, j: usize) -> bool {
        self.rows[i].contains_key(&(j as u32))
    }

    /// Adds `s` to `Sxy_ij`.
    pub fn add(&mut self, i: usize, j: u32, s: f64) {
        let row = &mut self.rows[i];
        let before = row.len();
        *row.entry(j).or_insert(0.0) += s;
        self.pairs += row.len() - before;
    }

    /// Calls `f(i, j, Sxy_ij)` for every pair held, row by row (in no order within a row).
    pub fn for_each(&self, mut f: impl FnMut(usize, usize, f64)) {
        for (i, row) in self.rows.iter().enumerate() {
            for (&j, &s) in row {
                f(i, j as usize, s);
            }
        }
    }

    /// Adds the sums of `other` (same source features), pair by pair.
    pub fn merge(&mut self, other: &SparseRows) {
        for (i, row) in other.rows.iter().enumerate() {
            for (&j, &s) in row {
                self.add(i, j, s);
            }
        }
    }
}

/// Adds one source value's products with a target code to the row's table: `x * y_j` into
/// `Sxy_ij` for every active `j`. Returns the pairs the row gained.
pub(crate) fn add_to_row(row: &mut RowMap, x: f64, features: &[u32], values: &[f32]) -> usize {
    let before = row.len();
    for (&j, &y) in features.iter().zip(values) {
        *row.entry(j).or_insert(0.0) += x * y as f64;
    }
    row.len() - before
}
