//! Codes: what an SAE produces on each sample, stored as one Parquet row per active latent
//! (FORMATS.md, "Sparse codes"), or, for codes without TopK where most latents are active, one
//! row per sample ("Dense codes"; [`CodesLayout`]). Both read back as the same [`CodeBatch`]es.
//!
//! - [`CodesWriter`]: writes one file for one (encoder, layer, SAE), samples in increasing
//!   `sample_id` order, atomically (temporary file, then rename).
//! - [`CodesReader`]: streams a file back as [`CodeBatch`]es of at most a chosen number of
//!   samples, checking order, feature range and values as it goes.
//!
//! In the sparse layout, a sample whose code has no active latent is stored as one row with a null `feature` and a
//! null `value`: alignment by `sample_id` and the sample count `N` of every statistic need to know
//! the sample exists, and an absent sample cannot say so.

mod batch;
mod dense_rows;
mod layout;
mod reader;
mod writer;

use std::path::PathBuf;

use arrow::datatypes::DataType;

use crate::file_error::FileError;

pub use batch::{CodeBatch, SparseCode};
pub use layout::{CodesLayout, DenseValues};
pub use reader::CodesReader;
pub use writer::{CodesSummary, CodesWriter};

/// The newest codes format version, written into a file's key-value metadata: 1 for files of
/// one row per active latent, 2 for files of one row per sample ([`CodesLayout`]).
pub const FORMAT_VERSION: u32 = 2;

/// Column names and key-value metadata keys of the format.
pub mod keys {
    /// Column: the dataset row the code belongs to.
    pub const SAMPLE_ID: &str = "sample_id";
    /// Column: the index of the active latent, `0..d_sae`.
    pub const FEATURE: &str = "feature";
    /// Column: the latent's value (after TopK), never zero.
    pub const VALUE: &str = "value";
    /// Column of a dense file: the sample's `d_sae` values, zeros included.
    pub const VALUES: &str = "values";
    /// Metadata: `dense` for a file of one row per sample; absent for one row per active latent.
    pub const LAYOUT: &str = "saeshare.codes.layout";
    /// Metadata: [`super::FORMAT_VERSION`].
    pub const VERSION: &str = "saeshare.codes.version";
    /// Metadata: the number of features of the SAE.
    pub const D_SAE: &str = "saeshare.codes.d_sae";
    /// Metadata: the encoder's name.
    pub const ENCODER: &str = "saeshare.codes.encoder";
    /// Metadata: the layer's name.
    pub const LAYER: &str = "saeshare.codes.layer";
    /// Metadata: `k` of a TopK SAE; absent for other SAEs.
    pub const K: &str = "saeshare.codes.k";
    /// Metadata: which SAE (checkpoint, seed) produced the codes; optional.
    pub const SAE: &str = "saeshare.codes.sae";
    /// Metadata: the number of samples in the file, written when the file is finished.
    pub const SAMPLES: &str = "saeshare.codes.samples";
}

/// The columns of a codes file, in the order the writer writes them: name, type, nullable.
/// `feature` and `value` are null only on the single row of a sample without active latents.
/// Readers accept any integer type where this says an integer, any float type for `value`.
pub(crate) const COLUMNS: [(&str, DataType, bool); 3] = [
    (keys::SAMPLE_ID, DataType::UInt64, false),
    (keys::FEATURE, DataType::UInt32, true),
    (keys::VALUE, DataType::Float32, true),
];

/// What a codes file says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodesMeta {
    /// Number of features of the SAE: every `feature` is below it.
    pub d_sae: u32,
    /// The encoder whose activations were encoded, as named in its package.
    pub encoder: String,
    /// The layer of the encoder.
    pub layer: String,
    /// `k` of a TopK SAE (at most `k` active latents per sample); `None` for dense codes.
    pub k: Option<u32>,
    /// Which SAE produced the codes (checkpoint name, seed), to tell two SAEs of one layer apart.
    pub sae: Option<String>,
}

impl CodesMeta {
    /// Codes of a TopK SAE with `d_sae` features.
    pub fn topk(encoder: impl Into<String>, layer: impl Into<String>, d_sae: u32, k: u32) -> Self {
        CodesMeta {
            d_sae,
            encoder: encoder.into(),
            layer: layer.into(),
            k: Some(k),
            sae: None,
        }
    }

    /// Codes of an SAE without a per-sample limit on active latents (ReLU SAEs).
    pub fn dense(encoder: impl Into<String>, layer: impl Into<String>, d_sae: u32) -> Self {
        CodesMeta {
            k: None,
            ..Self::topk(encoder, layer, d_sae, 0)
        }
    }

    /// The same, naming the SAE that produced the codes.
    pub fn with_sae(mut self, sae: impl Into<String>) -> Self {
        self.sae = Some(sae.into());
        self
    }
}

/// Everything that can go wrong reading or writing codes; each error names the file, and the row
/// or sample where one is to blame.
#[derive(Debug, thiserror::Error)]
pub enum CodesError {
    /// The file does not exist.
    #[error("{path}: no such file")]
    NotFound {
        /// The missing file.
        path: PathBuf,
    },
    /// The writer refuses to replace finished codes.
    #[error("{path}: already exists; codes are never overwritten, remove the file first")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// An I/O, Parquet, Arrow or schema failure on the file.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file was written by a newer saeshare.
    #[error("{file}: codes format version {found} is newer than this saeshare reads (version {FORMAT_VERSION}); upgrade saeshare")]
    UnsupportedVersion {
        /// The file.
        file: PathBuf,
        /// The version it declares.
        found: String,
    },
    /// A row breaks the format (order, range, value).
    #[error("{file}: row {row} (sample_id {sample_id}): {problem}")]
    BadRow {
        /// The file.
        file: PathBuf,
        /// Row number in the file, from 0.
        row: u64,
        /// The row's sample id.
        sample_id: u64,
        /// What is wrong.
        problem: String,
    },
    /// A sample given to the writer breaks the format.
    #[error("{file}: sample_id {sample_id}: {problem}")]
    BadSample {
        /// The file being written.
        file: PathBuf,
        /// The sample.
        sample_id: u64,
        /// What is wrong.
        problem: String,
    },
}

impl CodesError {
    /// An I/O error on `path`, for `map_err`; a missing file is [`CodesError::NotFound`].
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CodesError {
        FileError::io_or_missing(path, |path| CodesError::NotFound { path })
    }
}

/// Results of this module.
pub type Result<T, E = CodesError> = std::result::Result<T, E>;
