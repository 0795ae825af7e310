//! What features' decoder directions say beside their activations (docs/DESIGN.md, "Decoder
//! geometry"):
//!
//! - [`cosine_matches`]: two SAEs of one layer (two seeds) matched one to one by the cosine of
//!   their decoder rows, the stability measure of Paulo & Belrose (2025), beside the matching by
//!   activation correlation of [`super::one_to_one`];
//! - [`paired_svcca`]: for features two models share (matched one to one at `rho >=`
//!   [`PAIRED_AT`]), SVCCA between their decoder rows, row `i` of one model's with row `i` of the
//!   other's, against the same SVCCA with the pairing shuffled (Lan et al. 2024): whether the
//!   shared features sit in the two spaces the same way, with its p-value.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use super::assignment::{max_weight_matching, Edge};
use crate::similarity::{linear::svcca_of_rows, SimilarityOptions};

/// Decoder pairs of cosine below this are not candidates of the cosine matching: two random
/// directions of a 768-wide space have a cosine of standard deviation 0.036, and a pair this
/// weak adds little to the total and counts at none of the thresholds reported (0.5 and up).
/// Without the floor, every positive cosine, half of `d_A x d_B`, would be an edge.
pub const COSINE_EDGE_FLOOR: f64 = 0.1;

/// Matches of activation correlation at least this enter [`paired_svcca`], Lan et al.'s filter
/// of the pairs that are the same concept.
pub const PAIRED_AT: f64 = 0.5;

/// Pairs a kept direction of the paired SVCCA, at least: with as many directions as rows every
/// canonical correlation is 1, and with a tenth as many the correlations of unrelated rows are
/// near 0. Below this many pairs the SVCCA is left undefined. It also bounds the cost: each
/// shuffle is an SVD of `r x r` with `r <= pairs / 10`.
pub const MIN_PAIRS: usize = 10;

/// Rows of the cosine product taken at once (`chunk x d_B` floats).
const CHUNK: i64 = 1024;

/// The one-to-one matching of `a`'s decoder rows (`d_A x d_in`) with `b`'s (`d_B x d_in`, the
/// same space) of largest total cosine, over the pairs of cosine at least
/// [`COSINE_EDGE_FLOOR`]: `(a's row, b's row, cosine)` by `a`'s row.
pub fn cosine_matches(a: &Tensor, b: &Tensor) -> Vec<Edge> {
    let unit = |d: &Tensor| {
        let d = d.to_kind(Kind::Float);
        let norm = d.norm_scalaropt_dim(2, [1i64].as_slice(), true);
        d / norm.clamp_min(1e-12)
    };
    let (a, b) = (unit(a), unit(b));
    let (d_a, d_b) = (a.size()[0], b.size()[0]);
    let bt = b.tr();
    let mut edges = Vec::new();
    for start in (0..d_a).step_by(CHUNK as usize) {
        let cos = a.narrow(0, start, CHUNK.min(d_a - start)).mm(&bt);
        let kept = cos.ge(COSINE_EDGE_FLOOR);
        // `nonzero` and `masked_select` both walk the chunk in row-major order.
        let at = Vec::<i64>::try_from(kept.nonzero().flatten(0, -1)).unwrap_or_default();
        let values = Vec::<f32>::try_from(cos.masked_select(&kept)).unwrap_or_default();
        for (ij, v) in at.chunks_exact(2).zip(values) {
            edges.push(((start + ij[0]) as u32, ij[1] as u32, v as f64));
        }
    }
    (max_weight_matching(d_a as usize, d_b as usize, &edges).into_iter())
        .enumerate()
        .filter_map(|(i, m)| m.map(|(j, cos)| (i as u32, j, cos)))
        .collect()
}

/// SVCCA of the decoder rows of paired features, and where it stands against shuffled pairings.
#[derive(Clone, Debug, PartialEq)]
pub struct PairedSvcca {
    /// Pairs compared.
    pub pairs: usize,
    /// SVCCA with the true pairing.
    pub value: f64,
    /// Mean and standard deviation of SVCCA over the shuffled pairings (`None` without any).
    pub null_mean: Option<f64>,
    pub null_sd: Option<f64>,
    /// `(1 + #{shuffled >= value}) / (1 + shuffles)`, the permutation test's p-value.
    pub p_value: Option<f64>,
    /// Shuffles made.
    pub permutations: usize,
}

/// SVCCA between the decoder rows `a[s]` and `b[t]` of the pairs `(s, t)` of `pairs`, and
/// against `permutations` seeded shuffles of the pairing; `options` gives SVCCA's directions
/// (the study's `[similarity]` settings), at most one a side per [`MIN_PAIRS`] pairs. `None`
/// below [`MIN_PAIRS`] pairs or where a side's rows have no variance.
pub fn paired_svcca(
    a: &Tensor,
    b: &Tensor,
    pairs: &[(u32, u32)],
    options: &SimilarityOptions,
    permutations: usize,
    seed: u64,
) -> Option<PairedSvcca> {
    if pairs.len() < MIN_PAIRS {
        return None;
    }
    let rows = |d: &Tensor, at: Vec<i64>| d.index_select(0, &Tensor::from_slice(&at));
    let x = rows(a, pairs.iter().map(|p| p.0 as i64).collect());
    let y = rows(b, pairs.iter().map(|p| p.1 as i64).collect());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let orders: Vec<Tensor> = (0..permutations)
        .map(|_| {
            let mut order: Vec<i64> = (0..pairs.len() as i64).collect();
            order.shuffle(&mut rng);
            Tensor::from_slice(&order)
        })
        .collect();
    let (value, null) = svcca_of_rows(&x, &y, options, pairs.len() / MIN_PAIRS, &orders)?;
    let (null_mean, null_sd) = match null.len() {
        0 => (None, None),
        n => {
            let mean = null.iter().sum::<f64>() / n as f64;
            let var = null.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            (Some(mean), Some(var.sqrt()))
        }
    };
    let above = null.iter().filter(|&&v| v >= value).count();
    Some(PairedSvcca {
        pairs: pairs.len(),
        value,
        null_mean,
        null_sd,
        p_value: (!null.is_empty()).then(|| (1 + above) as f64 / (1 + null.len()) as f64),
        permutations: null.len(),
    })
}

/// How a comparison reads its decoders: shuffles of the paired SVCCA, their seed, and SVCCA's
/// directions.
#[derive(Clone, Debug)]
pub struct GeometryOptions {
    pub permutations: usize,
    pub seed: u64,
    pub svcca: SimilarityOptions,
}

/// The decoder geometry of one layer pair.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerGeometry {
    /// Features of the source SAE.
    pub features: u32,
    /// Between two seeds of one layer's SAE: the features matched one to one by decoder cosine,
    /// and of them those at cosine `>=` each of [`super::SHARED_AT`].
    pub cosine: Option<(u32, [u32; 3])>,
    /// Matches of activation correlation `>=` [`PAIRED_AT`].
    pub paired: u32,
    pub svcca: Option<PairedSvcca>,
}

/// The geometry of decoders `a` (source) and `b` (target) of one layer pair, given its
/// one-to-one matches by activation correlation `(source, target, rho)`; `same_sae` for two
/// seeds of one layer's SAE, whose decoders share a space and are matched by cosine too.
pub fn layer_geometry(
    a: &Tensor,
    b: &Tensor,
    matches: &[(u32, u32, f64)],
    same_sae: bool,
    options: &GeometryOptions,
) -> LayerGeometry {
    let cosine = same_sae.then(|| {
        let matched = cosine_matches(a, b);
        let at = super::SHARED_AT.map(|t| matched.iter().filter(|m| m.2 >= t).count() as u32);
        (matched.len() as u32, at)
    });
    let paired: Vec<(u32, u32)> = (matches.iter())
        .filter(|m| m.2 >= PAIRED_AT)
        .map(|m| (m.0, m.1))
        .collect();
    let svcca = paired_svcca(
        a,
        b,
        &paired,
        &options.svcca,
        options.permutations,
        options.seed,
    );
    LayerGeometry {
        features: a.size()[0] as u32,
        cosine,
        paired: paired.len() as u32,
        svcca,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(rows: i64, cols: i64, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn([rows, cols], (Kind::Float, tch::Device::Cpu))
    }

    #[test]
    fn a_shuffled_and_perturbed_decoder_is_matched_back_row_for_row() {
        let a = random(300, 64, 1);
        let order: Vec<i64> = (0..300).map(|i| (i * 37 + 11) % 300).collect();
        let b = a.index_select(0, &Tensor::from_slice(&order)) + random(300, 64, 2) * 0.2;
        let matches = cosine_matches(&a, &b);
        assert_eq!(matches.len(), 300);
        for (i, j, cos) in matches {
            assert_eq!(order[j as usize], i as i64, "row {i} matched to {j}");
            assert!(cos > 0.9 && cos <= 1.0 + 1e-6, "{cos}");
        }
        // Unrelated directions: nearly none reaches 0.5.
        let strong = (cosine_matches(&a, &random(300, 64, 3)).iter())
            .filter(|m| m.2 >= 0.5)
            .count();
        assert!(strong < 10, "{strong} random rows matched at 0.5");
    }

    #[test]
    fn paired_rows_related_by_a_map_beat_every_shuffle_and_unrelated_ones_do_not() {
        let (a, map) = (random(200, 24, 4), random(24, 16, 5));
        let b = a.mm(&map) + random(200, 16, 6) * 0.1;
        let pairs: Vec<(u32, u32)> = (0..200).map(|i| (i, i)).collect();
        let options = SimilarityOptions::default();
        let related = paired_svcca(&a, &b, &pairs, &options, 50, 7).unwrap();
        assert_eq!((related.pairs, related.permutations), (200, 50));
        assert!(related.value > 0.9, "{related:?}");
        assert!(
            related.null_mean.unwrap() < related.value - 0.3,
            "{related:?}"
        );
        assert_eq!(related.p_value, Some(1.0 / 51.0));

        let unrelated = paired_svcca(&a, &random(200, 16, 8), &pairs, &options, 50, 7).unwrap();
        assert!(unrelated.p_value.unwrap() > 0.05, "{unrelated:?}");
        // The same seed, the same shuffles.
        assert_eq!(paired_svcca(&a, &b, &pairs, &options, 50, 7), Some(related));
        assert_eq!(paired_svcca(&a, &b, &pairs[..9], &options, 50, 7), None);
    }
}
