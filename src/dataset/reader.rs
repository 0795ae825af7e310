//! Opening a dataset and streaming its rows.
//!
//! [`Dataset::open`] reads only the shards' footers: schema, row counts and sample-id ranges.
//! [`ShardReader`] then streams one shard in record batches of at most `batch_rows` rows, with
//! images left encoded. Shard `s` belongs to worker `s mod n` ([`Dataset::shards_for_worker`]),
//! the same rule for threads and processes, since timely numbers workers globally.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, StringArray, UInt64Array};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use super::format::{self, ShardColumns};
use super::writer::shard_files;
use super::{DatasetError, EncodedImage, Result};
use crate::file_error::FileError;

/// A dataset folder whose shards have been checked.
#[derive(Clone, Debug)]
pub struct Dataset {
    dir: PathBuf,
    shards: Vec<ShardInfo>,
}

/// One shard, as its footer describes it.
#[derive(Clone, Debug)]
pub struct ShardInfo {
    /// Position in the dataset's shard order (sorted file names).
    pub index: usize,
    pub path: PathBuf,
    pub rows: u64,
    pub bytes: u64,
    pub columns: ShardColumns,
    /// Smallest and largest sample id, from the Parquet statistics when the writer kept them.
    pub id_range: Option<(u64, u64)>,
}

/// Which columns a reader needs besides `sample_id` and `caption`, which it always reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Projection {
    /// Text encoders pass `false` and never read the image bytes from disk.
    pub images: bool,
}

impl Projection {
    pub const ALL: Projection = Projection { images: true };
    pub const TEXT: Projection = Projection { images: false };
}

/// Rows of one shard, in shard order. Images are empty when the projection left them out.
#[derive(Clone, Debug, Default)]
pub struct SampleBatch {
    pub shard: usize,
    pub sample_ids: Vec<u64>,
    pub captions: Vec<String>,
    pub images: Vec<EncodedImage>,
    /// Rows of this stretch of the shard that cannot be used, with the reason.
    pub skipped: Vec<SkippedRow>,
}

impl SampleBatch {
    pub fn len(&self) -> usize {
        self.sample_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sample_ids.is_empty()
    }
}

/// A row left out, said with enough to find it: file, row number in the file, sample id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedRow {
    pub file: PathBuf,
    pub row: u64,
    pub sample_id: u64,
    pub reason: String,
}

impl Dataset {
    /// Opens a dataset folder, checking every shard's schema and format version.
    pub fn open(dir: &Path) -> Result<Dataset> {
        if dir.is_file() {
            return Err(DatasetError::NotAFolder {
                path: dir.to_path_buf(),
            });
        }
        if !dir.is_dir() {
            return Err(DatasetError::NotFound {
                path: dir.to_path_buf(),
            });
        }
        let files = shard_files(dir)?;
        if files.is_empty() {
            return Err(DatasetError::Empty {
                dir: dir.to_path_buf(),
            });
        }
        let shards = files
            .into_iter()
            .enumerate()
            .map(|(index, path)| ShardInfo::read(index, path))
            .collect::<Result<Vec<_>>>()?;
        Ok(Dataset {
            dir: dir.to_path_buf(),
            shards,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The dataset restricted to the shards at `positions` (in the folder's order), numbered
    /// again from 0: a study on part of a dataset.
    pub fn select(self, positions: &[usize]) -> Result<Dataset> {
        let mut chosen: Vec<usize> = positions.to_vec();
        chosen.sort_unstable();
        chosen.dedup();
        if let Some(&missing) = chosen.iter().find(|&&p| p >= self.shards.len()) {
            return Err(DatasetError::BadSelection {
                dir: self.dir.clone(),
                problem: format!(
                    "shard {missing} was chosen, but the dataset has {} shards (0 to {})",
                    self.shards.len(),
                    self.shards.len().saturating_sub(1)
                ),
            });
        }
        let shards = chosen
            .iter()
            .enumerate()
            .map(|(index, &p)| ShardInfo {
                index,
                ..self.shards[p].clone()
            })
            .collect();
        Ok(Dataset {
            dir: self.dir,
            shards,
        })
    }

    pub fn shards(&self) -> &[ShardInfo] {
        &self.shards
    }

    /// Rows in all shards, as the footers count them (skipped rows included).
    pub fn rows(&self) -> u64 {
        self.shards.iter().map(|s| s.rows).sum()
    }

    /// The shards worker `index` of `peers` reads: those with `shard.index % peers == index`.
    pub fn shards_for_worker(
        &self,
        index: usize,
        peers: usize,
    ) -> impl Iterator<Item = &ShardInfo> + '_ {
        assert!(index < peers, "worker {index} of {peers}");
        self.shards.iter().filter(move |s| s.index % peers == index)
    }

    /// Fails on a sample id found twice. Shards whose id ranges do not overlap are checked one at
    /// a time, so memory stays at one shard's ids for datasets written by saeshare.
    pub fn check_unique_ids(&self) -> Result<()> {
        let mut order: Vec<&ShardInfo> = self.shards.iter().collect();
        // Shards without statistics could hold any id: they form one group with everything.
        if order.iter().any(|s| s.id_range.is_none()) {
            return check_group(&order);
        }
        order.sort_by_key(|s| s.id_range.expect("checked above"));
        let mut group: Vec<&ShardInfo> = Vec::new();
        let mut group_max = 0u64;
        for shard in order {
            let (min, max) = shard.id_range.expect("checked above");
            if !group.is_empty() && min > group_max {
                check_group(&group)?;
                group.clear();
            }
            group_max = if group.is_empty() {
                max
            } else {
                group_max.max(max)
            };
            group.push(shard);
        }
        check_group(&group)
    }
}

fn check_group(shards: &[&ShardInfo]) -> Result<()> {
    let mut ids: Vec<(u64, usize)> = Vec::new();
    for (position, shard) in shards.iter().enumerate() {
        for id in shard.read_ids()? {
            ids.push((id, position));
        }
    }
    ids.sort_unstable();
    match ids.windows(2).find(|w| w[0].0 == w[1].0) {
        None => Ok(()),
        Some(w) => Err(DatasetError::DuplicateSampleId {
            id: w[0].0,
            first: shards[w[0].1].path.clone(),
            second: shards[w[1].1].path.clone(),
        }),
    }
}

impl ShardInfo {
    fn read(index: usize, path: PathBuf) -> Result<ShardInfo> {
        let file = File::open(&path).map_err(DatasetError::io(&path))?;
        let bytes = file.metadata().map_err(DatasetError::io(&path))?.len();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(FileError::not_parquet(&path))?;
        let metadata = builder.metadata();
        format::check_version(&path, metadata.file_metadata().key_value_metadata())?;
        let columns = format::check_schema(&path, builder.schema())?;
        let rows = metadata.file_metadata().num_rows() as u64;
        let id_range = id_range(&builder);
        Ok(ShardInfo {
            index,
            path,
            rows,
            bytes,
            columns,
            id_range,
        })
    }

    /// A reader over this shard's rows, `batch_rows` at a time.
    pub fn reader(&self, projection: Projection, batch_rows: usize) -> Result<ShardReader> {
        ShardReader::open(self, projection, batch_rows)
    }

    /// Every sample id of the shard, reading only that column.
    pub fn read_ids(&self) -> Result<Vec<u64>> {
        let mut ids = Vec::with_capacity(self.rows as usize);
        for batch in self.batches(&[format::SAMPLE_ID], 64 * 1024)? {
            let batch = batch.map_err(FileError::arrow(&self.path))?;
            ids.extend(sample_ids(&batch, &self.path)?.values().iter().copied());
        }
        Ok(ids)
    }

    /// Raw record batches of the named columns, for readers that need other columns.
    pub fn batches(&self, columns: &[&str], batch_rows: usize) -> Result<ParquetRecordBatchReader> {
        let file = File::open(&self.path).map_err(DatasetError::io(&self.path))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(FileError::not_parquet(&self.path))?;
        let roots = columns.iter().map(|name| {
            builder
                .schema()
                .index_of(name)
                .map_err(|_| FileError::wrong_column(&self.path, *name, "the column is missing"))
        });
        let roots = roots.collect::<Result<Vec<_>, FileError>>()?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        builder
            .with_projection(mask)
            .with_batch_size(batch_rows.max(1))
            .build()
            .map_err(|e| FileError::not_parquet(&self.path)(e).into())
    }
}

fn id_range(builder: &ParquetRecordBatchReaderBuilder<File>) -> Option<(u64, u64)> {
    let metadata = builder.metadata();
    let groups = metadata.row_groups();
    if groups.is_empty() {
        return None;
    }
    let converter = StatisticsConverter::try_new(
        format::SAMPLE_ID,
        builder.schema(),
        builder.parquet_schema(),
    )
    .ok()?;
    let mins = converter.row_group_mins(groups).ok()?;
    let maxes = converter.row_group_maxes(groups).ok()?;
    let mins = mins.as_primitive_opt::<arrow::datatypes::UInt64Type>()?;
    let maxes = maxes.as_primitive_opt::<arrow::datatypes::UInt64Type>()?;
    if mins.null_count() > 0 || maxes.null_count() > 0 {
        return None;
    }
    let min = mins.values().iter().min()?;
    let max = maxes.values().iter().max()?;
    Some((*min, *max))
}

fn sample_ids<'a>(batch: &'a RecordBatch, file: &Path) -> Result<&'a UInt64Array> {
    let column = batch
        .column_by_name(format::SAMPLE_ID)
        .expect("projected column");
    if column.null_count() > 0 {
        let problem = "holds nulls; every row needs a sample id";
        return Err(FileError::wrong_column(file, format::SAMPLE_ID, problem).into());
    }
    Ok(column.as_primitive::<arrow::datatypes::UInt64Type>())
}

/// Streams one shard as [`SampleBatch`]es.
pub struct ShardReader {
    path: PathBuf,
    shard: usize,
    projection: Projection,
    inner: ParquetRecordBatchReader,
    next_row: u64,
}

impl ShardReader {
    fn open(shard: &ShardInfo, projection: Projection, batch_rows: usize) -> Result<ShardReader> {
        let mut columns = vec![format::SAMPLE_ID, format::CAPTION];
        if projection.images {
            columns.push(format::IMAGE);
        }
        Ok(ShardReader {
            path: shard.path.clone(),
            shard: shard.index,
            projection,
            inner: shard.batches(&columns, batch_rows)?,
            next_row: 0,
        })
    }

    fn convert(&self, batch: &RecordBatch) -> Result<SampleBatch> {
        let ids = sample_ids(batch, &self.path)?;
        let captions = batch
            .column_by_name(format::CAPTION)
            .expect("projected column");
        let captions = cast(captions, &DataType::Utf8).map_err(FileError::arrow(&self.path))?;
        let captions: &StringArray = captions.as_string();
        let images = if self.projection.images {
            let column = batch
                .column_by_name(format::IMAGE)
                .expect("projected column");
            Some(format::image_bytes(&self.path, column)?)
        } else {
            None
        };

        let mut out = SampleBatch {
            shard: self.shard,
            ..SampleBatch::default()
        };
        for row in 0..batch.num_rows() {
            let sample_id = ids.value(row);
            let caption = captions.is_valid(row).then(|| captions.value(row).trim());
            let image = images
                .as_ref()
                .map(|a| a.is_valid(row).then(|| a.value(row)));
            let problem = match (caption, image) {
                (None, _) => Some("the caption is missing"),
                (Some(""), _) => Some("the caption is empty"),
                (_, Some(None)) => Some("the image is missing"),
                (_, Some(Some([]))) => Some("the image is empty"),
                _ => None,
            };
            if let Some(reason) = problem {
                out.skipped.push(SkippedRow {
                    file: self.path.clone(),
                    row: self.next_row + row as u64,
                    sample_id,
                    reason: reason.to_string(),
                });
                continue;
            }
            out.sample_ids.push(sample_id);
            out.captions
                .push(caption.expect("checked above").to_string());
            if let Some(Some(bytes)) = image {
                out.images
                    .push(EncodedImage(bytes::Bytes::copy_from_slice(bytes)));
            }
        }
        Ok(out)
    }
}

impl Iterator for ShardReader {
    type Item = Result<SampleBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = match self.inner.next()? {
            Ok(batch) => batch,
            Err(source) => {
                return Some(Err(DatasetError::Damaged {
                    file: self.path.clone(),
                    row: self.next_row,
                    source,
                }))
            }
        };
        let converted = self.convert(&batch);
        self.next_row += batch.num_rows() as u64;
        Some(converted)
    }
}
