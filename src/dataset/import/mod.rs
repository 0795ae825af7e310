//! Importers: each turns some source of image-caption pairs into a dataset folder.
//!
//! They share [`ImportSink`], which owns the policy for bad rows: a row without a caption or
//! without an image file is skipped, counted and logged; an image that does not decode is kept
//! (the bytes are the user's data) but counted and logged with its sample id, and the encoders
//! skip it later. The summary says both. Images are decoded on a pool of threads beside the
//! writer ([`verify::ImageVerifier`]), so checking every image costs little wall time.

mod coco;
mod emoji;
mod folder;
mod hf;
mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

pub use coco::{import_coco, CocoImport, CocoRows};
pub use emoji::{build_emoji, EmojiBuild, EMOJI_PACKAGES};
pub use folder::{import_folder, FolderImport};
pub use hf::{import_hf, HfImport};

use super::{DatasetWriter, EncodedImage, NewRow, Result, WriterOptions};

/// Where and how an importer writes.
#[derive(Clone, Debug)]
pub struct ImportTarget {
    pub out: PathBuf,
    pub shard_rows: usize,
    /// Add to the dataset already in `out` instead of requiring an empty folder.
    pub append: bool,
}

/// What an import did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportReport {
    pub out: PathBuf,
    pub rows: u64,
    pub shards: usize,
    pub first_sample_id: u64,
    /// Rows written whose image does not decode; encoders will skip them.
    pub unreadable_images: u64,
    /// Inputs not written, counted by reason.
    pub skipped: BTreeMap<String, u64>,
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "wrote {} rows in {} shard(s) to {} (sample ids from {})",
            self.rows,
            self.shards,
            self.out.display(),
            self.first_sample_id
        )?;
        writeln!(f, "unreadable images: {}", self.unreadable_images)?;
        for (reason, count) in &self.skipped {
            writeln!(f, "skipped {count}: {reason}")?;
        }
        Ok(())
    }
}

/// The writing end every importer shares.
pub(crate) struct ImportSink {
    writer: DatasetWriter,
    verifier: verify::ImageVerifier,
    report: ImportReport,
    bar: indicatif::ProgressBar,
}

impl ImportSink {
    pub(crate) fn open(
        target: &ImportTarget,
        source: String,
        extra_columns: Vec<String>,
        expected_rows: Option<u64>,
    ) -> Result<ImportSink> {
        let options =
            WriterOptions::new(target.shard_rows, source).with_extra_columns(extra_columns);
        let writer = if target.append {
            DatasetWriter::append(&target.out, options)?
        } else {
            DatasetWriter::create(&target.out, options)?
        };
        Ok(ImportSink {
            writer,
            verifier: verify::ImageVerifier::start(),
            report: ImportReport {
                out: target.out.clone(),
                ..ImportReport::default()
            },
            bar: crate::progress::bar(expected_rows, "importing", "rows"),
        })
    }

    /// Counts and logs an input that will not become a row. `origin` says where it is.
    pub(crate) fn skip(&mut self, origin: &str, reason: &str) {
        tracing::warn!("{origin}: {reason}; skipped");
        *self.report.skipped.entry(reason.to_string()).or_default() += 1;
        self.bar.inc(1);
    }

    /// Writes a row, or skips it when its caption is empty. `origin` names the input for logs.
    pub(crate) fn push(
        &mut self,
        origin: &str,
        image: Vec<u8>,
        caption: &str,
        extra: Vec<Option<String>>,
    ) -> Result<()> {
        let caption = caption.trim();
        if caption.is_empty() {
            self.skip(origin, "empty caption");
            return Ok(());
        }
        let bytes = bytes::Bytes::from(image);
        let sample_id = self.writer.push(NewRow {
            image: bytes.to_vec(),
            caption: caption.to_string(),
            extra,
        })?;
        self.verifier.check(sample_id, origin, EncodedImage(bytes));
        self.bar.inc(1);
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<ImportReport> {
        self.bar.finish_and_clear();
        self.report.unreadable_images = self.verifier.finish();
        if self.writer.rows() == 0 {
            // Dropped uncommitted: a new dataset's staging folder goes, an append adds nothing.
            let skipped = (self.report.skipped.iter())
                .map(|(reason, count)| format!("{count} {reason}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(super::DatasetError::NothingImported {
                out: self.report.out.clone(),
                skipped: if skipped.is_empty() {
                    "no input".to_string()
                } else {
                    skipped
                },
            });
        }
        let written = self.writer.finish()?;
        self.report.rows = written.rows;
        self.report.shards = written.shards.len();
        self.report.first_sample_id = written.first_sample_id;
        tracing::info!(
            rows = self.report.rows,
            shards = self.report.shards,
            unreadable = self.report.unreadable_images,
            "import finished into {}",
            self.report.out.display()
        );
        Ok(self.report)
    }
}

/// Reads a whole input file, naming it when it cannot be read.
pub(crate) fn read_input(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(super::DatasetError::io(path))
}
