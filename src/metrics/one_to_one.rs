//! One-to-one feature matches between two SAEs: which features are the same concept. MPPC gives
//! each source feature its best partner, and many may pick the same one; here each feature gets
//! at most one partner and each partner one feature, the assignment that maximises the total
//! correlation, exactly.
//!
//! Only pairs of positive correlation can add to the total, and for codes that are never
//! negative (every SAE saeshare fits) a pair that never fired together has `rho = -(Sx_i/sx_i)
//! (Sy_j/sy_j) <= 0`: the candidates are the pairs the accumulator holds, so time and memory
//! follow the pairs that co-fire, not `d_A x d_B` ([`super::assignment`]).

use crate::codes::CodesMeta;
use crate::stats::CoactivationAccumulator;

use super::assignment::{max_weight_matching, Edge};
use super::mppc::positive_correlations;
use super::MatchRow;

/// The thresholds the shared fractions are reported at.
pub const SHARED_AT: [f64; 3] = [0.5, 0.7, 0.9];

/// A matched pair of features.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OneToOne {
    pub source: u32,
    pub target: u32,
    /// Their Pearson correlation over the samples, `> 0`.
    pub rho: f64,
}

/// The one-to-one matching of the source's features to the target's of one layer pair, by
/// source feature.
pub fn one_to_one(acc: &CoactivationAccumulator) -> Vec<OneToOne> {
    let edges: Vec<Edge> = positive_correlations(acc);
    let (d_a, d_b) = (acc.source().d(), acc.target().d());
    (max_weight_matching(d_a, d_b, &edges)
        .into_iter()
        .enumerate())
    .filter_map(|(i, matched)| {
        let (target, rho) = matched?;
        Some(OneToOne {
            source: i as u32,
            target,
            rho,
        })
    })
    .collect()
}

/// The `matches` rows of every layer pair of a comparison (`accumulators[source][target]`).
pub(crate) fn match_rows(
    accumulators: &[Vec<CoactivationAccumulator>],
    source: &[CodesMeta],
    target: &[CodesMeta],
) -> Vec<MatchRow> {
    let mut rows = Vec::new();
    for (row, s) in accumulators.iter().zip(source) {
        for (acc, t) in row.iter().zip(target) {
            rows.extend(one_to_one(acc).into_iter().map(|m| MatchRow {
                source: s.encoder.clone(),
                target: t.encoder.clone(),
                source_layer: s.layer.clone(),
                target_layer: t.layer.clone(),
                source_feature: m.source,
                target_feature: m.target,
                rho: m.rho,
            }));
        }
    }
    rows
}
