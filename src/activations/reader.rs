//! Reading an activation file: its metadata, then one layer's rows.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float32Type, UInt64Type};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use crate::encoder::TokenSelection;
use crate::file_error::FileError;

use super::{
    ActivationsError, ActivationsMeta, FileMeta, LayerWidth, Result, FORMAT_VERSION, META_KEY,
    VERSION_KEY,
};

/// A batch of one layer's activations: `rows x width` floats, row-major, and the sample of each
/// row (a sample's id repeats over its token rows in a token-level file).
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

/// Streams the rows of one layer of an activation file, in the file's order, checking every
/// value is finite: pooled rows, or token rows (for a file by `saeshare encode --tokens`:
/// sample by sample, each sample's tokens in position order).
pub struct LayerReader {
    file: PathBuf,
    layer: String,
    width: usize,
    inner: ParquetRecordBatchReader,
    row: u64,
}

/// Reads an activation file's metadata; `tokens` says whether it is token-level.
pub fn read_meta(path: &Path) -> Result<FileMeta> {
    let builder = open(path)?;
    meta_of(path, &builder)
}

pub(super) fn open(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(FileError::io(path))?;
    Ok(ParquetRecordBatchReaderBuilder::try_new(file).map_err(FileError::parquet(path))?)
}

fn meta_of(path: &Path, builder: &ParquetRecordBatchReaderBuilder<File>) -> Result<FileMeta> {
    let bad = |problem: String| ActivationsError::Bad {
        file: path.to_path_buf(),
        problem,
    };
    let schema = builder.schema();
    let column = |name: &str| {
        schema
            .field_with_name(name)
            .map(|f| f.data_type().clone())
            .map_err(|_| {
                bad(format!(
                    "no column `{name}`; an activation file has sample_id: uint64, layer: utf8, \
                     activation: list<float32>, and token: uint32 if token-level (FORMATS.md, \
                     \"Activations\")"
                ))
            })
    };
    let is_float =
        |t: &DataType| matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64);
    let id = column("sample_id")?;
    let layer = column("layer")?;
    let activation = column("activation")?;
    let activation_ok = match &activation {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            is_float(f.data_type())
        }
        _ => false,
    };
    for (name, ok, found) in [
        ("sample_id", id == DataType::UInt64, &id),
        (
            "layer",
            matches!(layer, DataType::Utf8 | DataType::LargeUtf8),
            &layer,
        ),
        ("activation", activation_ok, &activation),
    ] {
        if !ok {
            return Err(bad(format!("column `{name}` has type {found}")));
        }
    }
    // A `token` column makes a file token-level: a position per row.
    let token = schema.field_with_name("token").ok().map(|f| f.data_type());
    if let Some(found) = token.filter(|t| !t.is_integer()) {
        return Err(bad(format!("column `token` has type {found}")));
    }
    let kv = builder.metadata().file_metadata().key_value_metadata();
    let get = |key: &str| {
        kv.into_iter()
            .flatten()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
    };
    if let Some(version) = get(VERSION_KEY) {
        match version.parse::<u32>() {
            Ok(v) if v <= FORMAT_VERSION => {}
            _ => {
                return Err(bad(format!(
                    "format version {version} is newer than this saeshare reads; upgrade"
                )))
            }
        }
    }
    let meta: FileMeta = match get(META_KEY) {
        Some(meta) => {
            serde_json::from_str(&meta).map_err(|e| bad(format!("bad {META_KEY}: {e}")))?
        }
        // A file written by another tool: its layers and widths are read off the rows, and a
        // `token` column makes it token-level, its selection unknown (recorded as the defaults).
        None => FileMeta {
            meta: infer_meta(path)?,
            tokens: token.map(|_| TokenSelection::default()),
        },
    };
    match (&meta.tokens, token) {
        (Some(_), None) => Err(bad(format!(
            "{META_KEY} says the file is token-level, but it has no `token` column"
        ))),
        (None, Some(_)) => Err(bad(format!(
            "the file has a `token` column, but {META_KEY} has no `tokens`: is it pooled or \
             token-level?"
        ))),
        _ => Ok(meta),
    }
}

fn infer_meta(path: &Path) -> Result<ActivationsMeta> {
    let arrow = |source| FileError::arrow(path)(source);
    let mut layers: Vec<LayerWidth> = Vec::new();
    for batch in project(path, &["layer", "activation"], 8192)? {
        let batch = batch.map_err(arrow)?;
        let column = |name: &str| batch.column_by_name(name).expect("projected");
        let names = cast(column("layer"), &DataType::Utf8).map_err(arrow)?;
        let names = names.as_string::<i32>();
        let values = as_float_lists(path, column("activation"))?;
        for i in 0..batch.num_rows() {
            if !layers.iter().any(|l| l.name == names.value(i)) {
                layers.push(LayerWidth {
                    name: names.value(i).to_string(),
                    width: values.value(i).len(),
                });
            }
        }
    }
    Ok(ActivationsMeta {
        encoder: path
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
        pooling: "unknown".to_string(),
        layers,
        ..ActivationsMeta::default()
    })
}

/// The activation column as `list<float32>`, whatever list and float type the file used.
fn as_float_lists(path: &Path, column: &ArrayRef) -> Result<arrow::array::ListArray> {
    let target = DataType::List(Arc::new(Field::new("item", DataType::Float32, true)));
    let cast = cast(column, &target).map_err(FileError::arrow(path))?;
    Ok(cast.as_list::<i32>().clone())
}

/// The named columns of a file (in the file's order: look them up by name), `batch_rows` rows
/// at a time.
fn project(path: &Path, columns: &[&str], batch_rows: usize) -> Result<ParquetRecordBatchReader> {
    let builder = open(path)?;
    let roots = columns
        .iter()
        .map(|c| builder.schema().index_of(c))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(FileError::arrow(path))?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    builder
        .with_projection(mask)
        .with_batch_size(batch_rows.max(1))
        .build()
        .map_err(|source| FileError::parquet(path)(source).into())
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
        let inner = project(path, &["sample_id", "layer", "activation"], batch_rows)?;
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
        let arrow = |source| FileError::arrow(&self.file)(source);
        let column = |name: &str| batch.column_by_name(name).expect("projected");
        let ids = column("sample_id").as_primitive::<UInt64Type>();
        let layers = cast(column("layer"), &DataType::Utf8).map_err(arrow)?;
        let layers = layers.as_string::<i32>();
        let lists = as_float_lists(&self.file, column("activation"))?;
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
                Err(source) => return Some(Err(FileError::arrow(&self.file)(source).into())),
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
