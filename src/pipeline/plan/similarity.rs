//! What the representation measures add to a plan: which pairs and encoders have them, where
//! the read-out rows go, and what they cost.

use std::path::PathBuf;

use super::cost::Rates;
use super::{shard_file_name, Plan};
use crate::ids::{EncoderId, PairId, ShardId};

impl Plan {
    /// The read-out rows of an encoder on one shard (every layer it reads).
    pub fn readouts_file(&self, encoder: EncoderId, shard: ShardId) -> PathBuf {
        let e = self.encoder(encoder);
        (self.layout()).readouts_file(&e.name, &shard_file_name(self.shard(shard)))
    }

    /// Whether a pair sums the representation measures: a study's pairs, not the ceiling's (an
    /// SAE seed against another of the same rows), and not a pair whose mirror holds its rows
    /// ([`Plan::similarity_mirror`]).
    pub fn similarity_of(&self, pair: PairId) -> bool {
        self.measures_pair(pair) && !self.mirrored_elsewhere(pair)
    }

    /// The pair whose representation measures `pair`'s table holds too: its mirror (the same
    /// encoders and layers with the sides swapped), where the study compares it and `pair`'s
    /// source is named first. The measures are the same computation either way round, so one
    /// pass over the samples gives both.
    pub fn similarity_mirror(&self, pair: PairId) -> Option<PairId> {
        let p = self.pair(pair);
        let first = self.encoder(p.source).name < self.encoder(p.target).name;
        (first && self.measures_pair(pair))
            .then(|| self.mirror_of(pair))
            .flatten()
    }

    fn measures_pair(&self, pair: PairId) -> bool {
        self.study.similarity.enabled && self.pair(pair).ceiling_of.is_none()
    }

    /// Whether `pair`'s mirror is compared and holds `pair`'s rows.
    fn mirrored_elsewhere(&self, pair: PairId) -> bool {
        (self.mirror_of(pair)).is_some_and(|m| self.similarity_mirror(m) == Some(pair))
    }

    fn mirror_of(&self, pair: PairId) -> Option<PairId> {
        let p = self.pair(pair);
        self.pair_ids().find(|&q| {
            let q = self.pair(q);
            q.ceiling_of.is_none()
                && (q.source, q.target) == (p.target, p.source)
                && (&q.source_layers, &q.target_layers) == (&p.target_layers, &p.source_layers)
        })
    }

    /// Whether the compare pass keeps an encoder's read-out rows beside its codes: the named
    /// encoders of a study with the representation measures on.
    pub fn keeps_readouts(&self, encoder: EncoderId) -> bool {
        self.study.similarity.enabled && self.encoder(encoder).twin_of.is_none()
    }
}

/// The representation measures' part of the compare pass.
pub(super) struct SimilarityCost {
    /// The float64 moments of every pair, summed once and again for each floor permutation, at
    /// the calibrated rate, and each layer pair's decompositions and kNN family once a run, as
    /// calibrated at one width and scaled by the widths to the power 3 (the decompositions'
    /// order); `None` without rates.
    pub seconds: Option<f64>,
    /// The memory of the largest pair's tables: every row of its layers, and a permuted copy
    /// of the target's.
    pub memory: u64,
    /// The moments in the pairs' states (fitted and held-out parts, float64).
    pub sums_bytes: u64,
}

pub(super) fn cost(plan: &Plan, samples: u64, rates: &Rates) -> SimilarityCost {
    let (mut flops, mut memory, mut sums_bytes) = (0f64, 0u64, 0u64);
    let compare = rates.compare.as_ref();
    let pair_seconds = compare.and_then(|c| c.similarity_pair_seconds);
    let width = compare.and_then(|c| c.similarity_width).unwrap_or(1) as f64;
    let mut decompositions = Some(0f64);
    for p in plan.pair_ids().filter(|&p| plan.similarity_of(p)) {
        let pair = plan.pair(p);
        let (s, t) = (plan.encoder(pair.source), plan.encoder(pair.target));
        let a: Vec<f64> = pair
            .source_layers
            .iter()
            .map(|&l| s.layer_width(l) as f64)
            .collect();
        let b: Vec<f64> = pair
            .target_layers
            .iter()
            .map(|&l| t.layer_width(l) as f64)
            .collect();
        let squares = |w: &[f64]| w.iter().map(|d| d * d).sum::<f64>();
        let cells = squares(&a) + squares(&b) + a.iter().sum::<f64>() * b.iter().sum::<f64>();
        let sums = 1 + plan.study.baselines.floor_permutations;
        flops += 2.0 * sums as f64 * samples as f64 * cells;
        for d_a in &a {
            for d_b in &b {
                let scale = (d_a * d_b / (width * width)).powf(1.5);
                decompositions = (decompositions.zip(pair_seconds))
                    .map(|(total, t)| total + t * scale * sums as f64);
            }
        }
        sums_bytes += (16.0 * cells) as u64;
        let row = (a.iter().sum::<f64>() + 2.0 * b.iter().sum::<f64>()) as u64 * 4;
        memory = memory.max(samples * row);
    }
    let moments = compare.and_then(|c| c.similarity_flops).map(|r| flops / r);
    SimilarityCost {
        seconds: if flops == 0.0 {
            Some(0.0)
        } else {
            moments.zip(decompositions).map(|(m, d)| m + d)
        },
        memory,
        sums_bytes,
    }
}
