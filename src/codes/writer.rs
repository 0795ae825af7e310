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
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::{keys, CodesError, CodesMeta, Result, COLUMNS, FORMAT_VERSION};
use crate::atomic::{self, AtomicFile};
use crate::file_error::FileError;
use crate::parquet_meta;

/// Rows per Parquet row group: bounds what the writer and a reader hold at once (~1 MiB).
const ROW_GROUP_ROWS: usize = 64 * 1024;

/// The Arrow schema of a codes file: [`COLUMNS`].
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
    writer: ArrowWriter<AtomicFile>,
    /// The footer's keys given at creation, repeated in the schema at the end.
    metadata: Vec<KeyValue>,
    last_id: Option<u64>,
    ids: UInt64Builder,
    features: UInt32Builder,
    values: Float32Builder,
    pending: usize,
    scratch: Vec<(u32, f32)>,
    samples: u64,
    active: u64,
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
        let mut metadata = vec![
            KeyValue::new(keys::VERSION.to_string(), FORMAT_VERSION.to_string()),
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
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("valid level"),
            ))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_key_value_metadata(Some(metadata.clone()))
            .build();
        let writer = ArrowWriter::try_new_with_options(
            file,
            schema(),
            parquet_meta::writer_options(properties),
        )
        .map_err(FileError::not_parquet(path))?;
        Ok(CodesWriter {
            path: path.to_path_buf(),
            meta,
            writer,
            metadata,
            last_id: None,
            ids: UInt64Builder::with_capacity(ROW_GROUP_ROWS),
            features: UInt32Builder::with_capacity(ROW_GROUP_ROWS),
            values: Float32Builder::with_capacity(ROW_GROUP_ROWS),
            pending: 0,
            scratch: Vec::new(),
            samples: 0,
            active: 0,
        })
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

        if self.scratch.is_empty() {
            self.ids.append_value(sample_id);
            self.features.append_null();
            self.values.append_null();
            self.pending += 1;
        }
        for &(feature, value) in &self.scratch {
            self.ids.append_value(sample_id);
            self.features.append_value(feature);
            self.values.append_value(value);
        }
        self.pending += self.scratch.len();
        self.active += self.scratch.len() as u64;
        self.samples += 1;
        self.last_id = Some(sample_id);
        if self.pending >= ROW_GROUP_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes what is buffered, records the sample count, and renames the file into place.
    pub fn finish(mut self) -> Result<CodesSummary> {
        self.flush()?;
        parquet_meta::finish_metadata(
            &mut self.writer,
            &schema(),
            &self.metadata,
            &[KeyValue::new(
                keys::SAMPLES.to_string(),
                self.samples.to_string(),
            )],
        );
        let file = self
            .writer
            .into_inner()
            .map_err(FileError::not_parquet(&self.path))?;
        file.commit_new().map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CodesError::AlreadyExists {
                path: self.path.clone(),
            },
            _ => CodesError::io(&self.path)(e),
        })?;
        tracing::debug!(file = %self.path.display(), samples = self.samples, "wrote codes");
        Ok(CodesSummary {
            path: self.path,
            samples: self.samples,
            active: self.active,
        })
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.ids.finish()),
            Arc::new(self.features.finish()),
            Arc::new(self.values.finish()),
        ];
        let batch =
            RecordBatch::try_new(schema(), columns).map_err(FileError::arrow(&self.path))?;
        self.writer
            .write(&batch)
            .map_err(FileError::not_parquet(&self.path))?;
        // One row group per flush keeps what a reader holds at once bounded.
        self.writer
            .flush()
            .map_err(FileError::not_parquet(&self.path))?;
        self.pending = 0;
        Ok(())
    }
}
