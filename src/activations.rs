//! Activation files: activations of an encoder, one row per (sample, layer) when pooled, one row
//! per (sample, token, layer) when token-level.
//!
//! `saeshare encode` writes them and `saeshare sae train` / `sae encode` read them (FORMATS.md,
//! "Activations"). A study run never needs them (activations stream from the encoder into the
//! SAEs); they are for training or inspecting one layer outside a study. `sae train` trains on
//! the rows whichever they are; `sae encode` writes one code per sample, so it refuses a
//! token-level file.

use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Builder, ListBuilder, RecordBatch, StringBuilder,
    UInt32Builder, UInt64Builder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef, UInt64Type};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::atomic::{self, AtomicFile};
use crate::encoder::TokenSelection;
use crate::file_error::FileError;
use crate::parquet_meta;

/// Version of the activation file format, stored under [`VERSION_KEY`]. Version 2 added
/// token-level files (the `token` column and the meta's `tokens`); pooled files are as in
/// version 1, and readers accept both.
pub const FORMAT_VERSION: u32 = 2;
pub const VERSION_KEY: &str = "saeshare.activations.version";
/// JSON of [`FileMeta`].
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
    /// An I/O, Parquet or Arrow failure on the file.
    #[error(transparent)]
    File(#[from] FileError),
}

type Result<T, E = ActivationsError> = std::result::Result<T, E>;

/// What an activation file holds, stored in its metadata.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ActivationsMeta {
    /// The encoder's name, e.g. `clip-vit-b32-vision`.
    pub encoder: String,
    /// How tokens were pooled to one vector (`cls`, `eos`, `last`, `mean`, `gap`); `none` in a
    /// token-level file.
    pub pooling: String,
    /// Layer names and widths, in the encoder's order.
    pub layers: Vec<LayerWidth>,
}

/// What an activation file holds: [`ActivationsMeta`], and for a token-level file which tokens
/// became rows. Stored as one JSON object (the `tokens` key only in token-level files); reads as
/// the [`ActivationsMeta`] it extends.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FileMeta {
    #[serde(flatten)]
    pub meta: ActivationsMeta,
    /// Token-level files: the selection of token rows (`saeshare encode --tokens`). `None`:
    /// pooled, one row per (sample, layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenSelection>,
}

impl FileMeta {
    /// The metadata of a token-level file of `meta`'s layers, its rows chosen by `selection`.
    pub fn tokens(meta: ActivationsMeta, selection: TokenSelection) -> FileMeta {
        FileMeta {
            meta,
            tokens: Some(selection),
        }
    }
}

impl From<ActivationsMeta> for FileMeta {
    /// A pooled file's metadata.
    fn from(meta: ActivationsMeta) -> FileMeta {
        FileMeta { meta, tokens: None }
    }
}

impl Deref for FileMeta {
    type Target = ActivationsMeta;

    fn deref(&self) -> &ActivationsMeta {
        &self.meta
    }
}

/// A layer and its activation width.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerWidth {
    pub name: String,
    pub width: usize,
}

/// The columns of a pooled file, or of a token-level one (a `token` column after `sample_id`).
fn schema(tokens: bool) -> SchemaRef {
    let token = tokens.then(|| Field::new("token", DataType::UInt32, false));
    Arc::new(Schema::new(
        [Field::new("sample_id", DataType::UInt64, false)]
            .into_iter()
            .chain(token)
            .chain([
                Field::new("layer", DataType::Utf8, false),
                Field::new(
                    "activation",
                    DataType::List(Arc::new(Field::new("item", DataType::Float32, false))),
                    false,
                ),
            ])
            .collect::<Vec<_>>(),
    ))
}

/// Writes an activation file through a temporary file renamed into place by `finish`.
pub struct ActivationWriter {
    path: PathBuf,
    writer: ArrowWriter<AtomicFile>,
    ids: UInt64Builder,
    /// Token-level files only.
    tokens: Option<UInt32Builder>,
    layers: StringBuilder,
    values: ListBuilder<Float32Builder>,
    pending: usize,
    meta: FileMeta,
    /// The footer's keys, repeated in the stored schema at the end.
    keys: Vec<KeyValue>,
}

impl ActivationWriter {
    /// A pooled file for an [`ActivationsMeta`], a token-level one for a [`FileMeta`] with
    /// `tokens`.
    pub fn create(path: &Path, meta: impl Into<FileMeta>) -> Result<Self> {
        let meta = meta.into();
        std::fs::create_dir_all(atomic::folder_of(path)).map_err(FileError::io(path))?;
        let file = AtomicFile::create(path).map_err(FileError::io(path))?;
        let keys = vec![
            KeyValue::new(VERSION_KEY.to_string(), FORMAT_VERSION.to_string()),
            KeyValue::new(
                META_KEY.to_string(),
                serde_json::to_string(&meta).expect("serialisable"),
            ),
        ];
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("valid level"),
            ))
            .set_key_value_metadata(Some(keys.clone()))
            .build();
        let writer = ArrowWriter::try_new_with_options(
            file,
            schema(meta.tokens.is_some()),
            parquet_meta::writer_options(properties),
        )
        .map_err(FileError::parquet(path))?;
        Ok(ActivationWriter {
            path: path.to_path_buf(),
            writer,
            ids: UInt64Builder::new(),
            tokens: meta.tokens.is_some().then(UInt32Builder::new),
            layers: StringBuilder::new(),
            values: ListBuilder::new(Float32Builder::new()).with_field(Arc::new(Field::new(
                "item",
                DataType::Float32,
                false,
            ))),
            pending: 0,
            meta,
            keys,
        })
    }

    /// Adds the pooled activation of `layer` on `sample_id`; its width must be the layer's. An
    /// error on a token-level file.
    pub fn push(&mut self, sample_id: u64, layer: &str, activation: &[f32]) -> Result<()> {
        if self.tokens.is_some() {
            return Err(self.bad(format!(
                "a token-level file takes token rows (push_token), not a pooled row of sample \
                 {sample_id}"
            )));
        }
        self.check_width(layer, activation)?;
        self.append(sample_id, layer, activation)
    }

    /// Adds the activation of `layer` at position `token` of `sample_id` (for feature maps, the
    /// flattened `h * W + w`); its width must be the layer's. An error on a pooled file.
    pub fn push_token(
        &mut self,
        sample_id: u64,
        token: u32,
        layer: &str,
        activation: &[f32],
    ) -> Result<()> {
        if self.tokens.is_none() {
            return Err(self.bad(format!(
                "a pooled file takes one row per sample and layer (push), not token {token} of \
                 sample {sample_id}"
            )));
        }
        self.check_width(layer, activation)?;
        self.tokens
            .as_mut()
            .expect("token-level")
            .append_value(token);
        self.append(sample_id, layer, activation)
    }

    fn bad(&self, problem: String) -> ActivationsError {
        ActivationsError::Bad {
            file: self.path.clone(),
            problem,
        }
    }

    fn check_width(&self, layer: &str, activation: &[f32]) -> Result<()> {
        let width = self
            .meta
            .layers
            .iter()
            .find(|l| l.name == layer)
            .map(|l| l.width);
        if width != Some(activation.len()) {
            return Err(self.bad(format!(
                "layer {layer}: activation of width {} does not match the file's layers {:?}",
                activation.len(),
                self.meta.layers
            )));
        }
        Ok(())
    }

    fn append(&mut self, sample_id: u64, layer: &str, activation: &[f32]) -> Result<()> {
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
        let tokens = (self.tokens.as_mut()).map(|t| Arc::new(t.finish()) as ArrayRef);
        let columns: Vec<ArrayRef> = [Arc::new(self.ids.finish()) as ArrayRef]
            .into_iter()
            .chain(tokens)
            .chain([
                Arc::new(self.layers.finish()) as ArrayRef,
                Arc::new(self.values.finish()),
            ])
            .collect();
        let batch = RecordBatch::try_new(schema(self.tokens.is_some()), columns)
            .map_err(FileError::arrow(&self.path))?;
        self.writer
            .write(&batch)
            .map_err(FileError::parquet(&self.path))?;
        self.pending = 0;
        Ok(())
    }

    /// Writes what is pending and renames the file into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        self.flush()?;
        parquet_meta::finish_metadata(
            &mut self.writer,
            &schema(self.meta.tokens.is_some()),
            &self.keys,
            &[],
        );
        let file = self
            .writer
            .into_inner()
            .map_err(FileError::parquet(&self.path))?;
        file.commit().map_err(FileError::io(&self.path))?;
        Ok(self.path)
    }
}

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

fn open(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ActivationsMeta {
        ActivationsMeta {
            encoder: "e".into(),
            pooling: "none".into(),
            layers: vec![
                LayerWidth {
                    name: "a".into(),
                    width: 2,
                },
                LayerWidth {
                    name: "b".into(),
                    width: 1,
                },
            ],
        }
    }

    fn columns(path: &Path) -> Vec<String> {
        let builder = open(path).unwrap();
        let fields = builder.schema().fields().iter();
        fields.map(|f| f.name().clone()).collect()
    }

    fn layer(path: &Path, name: &str) -> ActivationBatch {
        let mut all = ActivationBatch {
            sample_ids: vec![],
            width: 0,
            values: vec![],
        };
        for batch in LayerReader::open(path, name, 2).unwrap() {
            let batch = batch.unwrap();
            all.width = batch.width;
            all.sample_ids.extend(batch.sample_ids);
            all.values.extend(batch.values);
        }
        all
    }

    #[test]
    fn a_token_file_holds_token_rows_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.parquet");
        let selection = TokenSelection {
            per_sample: Some(3),
            ..TokenSelection::default()
        };
        let mut writer =
            ActivationWriter::create(&path, FileMeta::tokens(meta(), selection)).unwrap();
        let pooled = writer.push(1, "a", &[0., 0.]).unwrap_err().to_string();
        assert!(pooled.contains("token-level") && pooled.contains("tokens.parquet"));
        writer.push_token(1, 0, "a", &[1., 2.]).unwrap();
        writer.push_token(1, 4, "a", &[3., 4.]).unwrap();
        writer.push_token(1, 0, "b", &[5.]).unwrap();
        writer.push_token(2, 1, "a", &[6., 7.]).unwrap();
        assert!(writer.push_token(2, 1, "b", &[6., 7.]).is_err(), "width");
        writer.push_token(2, 1, "b", &[8.]).unwrap();
        writer.finish().unwrap();

        let read = read_meta(&path).unwrap();
        assert_eq!(read.tokens, Some(selection));
        assert_eq!((read.encoder.as_str(), read.layers.len()), ("e", 2));
        assert_eq!(
            columns(&path),
            ["sample_id", "token", "layer", "activation"]
        );
        let a = layer(&path, "a");
        assert_eq!(a.sample_ids, [1, 1, 2]);
        assert_eq!(a.values, [1., 2., 3., 4., 6., 7.]);
        assert_eq!(layer(&path, "b").values, [5., 8.]);
    }

    #[test]
    fn a_pooled_file_keeps_the_version_1_columns_and_version_1_files_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pooled.parquet");
        let mut writer = ActivationWriter::create(&path, meta()).unwrap();
        assert!(writer.push_token(1, 0, "a", &[1., 2.]).is_err());
        writer.push(1, "a", &[1., 2.]).unwrap();
        writer.push(1, "b", &[3.]).unwrap();
        writer.finish().unwrap();
        assert_eq!(columns(&path), ["sample_id", "layer", "activation"]);
        assert_eq!(read_meta(&path).unwrap(), FileMeta::from(meta()));
        let kv = open(&path).unwrap().metadata().file_metadata().clone();
        let kv = kv.key_value_metadata().unwrap();
        let json = kv.iter().find(|kv| kv.key == META_KEY).unwrap();
        assert!(!json.value.as_ref().unwrap().contains("tokens"));

        // Version 1, as saeshare wrote it before token files.
        let old = dir.path().join("v1.parquet");
        let properties = WriterProperties::builder()
            .set_key_value_metadata(Some(vec![
                KeyValue::new(VERSION_KEY.to_string(), "1".to_string()),
                KeyValue::new(
                    META_KEY.to_string(),
                    serde_json::to_string(&meta()).unwrap(),
                ),
            ]))
            .build();
        let file = File::create(&old).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema(false), Some(properties)).unwrap();
        let mut values = ListBuilder::new(Float32Builder::new()).with_field(Arc::new(Field::new(
            "item",
            DataType::Float32,
            false,
        )));
        values.values().append_slice(&[1., 2.]);
        values.append(true);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(arrow::array::UInt64Array::from(vec![7u64])),
            Arc::new(arrow::array::StringArray::from(vec!["a"])),
            Arc::new(values.finish()),
        ];
        let batch = RecordBatch::try_new(schema(false), columns).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        assert_eq!(read_meta(&old).unwrap().tokens, None);
        assert_eq!(layer(&old, "a").sample_ids, [7]);
    }
}
