//! `similarity.parquet`: one row per layer pair and measure (FORMATS.md, "Similarity table").

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Float64Type, UInt64Type};

use super::{Measure, SimilarityRow};
use crate::file_error::FileError;
use crate::metrics::tables::{read_batches, schema, strings, typed_column, write, Columns};

/// The table's file name, in a run's output folder and a pair's folder.
pub const SIMILARITY_FILE: &str = "similarity.parquet";

const SIMILARITY: &Columns = &[
    ("source", DataType::Utf8, false),
    ("target", DataType::Utf8, false),
    ("source_layer", DataType::Utf8, false),
    ("target_layer", DataType::Utf8, false),
    ("measure", DataType::Utf8, false),
    ("value", DataType::Float64, true),
    ("floor", DataType::Float64, true),
    ("samples", DataType::UInt64, false),
    ("floor_std", DataType::Float64, true),
];

/// Writes the rows, whole or not at all.
pub fn write_similarity(path: &Path, rows: &[SimilarityRow]) -> Result<(), FileError> {
    let f64s = |get: fn(&SimilarityRow) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from_iter(rows.iter().map(get)))
    };
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| r.source.as_str())),
        strings(rows.iter().map(|r| r.target.as_str())),
        strings(rows.iter().map(|r| r.source_layer.as_str())),
        strings(rows.iter().map(|r| r.target_layer.as_str())),
        strings(rows.iter().map(|r| r.measure.name())),
        f64s(|r| r.value),
        f64s(|r| r.floor),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.samples),
        )),
        f64s(|r| r.floor_std),
    ];
    write(path, schema(SIMILARITY), columns)
}

/// Reads a table [`write_similarity`] wrote (or one rewritten by pandas: columns by name).
pub fn read_similarity(path: &Path) -> Result<Vec<SimilarityRow>, FileError> {
    let mut rows = Vec::new();
    for batch in read_batches(path)? {
        let column =
            |name: &str| typed_column(&batch, path, SIMILARITY, name, "a similarity table");
        let text: Vec<ArrayRef> = [
            "source",
            "target",
            "source_layer",
            "target_layer",
            "measure",
        ]
        .iter()
        .map(|n| column(n))
        .collect::<Result<_, _>>()?;
        let text: Vec<&StringArray> = text.iter().map(|c| c.as_string::<i32>()).collect();
        let reals: Vec<ArrayRef> = ["value", "floor", "floor_std"]
            .iter()
            .map(|n| column(n))
            .collect::<Result<_, _>>()?;
        let reals: Vec<&Float64Array> = reals
            .iter()
            .map(|c| c.as_primitive::<Float64Type>())
            .collect();
        let samples = column("samples")?;
        let samples = samples.as_primitive::<UInt64Type>();
        for r in 0..batch.num_rows() {
            if text.iter().any(|t| t.is_null(r)) || samples.is_null(r) {
                let problem = format!("row {r}: names, measure and samples must not be null");
                return Err(FileError::wrong_schema(path, problem));
            }
            let measure = Measure::parse(text[4].value(r)).ok_or_else(|| {
                let problem = format!("row {r}: unknown measure {:?}", text[4].value(r));
                FileError::wrong_schema(path, problem)
            })?;
            let real = |c: usize| reals[c].is_valid(r).then(|| reals[c].value(r));
            rows.push(SimilarityRow {
                source: text[0].value(r).to_string(),
                target: text[1].value(r).to_string(),
                source_layer: text[2].value(r).to_string(),
                target_layer: text[3].value(r).to_string(),
                measure,
                value: real(0),
                floor: real(1),
                floor_std: real(2),
                samples: samples.value(r),
            });
        }
    }
    Ok(rows)
}

/// The rows of several tables (the pairs' own), each layer pair's measure once: a last-layers
/// pair and an all-layers pair of the same encoders share their last-layer rows. Files that do
/// not exist are passed over (pairs without the measures, or not finished).
pub fn merge_similarity(
    files: impl IntoIterator<Item = std::path::PathBuf>,
) -> Result<Vec<SimilarityRow>, FileError> {
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    for file in files.into_iter().filter(|f| f.is_file()) {
        for row in read_similarity(&file)? {
            let key = (
                row.source.clone(),
                row.target.clone(),
                row.source_layer.clone(),
                row.target_layer.clone(),
                row.measure,
            );
            if seen.insert(key) {
                rows.push(row);
            }
        }
    }
    Ok(rows)
}
