//! Activation files: activations of an encoder, one row per (sample, layer) when pooled, one row
//! per (sample, token, layer) when token-level.
//!
//! `saeshare encode` writes them and `saeshare sae train` / `sae encode` read them (FORMATS.md,
//! "Activations"). A study run never needs them (activations stream from the encoder into the
//! SAEs); they are for training or inspecting one layer outside a study. `sae train` trains on
//! the rows whichever they are; `sae encode` writes one code per sample, so it refuses a
//! token-level file.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::encoder::{Precision, TokenSelection};
use crate::file_error::FileError;

mod reader;
mod writer;

pub use reader::{read_meta, ActivationBatch, LayerReader};
pub use writer::ActivationWriter;

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

pub(crate) type Result<T, E = ActivationsError> = std::result::Result<T, E>;

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
    /// Image encoders: the `[height, width]` the images reached the model at (the package's
    /// input size, or the side `image_size` asked for). `None` for captions, and in files that
    /// do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_size: Option<[usize; 2]>,
    /// What the forward pass ran in; a file that does not say ran in float32.
    #[serde(default)]
    pub precision: Precision,
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
pub(crate) fn schema(tokens: bool) -> SchemaRef {
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

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::path::Path;

    use arrow::array::{ArrayRef, Float32Builder, ListBuilder, RecordBatch};
    use parquet::arrow::ArrowWriter;
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::WriterProperties;

    use super::reader::open;
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
            input_size: Some([4, 6]),
            precision: Precision::Float16,
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

        // Version 1, as saeshare wrote it before token files, input sizes and precisions.
        let old = dir.path().join("v1.parquet");
        let v1_meta = r#"{"encoder": "e", "pooling": "none",
            "layers": [{"name": "a", "width": 2}, {"name": "b", "width": 1}]}"#;
        let properties = WriterProperties::builder()
            .set_key_value_metadata(Some(vec![
                KeyValue::new(VERSION_KEY.to_string(), "1".to_string()),
                KeyValue::new(META_KEY.to_string(), v1_meta.to_string()),
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
        let read = read_meta(&old).unwrap();
        assert_eq!((read.tokens, read.input_size), (None, None));
        assert_eq!(
            read.precision,
            Precision::Float32,
            "files that do not say ran in float32"
        );
        assert_eq!(read.layers, meta().layers);
        assert_eq!(layer(&old, "a").sample_ids, [7]);
    }
}
