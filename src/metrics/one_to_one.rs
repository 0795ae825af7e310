//! One-to-one feature matches between two SAEs: which features are the same concept. MPPC gives
//! each source feature its best partner, and many may pick the same one; here each feature gets
//! at most one partner and each partner one feature, the assignment that maximises the total
//! correlation, exactly.
//!
//! Only pairs of positive correlation can add to the total, and for codes that are never
//! negative (every SAE saeshare fits) a pair that never fired together has `rho = -(Sx_i/sx_i)
//! (Sy_j/sy_j) <= 0`: the candidates are the pairs the accumulator holds, so time and memory
//! follow the pairs that co-fire, not `d_A x d_B` ([`super::assignment`]).

use crate::codes::{CodeBatch, CodesMeta};
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

/// The `matches` rows of every layer pair of a comparison (`accumulators[source][target]`),
/// each with its co-firing rate where `aligned` holds every aligned code (sources first).
pub(crate) fn match_rows(
    accumulators: &[Vec<CoactivationAccumulator>],
    (source, target): (&[CodesMeta], &[CodesMeta]),
    aligned: Option<&[CodeBatch]>,
) -> Vec<MatchRow> {
    let mut rows = Vec::new();
    for (a, (row, s)) in accumulators.iter().zip(source).enumerate() {
        for (b, (acc, t)) in row.iter().zip(target).enumerate() {
            let matched = one_to_one(acc);
            let jaccard = aligned.map(|kept| {
                let codes = (&kept[a], &kept[source.len() + b]);
                co_firing(&matched, codes, (acc.source().d(), acc.target().d()))
            });
            rows.extend(matched.into_iter().enumerate().map(|(m, pair)| MatchRow {
                source: s.encoder.clone(),
                target: t.encoder.clone(),
                source_layer: s.layer.clone(),
                target_layer: t.layer.clone(),
                source_feature: pair.source,
                target_feature: pair.target,
                rho: pair.rho,
                jaccard: jaccard.as_ref().and_then(|j| j[m]),
            }));
        }
    }
    rows
}

/// Each match's co-firing rate over the aligned codes `x` (source, `d_a` features) and `y`
/// (target, `d_b`): the Jaccard index of the samples where each fires, `both / either`; `None`
/// where neither fires.
fn co_firing(
    matched: &[OneToOne],
    (x, y): (&CodeBatch, &CodeBatch),
    (d_a, d_b): (usize, usize),
) -> Vec<Option<f64>> {
    // The match each feature is in, on either side (`u32::MAX`: none).
    let (mut of_source, mut of_target) = (vec![u32::MAX; d_a], vec![u32::MAX; d_b]);
    for (m, pair) in matched.iter().enumerate() {
        of_source[pair.source as usize] = m as u32;
        of_target[pair.target as usize] = m as u32;
    }
    let fired = |of: &[u32], features: &[u32], values: &[f32]| -> Vec<usize> {
        (features.iter().zip(values))
            .filter(|&(&f, &v)| v != 0.0 && of[f as usize] != u32::MAX)
            .map(|(&f, _)| of[f as usize] as usize)
            .collect()
    };
    let (mut fires_x, mut fires_y, mut both) = (
        vec![0u64; matched.len()],
        vec![0u64; matched.len()],
        vec![0u64; matched.len()],
    );
    for (cx, cy) in x.iter().zip(y.iter()) {
        let in_x = fired(&of_source, cx.features, cx.values);
        for &m in &in_x {
            fires_x[m] += 1;
        }
        for m in fired(&of_target, cy.features, cy.values) {
            fires_y[m] += 1;
            both[m] += u64::from(in_x.contains(&m));
        }
    }
    (0..matched.len())
        .map(|m| {
            let either = fires_x[m] + fires_y[m] - both[m];
            (either > 0).then(|| both[m] as f64 / either as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn each_match_carries_how_often_its_features_fire_together() {
        // Source feature i's partner is target feature (i + 1) % d, firing with it 70% of the
        // time; both fire at random too.
        let (n, d) = (600, 12);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut rows = (vec![vec![0f32; d]; n], vec![vec![0f32; d]; n]);
        for s in 0..n {
            for i in 0..d {
                if rng.random_bool(0.2) {
                    rows.0[s][i] = rng.random_range(0.5..2.0);
                    if rng.random_bool(0.7) {
                        rows.1[s][(i + 1) % d] = rng.random_range(0.5..2.0);
                    }
                }
                if rng.random_bool(0.05) {
                    rows.1[s][i] = rng.random_range(0.5..2.0);
                }
            }
        }
        let ids: Vec<u64> = (0..n as u64).collect();
        let batch = |rows: &[Vec<f32>]| CodeBatch::from_dense(rows, &ids);
        let kept = [batch(&rows.0), batch(&rows.1)];
        let mut acc = CoactivationAccumulator::new(d, d);
        acc.add_batch(&kept[0], &kept[1]);
        let metas = (
            [CodesMeta::topk("a", "0", d as u32, 4)],
            [CodesMeta::topk("b", "0", d as u32, 4)],
        );
        let matched = match_rows(&[vec![acc.clone()]], (&metas.0, &metas.1), Some(&kept));
        assert_eq!(matched.len(), d);
        for m in &matched {
            let (i, j) = (m.source_feature as usize, m.target_feature as usize);
            assert_eq!(j, (i + 1) % d, "the planted partner");
            let fires = |side: &[Vec<f32>], f: usize, s: usize| side[s][f] != 0.0;
            let both = (0..n)
                .filter(|&s| fires(&rows.0, i, s) && fires(&rows.1, j, s))
                .count();
            let either = (0..n)
                .filter(|&s| fires(&rows.0, i, s) || fires(&rows.1, j, s))
                .count();
            let expected = both as f64 / either as f64;
            assert!(
                (m.jaccard.unwrap() - expected).abs() < 1e-12,
                "{m:?} vs {expected}"
            );
            assert!(expected > 0.4, "{expected}");
        }
        // Without the codes, no rate.
        let bare = match_rows(&[vec![acc]], (&metas.0, &metas.1), None);
        assert!(bare.iter().all(|m| m.jaccard.is_none()));
    }
}
