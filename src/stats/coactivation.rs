//! Co-activation sums between two code streams aligned by sample id.
//!
//! For TopK codes a sample touches `k_A * k_B` pairs, so cross sums live in a hash map keyed by
//! `(i, j)` and cost `k_A * k_B` updates per sample instead of `d_A * d_B`. When the map would
//! take more memory than a dense `d_A x d_B` array of f64 it becomes that array: either way the
//! accumulator's size is bounded by the feature counts, never by the number of samples.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::codes::{CodeBatch, SparseCode};

use super::{Moments, StatsError};

/// Below this many pairs the map never turns dense: small problems stay cheap to serialize.
const MIN_DENSE_SWITCH: usize = 1 << 16;

/// Moments of both streams and cross sums `Sxy_ij = sum_n f_i^A(n) f_j^B(n)` over the samples
/// both streams hold. Accumulators of disjoint sample sets merge into the accumulator of their
/// union ([`merge`](Self::merge)), in any order and grouping.
#[derive(Clone, Debug)]
pub struct CoactivationAccumulator {
    pub(crate) source: Moments,
    pub(crate) target: Moments,
    pub(crate) cross: Cross,
}

/// Where cross sums live.
#[derive(Clone, Debug)]
pub(crate) enum Cross {
    /// Pairs that fired together at least once; key `i * d_B + j`.
    Sparse(PairMap),
    /// Every pair, row-major `d_A x d_B`.
    Dense(Vec<f64>),
}

pub(crate) type PairMap = HashMap<u64, f64, BuildHasherDefault<PairHasher>>;

/// A multiplicative hash for pair keys: the std SipHash costs more than the whole update, and
/// keys are not attacker-chosen.
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

    fn write_u64(&mut self, key: u64) {
        // Fibonacci hashing, folded so the high bits (which hashbrown uses as tags) and the low
        // bits (which pick the bucket) both depend on every key bit.
        let h = (self.0 ^ key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
}

impl CoactivationAccumulator {
    /// An empty accumulator between a source SAE of `d_a` features and a target SAE of `d_b`.
    pub fn new(d_a: usize, d_b: usize) -> Self {
        CoactivationAccumulator {
            source: Moments::new(d_a),
            target: Moments::new(d_b),
            cross: Cross::Sparse(PairMap::default()),
        }
    }

    /// An empty accumulator sized for about `pair_updates` updates (`N * k_A * k_B` for TopK
    /// codes): when they would touch a good part of the `d_A x d_B` pairs anyway, it starts
    /// with the dense array, skipping the map's growth and the switch.
    pub fn with_expected_updates(d_a: usize, d_b: usize, pair_updates: u64) -> Self {
        let mut acc = Self::new(d_a, d_b);
        let cells = (d_a * d_b) as u64;
        // u updates over c pairs touch ~c(1 - e^(-u/c)) distinct pairs: 39% at u = c/2, where
        // a map entry (~24 bytes) already costs more than the whole dense array (8 per pair).
        if cells > MIN_DENSE_SWITCH as u64 && pair_updates >= cells / 2 {
            acc.densify();
        }
        acc
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
            Cross::Sparse(map) => map.len(),
            Cross::Dense(v) => v.len(),
        }
    }

    /// `Sxy_ij`: the sum over samples of `f_i^A * f_j^B`.
    pub fn cross_sum(&self, i: usize, j: usize) -> f64 {
        let d_b = self.target.d();
        match &self.cross {
            Cross::Sparse(map) => map.get(&((i * d_b + j) as u64)).copied().unwrap_or(0.0),
            Cross::Dense(v) => v[i * d_b + j],
        }
    }

    /// Adds one sample, given by both streams. The caller aligns the two codes by sample id
    /// ([`super::align`] does); this method does not look at the ids.
    pub fn add(&mut self, a: &SparseCode<'_>, b: &SparseCode<'_>) {
        self.source.add(a);
        self.target.add(b);
        let d_b = self.target.d();
        match &mut self.cross {
            Cross::Sparse(map) => {
                for (&i, &x) in a.features.iter().zip(a.values) {
                    let row = i as u64 * d_b as u64;
                    let x = x as f64;
                    for (&j, &y) in b.features.iter().zip(b.values) {
                        *map.entry(row + j as u64).or_insert(0.0) += x * y as f64;
                    }
                }
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

    /// Adds aligned batches: sample `n` of `a` with sample `n` of `b`.
    pub fn add_batch(&mut self, a: &CodeBatch, b: &CodeBatch) {
        assert_eq!(a.len(), b.len(), "aligned batches have the same length");
        let d_b = self.target.d();
        let Cross::Dense(cross) = &mut self.cross else {
            for (x, y) in a.iter().zip(b.iter()) {
                self.add(&x, &y);
            }
            return;
        };
        // Dense: visit the batch's updates grouped by source feature, so each row of the array
        // is brought into cache once per batch instead of once per sample (several times
        // faster on large d, where rows are scattered over hundreds of MiB).
        let mut updates: Vec<(u32, u32, f32)> = Vec::with_capacity(a.nnz());
        for (n, (x, y)) in a.iter().zip(b.iter()).enumerate() {
            self.source.add(&x);
            self.target.add(&y);
            if !y.features.is_empty() {
                updates.extend(
                    x.features
                        .iter()
                        .zip(x.values)
                        .map(|(&i, &v)| (i, n as u32, v)),
                );
            }
        }
        updates.sort_unstable_by_key(|u| (u.0, u.1));
        for (i, n, x) in updates {
            let row = &mut cross[i as usize * d_b..(i as usize + 1) * d_b];
            let y = b.get(n as usize);
            let x = x as f64;
            for (&j, &v) in y.features.iter().zip(y.values) {
                row[j as usize] += x * v as f64;
            }
        }
    }

    /// Turns the cross sums into a dense array (no-op when dense already).
    pub fn densify(&mut self) {
        if let Cross::Sparse(map) = &self.cross {
            let mut dense = vec![0.0; self.source.d() * self.target.d()];
            for (&key, &s) in map {
                dense[key as usize] += s;
            }
            self.cross = Cross::Dense(dense);
        }
    }

    fn maybe_densify(&mut self) {
        if let Cross::Sparse(map) = &self.cross {
            // A map entry costs ~3x a dense cell (key, value, control byte, spare capacity).
            let cells = self.source.d() * self.target.d();
            if map.len() > MIN_DENSE_SWITCH && map.len() * 3 > cells {
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
        match (&mut self.cross, &other.cross) {
            (Cross::Sparse(mine), Cross::Sparse(theirs)) => {
                for (&key, &s) in theirs {
                    *mine.entry(key).or_insert(0.0) += s;
                }
                self.maybe_densify();
            }
            (Cross::Dense(mine), Cross::Sparse(theirs)) => {
                for (&key, &s) in theirs {
                    mine[key as usize] += s;
                }
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
            Cross::Sparse(map) => {
                for (&key, &s) in map {
                    f(key as usize / d_b, key as usize % d_b, s);
                }
            }
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
            Cross::Sparse(map) => map.contains_key(&((i * self.target.d() + j) as u64)),
            Cross::Dense(_) => true,
        }
    }
}
