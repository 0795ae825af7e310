//! Representation similarity beside the SAE features: the measures the field reads SAE results
//! against, computed from the very read-out rows whose codes are compared.
//!
//! - [`moments`]: per layer `sum x`, `X^T X` and per layer pair `X^T Y` in float64, mergeable;
//!   from them, exactly, linear CKA, mean CCA, SVCCA, PWCCA, Procrustes and the ridge's
//!   predictivity ([`linear`]).
//! - [`knn`]: a seeded subsample (the same sample ids for every encoder) and on it mutual kNN,
//!   cycle kNN, CKNNA and kernel CKA, as the Platonic Representation Hypothesis computes them.
//! - [`SimilaritySums`] and [`similarity`]: the engine, for the pipeline and the one-shot
//!   `saeshare similarity`; every value with its floor over the seeded permutations of the
//!   samples that give the wMPPC floor; a pair and its mirror in one computation.
//! - [`table`]: `similarity.parquet` (FORMATS.md, "Similarity table").

mod bytes;
mod engine;
pub mod knn;
pub mod linear;
pub mod moments;
mod rows;
pub mod table;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use bytes::VERSION as SUMS_VERSION;
pub use engine::{similarity, sum_sides, tabulate, LayerRows, SideRows, SimilaritySums, TableSpec};
pub use rows::{align_sides, read_side, Aligned};
pub use table::{merge_similarity, read_similarity, write_similarity, SIMILARITY_FILE};

/// A representation similarity measure, by its name in `similarity.parquet`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// Linear CKA (Kornblith et al. 2019), from the moments.
    LinearCka,
    /// Mean of the canonical correlations.
    CcaMean,
    /// SVCCA (Raghu et al. 2017): CCA on the principal directions keeping 99% of the variance.
    Svcca,
    /// Projection-weighted CCA (Morcos et al. 2018).
    Pwcca,
    /// Orthogonal Procrustes distance (Ding et al. 2021): 0 equal up to rotation, 2 at most.
    Procrustes,
    /// Ridge R^2 of the target's read-out predicted from the source's, on held-out samples.
    RidgeR2,
    /// Ridge R^2 of the source's read-out predicted from the target's.
    RidgeR2Reverse,
    /// Mutual k nearest neighbours on the subsample.
    MutualKnn,
    /// Cycle kNN on the subsample.
    CycleKnn,
    /// CKNNA (Huh et al. 2024) on the subsample.
    Cknna,
    /// CKA of the inner-product kernel on the subsample, biased HSIC.
    KernelCka,
    /// The same with the unbiased HSIC (Song et al. 2012).
    KernelCkaUnbiased,
}

impl Measure {
    /// Every measure, in the order tables list them.
    pub const ALL: [Measure; 12] = [
        Measure::LinearCka,
        Measure::CcaMean,
        Measure::Svcca,
        Measure::Pwcca,
        Measure::Procrustes,
        Measure::RidgeR2,
        Measure::RidgeR2Reverse,
        Measure::MutualKnn,
        Measure::CycleKnn,
        Measure::Cknna,
        Measure::KernelCka,
        Measure::KernelCkaUnbiased,
    ];

    /// The name in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Measure::LinearCka => "linear_cka",
            Measure::CcaMean => "cca_mean",
            Measure::Svcca => "svcca",
            Measure::Pwcca => "pwcca",
            Measure::Procrustes => "procrustes",
            Measure::RidgeR2 => "ridge_r2",
            Measure::RidgeR2Reverse => "ridge_r2_reverse",
            Measure::MutualKnn => "mutual_knn",
            Measure::CycleKnn => "cycle_knn",
            Measure::Cknna => "cknna",
            Measure::KernelCka => "kernel_cka",
            Measure::KernelCkaUnbiased => "kernel_cka_unbiased",
        }
    }

    pub fn parse(name: &str) -> Option<Measure> {
        Measure::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether it is computed on the subsample (else from the moments over every sample).
    pub fn on_subsample(self) -> bool {
        matches!(
            self,
            Measure::MutualKnn
                | Measure::CycleKnn
                | Measure::Cknna
                | Measure::KernelCka
                | Measure::KernelCkaUnbiased
        )
    }
}

/// How the measures are computed: the `[similarity]` table of a study, and the one-shot's flags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimilarityOptions {
    /// Whether a study computes them (on by default).
    pub enabled: bool,
    /// Size of the kNN family's subsample.
    pub knn_samples: usize,
    /// Neighbours of the kNN measures.
    pub knn_k: usize,
    /// The subsample's values are clipped to +- this quantile of their absolute values (per
    /// layer); `None` or 1 clips nothing.
    pub clip_quantile: Option<f64>,
    /// Whether the subsample's rows are scaled to unit L2 norm.
    pub normalize: bool,
    /// SVCCA keeps the principal directions holding this share of the variance...
    pub svcca_variance: f64,
    /// ...or this many, when set.
    pub svcca_dims: Option<usize>,
    /// The ridge, relative to the mean variance of the predictor's features.
    pub ridge: f64,
    /// Seed of the subsample and of the held-out samples. The floor's permutations use the
    /// study's (or `--seed`'s), as wMPPC's floor.
    pub seed: u64,
}

impl Default for SimilarityOptions {
    fn default() -> Self {
        SimilarityOptions {
            enabled: true,
            knn_samples: 4096,
            knn_k: 10,
            clip_quantile: Some(0.95),
            normalize: true,
            svcca_variance: 0.99,
            svcca_dims: None,
            ridge: 0.1,
            seed: 0,
        }
    }
}

impl SimilarityOptions {
    /// What is wrong with the options, if anything, in the words of the `[similarity]` keys.
    pub fn problem(&self) -> Option<String> {
        if self.knn_samples < 4 {
            return Some(format!("knn_samples = {}: at least 4", self.knn_samples));
        }
        if self.knn_k == 0 || self.knn_k >= self.knn_samples {
            return Some(format!(
                "knn_k = {}: at least 1 and below knn_samples ({})",
                self.knn_k, self.knn_samples
            ));
        }
        if let Some(q) = self
            .clip_quantile
            .filter(|q| !(0.0..=1.0).contains(q) || *q == 0.0)
        {
            return Some(format!("clip_quantile = {q}: a share in (0, 1]"));
        }
        if !(self.svcca_variance > 0.0 && self.svcca_variance <= 1.0) {
            return Some(format!(
                "svcca_variance = {}: a share in (0, 1]",
                self.svcca_variance
            ));
        }
        if self.svcca_dims == Some(0) {
            return Some("svcca_dims = 0: at least 1".into());
        }
        if !(self.ridge.is_finite() && self.ridge >= 0.0) {
            return Some(format!("ridge = {}: a number >= 0", self.ridge));
        }
        None
    }
}

/// One row of `similarity.parquet`: a measure of a layer pair, with its floor.
#[derive(Clone, Debug, PartialEq)]
pub struct SimilarityRow {
    pub source: String,
    pub target: String,
    pub source_layer: String,
    pub target_layer: String,
    pub measure: Measure,
    /// `None` where the measure is undefined (a constant layer, too few samples).
    pub value: Option<f64>,
    /// Mean over the permutations of the target's samples; `None` without permutations.
    pub floor: Option<f64>,
    /// Sample standard deviation over the permutations (two or more).
    pub floor_std: Option<f64>,
    /// The samples it was computed on: all of them, or the subsample's.
    pub samples: u64,
}

/// A seeded 64-bit hash of a sample id (SplitMix64's finaliser): the same on every machine,
/// for choices that must agree across encoders, shards and runs.
pub(crate) fn sample_hash(seed: u64, id: u64) -> u64 {
    let mut z = id ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
