//! Writing an activation file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float32Builder, ListBuilder, RecordBatch, StringBuilder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::atomic::{self, AtomicFile};
use crate::file_error::FileError;
use crate::parquet_meta;

use super::{schema, ActivationsError, FileMeta, Result, FORMAT_VERSION, META_KEY, VERSION_KEY};

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
