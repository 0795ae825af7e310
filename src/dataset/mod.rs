//! Datasets: folders of Parquet shards of `(sample_id, image, caption)` rows.
//!
//! - [`format`]: what a shard holds (FORMATS.md, "Dataset"), checked per file.
//! - [`DatasetWriter`]: writes shards atomically; every importer goes through it.
//! - [`Dataset`] and [`ShardReader`]: open a folder, give each worker its shards, stream rows in
//!   bounded record batches with images left encoded until someone decodes them.
//! - [`import`]: importers from image folders, COCO, Hugging Face Parquet, and the embedded
//!   emoji dataset.
//! - [`inspect()`]: what a folder holds, and how many of its rows cannot be used.

pub mod format;
mod image;
pub mod import;
mod inspect;
mod reader;
mod writer;

use std::path::PathBuf;

use crate::file_error::FileError;

pub use self::image::{decode_image, EncodedImage, UnreadableImage};
pub use inspect::{inspect, Inspection, SampleRow};
pub use reader::{Dataset, Projection, SampleBatch, ShardInfo, ShardReader, SkippedRow};
pub use writer::{DatasetWriter, NewRow, WriteSummary, WriterOptions};

/// Everything that can go wrong reading or writing a dataset. Each error names the file (and the
/// row or column where one is to blame) so the user knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: no such file or folder")]
    NotFound { path: PathBuf },
    #[error("{path}: a file, not a dataset folder; name the folder that holds the shards")]
    NotAFolder { path: PathBuf },
    #[error("{out}: nothing was imported: every input was skipped ({skipped}); the dataset is left as it was")]
    NothingImported { out: PathBuf, skipped: String },
    #[error("{dir}: no Parquet shards (*.parquet) in this folder; make some with `saeshare dataset import-folder`, `import-coco`, `import-hf` or `build-emoji`")]
    Empty { dir: PathBuf },
    #[error("{dir}: already holds shards; choose an empty folder, or pass --append to add rows")]
    NotEmpty { dir: PathBuf },
    #[error("{dir}: {problem}")]
    BadSelection { dir: PathBuf, problem: String },
    /// An I/O, Parquet, Arrow or schema failure on a file (a missing column is
    /// [`FileError::WrongColumn`]).
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{file}: cannot read the rows from row {row} of this shard on ({source}); the file is damaged: restore it, or leave it out of the dataset")]
    Damaged {
        file: PathBuf,
        /// The shard's first row that could not be read (rows before it were).
        row: u64,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{file}: dataset format version {found} is newer than this saeshare reads (version {}); upgrade saeshare", format::FORMAT_VERSION)]
    UnsupportedVersion { file: PathBuf, found: String },
    #[error("sample_id {id} appears twice: in {first} and in {second}; sample ids must be unique across all shards of a dataset")]
    DuplicateSampleId {
        id: u64,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{file}: sample_id {sample_id}: unreadable image: {reason}")]
    UnreadableImage {
        file: PathBuf,
        sample_id: u64,
        reason: String,
    },
    #[error("{file}:{line}: {problem}")]
    BadInput {
        file: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("{0}")]
    Other(String),
}

impl DatasetError {
    /// An I/O error on `path`, for `map_err`; a missing file or folder is
    /// [`DatasetError::NotFound`].
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DatasetError {
        FileError::io_or_missing(path, |path| DatasetError::NotFound { path })
    }
}

pub type Result<T, E = DatasetError> = std::result::Result<T, E>;
