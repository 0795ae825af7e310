//! The dataset shard format, version 1 (FORMATS.md, "Dataset").
//!
//! A dataset is a folder of Parquet shards; this module says what a shard must hold and checks a
//! file against it. Readers accept the Hugging Face `struct<bytes, path>` image column as well as
//! plain binary, so `datasets` exports can be read without conversion.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, StructArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::DatasetError;
use crate::file_error::FileError;

/// The shard format version written into every shard's key-value metadata.
pub const FORMAT_VERSION: u32 = 1;
/// Metadata key holding [`FORMAT_VERSION`].
pub const VERSION_KEY: &str = "saeshare.dataset.version";
/// Metadata key describing where the rows came from (importer and its input).
pub const SOURCE_KEY: &str = "saeshare.dataset.source";

/// Column names of the format.
pub const SAMPLE_ID: &str = "sample_id";
pub const IMAGE: &str = "image";
pub const CAPTION: &str = "caption";

/// How the image column of a shard stores its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageLayout {
    /// `binary` or `large_binary`: the encoded file.
    Binary,
    /// Hugging Face `datasets`: `struct<bytes: binary, path: string>`.
    HfStruct,
}

/// What a reader needs to know of a shard's columns, checked once per file.
#[derive(Clone, Debug)]
pub struct ShardColumns {
    pub image: ImageLayout,
    /// Columns beyond the three of the format, kept for the report.
    pub extra: Vec<String>,
}

/// The Arrow schema saeshare writes: the three columns of the format, then `extra` (utf8).
pub fn schema(extra: &[String]) -> SchemaRef {
    let mut fields = vec![
        Field::new(SAMPLE_ID, DataType::UInt64, false),
        Field::new(IMAGE, DataType::Binary, false),
        Field::new(CAPTION, DataType::Utf8, false),
    ];
    fields.extend(
        extra
            .iter()
            .map(|name| Field::new(name, DataType::Utf8, true)),
    );
    Arc::new(Schema::new(fields))
}

/// Checks a shard's schema and says what its columns are; the error names the file and column.
pub fn check_schema(file: &Path, schema: &Schema) -> Result<ShardColumns, DatasetError> {
    let wrong = |column: &str, found: String| {
        DatasetError::from(FileError::wrong_column(file, column, found))
    };
    let field = |name: &str| {
        schema
            .field_with_name(name)
            .map_err(|_| wrong(name, "the column is missing".to_string()))
    };

    let id = field(SAMPLE_ID)?;
    if id.data_type() != &DataType::UInt64 {
        return Err(wrong(
            SAMPLE_ID,
            format!("expected uint64, found {}", id.data_type()),
        ));
    }

    let image = match field(IMAGE)?.data_type() {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => ImageLayout::Binary,
        DataType::Struct(children)
            if children
                .iter()
                .any(|c| c.name() == "bytes" && is_binary(c.data_type())) =>
        {
            ImageLayout::HfStruct
        }
        other => {
            return Err(wrong(
                IMAGE,
                format!("expected binary or struct<bytes: binary, path: string>, found {other}"),
            ))
        }
    };

    let caption = field(CAPTION)?;
    if !is_text(caption.data_type()) {
        return Err(wrong(
            CAPTION,
            format!("expected utf8, found {}", caption.data_type()),
        ));
    }

    let extra = schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| n != SAMPLE_ID && n != IMAGE && n != CAPTION)
        .collect();
    Ok(ShardColumns { image, extra })
}

pub(crate) fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

pub(crate) fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Reads the format version from a shard's key-value metadata. Shards without it (written by
/// another tool) are read as version 1; newer versions are refused rather than misread.
pub fn check_version(
    file: &Path,
    metadata: Option<&Vec<parquet::file::metadata::KeyValue>>,
) -> Result<(), DatasetError> {
    let found = metadata
        .into_iter()
        .flatten()
        .find(|kv| kv.key == VERSION_KEY)
        .and_then(|kv| kv.value.clone());
    match found {
        None => Ok(()),
        Some(v) => match v.parse::<u32>() {
            Ok(v) if v <= FORMAT_VERSION => Ok(()),
            _ => Err(DatasetError::UnsupportedVersion {
                file: file.to_path_buf(),
                found: v,
            }),
        },
    }
}

/// The encoded image bytes of an image column, binary or Hugging Face struct. A null struct is
/// a missing image even when its `bytes` child holds a value.
pub(crate) fn image_bytes(file: &Path, column: &ArrayRef) -> Result<BinaryArray, DatasetError> {
    let bytes = match column.data_type() {
        DataType::Struct(_) => {
            let image: &StructArray = column.as_struct();
            let child = image.column_by_name("bytes").expect("checked").clone();
            match image.nulls() {
                Some(nulls) if nulls.null_count() > 0 => {
                    let data = child
                        .to_data()
                        .into_builder()
                        .nulls(arrow::buffer::NullBuffer::union(Some(nulls), child.nulls()))
                        .build()
                        .map_err(FileError::arrow(file))?;
                    arrow::array::make_array(data)
                }
                _ => child,
            }
        }
        _ => column.clone(),
    };
    let bytes = cast(&bytes, &DataType::Binary).map_err(FileError::arrow(file))?;
    Ok(bytes.as_binary::<i32>().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Fields;

    fn check(fields: Vec<Field>) -> Result<ShardColumns, DatasetError> {
        check_schema(Path::new("s.parquet"), &Schema::new(fields))
    }

    #[test]
    fn the_written_schema_passes_its_own_check() {
        let cols = check_schema(Path::new("s"), &schema(&["style".into()])).unwrap();
        assert_eq!(cols.image, ImageLayout::Binary);
        assert_eq!(cols.extra, vec!["style".to_string()]);
    }

    #[test]
    fn hugging_face_image_structs_are_read() {
        let hf = DataType::Struct(Fields::from(vec![
            Field::new("bytes", DataType::Binary, true),
            Field::new("path", DataType::Utf8, true),
        ]));
        let cols = check(vec![
            Field::new(SAMPLE_ID, DataType::UInt64, false),
            Field::new(IMAGE, hf, true),
            Field::new(CAPTION, DataType::LargeUtf8, true),
        ])
        .unwrap();
        assert_eq!(cols.image, ImageLayout::HfStruct);
    }

    #[test]
    fn a_wrong_schema_names_the_file_and_column() {
        let err = check(vec![
            Field::new(SAMPLE_ID, DataType::Int32, false),
            Field::new(IMAGE, DataType::Binary, false),
            Field::new(CAPTION, DataType::Utf8, false),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("s.parquet") && err.contains("sample_id") && err.contains("Int32"),
            "{err}"
        );

        let err = check(vec![
            Field::new(SAMPLE_ID, DataType::UInt64, false),
            Field::new(IMAGE, DataType::Binary, false),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("s.parquet") && err.contains("caption") && err.contains("missing"));
    }
}
