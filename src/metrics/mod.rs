//! Metrics over SAE features (docs/DESIGN.md, section 1): MPPC per feature, wMPPC per layer pair and over
//! all layers, Comparative Sharedness, and the null baselines that make a number readable.
//!
//! - [`mppc()`]: exact MPPC of every source feature with its best match, from an accumulator.
//! - [`wmppc()`] and [`mean_over_layers`]: the weighted averages.
//! - [`compare()`]: code files in, `mppc` and `wmppc` rows out, with floor and ceiling.
//! - [`sharedness()`]: the Comparative Sharedness ranking from `mppc` rows.
//! - [`tables`]: the Parquet tables of FORMATS.md, "Comparison tables".
//! - [`MetricViews`]: wMPPC and sharedness maintained by differential dataflow as MPPC rows
//!   and queries arrive.
//! - [`WmppcMatrix`]: the last-layer wMPPC matrix, printed by `run` and drawn by the report.
//! - [`layer_geometry`]: the decoders' side: seeds matched by decoder cosine, and the SVCCA of
//!   shared features' decoder rows against shuffled pairings (`decoders` table).
//! - [`bench_stats()`]: sparse exact MPPC against the reference's dense float32 way.

mod assignment;
mod baselines;
mod bench;
pub(crate) mod bench_codes;
mod bench_dense;
mod bench_matching;
mod bootstrap;
mod compare;
mod decoder_geometry;
mod decoders_table;
mod matches_table;
mod matrix;
mod mppc;
mod one_to_one;
mod pair_acc;
mod rows;
mod sharedness;
mod state;
pub mod tables;
mod views;

use crate::file_error::FileError;

pub use baselines::ceiling_for;
pub(crate) use baselines::{spread, target_permutations};
pub use bench::{bench_stats, BenchOptions, BenchReport};
pub use bench_codes::Popularity;
pub use bench_dense::{bench_dense, median, DenseBenchOptions, DenseBenchReport};
pub use bench_matching::{bench_matching, MatchingBenchOptions, MatchingBenchReport};
pub use bootstrap::CANDIDATES as BOOTSTRAP_CANDIDATES;
pub use compare::{
    accumulate_files, compare, compare_accumulated, Backend, CompareOptions, Comparison,
};
pub use decoder_geometry::{
    cosine_matches, layer_geometry, paired_svcca, GeometryOptions, LayerGeometry, PairedSvcca,
    COSINE_EDGE_FLOOR, MIN_PAIRS, PAIRED_AT,
};
pub use decoders_table::{
    merge_decoders, read_decoders, write_decoders, DecoderRow, DECODERS_FILE,
};
pub use matches_table::{
    merge_matches, read_matches, summarize_matches, write_matches, MatchRow, MatchSummary,
    MATCHES_FILE,
};
pub use matrix::{normalised, MatrixCell, WmppcMatrix};
pub use mppc::{best_over_layers, mppc, FeatureMatch};
pub use one_to_one::{one_to_one, OneToOne, SHARED_AT};
pub use rows::{Aggregation, FeatureRow, MppcRow, WmppcRow, ALL_LAYERS};
pub use sharedness::{sharedness, SharednessQuery, SharednessRow};
pub use views::{Changed, Changes, MetricViews, WmppcKey};

/// What can go wrong computing or writing metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Gathering statistics failed.
    #[error(transparent)]
    Stats(#[from] crate::stats::StatsError),
    /// Reading codes failed.
    #[error(transparent)]
    Codes(#[from] crate::codes::CodesError),
    /// An I/O, Parquet, Arrow or schema failure on a file (a table, the compare state).
    #[error(transparent)]
    File(#[from] FileError),
    /// The inputs do not fit together (files of mixed encoders, unknown models, ...).
    #[error("{0}")]
    BadInput(String),
    /// libtorch failed (a benchmark's products).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A benchmark could not set itself up (its temporary folder).
    #[error("benchmark: {0}")]
    Bench(String),
}

/// `wMPPC = sum_i S_i MPPC_i / sum_i S_i`; `None` when every weight is 0 (all features dead or
/// constant), where the average is undefined.
pub fn wmppc<'a>(matches: impl IntoIterator<Item = &'a FeatureMatch>) -> Option<f64> {
    let (mut num, mut den) = (0.0, 0.0);
    for m in matches {
        num += m.weight * m.rho;
        den += m.weight;
    }
    (den != 0.0).then(|| num / den)
}

/// The reference's all-layers aggregation: per-layer values averaged with weights = number of
/// features of each layer. Layers whose value is undefined are left out.
pub fn mean_over_layers(values: &[(Option<f64>, usize)]) -> Option<f64> {
    let (mut num, mut den) = (0.0, 0.0);
    for &(value, features) in values {
        if let Some(v) = value {
            num += v * features as f64;
            den += features as f64;
        }
    }
    (den != 0.0).then(|| num / den)
}
