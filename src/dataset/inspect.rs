//! `saeshare dataset inspect`: what a dataset folder holds, and which rows cannot be used.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::format::{self, VERSION_KEY};
use super::{Dataset, Projection, Result};

/// The summary of a dataset folder.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub dir: PathBuf,
    pub shards: usize,
    pub rows: u64,
    pub bytes_on_disk: u64,
    /// Column name and Arrow type, from the first shard.
    pub schema: Vec<(String, String)>,
    pub format_version: String,
    /// Rows that cannot be used: no caption, no image, or an image that does not decode.
    pub unreadable_rows: u64,
    /// The same, counted by reason.
    pub unreadable_by_reason: BTreeMap<String, u64>,
    /// The first few unusable rows, each with file, row and sample id.
    pub unreadable_examples: Vec<String>,
    pub samples: Vec<SampleRow>,
}

/// One row shown as an example.
#[derive(Clone, Debug, Serialize)]
pub struct SampleRow {
    pub sample_id: u64,
    pub caption: String,
    /// Format and size of the image, e.g. `Png 64x64, 4.1 KiB`.
    pub image: String,
}

const EXAMPLES: usize = 10;

/// Reads every row of the dataset, decoding every image, and summarises it. Also fails on
/// duplicate sample ids, which would make the dataset unusable for a study.
pub fn inspect(dir: &std::path::Path, show: usize) -> Result<Inspection> {
    let dataset = Dataset::open(dir)?;
    dataset.check_unique_ids()?;
    let first = &dataset.shards()[0];
    let (schema, format_version) = shard_schema(first)?;

    let mut summary = Inspection {
        dir: dir.to_path_buf(),
        shards: dataset.shards().len(),
        rows: dataset.rows(),
        bytes_on_disk: dataset.shards().iter().map(|s| s.bytes).sum(),
        schema,
        format_version,
        unreadable_rows: 0,
        unreadable_by_reason: BTreeMap::new(),
        unreadable_examples: Vec::new(),
        samples: Vec::new(),
    };
    let bar = crate::progress::bar(Some(dataset.rows()), "decoding images", "rows");
    for shard in dataset.shards() {
        for batch in shard.reader(Projection::ALL, 256)? {
            let batch = batch?;
            for skipped in &batch.skipped {
                summary.count_unreadable(
                    &skipped.reason,
                    format!(
                        "{} row {} (sample_id {}): {}",
                        skipped.file.display(),
                        skipped.row,
                        skipped.sample_id,
                        skipped.reason
                    ),
                );
            }
            for ((id, caption), image) in batch
                .sample_ids
                .iter()
                .zip(&batch.captions)
                .zip(&batch.images)
            {
                match image.decode() {
                    Err(reason) => summary.count_unreadable(
                        "the image does not decode",
                        format!(
                            "{} (sample_id {id}): unreadable image: {reason}",
                            shard.path.display()
                        ),
                    ),
                    Ok(decoded) if summary.samples.len() < show => {
                        summary.samples.push(SampleRow {
                            sample_id: *id,
                            caption: caption.clone(),
                            image: format!(
                                "{:?} {}x{}, {:.1} KiB",
                                image.format().expect("it decoded"),
                                decoded.width(),
                                decoded.height(),
                                image.len() as f64 / 1024.0
                            ),
                        });
                    }
                    Ok(_) => {}
                }
            }
            bar.inc((batch.len() + batch.skipped.len()) as u64);
        }
    }
    bar.finish_and_clear();
    Ok(summary)
}

impl Inspection {
    fn count_unreadable(&mut self, reason: &str, example: String) {
        tracing::warn!("{example}");
        self.unreadable_rows += 1;
        *self
            .unreadable_by_reason
            .entry(reason.to_string())
            .or_default() += 1;
        if self.unreadable_examples.len() < EXAMPLES {
            self.unreadable_examples.push(example);
        }
    }
}

fn shard_schema(shard: &super::ShardInfo) -> Result<(Vec<(String, String)>, String)> {
    let file = std::fs::File::open(&shard.path).map_err(super::DatasetError::io(&shard.path))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(crate::file_error::FileError::not_parquet(&shard.path))?;
    let schema = builder
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect();
    let version = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|kv| kv.key == VERSION_KEY))
        .and_then(|kv| kv.value.clone())
        .unwrap_or_else(|| format!("none (read as {})", format::FORMAT_VERSION));
    Ok((schema, version))
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dataset        {}", self.dir.display())?;
        writeln!(f, "format version {}", self.format_version)?;
        writeln!(f, "rows           {}", self.rows)?;
        writeln!(f, "shards         {}", self.shards)?;
        writeln!(
            f,
            "size on disk   {:.1} MiB",
            self.bytes_on_disk as f64 / (1024.0 * 1024.0)
        )?;
        writeln!(f, "unreadable     {} rows", self.unreadable_rows)?;
        for (reason, count) in &self.unreadable_by_reason {
            writeln!(f, "  {count:>8}  {reason}")?;
        }
        for example in &self.unreadable_examples {
            writeln!(f, "  e.g. {example}")?;
        }
        writeln!(f, "schema")?;
        for (name, kind) in &self.schema {
            writeln!(f, "  {name:<16} {kind}")?;
        }
        writeln!(f, "sample rows")?;
        for row in &self.samples {
            writeln!(
                f,
                "  {:>8}  {:<24}  {}",
                row.sample_id, row.image, row.caption
            )?;
        }
        Ok(())
    }
}
