//! `saeshare bench matching`: the one-to-one matching against MPPC on the same co-activation
//! sums, in one process, on synthetic TopK codes whose target copies half of each sample's
//! source features (feature `i` as `i + 1`): time, the candidate pairs the matching searches,
//! the memory it adds, and how many of the copied features it pairs with their copy.

use std::time::Instant;

use crate::codes::SparseCode;
use crate::stats::{AccumulatorOptions, CoactivationAccumulator, Layout};

use super::bench::{peak_since_reset, reset_peak, rss};
use super::bench_codes::{Popularity, SyntheticCodes, SyntheticPair};
use super::mppc::{mppc, positive_correlations};
use super::one_to_one::one_to_one;

/// What to measure.
#[derive(Clone, Debug)]
pub struct MatchingBenchOptions {
    pub samples: usize,
    /// Features of both SAEs.
    pub features: usize,
    pub k: usize,
    pub popularity: Popularity,
    pub zipf_exponent: f64,
    /// Runs of each, alternating: MPPC, matching, MPPC, ...
    pub repeats: usize,
    pub seed: u64,
    pub accumulator: AccumulatorOptions,
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct MatchingBenchReport {
    pub layout: Layout,
    /// Seconds to add the codes into the sums (not part of either side).
    pub accumulate_seconds: f64,
    /// Pairs of positive correlation: the matching's search space, against `d^2`.
    pub candidates: usize,
    pub matched: usize,
    /// Matched source features whose partner is their copy (`i + 1`), of those that fired.
    pub copies_found: usize,
    pub fired: usize,
    pub mppc_seconds: Vec<f64>,
    pub matching_seconds: Vec<f64>,
    /// Peak resident memory of the first matching above the memory before it, bytes (Linux).
    pub matching_added_bytes: Option<u64>,
}

pub fn bench_matching(options: &MatchingBenchOptions) -> MatchingBenchReport {
    let d = options.features;
    let k = options.k.min(d);
    let updates = options.samples as u64 * (k * k) as u64;
    let mut acc = CoactivationAccumulator::with_options(d, d, updates, options.accumulator);
    let layout = if acc.is_dense() {
        Layout::Dense
    } else {
        Layout::Sparse
    };
    let mut codes = SyntheticCodes::new(
        d,
        k,
        options.popularity,
        options.zipf_exponent,
        options.seed,
    );
    let mut pair = SyntheticPair::default();
    let start = Instant::now();
    for id in 0..options.samples as u64 {
        codes.next_into(&mut pair);
        acc.add(
            &SparseCode {
                sample_id: id,
                features: &pair.source_features,
                values: &pair.source_values,
            },
            &SparseCode {
                sample_id: id,
                features: &pair.target_features,
                values: &pair.target_values,
            },
        );
    }
    let accumulate_seconds = start.elapsed().as_secs_f64();

    let (mut mppc_seconds, mut matching_seconds) = (Vec::new(), Vec::new());
    let mut matches = Vec::new();
    let mut matching_added_bytes = None;
    for run in 0..options.repeats.max(1) {
        let start = Instant::now();
        std::hint::black_box(mppc(&acc));
        mppc_seconds.push(start.elapsed().as_secs_f64());
        let before = rss("VmRSS:");
        reset_peak();
        let start = Instant::now();
        matches = one_to_one(&acc);
        matching_seconds.push(start.elapsed().as_secs_f64());
        if run == 0 {
            matching_added_bytes = before
                .zip(peak_since_reset())
                .map(|(b, p)| p.saturating_sub(b));
        }
    }
    // Counted after the runs, so that the first matching's memory is measured from a process
    // that never held the candidates.
    let candidates = positive_correlations(&acc).len();
    let fired = (0..d).filter(|&i| acc.source().counts()[i] > 0).count();
    let copies_found = (matches.iter())
        .filter(|m| m.target as usize == (m.source as usize + 1) % d)
        .count();
    MatchingBenchReport {
        layout,
        accumulate_seconds,
        candidates,
        matched: matches.len(),
        copies_found,
        fired,
        mppc_seconds,
        matching_seconds,
        matching_added_bytes,
    }
}
