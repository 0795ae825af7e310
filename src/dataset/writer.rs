//! Writes rows into shards: zstd Parquet, bounded row groups, each shard written to a temporary
//! file and renamed into place only once complete. A new dataset is written into a staging folder
//! beside its destination and renamed into place by [`DatasetWriter::finish`], so an interrupted
//! import leaves no half dataset; an append adds whole shards one at a time.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryBuilder, StringBuilder, UInt64Builder};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::format::{self, FORMAT_VERSION, SOURCE_KEY, VERSION_KEY};
use super::reader::Dataset;
use super::{DatasetError, Result};
use crate::atomic::{self, AtomicDir, AtomicFile, PendingFile};
use crate::file_error::FileError;

/// How shards are cut and labelled.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Rows per shard; the last shard may hold fewer.
    pub shard_rows: usize,
    /// Rows per Parquet row group, which bounds what a reader holds at once.
    pub row_group_rows: usize,
    /// Where the rows come from, stored in each shard's metadata.
    pub source: String,
    /// Extra utf8 columns after the three of the format, in this order.
    pub extra_columns: Vec<String>,
}

impl WriterOptions {
    pub fn new(shard_rows: usize, source: impl Into<String>) -> Self {
        WriterOptions {
            shard_rows: shard_rows.max(1),
            row_group_rows: 256,
            source: source.into(),
            extra_columns: Vec::new(),
        }
    }

    pub fn with_extra_columns(mut self, columns: Vec<String>) -> Self {
        self.extra_columns = columns;
        self
    }
}

/// One row to write; its `sample_id` is given by the writer.
#[derive(Clone, Debug)]
pub struct NewRow {
    pub image: Vec<u8>,
    pub caption: String,
    /// One value per extra column of [`WriterOptions::extra_columns`].
    pub extra: Vec<Option<String>>,
}

/// What a writer wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteSummary {
    pub rows: u64,
    pub shards: Vec<PathBuf>,
    pub first_sample_id: u64,
}

/// Streams rows into numbered shards `shard-NNNNNN.parquet`, assigning consecutive sample ids.
pub struct DatasetWriter {
    /// Where shards are written: the staging folder of a new dataset, or the dataset itself.
    dir: PathBuf,
    /// A new dataset's staging folder, renamed into place by `finish`.
    staging: Option<AtomicDir>,
    options: WriterOptions,
    schema: arrow::datatypes::SchemaRef,
    next_shard: usize,
    next_id: u64,
    pending: Vec<NewRow>,
    open: Option<OpenShard>,
    /// An append's finished shards, written, synced and closed, renamed into place by
    /// `finish`.
    held: Vec<PendingFile>,
    summary: WriteSummary,
}

struct OpenShard {
    writer: ArrowWriter<AtomicFile>,
    rows: usize,
    index: usize,
}

impl DatasetWriter {
    /// Starts a new dataset at `dir`, which must not exist or be an empty folder. Nothing
    /// appears at `dir` until [`finish`](Self::finish).
    pub fn create(dir: &Path, options: WriterOptions) -> Result<Self> {
        if dir.exists()
            && fs::read_dir(dir)
                .map_err(DatasetError::io(dir))?
                .next()
                .is_some()
        {
            return Err(DatasetError::NotEmpty {
                dir: dir.to_path_buf(),
            });
        }
        let parent = atomic::folder_of(dir);
        fs::create_dir_all(parent).map_err(DatasetError::io(parent))?;
        let staging = AtomicDir::create(dir).map_err(DatasetError::io(parent))?;
        let mut writer = Self::starting_at(staging.path(), options, 0, 0);
        writer.staging = Some(staging);
        Ok(writer)
    }

    /// Adds rows to an existing dataset: new shards after the last one, sample ids after the
    /// largest one, so shards already written (and everything computed from them) stay valid.
    pub fn append(dir: &Path, options: WriterOptions) -> Result<Self> {
        if shard_files(dir).map_or(true, |s| s.is_empty()) {
            return Self::create(dir, options);
        }
        let dataset = Dataset::open(dir)?;
        let next_id = dataset
            .shards()
            .iter()
            .filter_map(|s| s.id_range.map(|(_, max)| max + 1))
            .max()
            .unwrap_or(0);
        let next_shard = dataset
            .shards()
            .iter()
            .filter_map(|s| shard_number(&s.path))
            .max()
            .map_or(0, |n| n + 1);
        Ok(Self::starting_at(dir, options, next_shard, next_id))
    }

    fn starting_at(dir: &Path, options: WriterOptions, next_shard: usize, next_id: u64) -> Self {
        DatasetWriter {
            dir: dir.to_path_buf(),
            staging: None,
            schema: format::schema(&options.extra_columns),
            options,
            next_shard,
            next_id,
            pending: Vec::new(),
            open: None,
            held: Vec::new(),
            summary: WriteSummary {
                first_sample_id: next_id,
                ..WriteSummary::default()
            },
        }
    }

    /// Queues a row and returns the sample id it will have.
    pub fn push(&mut self, row: NewRow) -> Result<u64> {
        if row.extra.len() != self.options.extra_columns.len() {
            return Err(DatasetError::Other(format!(
                "row has {} extra values for {} extra columns",
                row.extra.len(),
                self.options.extra_columns.len()
            )));
        }
        let id = self.next_id + self.pending.len() as u64;
        self.pending.push(row);
        let room = self.options.shard_rows - self.open.as_ref().map_or(0, |s| s.rows);
        if self.pending.len() >= self.options.row_group_rows.min(room) {
            self.flush()?;
        }
        Ok(id)
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> u64 {
        self.summary.rows + self.pending.len() as u64
    }

    /// Writes what is queued and puts the new shards in place: a new dataset's folder renamed
    /// into place, or an append's shards renamed into the dataset's folder once every one of
    /// them is written and synced (a failure before leaves the dataset as it was: a retry
    /// does not add rows twice).
    pub fn finish(mut self) -> Result<WriteSummary> {
        self.flush()?;
        self.close_shard()?;
        for file in std::mem::take(&mut self.held) {
            let path = file.path().to_path_buf();
            file.commit_new().map_err(DatasetError::io(&path))?;
        }
        let mut summary = std::mem::take(&mut self.summary);
        if let Some(staging) = self.staging.take() {
            // The folder was checked empty at create.
            let dir = staging.target().to_path_buf();
            staging.commit().map_err(DatasetError::io(&dir))?;
            for shard in &mut summary.shards {
                *shard = dir.join(shard.file_name().expect("shard paths end in a name"));
            }
        }
        Ok(summary)
    }

    fn flush(&mut self) -> Result<()> {
        while !self.pending.is_empty() {
            if self.open.is_none() {
                self.open_shard()?;
            }
            let (index, room) = {
                let shard = self.open.as_ref().expect("a shard is open");
                (shard.index, self.options.shard_rows - shard.rows)
            };
            let take = room.min(self.pending.len());
            let rows: Vec<NewRow> = self.pending.drain(..take).collect();
            let batch = self.batch(&rows)?;
            let path = self.dir.join(shard_name(index));
            let shard = self.open.as_mut().expect("a shard is open");
            shard
                .writer
                .write(&batch)
                .map_err(FileError::not_parquet(&path))?;
            // One row group per pushed batch keeps what a reader holds at once bounded.
            shard
                .writer
                .flush()
                .map_err(FileError::not_parquet(&path))?;
            shard.rows += take;
            self.next_id += take as u64;
            self.summary.rows += take as u64;
            if shard.rows >= self.options.shard_rows {
                self.close_shard()?;
            }
        }
        Ok(())
    }

    fn batch(&self, rows: &[NewRow]) -> Result<RecordBatch> {
        let mut ids = UInt64Builder::with_capacity(rows.len());
        let mut images = BinaryBuilder::new();
        let mut captions = StringBuilder::new();
        let mut extras: Vec<StringBuilder> = self
            .options
            .extra_columns
            .iter()
            .map(|_| StringBuilder::new())
            .collect();
        for (i, row) in rows.iter().enumerate() {
            ids.append_value(self.next_id + i as u64);
            images.append_value(&row.image);
            captions.append_value(&row.caption);
            for (builder, value) in extras.iter_mut().zip(&row.extra) {
                builder.append_option(value.as_deref());
            }
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(ids.finish()),
            Arc::new(images.finish()),
            Arc::new(captions.finish()),
        ];
        columns.extend(extras.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        Ok(RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(FileError::arrow(&self.dir))?)
    }

    fn open_shard(&mut self) -> Result<()> {
        let index = self.next_shard;
        self.next_shard += 1;
        let file = AtomicFile::create(&self.dir.join(shard_name(index)))
            .map_err(DatasetError::io(&self.dir))?;
        let temp = file.temp_path().to_path_buf();
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("valid level"),
            ))
            .set_max_row_group_row_count(Some(self.options.row_group_rows))
            .set_key_value_metadata(Some(vec![
                KeyValue::new(VERSION_KEY.to_string(), FORMAT_VERSION.to_string()),
                KeyValue::new(SOURCE_KEY.to_string(), self.options.source.clone()),
            ]))
            .build();
        let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(properties))
            .map_err(FileError::not_parquet(temp))?;
        self.open = Some(OpenShard {
            writer,
            rows: 0,
            index,
        });
        Ok(())
    }

    fn close_shard(&mut self) -> Result<()> {
        let Some(shard) = self.open.take() else {
            return Ok(());
        };
        let path = self.dir.join(shard_name(shard.index));
        let file = shard
            .writer
            .into_inner()
            .map_err(FileError::not_parquet(&path))?;
        if self.staging.is_some() {
            file.commit_new().map_err(DatasetError::io(&path))?;
        } else {
            // An append: held back until every new shard is written ([`Self::finish`]).
            let pending = file.into_pending().map_err(DatasetError::io(&path))?;
            self.held.push(pending);
        }
        tracing::debug!(shard = %path.display(), rows = shard.rows, "wrote shard");
        self.summary.shards.push(path);
        Ok(())
    }
}

/// The file name of shard number `index`; zero-padded so names sort in shard order.
pub fn shard_name(index: usize) -> String {
    format!("shard-{index:06}.parquet")
}

fn shard_number(path: &Path) -> Option<usize> {
    path.file_name()?
        .to_str()?
        .strip_prefix("shard-")?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}

/// The `*.parquet` files of a folder, sorted by name: the shard order of the dataset.
pub(crate) fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).map_err(DatasetError::io(dir))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(DatasetError::io(dir))?.path();
        let visible = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'));
        if visible && path.extension().is_some_and(|e| e == "parquet") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
