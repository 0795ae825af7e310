//! `import-hf`: Parquet files written by Hugging Face `datasets` (`Dataset.to_parquet`, or the
//! files of a dataset repository), with the `struct<bytes, path>` image column.

use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{ImportReport, ImportSink, ImportTarget};
use crate::dataset::format::{image_bytes, is_binary, is_text};
use crate::dataset::{DatasetError, Result};
use crate::file_error::FileError;

/// The inputs of `import-hf`.
#[derive(Clone, Debug)]
pub struct HfImport {
    /// Parquet files, or folders searched (not recursively) for `*.parquet`.
    pub inputs: Vec<PathBuf>,
    pub image_column: String,
    /// A string column, or a list of strings (one row per image with its first caption, or one
    /// per caption with `all_captions`).
    pub caption_column: String,
    pub all_captions: bool,
}

/// Imports the rows of every input file, in file-name order then row order. Scalar columns other
/// than the image and caption are kept as extra columns (as text).
pub fn import_hf(spec: &HfImport, target: &ImportTarget) -> Result<ImportReport> {
    let files = input_files(&spec.inputs)?;
    let first = open(&files[0])?;
    let extra: Vec<String> = first
        .schema()
        .fields()
        .iter()
        .filter(|f| f.name() != &spec.image_column && f.name() != &spec.caption_column)
        .filter(|f| f.data_type().is_primitive() || is_text(f.data_type()))
        .map(|f| f.name().clone())
        .collect();
    let expected = files
        .iter()
        .map(|f| open(f).map(|b| b.metadata().file_metadata().num_rows() as u64))
        .sum::<Result<u64>>()?;
    let source = format!(
        "import-hf files={} caption_column={}",
        files.len(),
        spec.caption_column
    );
    let mut sink = ImportSink::open(target, source, extra.clone(), Some(expected))?;

    for file in &files {
        let builder = open(file)?;
        check_columns(file, builder.schema(), spec)?;
        let mut row = 0usize;
        for batch in builder
            .with_batch_size(256)
            .build()
            .map_err(FileError::not_parquet(file))?
        {
            let batch = batch.map_err(FileError::arrow(file))?;
            let images = image_bytes(
                file,
                batch.column_by_name(&spec.image_column).expect("checked"),
            )?;
            let captions = batch.column_by_name(&spec.caption_column).expect("checked");
            let extras = extra
                .iter()
                .map(|name| {
                    let column = batch.column_by_name(name).ok_or_else(|| {
                        let problem = format!("missing here but present in {}", files[0].display());
                        FileError::wrong_column(file, name, problem)
                    })?;
                    Ok(cast(column, &DataType::Utf8).map_err(FileError::arrow(file))?)
                })
                .collect::<Result<Vec<ArrayRef>>>()?;
            for i in 0..batch.num_rows() {
                let origin = format!("{} row {}", file.display(), row + i);
                if images.is_null(i) || images.value(i).is_empty() {
                    sink.skip(&origin, "missing image");
                    continue;
                }
                let texts = captions_of(captions, i, spec.all_captions);
                if texts.is_empty() {
                    sink.skip(&origin, "missing caption");
                    continue;
                }
                let values: Vec<Option<String>> = extras
                    .iter()
                    .map(|a| {
                        let a = a.as_string::<i32>();
                        a.is_valid(i).then(|| a.value(i).to_string())
                    })
                    .collect();
                for text in texts {
                    sink.push(&origin, images.value(i).to_vec(), &text, values.clone())?;
                }
            }
            row += batch.num_rows();
        }
    }
    sink.finish()
}

fn input_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            files.extend(crate::dataset::writer::shard_files(input)?);
        } else if input.is_file() {
            files.push(input.clone());
        } else {
            return Err(DatasetError::NotFound {
                path: input.clone(),
            });
        }
    }
    if files.is_empty() {
        return Err(DatasetError::Empty {
            dir: inputs.first().cloned().unwrap_or_default(),
        });
    }
    Ok(files)
}

fn open(file: &Path) -> Result<ParquetRecordBatchReaderBuilder<std::fs::File>> {
    let handle = std::fs::File::open(file).map_err(DatasetError::io(file))?;
    Ok(ParquetRecordBatchReaderBuilder::try_new(handle).map_err(FileError::not_parquet(file))?)
}

fn check_columns(file: &Path, schema: &arrow::datatypes::Schema, spec: &HfImport) -> Result<()> {
    let wrong = |column: &str, problem: String| {
        DatasetError::from(FileError::wrong_column(file, column, problem))
    };
    let names = || {
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let image = schema.field_with_name(&spec.image_column).map_err(|_| {
        wrong(
            &spec.image_column,
            format!(
                "missing (columns: {}); choose one with --image-column",
                names()
            ),
        )
    })?;
    let image_ok = match image.data_type() {
        DataType::Struct(children) => children
            .iter()
            .any(|c| c.name() == "bytes" && is_binary(c.data_type())),
        other => is_binary(other),
    };
    if !image_ok {
        return Err(wrong(
            &spec.image_column,
            format!(
                "expected struct<bytes, path> or binary, found {}",
                image.data_type()
            ),
        ));
    }
    let caption = schema.field_with_name(&spec.caption_column).map_err(|_| {
        wrong(
            &spec.caption_column,
            format!(
                "missing (columns: {}); choose one with --caption-column",
                names()
            ),
        )
    })?;
    let caption_ok = match caption.data_type() {
        DataType::List(item) | DataType::LargeList(item) => is_text(item.data_type()),
        other => is_text(other),
    };
    if !caption_ok {
        return Err(wrong(
            &spec.caption_column,
            format!(
                "expected a string or a list of strings, found {}",
                caption.data_type()
            ),
        ));
    }
    Ok(())
}

/// The non-empty captions of row `i`: the string, or the list's first (or every) string.
fn captions_of(column: &ArrayRef, i: usize, all: bool) -> Vec<String> {
    if column.is_null(i) {
        return Vec::new();
    }
    let texts: Vec<String> = match column.data_type() {
        DataType::List(_) => strings(&column.as_list::<i32>().value(i)),
        DataType::LargeList(_) => strings(&column.as_list::<i64>().value(i)),
        _ => strings(&column.slice(i, 1)),
    };
    let mut texts: Vec<String> = texts.into_iter().filter(|t| !t.trim().is_empty()).collect();
    if !all {
        texts.truncate(1);
    }
    texts
}

fn strings(array: &ArrayRef) -> Vec<String> {
    let Ok(array) = cast(array, &DataType::Utf8) else {
        return Vec::new();
    };
    let array = array.as_string::<i32>();
    (0..array.len())
        .filter(|&i| array.is_valid(i))
        .map(|i| array.value(i).to_string())
        .collect()
}
