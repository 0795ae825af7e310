//! Statistics of sparse codes: per-feature moments and co-activation sums between two code
//! streams aligned by sample id. Everything the metrics need, and nothing that grows with the
//! number of samples.
//!
//! - [`Moments`]: count, sum and sum of squares per feature (f64).
//! - [`CoactivationAccumulator`]: moments of both streams and the cross sums, exact from sparse
//!   codes in `k_A * k_B` updates per sample, dense or sparse within a memory budget and filled
//!   on several threads ([`AccumulatorOptions`]); merges associatively, saves and loads (zstd).
//! - [`DenseAccumulator`]: the same sums for dense codes, by blocked matmuls through libtorch.
//! - [`SavedSums`]: accumulators saved in `state-N/` folders, for a later run to add to (the
//!   pipeline's pair states, `compare --state`).
//! - [`align()`]: joins code files by sample id; a sample missing from a stream is an error or a
//!   counted drop ([`MissingSamples`]).

mod align;
mod coactivation;
mod dense;
mod fill;
#[cfg(test)]
mod fill_tests;
mod layout;
mod moments;
mod saved_sums;
mod serialize;
mod sparse_rows;

use std::path::PathBuf;

use crate::file_error::FileError;

pub use align::{align, AlignReport, MissingSamples};
pub use coactivation::CoactivationAccumulator;
pub use dense::DenseAccumulator;
pub use layout::{AccumulatorOptions, Layout, DEFAULT_MEMORY_MIB};
pub use moments::Moments;
pub use saved_sums::{SavedSums, SumsSide, SumsSides, STATE_FILE};

/// What can go wrong gathering statistics.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// Reading codes failed.
    #[error(transparent)]
    Codes(#[from] crate::codes::CodesError),
    /// A sample is in one stream and not in another, and the caller did not ask to drop it.
    #[error("sample_id {sample_id} is in {present_in} but not in {missing_from}; every compared file must hold the same samples (or pass --drop-missing to leave such samples out, counted)")]
    MissingSample {
        /// The sample.
        sample_id: u64,
        /// A file that holds it.
        present_in: PathBuf,
        /// A file that lacks it.
        missing_from: PathBuf,
    },
    /// Accumulators or blocks of different feature counts were combined.
    #[error("{0}")]
    ShapeMismatch(String),
    /// An I/O error on a state file.
    #[error(transparent)]
    File(#[from] FileError),
    /// A state file is not what [`CoactivationAccumulator::save`] writes.
    #[error("{path}: not a valid accumulator file: {problem}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// libtorch failed (dense backend).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
