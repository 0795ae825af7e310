//! Activation files: pooled activations of an encoder, one row per (sample, layer).
//!
//! `saeshare encode` writes them and `saeshare sae train` / `sae encode` read them (FORMATS.md,
//! "Activations"). A study run never needs them (activations stream from the encoder into the
//! SAEs); they are for training or inspecting one layer outside a study.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Builder, ListBuilder, RecordBatch, StringBuilder,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef, UInt64Type};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

/// Version of the activation file format, stored under [`VERSION_KEY`].
pub const FORMAT_VERSION: u32 = 1;
pub const VERSION_KEY: &str = "saeshare.activations.version";
/// JSON of [`ActivationsMeta`].
pub const META_KEY: &str = "saeshare.activations.meta";

/// Errors reading or writing activation files, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ActivationsError {
    #[error("{file}: {problem}")]
    Bad { file: PathBuf, problem: String },
    #[error("{file}: row {row} (sample_id {sample_id}, layer {layer}): {problem}")]
    BadRow {
        file: PathBuf,
        row: u64,
        sample_id: u64,
        layer: String,
        problem: String,
    },
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {source}")]
    Parquet {
        file: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{file}: {source}")]
    Arrow {
        file: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
}

type Result<T, E = ActivationsError> = std::result::Result<T, E>;

/// What an activation file holds, stored in its metadata.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ActivationsMeta {
    /// The encoder's name, e.g. `clip-vit-b32-vision`.
    pub encoder: String,
    /// How tokens were pooled to one vector (`cls`, `eos`, `last`, `mean`, `gap`).
    pub pooling: String,
    /// Layer names and widths, in the encoder's order.
    pub layers: Vec<LayerWidth>,
}

/// A layer and its activation width.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerWidth {
    pub name: String,
    pub width: usize,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::UInt64, false),
        Field::new("layer", DataType::Utf8, false),
        Field::new(
            "activation",
            DataType::List(Arc::new(Field::new("item", DataType::Float32, false))),
            false,
        ),
    ]))
}

/// Writes an activation file through a temporary file renamed into place by `finish`.
pub struct ActivationWriter {
    path: PathBuf,
    temp: tempfile::NamedTempFile,
    writer: ArrowWriter<File>,
    ids: UInt64Builder,
    layers: StringBuilder,
    values: ListBuilder<Float32Builder>,
    pending: usize,
    meta: ActivationsMeta,
}

impl ActivationWriter {
    pub fn create(path: &Path, meta: ActivationsMeta) -> Result<Self> {
        let io = |source| ActivationsError::Io {
            file: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let temp = tempfile::Builder::new()
            .prefix(".activations.")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(io)?;
        let file = temp.reopen().map_err(io)?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("valid level"),
            ))
            .set_key_value_metadata(Some(vec![
                KeyValue::new(VERSION_KEY.to_string(), FORMAT_VERSION.to_string()),
                KeyValue::new(
                    META_KEY.to_string(),
                    serde_json::to_string(&meta).expect("serialisable"),
                ),
            ]))
            .build();
        let writer = ArrowWriter::try_new(file, schema(), Some(properties)).map_err(|source| {
            ActivationsError::Parquet {
                file: path.to_path_buf(),
                source,
            }
        })?;
        Ok(ActivationWriter {
            path: path.to_path_buf(),
            temp,
            writer,
            ids: UInt64Builder::new(),
            layers: StringBuilder::new(),
            values: ListBuilder::new(Float32Builder::new()).with_field(Arc::new(Field::new(
                "item",
                DataType::Float32,
                false,
            ))),
            pending: 0,
            meta,
        })
    }

    /// Adds the activation of `layer` on `sample_id`; its width must be the layer's.
    pub fn push(&mut self, sample_id: u64, layer: &str, activation: &[f32]) -> Result<()> {
        let width = self
            .meta
            .layers
            .iter()
            .find(|l| l.name == layer)
            .map(|l| l.width);
        if width != Some(activation.len()) {
            return Err(ActivationsError::Bad {
                file: self.path.clone(),
                problem: format!(
                    "layer {layer}: activation of width {} does not match the file's layers {:?}",
                    activation.len(),
                    self.meta.layers
                ),
            });
        }
        self.ids.append_value(sample_id);
        self.layers.append_value(layer);
        self.values.values().append_slice(activation);
        self.values.append(true);
        self.pending += 1;
        if self.pending >= 1024 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.ids.finish()),
            Arc::new(self.layers.finish()),
            Arc::new(self.values.finish()),
        ];
        let batch =
            RecordBatch::try_new(schema(), columns).map_err(|source| ActivationsError::Arrow {
                file: self.path.clone(),
                source,
            })?;
        self.writer
            .write(&batch)
            .map_err(|source| ActivationsError::Parquet {
                file: self.path.clone(),
                source,
            })?;
        self.pending = 0;
        Ok(())
    }

    /// Writes what is pending and renames the file into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        self.flush()?;
        let parquet = |source| ActivationsError::Parquet {
            file: self.path.clone(),
            source,
        };
        self.writer.close().map_err(parquet)?;
        self.temp
            .persist(&self.path)
            .map_err(|e| ActivationsError::Io {
                file: self.path.clone(),
                source: e.error,
            })?;
        Ok(self.path)
    }
}

/// A batch of one layer's activations: `rows x width` floats, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivationBatch {
    pub sample_ids: Vec<u64>,
    pub width: usize,
    pub values: Vec<f32>,
}

impl ActivationBatch {
    pub fn rows(&self) -> usize {
        self.sample_ids.len()
    }
}

/// Streams the rows of one layer of an activation file, checking every value is finite.
pub struct LayerReader {
    file: PathBuf,
    layer: String,
    width: usize,
    inner: ParquetRecordBatchReader,
    row: u64,
}

/// Reads an activation file's metadata.
pub fn read_meta(path: &Path) -> Result<ActivationsMeta> {
    let builder = open(path)?;
    meta_of(path, &builder)
}

fn open(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|source| ActivationsError::Io {
        file: path.to_path_buf(),
        source,
    })?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| ActivationsError::Parquet {
        file: path.to_path_buf(),
        source,
    })
}

fn meta_of(
    path: &Path,
    builder: &ParquetRecordBatchReaderBuilder<File>,
) -> Result<ActivationsMeta> {
    let bad = |problem: String| ActivationsError::Bad {
        file: path.to_path_buf(),
        problem,
    };
    let kv = builder.metadata().file_metadata().key_value_metadata();
    let get = |key: &str| {
        kv.into_iter()
            .flatten()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
    };
    match get(VERSION_KEY).map(|v| v.parse::<u32>()) {
        Some(Ok(v)) if v <= FORMAT_VERSION => {}
        Some(_) => return Err(bad("written by a newer saeshare; upgrade to read it".into())),
        None => {
            return Err(bad(
                "not an activation file (no saeshare.activations.version); make one with `saeshare encode`"
                    .into(),
            ))
        }
    }
    let meta = get(META_KEY).ok_or_else(|| bad("no saeshare.activations.meta".into()))?;
    serde_json::from_str(&meta).map_err(|e| bad(format!("bad saeshare.activations.meta: {e}")))
}

impl LayerReader {
    /// Opens `layer` of the file, `batch_rows` rows at a time.
    pub fn open(path: &Path, layer: &str, batch_rows: usize) -> Result<LayerReader> {
        let builder = open(path)?;
        let meta = meta_of(path, &builder)?;
        let width = meta
            .layers
            .iter()
            .find(|l| l.name == layer)
            .map(|l| l.width)
            .ok_or_else(|| ActivationsError::Bad {
                file: path.to_path_buf(),
                problem: format!(
                    "no layer {layer:?}; the file has {}",
                    meta.layers
                        .iter()
                        .map(|l| l.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        let inner = builder
            .with_batch_size(batch_rows.max(1))
            .build()
            .map_err(|source| ActivationsError::Parquet {
                file: path.to_path_buf(),
                source,
            })?;
        Ok(LayerReader {
            file: path.to_path_buf(),
            layer: layer.to_string(),
            width,
            inner,
            row: 0,
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    fn convert(&self, batch: &RecordBatch) -> Result<ActivationBatch> {
        let ids = batch.column(0).as_primitive::<UInt64Type>();
        let layers = batch.column(1).as_string::<i32>();
        let lists = batch.column(2).as_list::<i32>();
        let mut out = ActivationBatch {
            sample_ids: Vec::new(),
            width: self.width,
            values: Vec::new(),
        };
        for i in 0..batch.num_rows() {
            if layers.value(i) != self.layer {
                continue;
            }
            let bad = |problem: String| ActivationsError::BadRow {
                file: self.file.clone(),
                row: self.row + i as u64,
                sample_id: ids.value(i),
                layer: self.layer.clone(),
                problem,
            };
            let row = lists.value(i);
            let row = row.as_primitive::<Float32Type>();
            if row.len() != self.width || row.null_count() > 0 {
                return Err(bad(format!(
                    "expected {} values, found {} ({} null)",
                    self.width,
                    row.len(),
                    row.null_count()
                )));
            }
            if let Some(j) = row.values().iter().position(|v| !v.is_finite()) {
                return Err(bad(format!(
                    "value {j} is {}; activations must be finite (check the encoder's dtype and inputs)",
                    row.value(j)
                )));
            }
            out.sample_ids.push(ids.value(i));
            out.values.extend_from_slice(row.values());
        }
        Ok(out)
    }
}

impl Iterator for LayerReader {
    type Item = Result<ActivationBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let batch = match self.inner.next()? {
                Ok(batch) => batch,
                Err(source) => {
                    return Some(Err(ActivationsError::Arrow {
                        file: self.file.clone(),
                        source,
                    }))
                }
            };
            let converted = self.convert(&batch);
            self.row += batch.num_rows() as u64;
            match converted {
                Ok(b) if b.rows() == 0 => continue,
                other => return Some(other),
            }
        }
    }
}
