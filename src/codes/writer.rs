//! Writes a codes file: zstd Parquet, bounded row groups, written to a temporary file beside the
//! destination and renamed into place by [`CodesWriter::finish`], so a killed run never leaves a
//! file that looks finished.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Builder, UInt32Builder, UInt64Builder};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;

use super::layout::{self, CodesLayout, DenseValues, DECIDING_SAMPLES};
use super::{keys, CodeBatch, CodesError, CodesMeta, Result, COLUMNS};
use crate::atomic::{self, AtomicFile};
use crate::file_error::FileError;
use crate::parquet_meta;

/// The largest finite float16.
const F16_MAX: f32 = 65504.0;

/// Rows per row group of a sparse file: bounds what the writer and a reader hold at once
/// (~1 MiB).
const ROW_GROUP_ROWS: usize = 64 * 1024;

/// The Arrow schema of a sparse codes file: [`COLUMNS`].
pub(crate) fn schema() -> SchemaRef {
    let fields: Vec<Field> = COLUMNS
        .iter()
        .map(|(name, data_type, nullable)| Field::new(*name, data_type.clone(), *nullable))
        .collect();
    Arc::new(Schema::new(fields))
}

/// What a writer wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodesSummary {
    /// The finished file.
    pub path: PathBuf,
    /// Samples written.
    pub samples: u64,
    /// Active latents written (rows, not counting the rows of empty samples).
    pub active: u64,
}

/// Streams the codes of one (encoder, layer, SAE) into one file, one sample at a time, in
/// strictly increasing `sample_id` order.
///
/// TopK codes are written one row per active latent; codes without `k` one row per active
/// latent or one row per sample, whichever their first samples say is smaller (FORMATS.md,
/// "Sparse codes" and "Dense codes"); readers read both.
///
/// ```no_run
/// use saeshare::codes::{CodesMeta, CodesWriter};
/// let mut writer = CodesWriter::create("codes.parquet".as_ref(), CodesMeta::topk("clip", "layer11", 8192, 32))?;
/// writer.push(0, &[3, 17], &[0.5, 1.25])?;
/// writer.push(1, &[], &[])?; // a sample with no active latent is still a sample
/// let summary = writer.finish()?;
/// # Ok::<(), saeshare::codes::CodesError>(())
/// ```
pub struct CodesWriter {
    path: PathBuf,
    meta: CodesMeta,
    dense_values: DenseValues,
    sink: Sink,
    last_id: Option<u64>,
    scratch: Vec<(u32, f32)>,
    samples: u64,
    active: u64,
}

/// Where pushed samples go.
enum Sink {
    /// Codes without `k` whose first samples are held until they pick the layout.
    Deciding { file: AtomicFile, held: CodeBatch },
    /// The Parquet writer of the chosen layout.
    Open(Box<OpenFile>),
    /// Between states, and after an error that left the file unusable.
    Gone,
}

struct OpenFile {
    writer: ArrowWriter<AtomicFile>,
    layout: CodesLayout,
    schema: SchemaRef,
    /// The footer's keys given at creation, repeated in the schema at the end.
    metadata: Vec<KeyValue>,
    rows: Rows,
    /// Rows buffered, and how many make a row group.
    pending: usize,
    group_rows: usize,
}

/// A sparse file's columns being built.
struct SparseRows {
    ids: UInt64Builder,
    features: UInt32Builder,
    values: Float32Builder,
}

/// Rows buffered for the next row group.
enum Rows {
    Sparse(Box<SparseRows>),
    Dense {
        ids: Vec<u64>,
        values: Vec<f32>,
        d_sae: u32,
        kind: DenseValues,
    },
}

impl CodesWriter {
    /// Starts the file `path`, which must not exist. Nothing appears at `path` until
    /// [`finish`](Self::finish).
    pub fn create(path: &Path, meta: CodesMeta) -> Result<Self> {
        if path.exists() {
            return Err(CodesError::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        let dir = atomic::folder_of(path);
        fs::create_dir_all(dir).map_err(CodesError::io(dir))?;
        let file = AtomicFile::create(path).map_err(CodesError::io(dir))?;
        let sink = if meta.k.is_some() {
            Sink::Open(Box::new(OpenFile::new(
                path,
                &meta,
                file,
                CodesLayout::Sparse,
                DenseValues::Float32,
            )?))
        } else {
            Sink::Deciding {
                file,
                held: CodeBatch::new(),
            }
        };
        Ok(CodesWriter {
            path: path.to_path_buf(),
            meta,
            dense_values: DenseValues::Float32,
            sink,
            last_id: None,
            scratch: Vec::new(),
            samples: 0,
            active: 0,
        })
    }

    /// Stores the values of a dense file (one row per sample) as `values`; float32 by default.
    /// Sparse files always keep float32.
    pub fn with_dense_values(mut self, values: DenseValues) -> Self {
        self.dense_values = values;
        self
    }

    /// Adds the code of one sample: its active features and their values, in any order. Zero
    /// values are not active and are left out. Fails on a sample id not above the previous one,
    /// a feature out of range or given twice, a non-finite value, or more than `k` active
    /// latents for a TopK SAE.
    pub fn push(&mut self, sample_id: u64, features: &[u32], values: &[f32]) -> Result<()> {
        let bad = |problem: String| CodesError::BadSample {
            file: self.path.clone(),
            sample_id,
            problem,
        };
        if let Some(last) = self.last_id {
            if sample_id <= last {
                return Err(bad(format!(
                    "comes after sample_id {last}; samples must be written in strictly increasing sample_id order"
                )));
            }
        }
        if features.len() != values.len() {
            return Err(bad(format!(
                "{} features but {} values",
                features.len(),
                values.len()
            )));
        }
        self.scratch.clear();
        for (&feature, &value) in features.iter().zip(values) {
            if feature >= self.meta.d_sae {
                return Err(bad(format!(
                    "feature {feature} is out of range: the SAE has {} features",
                    self.meta.d_sae
                )));
            }
            if !value.is_finite() {
                return Err(bad(format!("feature {feature} has value {value}")));
            }
            if value != 0.0 {
                self.scratch.push((feature, value));
            }
        }
        self.scratch.sort_unstable_by_key(|p| p.0);
        if let Some(w) = self.scratch.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(bad(format!("feature {} is given twice", w[0].0)));
        }
        if let Some(k) = self.meta.k {
            if self.scratch.len() > k as usize {
                return Err(bad(format!(
                    "{} active latents, more than k = {k} of a TopK SAE",
                    self.scratch.len()
                )));
            }
        }
        self.active += self.scratch.len() as u64;
        self.samples += 1;
        self.last_id = Some(sample_id);
        match &mut self.sink {
            Sink::Deciding { held, .. } => {
                held.begin(sample_id);
                for &(feature, value) in &self.scratch {
                    held.push_pair(feature, value);
                }
                if held.len() >= DECIDING_SAMPLES {
                    self.open()?;
                }
                Ok(())
            }
            Sink::Open(open) => open.push(&self.path, sample_id, &self.scratch),
            Sink::Gone => Err(bad("the writer failed earlier".into())),
        }
    }

    /// Picks the layout from the samples held, opens the Parquet writer and writes them.
    fn open(&mut self) -> Result<()> {
        if !matches!(self.sink, Sink::Deciding { .. }) {
            return Ok(());
        }
        let Sink::Deciding { file, held } = std::mem::replace(&mut self.sink, Sink::Gone) else {
            unreachable!("matched above");
        };
        let layout = if layout::prefers_dense(held.nnz(), held.len(), self.meta.d_sae) {
            CodesLayout::Dense
        } else {
            CodesLayout::Sparse
        };
        let mut open = OpenFile::new(&self.path, &self.meta, file, layout, self.dense_values)?;
        let mut pairs = Vec::new();
        for code in held.iter() {
            pairs.clear();
            pairs.extend(
                code.features
                    .iter()
                    .copied()
                    .zip(code.values.iter().copied()),
            );
            open.push(&self.path, code.sample_id, &pairs)?;
        }
        self.sink = Sink::Open(Box::new(open));
        Ok(())
    }

    /// Writes what is buffered, records the sample count, and renames the file into place.
    pub fn finish(mut self) -> Result<CodesSummary> {
        self.open()?;
        let Sink::Open(mut open) = std::mem::replace(&mut self.sink, Sink::Gone) else {
            return Err(CodesError::BadSample {
                file: self.path.clone(),
                sample_id: self.last_id.unwrap_or(0),
                problem: "the writer failed earlier".into(),
            });
        };
        open.flush(&self.path)?;
        parquet_meta::finish_metadata(
            &mut open.writer,
            &open.schema,
            &open.metadata,
            &[KeyValue::new(
                keys::SAMPLES.to_string(),
                self.samples.to_string(),
            )],
        );
        let layout = open.layout;
        let file = open
            .writer
            .into_inner()
            .map_err(FileError::not_parquet(&self.path))?;
        file.commit_new().map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CodesError::AlreadyExists {
                path: self.path.clone(),
            },
            _ => CodesError::io(&self.path)(e),
        })?;
        tracing::debug!(file = %self.path.display(), samples = self.samples, ?layout, "wrote codes");
        Ok(CodesSummary {
            path: self.path,
            samples: self.samples,
            active: self.active,
        })
    }
}

impl OpenFile {
    fn new(
        path: &Path,
        meta: &CodesMeta,
        file: AtomicFile,
        layout: CodesLayout,
        kind: DenseValues,
    ) -> Result<Self> {
        let mut metadata = vec![
            KeyValue::new(keys::VERSION.to_string(), layout.version().to_string()),
            KeyValue::new(keys::D_SAE.to_string(), meta.d_sae.to_string()),
            KeyValue::new(keys::ENCODER.to_string(), meta.encoder.clone()),
            KeyValue::new(keys::LAYER.to_string(), meta.layer.clone()),
        ];
        if let Some(k) = meta.k {
            metadata.push(KeyValue::new(keys::K.to_string(), k.to_string()));
        }
        if let Some(sae) = &meta.sae {
            metadata.push(KeyValue::new(keys::SAE.to_string(), sae.clone()));
        }
        if let Some(value) = layout.key() {
            metadata.push(KeyValue::new(keys::LAYOUT.to_string(), value.to_string()));
        }
        let (schema, group_rows, rows) = match layout {
            CodesLayout::Sparse => (
                schema(),
                ROW_GROUP_ROWS,
                Rows::Sparse(Box::new(SparseRows {
                    ids: UInt64Builder::with_capacity(ROW_GROUP_ROWS),
                    features: UInt32Builder::with_capacity(ROW_GROUP_ROWS),
                    values: Float32Builder::with_capacity(ROW_GROUP_ROWS),
                })),
            ),
            CodesLayout::Dense => (
                layout::dense_schema(meta.d_sae, kind),
                layout::dense_group_rows(meta.d_sae),
                Rows::Dense {
                    ids: Vec::new(),
                    values: Vec::new(),
                    d_sae: meta.d_sae,
                    kind,
                },
            ),
        };
        let properties = layout::properties(group_rows)
            .set_key_value_metadata(Some(metadata.clone()))
            .build();
        let writer = ArrowWriter::try_new_with_options(
            file,
            schema.clone(),
            parquet_meta::writer_options(properties),
        )
        .map_err(FileError::not_parquet(path))?;
        Ok(OpenFile {
            writer,
            layout,
            schema,
            metadata,
            rows,
            pending: 0,
            group_rows,
        })
    }

    /// Buffers one checked sample (`pairs` sorted, nonzero), writing a row group when full.
    fn push(&mut self, path: &Path, sample_id: u64, pairs: &[(u32, f32)]) -> Result<()> {
        match &mut self.rows {
            Rows::Sparse(rows) => {
                let SparseRows {
                    ids,
                    features,
                    values,
                } = rows.as_mut();
                if pairs.is_empty() {
                    ids.append_value(sample_id);
                    features.append_null();
                    values.append_null();
                    self.pending += 1;
                }
                for &(feature, value) in pairs {
                    ids.append_value(sample_id);
                    features.append_value(feature);
                    values.append_value(value);
                }
                self.pending += pairs.len();
            }
            Rows::Dense {
                ids,
                values,
                d_sae,
                kind,
            } => {
                if *kind == DenseValues::Float16 {
                    if let Some(&(feature, value)) = pairs.iter().find(|p| p.1.abs() > F16_MAX) {
                        return Err(CodesError::BadSample {
                            file: path.to_path_buf(),
                            sample_id,
                            problem: format!(
                                "feature {feature} has value {value}, beyond float16's {F16_MAX}: store these codes as float32 ([codes] dense_values = \"float32\")"
                            ),
                        });
                    }
                }
                ids.push(sample_id);
                let start = values.len();
                values.resize(start + *d_sae as usize, 0.0);
                for &(feature, value) in pairs {
                    values[start + feature as usize] = value;
                }
                self.pending += 1;
            }
        }
        if self.pending >= self.group_rows {
            self.flush(path)?;
        }
        Ok(())
    }

    fn flush(&mut self, path: &Path) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let columns: Vec<ArrayRef> = match &mut self.rows {
            Rows::Sparse(rows) => vec![
                Arc::new(rows.ids.finish()),
                Arc::new(rows.features.finish()),
                Arc::new(rows.values.finish()),
            ],
            Rows::Dense {
                ids,
                values,
                d_sae,
                kind,
            } => layout::dense_columns(std::mem::take(ids), std::mem::take(values), *d_sae, *kind)
                .map_err(FileError::arrow(path))?,
        };
        let batch =
            RecordBatch::try_new(self.schema.clone(), columns).map_err(FileError::arrow(path))?;
        self.writer
            .write(&batch)
            .map_err(FileError::not_parquet(path))?;
        // One row group per flush keeps what a reader holds at once bounded.
        self.writer.flush().map_err(FileError::not_parquet(path))?;
        self.pending = 0;
        Ok(())
    }
}
