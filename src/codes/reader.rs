//! Streams a codes file back as bounded [`CodeBatch`]es, checking the format row by row.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{Float32Type, UInt32Type, UInt64Type};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::KeyValue;

use super::dense_rows;
use super::layout::{self, CodesLayout};
use super::{keys, CodeBatch, CodesError, CodesMeta, Result, COLUMNS, FORMAT_VERSION};
use crate::file_error::FileError;

/// Parquet rows decoded at a time; independent of how many samples a batch holds.
const READ_ROWS: usize = 16 * 1024;

/// Reads one codes file, or a folder of them (one per dataset shard), in increasing
/// `sample_id` order.
///
/// Each item is a batch of at most `batch_samples` whole samples (a sample is never split
/// across batches). Rows are checked as they are read: ids never decrease, features are below
/// `d_sae` and appear once per sample, values are finite; the error names the file and row.
pub struct CodesReader {
    path: PathBuf,
    /// File positions of sample_id, feature, value (or sample_id, values) when not in that
    /// order (projection keeps file order).
    order: Option<Vec<usize>>,
    /// The current file's layout (the files of a folder may differ).
    layout: CodesLayout,
    meta: CodesMeta,
    samples: Option<u64>,
    /// Parquet rows of the file or folder: active latents, plus one per empty sample.
    rows: u64,
    batch_samples: usize,
    inner: ParquetRecordBatchReader,
    current: Option<RecordBatch>,
    position: usize,
    row: u64,
    last_id: Option<u64>,
    pending: CodeBatch,
    done: bool,
    /// Files of a folder still to read, in order.
    rest: std::collections::VecDeque<PathBuf>,
    /// At the start of a folder's next file: the previous file and its last sample id, which
    /// the next file's first must exceed.
    boundary: Option<(PathBuf, u64)>,
}

impl CodesReader {
    /// Opens a codes file, checking its schema and metadata; or a folder of codes files of one
    /// (encoder, layer, SAE), one per dataset shard (`*.parquet`, names starting with `.`
    /// ignored), read one after another in the order of their first sample id. The files must
    /// hold disjoint ranges of samples (a sample id at or below the previous file's last is an
    /// error naming both files).
    pub fn open(path: &Path) -> Result<CodesReader> {
        if !path.is_dir() {
            return Self::open_file(path);
        }
        let entries = std::fs::read_dir(path).map_err(CodesError::io(path))?;
        let mut files = Vec::new();
        for entry in entries {
            let file = entry.map_err(CodesError::io(path))?.path();
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            if name.ends_with(".parquet") && !name.starts_with('.') {
                files.push(file);
            }
        }
        // Each file's first sample id (a file of no sample sorts first), then its metadata,
        // which every file must share.
        let mut keyed = Vec::with_capacity(files.len());
        let mut rows = 0;
        for file in files {
            let mut reader = Self::open_file(&file)?.with_batch_samples(1);
            let first = match reader.next() {
                Some(batch) => batch?.sample_ids().first().copied(),
                None => None,
            };
            rows += reader.rows;
            keyed.push((first, file.clone(), reader.meta, reader.samples));
        }
        keyed.sort_by(|x, y| (x.0, &x.1).cmp(&(y.0, &y.1)));
        let Some((_, first, meta, _)) = keyed.first() else {
            return Err(FileError::wrong_schema(
                path,
                "the folder holds no codes file (*.parquet)",
            )
            .into());
        };
        if let Some((_, other, m, _)) = keyed.iter().find(|k| &k.2 != meta) {
            let problem = format!(
                "holds codes of {m:?}, {} of {meta:?}; a folder holds the shards of one encoder, layer and SAE",
                first.display()
            );
            return Err(FileError::wrong_schema(other, problem).into());
        }
        let samples: Option<u64> = keyed.iter().map(|k| k.3).sum();
        let mut reader = Self::open_file(first)?;
        reader.samples = samples;
        reader.rows = rows;
        reader.rest = keyed.into_iter().skip(1).map(|k| k.1).collect();
        Ok(reader)
    }

    fn open_file(path: &Path) -> Result<CodesReader> {
        let file = File::open(path).map_err(CodesError::io(path))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(FileError::not_parquet(path))?;
        let kv = builder.metadata().file_metadata().key_value_metadata();
        let (meta, samples, layout) = read_meta(path, kv)?;
        let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let (roots, read_rows) = match layout {
            CodesLayout::Sparse => (check_schema(path, builder.schema())?, READ_ROWS),
            CodesLayout::Dense => (
                dense_rows::check_schema(path, builder.schema(), meta.d_sae)?,
                layout::dense_group_rows(meta.d_sae),
            ),
        };
        // Rows of a dense file are samples; as a bound on updates, count their latents.
        let rows = match layout {
            CodesLayout::Sparse => rows,
            CodesLayout::Dense => rows.saturating_mul(meta.d_sae as u64),
        };
        // Read in the order sample_id, feature, value, whatever the file's order.
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
        let order = if roots.windows(2).all(|w| w[0] < w[1]) {
            None
        } else {
            Some(roots)
        };
        let inner = builder
            .with_projection(mask)
            .with_batch_size(read_rows)
            .build()
            .map_err(FileError::not_parquet(path))?;
        Ok(CodesReader {
            path: path.to_path_buf(),
            order,
            layout,
            meta,
            samples,
            rows,
            batch_samples: 4096,
            inner,
            current: None,
            position: 0,
            row: 0,
            last_id: None,
            pending: CodeBatch::new(),
            done: false,
            rest: Default::default(),
            boundary: None,
        })
    }

    /// At most `samples` samples per batch (at least 1).
    pub fn with_batch_samples(mut self, samples: usize) -> Self {
        self.batch_samples = samples.max(1);
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file says about itself.
    pub fn meta(&self) -> &CodesMeta {
        &self.meta
    }

    /// The number of samples the writer recorded, if it did (files from other tools may not).
    pub fn samples(&self) -> Option<u64> {
        self.samples
    }

    /// The rows of the file (or of every file of the folder) as the sparse layout counts them:
    /// its active latents plus one row per sample without any (for a dense file, `d_sae` a
    /// sample), so a bound on the updates of its co-activation sums where the writer did not
    /// record the sample count.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Puts the projected columns in the order sample_id, feature, value.
    fn reorder(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let Some(order) = &self.order else {
            return Ok(batch);
        };
        let mut sorted = order.clone();
        sorted.sort_unstable();
        let positions: Vec<usize> = order
            .iter()
            .map(|root| sorted.binary_search(root).expect("projected"))
            .collect();
        Ok(batch
            .project(&positions)
            .map_err(FileError::arrow(&self.path))?)
    }

    /// Reads rows until a batch is full or the file ends.
    fn fill(&mut self) -> Result<Option<CodeBatch>> {
        loop {
            if self.current.is_none() {
                match self.inner.next() {
                    None if !self.rest.is_empty() => {
                        let next = self.rest.pop_front().expect("not empty");
                        let last = self.last_id.map(|id| (self.path.clone(), id));
                        let reader = Self::open_file(&next)?;
                        (self.path, self.order, self.layout, self.inner) =
                            (next, reader.order, reader.layout, reader.inner);
                        self.row = 0;
                        self.boundary = last;
                        continue;
                    }
                    None => {
                        self.done = true;
                        let batch = std::mem::replace(&mut self.pending, CodeBatch::new());
                        return Ok((!batch.is_empty()).then_some(batch));
                    }
                    Some(batch) => {
                        let batch = batch.map_err(FileError::arrow(&self.path))?;
                        self.current = Some(self.reorder(batch)?);
                        self.position = 0;
                    }
                }
            }
            let batch = self.current.take().expect("set above");
            let full = self.consume(&batch)?;
            if self.position < batch.num_rows() {
                self.current = Some(batch);
            }
            if full {
                let next = std::mem::replace(&mut self.pending, CodeBatch::new());
                return Ok(Some(next));
            }
        }
    }

    /// Moves rows of `batch` into `pending`; true when `pending` is full and the next row starts
    /// a new sample (which stays unread for the next batch).
    fn consume(&mut self, batch: &RecordBatch) -> Result<bool> {
        match self.layout {
            CodesLayout::Sparse => self.consume_sparse(batch),
            CodesLayout::Dense => self.consume_dense(batch),
        }
    }

    /// Rows of a dense file: one whole sample each.
    fn consume_dense(&mut self, batch: &RecordBatch) -> Result<bool> {
        let rows = dense_rows::DenseRows::new(&self.path, batch, self.meta.d_sae)?;
        while self.position < batch.num_rows() {
            let r = self.position;
            let (row, path) = (self.row, self.path.clone());
            let bad = |sample_id: u64, problem: String| CodesError::BadRow {
                file: path.clone(),
                row,
                sample_id,
                problem,
            };
            let id = rows
                .id(r)
                .ok_or_else(|| bad(0, "sample_id is null".into()))?;
            if !check_order(&mut self.boundary, self.last_id, id).map_err(|p| bad(id, p))? {
                return Err(bad(
                    id,
                    "is a second row of its sample; a dense file holds one row per sample".into(),
                ));
            }
            // The previous sample may be a sparse file's, in a folder that mixes layouts.
            if let Some(twice) = self.pending.finish_last() {
                return Err(bad(
                    id,
                    format!("the previous sample lists feature {twice} twice"),
                ));
            }
            if self.pending.len() >= self.batch_samples {
                return Ok(true);
            }
            self.pending.begin(id);
            self.last_id = Some(id);
            let values = rows
                .values(r)
                .ok_or_else(|| bad(id, "values is null, or holds a null".into()))?;
            for (f, &v) in values.iter().enumerate() {
                if !v.is_finite() {
                    return Err(bad(id, format!("feature {f} has value {v}")));
                }
                if v != 0.0 {
                    self.pending.push_pair(f as u32, v);
                }
            }
            self.position += 1;
            self.row += 1;
        }
        Ok(false)
    }

    /// Rows of a sparse file: one active latent each.
    fn consume_sparse(&mut self, batch: &RecordBatch) -> Result<bool> {
        let columns = convert(&self.path, batch)?;
        let ids = columns[0].as_primitive::<UInt64Type>();
        let features = columns[1].as_primitive::<UInt32Type>();
        let values = columns[2].as_primitive::<Float32Type>();
        while self.position < batch.num_rows() {
            let r = self.position;
            let bad = |problem: String| CodesError::BadRow {
                file: self.path.clone(),
                row: self.row,
                sample_id: if ids.is_valid(r) { ids.value(r) } else { 0 },
                problem,
            };
            if !ids.is_valid(r) {
                return Err(bad("sample_id is null".into()));
            }
            let id = ids.value(r);
            let new_sample = match check_order(&mut self.boundary, self.last_id, id) {
                Ok(new) => new,
                Err(problem) => return Err(bad(problem)),
            };
            if new_sample {
                if let Some(twice) = self.pending.finish_last() {
                    return Err(bad(format!(
                        "the previous sample lists feature {twice} twice"
                    )));
                }
                if self.pending.len() >= self.batch_samples {
                    return Ok(true);
                }
                self.pending.begin(id);
                self.last_id = Some(id);
            }
            match (features.is_valid(r), values.is_valid(r)) {
                (false, false) => {}
                (true, true) => {
                    let (f, v) = (features.value(r), values.value(r));
                    if f >= self.meta.d_sae {
                        return Err(bad(format!(
                            "feature {f} is out of range: the SAE has {} features",
                            self.meta.d_sae
                        )));
                    }
                    if !v.is_finite() {
                        return Err(bad(format!("feature {f} has value {v}")));
                    }
                    if v != 0.0 {
                        self.pending.push_pair(f, v);
                    }
                }
                _ => {
                    return Err(bad(
                        "feature and value must both be set, or both be null (a sample with no active latent)".into(),
                    ))
                }
            }
            self.position += 1;
            self.row += 1;
        }
        Ok(false)
    }
}

impl Iterator for CodesReader {
    type Item = Result<CodeBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.fill() {
            Ok(Some(mut batch)) => match batch.finish_last() {
                None => Some(Ok(batch)),
                Some(twice) => {
                    self.done = true;
                    let id = *batch.sample_ids().last().expect("not empty");
                    Some(Err(CodesError::BadRow {
                        file: self.path.clone(),
                        row: self.row.saturating_sub(1),
                        sample_id: id,
                        problem: format!("the sample lists feature {twice} twice"),
                    }))
                }
            },
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Checks that `id` (of the row being read) may follow the previous row: after the previous
/// file's last (`boundary`, taken), and not before the previous row's (`last_id`). Returns
/// whether it starts a new sample.
fn check_order(
    boundary: &mut Option<(PathBuf, u64)>,
    last_id: Option<u64>,
    id: u64,
) -> Result<bool, String> {
    if let Some((previous, last)) = boundary.take() {
        if id <= last {
            return Err(format!(
                "is not after sample_id {last}, the last of {}; the files of a folder must hold disjoint ranges of samples",
                previous.display()
            ));
        }
    }
    match last_id {
        Some(last) if id < last => Err(format!(
            "comes after sample_id {last}; rows must be sorted by sample_id"
        )),
        Some(last) => Ok(id != last),
        None => Ok(true),
    }
}

fn read_meta(
    path: &Path,
    kv: Option<&Vec<KeyValue>>,
) -> Result<(CodesMeta, Option<u64>, CodesLayout)> {
    let get = |key: &str| {
        kv.into_iter()
            .flatten()
            .find(|e| e.key == key)
            .and_then(|e| e.value.clone())
    };
    let missing = |key: &str| {
        FileError::wrong_schema(
            path,
            format!("key-value metadata `{key}` is missing; is this a saeshare codes file?"),
        )
    };
    let number = |key: &str, text: String| {
        text.parse::<u64>().map_err(|_| {
            FileError::wrong_schema(
                path,
                format!("key-value metadata `{key}` = {text:?} is not a whole number"),
            )
        })
    };
    let version = get(keys::VERSION).ok_or_else(|| missing(keys::VERSION))?;
    match version.parse::<u32>() {
        Ok(v) if (1..=FORMAT_VERSION).contains(&v) => {}
        _ => {
            return Err(CodesError::UnsupportedVersion {
                file: path.to_path_buf(),
                found: version,
            })
        }
    }
    let d_sae = get(keys::D_SAE).ok_or_else(|| missing(keys::D_SAE))?;
    let d_sae = number(keys::D_SAE, d_sae)?;
    let d_sae = u32::try_from(d_sae).map_err(|_| {
        FileError::wrong_schema(path, format!("d_sae = {d_sae} does not fit in uint32"))
    })?;
    let k = get(keys::K)
        .map(|k| number(keys::K, k).map(|k| k as u32))
        .transpose()?;
    let samples = get(keys::SAMPLES)
        .map(|s| number(keys::SAMPLES, s))
        .transpose()?;
    let meta = CodesMeta {
        d_sae,
        encoder: get(keys::ENCODER).ok_or_else(|| missing(keys::ENCODER))?,
        layer: get(keys::LAYER).ok_or_else(|| missing(keys::LAYER))?,
        k,
        sae: get(keys::SAE),
    };
    let layout = match get(keys::LAYOUT).as_deref() {
        None => CodesLayout::Sparse,
        Some("dense") => CodesLayout::Dense,
        Some(other) => {
            let problem = format!(
                "key-value metadata `{}` = {other:?}: this saeshare reads \"dense\", or no key for one row per active latent",
                keys::LAYOUT
            );
            return Err(FileError::wrong_schema(path, problem).into());
        }
    };
    Ok((meta, samples, layout))
}

/// Finds the three [`COLUMNS`] by name (tools may write them in any order, among other columns)
/// and checks their types: any integer type for `sample_id` and `feature`, any float type for
/// `value`, converted when read. Returns their positions.
fn check_schema(path: &Path, schema: &arrow::datatypes::Schema) -> Result<Vec<usize>> {
    COLUMNS
        .iter()
        .map(|(name, written, _)| -> Result<usize> {
            let wanted = written.to_string().to_lowercase();
            let index = schema.index_of(name).map_err(|_| {
                FileError::wrong_schema(path, format!("column `{name}` ({wanted}) is missing"))
            })?;
            let found = schema.field(index).data_type();
            let accepted = if written.is_integer() {
                found.is_integer()
            } else {
                found.is_floating()
            };
            if !accepted {
                let problem = format!("column `{name}` must be {wanted}, found {found}");
                return Err(FileError::wrong_schema(path, problem).into());
            }
            Ok(index)
        })
        .collect()
}

/// The batch's three columns in the format's types; a value that does not convert (a negative
/// id, a feature beyond uint32) is an error rather than a silent change.
fn convert(path: &Path, batch: &RecordBatch) -> Result<[ArrayRef; 3]> {
    let options = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    let mut out = Vec::with_capacity(3);
    for (column, (_, data_type, _)) in batch.columns().iter().zip(&COLUMNS) {
        out.push(if column.data_type() == data_type {
            column.clone()
        } else {
            cast_with_options(column, data_type, &options).map_err(FileError::arrow(path))?
        });
    }
    Ok(out.try_into().expect("three columns"))
}
