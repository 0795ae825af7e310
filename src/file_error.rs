//! The failures every file format of saeshare shares (codes, dataset shards, activations, metric
//! tables, accumulator states): an I/O error, Parquet or Arrow failing on a file, a file without
//! the columns or keys its format needs. Each names the file.
//!
//! Each format's own error enum holds the failures particular to it and wraps this one as
//! `File(#[from] FileError)`, transparently: the message is this one's, so `?` turns a
//! [`FileError`] into any of them.

use std::path::PathBuf;

/// A failure on a file of one of saeshare's formats, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// An I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder being read or written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Parquet library failed on a codes file or a dataset shard, reading or writing: the
    /// message says the file is not readable Parquet (what a user meets most), whichever it was.
    #[error("{file}: not a readable Parquet file: {source}")]
    NotParquet {
        /// The file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// The Parquet library failed on a file (activations, metric tables).
    #[error("{file}: {source}")]
    Parquet {
        /// The file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Arrow failed on the file's data.
    #[error("{file}: {source}")]
    Arrow {
        /// The file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// A column or metadata key is missing or has the wrong type, or the file is not of the
    /// format at all.
    #[error("{file}: {problem}")]
    WrongSchema {
        /// The file.
        file: PathBuf,
        /// What is wrong, naming the column or key.
        problem: String,
    },
    /// One column is missing, has the wrong type or holds what it must not.
    #[error("{file}: column `{column}`: {problem}")]
    WrongColumn {
        /// The file.
        file: PathBuf,
        /// The column.
        column: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl FileError {
    /// An I/O error on `path`, for `map_err`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FileError {
        let path = path.into();
        move |source| FileError::Io { path, source }
    }

    /// An I/O error on `path`, for `map_err`, where a missing file or folder is the format's
    /// own error `missing(path)` (each format words it itself).
    pub(crate) fn io_or_missing<E: From<FileError>>(
        path: impl Into<PathBuf>,
        missing: impl FnOnce(PathBuf) -> E,
    ) -> impl FnOnce(std::io::Error) -> E {
        let path = path.into();
        move |source| match source.kind() {
            std::io::ErrorKind::NotFound => missing(path),
            _ => FileError::Io { path, source }.into(),
        }
    }

    /// A Parquet failure on a codes file or dataset shard ([`FileError::NotParquet`]).
    pub(crate) fn not_parquet(
        file: impl Into<PathBuf>,
    ) -> impl FnOnce(parquet::errors::ParquetError) -> FileError {
        let file = file.into();
        move |source| FileError::NotParquet { file, source }
    }

    /// A Parquet failure on `file` ([`FileError::Parquet`]).
    pub(crate) fn parquet(
        file: impl Into<PathBuf>,
    ) -> impl FnOnce(parquet::errors::ParquetError) -> FileError {
        let file = file.into();
        move |source| FileError::Parquet { file, source }
    }

    /// An Arrow failure on `file`.
    pub(crate) fn arrow(
        file: impl Into<PathBuf>,
    ) -> impl FnOnce(arrow::error::ArrowError) -> FileError {
        let file = file.into();
        move |source| FileError::Arrow { file, source }
    }

    /// `file` lacks what its format needs.
    pub(crate) fn wrong_schema(file: impl Into<PathBuf>, problem: impl Into<String>) -> FileError {
        FileError::WrongSchema {
            file: file.into(),
            problem: problem.into(),
        }
    }

    /// The column `column` of `file` is not what its format needs.
    pub(crate) fn wrong_column(
        file: impl Into<PathBuf>,
        column: impl Into<String>,
        problem: impl Into<String>,
    ) -> FileError {
        FileError::WrongColumn {
            file: file.into(),
            column: column.into(),
            problem: problem.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file() {
        let io = FileError::io("a/b.parquet")(std::io::Error::other("disk on fire"));
        assert_eq!(io.to_string(), "a/b.parquet: disk on fire");
        let schema = FileError::wrong_schema("t.parquet", "column `x` is missing");
        assert_eq!(schema.to_string(), "t.parquet: column `x` is missing");
        let column = FileError::wrong_column("s.parquet", "caption", "the column is missing");
        assert_eq!(
            column.to_string(),
            "s.parquet: column `caption`: the column is missing"
        );
        let parquet = || parquet::errors::ParquetError::General("bad magic".into());
        assert_eq!(
            FileError::not_parquet("c.parquet")(parquet()).to_string(),
            "c.parquet: not a readable Parquet file: Parquet error: bad magic"
        );
        assert_eq!(
            FileError::parquet("m.parquet")(parquet()).to_string(),
            "m.parquet: Parquet error: bad magic"
        );
    }

    #[test]
    fn a_missing_file_can_be_the_formats_own_error() {
        #[derive(Debug)]
        enum E {
            Missing(PathBuf),
            File(FileError),
        }
        impl From<FileError> for E {
            fn from(e: FileError) -> E {
                E::File(e)
            }
        }
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = FileError::io_or_missing("x", E::Missing)(missing);
        assert!(matches!(e, E::Missing(p) if p.as_os_str() == "x"));
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = FileError::io_or_missing("x", E::Missing)(denied);
        assert!(matches!(e, E::File(FileError::Io { .. })));
    }
}
