//! The Parquet tables of FORMATS.md ("Comparison tables"): `mppc`, `wmppc` and `sharedness`, zstd-compressed,
//! written atomically (temporary file, then rename; a newer result replaces an older one).
//! The core columns come first in a fixed order, the others after them (FORMATS.md says what each holds).

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float64Type, Schema, UInt32Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::{Aggregation, FeatureRow, MetricsError, MppcRow, SharednessRow, WmppcRow};
use crate::atomic::{self, AtomicFile};
use crate::file_error::FileError;

/// File name of the `mppc` table inside a `compare` output folder.
pub const MPPC_FILE: &str = "mppc.parquet";
/// File name of the `wmppc` table inside a `compare` output folder.
pub const WMPPC_FILE: &str = "wmppc.parquet";
/// File name of the `features` table inside a `compare` output folder.
pub const FEATURES_FILE: &str = "features.parquet";

pub(crate) fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

/// A table's columns in the order they are written: name, type, nullable. The one definition
/// of a table, for its writer and its reader.
pub(crate) type Columns = [(&'static str, DataType, bool)];

/// The `features` table: each feature's moments.
const FEATURES: &Columns = &[
    ("encoder", DataType::Utf8, false),
    ("layer", DataType::Utf8, false),
    ("feature", DataType::UInt32, false),
    ("count", DataType::UInt64, false),
    ("sum", DataType::Float64, false),
    ("sum_sq", DataType::Float64, false),
    ("samples", DataType::UInt64, false),
];

/// The `mppc` table: each source feature's best match in a target layer (or all of them).
const MPPC: &Columns = &[
    ("source", DataType::Utf8, false),
    ("source_layer", DataType::Utf8, false),
    ("feature", DataType::UInt32, false),
    ("target", DataType::Utf8, false),
    ("target_layer", DataType::Utf8, false),
    ("best_feature", DataType::UInt32, true),
    ("rho", DataType::Float64, false),
    ("weight", DataType::Float64, false),
    ("best_layer", DataType::Utf8, true),
];

/// The `wmppc` table: one value per layer pair and aggregation, with its baselines.
const WMPPC: &Columns = &[
    ("source", DataType::Utf8, false),
    ("target", DataType::Utf8, false),
    ("source_layer", DataType::Utf8, false),
    ("target_layer", DataType::Utf8, false),
    ("wmppc", DataType::Float64, true),
    ("baseline_floor", DataType::Float64, true),
    ("baseline_ceiling", DataType::Float64, true),
    ("aggregation", DataType::Utf8, false),
    ("baseline_floor_std", DataType::Float64, true),
    ("samples", DataType::UInt64, false),
    ("normalised", DataType::Float64, true),
    ("ci_low", DataType::Float64, true),
    ("ci_high", DataType::Float64, true),
    ("bootstrap_bias", DataType::Float64, true),
    ("floor_p", DataType::Float64, true),
    ("baseline_ceiling_std", DataType::Float64, true),
];

/// A `sharedness` ranking: the source's features by Delta.
const SHAREDNESS: &Columns = &[
    ("feature", DataType::UInt32, false),
    ("delta", DataType::Float64, false),
    ("rho_min_shared", DataType::Float64, false),
    ("rho_max_not_shared", DataType::Float64, true),
    ("weight", DataType::Float64, false),
    ("source", DataType::Utf8, false),
    ("source_layer", DataType::Utf8, false),
];

/// The Arrow schema a table is written with.
pub(crate) fn schema(columns: &Columns) -> Schema {
    Schema::new(
        columns
            .iter()
            .map(|(name, data_type, nullable)| Field::new(*name, data_type.clone(), *nullable))
            .collect::<Vec<Field>>(),
    )
}

/// The type and nullability of the column `name` of a table.
fn column_type(columns: &Columns, name: &str) -> (DataType, bool) {
    let (_, data_type, nullable) = columns
        .iter()
        .find(|c| c.0 == name)
        .expect("a column of the table");
    (data_type.clone(), *nullable)
}

/// The rows of several pairs' tables, each once: a last-layers pair and an all-layers pair of
/// the same two encoders share their last-layer rows (the same sums).
#[derive(Default)]
pub struct MergedTables {
    pub wmppc: Vec<WmppcRow>,
    pub mppc: Vec<MppcRow>,
    seen_wmppc: HashSet<(String, String, String, String, Aggregation)>,
    seen_mppc: HashSet<(String, String, u32, String, String)>,
}

impl MergedTables {
    /// Adds a `wmppc` row unless an equal key is in.
    pub fn add_wmppc(&mut self, row: WmppcRow) {
        let key = (
            row.source.clone(),
            row.target.clone(),
            row.source_layer.clone(),
            row.target_layer.clone(),
            row.aggregation,
        );
        if self.seen_wmppc.insert(key) {
            self.wmppc.push(row);
        }
    }

    /// Adds an `mppc` row unless an equal key is in.
    pub fn add_mppc(&mut self, row: MppcRow) {
        let key = (
            row.source.clone(),
            row.source_layer.clone(),
            row.feature,
            row.target.clone(),
            row.target_layer.clone(),
        );
        if self.seen_mppc.insert(key) {
            self.mppc.push(row);
        }
    }
}

/// Writes the `features` table.
pub fn write_features(path: &Path, rows: &[FeatureRow]) -> Result<(), MetricsError> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| r.encoder.as_str())),
        strings(rows.iter().map(|r| r.layer.as_str())),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.feature),
        )),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.count))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.sum))),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.sum_sq),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.samples),
        )),
    ];
    Ok(write(path, schema(FEATURES), columns)?)
}

/// Writes the `mppc` table.
pub fn write_mppc(path: &Path, rows: &[MppcRow]) -> Result<(), MetricsError> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| r.source.as_str())),
        strings(rows.iter().map(|r| r.source_layer.as_str())),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.feature),
        )),
        strings(rows.iter().map(|r| r.target.as_str())),
        strings(rows.iter().map(|r| r.target_layer.as_str())),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.best_feature))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.rho))),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.weight),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.best_layer.as_deref()),
        )),
    ];
    Ok(write(path, schema(MPPC), columns)?)
}

/// Writes the `wmppc` table.
pub fn write_wmppc(path: &Path, rows: &[WmppcRow]) -> Result<(), MetricsError> {
    let f64s = |get: fn(&WmppcRow) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from_iter(rows.iter().map(get)))
    };
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| r.source.as_str())),
        strings(rows.iter().map(|r| r.target.as_str())),
        strings(rows.iter().map(|r| r.source_layer.as_str())),
        strings(rows.iter().map(|r| r.target_layer.as_str())),
        f64s(|r| r.wmppc),
        f64s(|r| r.baseline_floor),
        f64s(|r| r.baseline_ceiling),
        strings(rows.iter().map(|r| r.aggregation.as_str())),
        f64s(|r| r.baseline_floor_std),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.samples),
        )),
        f64s(|r| super::matrix::normalised(r.wmppc, r.baseline_floor, r.baseline_ceiling)),
        f64s(|r| r.ci_low),
        f64s(|r| r.ci_high),
        f64s(|r| r.bootstrap_bias),
        f64s(|r| r.floor_p),
        f64s(|r| r.baseline_ceiling_std),
    ];
    Ok(write(path, schema(WMPPC), columns)?)
}

/// Writes a `sharedness` ranking of `source`'s features.
pub fn write_sharedness(
    path: &Path,
    source: &str,
    rows: &[SharednessRow],
) -> Result<(), MetricsError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.feature),
        )),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.delta))),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.rho_min_shared),
        )),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| r.rho_max_not_shared),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.weight),
        )),
        strings(rows.iter().map(|_| source)),
        strings(rows.iter().map(|r| r.source_layer.as_str())),
    ];
    Ok(write(path, schema(SHAREDNESS), columns)?)
}

pub(crate) fn write(path: &Path, schema: Schema, columns: Vec<ArrayRef>) -> Result<(), FileError> {
    let schema = Arc::new(schema);
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(FileError::arrow(path))?;
    let dir = atomic::folder_of(path);
    fs::create_dir_all(dir).map_err(FileError::io(dir))?;
    let file = AtomicFile::create(path).map_err(FileError::io(dir))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .build();
    let mut writer =
        ArrowWriter::try_new(file, schema, Some(properties)).map_err(FileError::parquet(path))?;
    writer.write(&batch).map_err(FileError::parquet(path))?;
    let file = writer.into_inner().map_err(FileError::parquet(path))?;
    file.commit().map_err(FileError::io(path))?;
    Ok(())
}

/// Reads an `mppc` table: a file, or a `compare` output folder holding [`MPPC_FILE`]. Columns
/// are found by name, so tables rewritten by pandas or polars read too.
pub fn read_mppc(path: &Path) -> Result<Vec<MppcRow>, MetricsError> {
    read_mppc_of(path, |_| true)
}

/// Reads the rows of an `mppc` table whose source model passes `keep` (a study's table holds
/// every pair's rows; a reader interested in a few models need not hold the rest).
pub fn read_mppc_of(
    path: &Path,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<MppcRow>, MetricsError> {
    let file_path = if path.is_dir() {
        path.join(MPPC_FILE)
    } else {
        path.to_path_buf()
    };
    let mut rows = Vec::new();
    for batch in batches(&file_path)? {
        let batch = batch?;
        let column = |name: &str| {
            let (data_type, nullable) = column_type(MPPC, name);
            let wrong = |problem: String| FileError::wrong_column(&file_path, name, problem);
            let c = batch
                .column_by_name(name)
                .ok_or_else(|| wrong("missing; is this an mppc table?".into()))?;
            if !nullable && c.null_count() > 0 {
                return Err(wrong("holds nulls".into()));
            }
            cast(c, &data_type).map_err(|e| wrong(e.to_string()))
        };
        let text = |name: &str| -> Result<StringArray, FileError> {
            Ok(column(name)?.as_string::<i32>().clone())
        };
        let (source, source_layer) = (text("source")?, text("source_layer")?);
        let (target, target_layer) = (text("target")?, text("target_layer")?);
        let feature = column("feature")?;
        let feature = feature.as_primitive::<UInt32Type>();
        let best = column("best_feature")?;
        let best = best.as_primitive::<UInt32Type>();
        let rho = column("rho")?;
        let rho = rho.as_primitive::<Float64Type>();
        let weight = column("weight")?;
        let weight = weight.as_primitive::<Float64Type>();
        let best_layer = match batch.column_by_name("best_layer") {
            Some(_) => Some(column("best_layer")?),
            None => None,
        };
        let best_layer = best_layer.as_ref().map(|c| c.as_string::<i32>());
        for r in 0..batch.num_rows() {
            if !keep(source.value(r)) {
                continue;
            }
            rows.push(MppcRow {
                source: source.value(r).to_string(),
                source_layer: source_layer.value(r).to_string(),
                feature: feature.value(r),
                target: target.value(r).to_string(),
                target_layer: target_layer.value(r).to_string(),
                best_feature: best.is_valid(r).then(|| best.value(r)),
                best_layer: best_layer
                    .filter(|c| c.is_valid(r))
                    .map(|c| c.value(r).to_string()),
                rho: rho.value(r),
                weight: weight.value(r),
            });
        }
    }
    Ok(rows)
}

/// Reads a `wmppc` table written by [`write_wmppc`].
pub fn read_wmppc(path: &Path) -> Result<Vec<WmppcRow>, MetricsError> {
    let mut rows = Vec::new();
    for batch in read_batches(path)? {
        let column = |name: &str| typed_column(&batch, path, WMPPC, name, "a wmppc table");
        let text: Vec<ArrayRef> = [
            "source",
            "target",
            "source_layer",
            "target_layer",
            "aggregation",
        ]
        .iter()
        .map(|n| column(n))
        .collect::<Result<_, _>>()?;
        let text: Vec<&StringArray> = text.iter().map(|c| c.as_string::<i32>()).collect();
        let reals: Vec<ArrayRef> = [
            "wmppc",
            "baseline_floor",
            "baseline_floor_std",
            "baseline_ceiling",
        ]
        .iter()
        .map(|n| column(n))
        .collect::<Result<_, _>>()?;
        let reals: Vec<&Float64Array> = reals
            .iter()
            .map(|c| c.as_primitive::<Float64Type>())
            .collect();
        let samples = column("samples")?;
        let samples = samples.as_primitive::<arrow::datatypes::UInt64Type>();
        // Tables of earlier versions have no bootstrap nor ceiling spread: their cells read as
        // empty.
        let bootstrap: Vec<Option<ArrayRef>> = [
            "ci_low",
            "ci_high",
            "bootstrap_bias",
            "floor_p",
            "baseline_ceiling_std",
        ]
        .iter()
        .map(|n| optional_column(&batch, path, WMPPC, n, "a wmppc table"))
        .collect::<Result<_, _>>()?;
        let bootstrap: Vec<Option<&Float64Array>> = (bootstrap.iter())
            .map(|c| c.as_ref().map(|c| c.as_primitive::<Float64Type>()))
            .collect();
        let real = |c: usize, r: usize| reals[c].is_valid(r).then(|| reals[c].value(r));
        let interval =
            |c: usize, r: usize| bootstrap[c].and_then(|a| a.is_valid(r).then(|| a.value(r)));
        for r in 0..batch.num_rows() {
            let aggregation = super::Aggregation::parse(text[4].value(r)).ok_or_else(|| {
                let problem = format!("row {r}: unknown aggregation {:?}", text[4].value(r));
                FileError::wrong_schema(path, problem)
            })?;
            rows.push(WmppcRow {
                source: text[0].value(r).to_string(),
                target: text[1].value(r).to_string(),
                source_layer: text[2].value(r).to_string(),
                target_layer: text[3].value(r).to_string(),
                aggregation,
                wmppc: real(0, r),
                baseline_floor: real(1, r),
                baseline_floor_std: real(2, r),
                baseline_ceiling: real(3, r),
                samples: samples.value(r),
                ci_low: interval(0, r),
                ci_high: interval(1, r),
                bootstrap_bias: interval(2, r),
                floor_p: interval(3, r),
                baseline_ceiling_std: interval(4, r),
            });
        }
    }
    Ok(rows)
}

/// The column `name` of a batch of `path`, cast to its type in the table `columns` (tables
/// rewritten by other tools may use other integer or float widths); `what` names the table in
/// the error.
pub(crate) fn typed_column(
    batch: &RecordBatch,
    path: &Path,
    columns: &Columns,
    name: &str,
    what: &str,
) -> Result<ArrayRef, FileError> {
    let c = batch.column_by_name(name).ok_or_else(|| {
        FileError::wrong_schema(path, format!("column `{name}` is missing; is this {what}?"))
    })?;
    let (data_type, _) = column_type(columns, name);
    cast(c, &data_type).map_err(|e| FileError::wrong_column(path, name, e.to_string()))
}

/// The column `name` as [`typed_column`] gives it, or `None` where the batch has no such column:
/// one a later version added, which tables of earlier versions lack.
pub(crate) fn optional_column(
    batch: &RecordBatch,
    path: &Path,
    columns: &Columns,
    name: &str,
    what: &str,
) -> Result<Option<ArrayRef>, FileError> {
    (batch.column_by_name(name))
        .map(|_| typed_column(batch, path, columns, name, what))
        .transpose()
}

/// The record batches of the table `path`, one at a time.
fn batches(
    path: &Path,
) -> Result<impl Iterator<Item = Result<RecordBatch, FileError>> + '_, FileError> {
    let file = File::open(path).map_err(FileError::io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(FileError::parquet(path))?
        .build()
        .map_err(FileError::parquet(path))?;
    Ok(reader.map(move |b| b.map_err(FileError::arrow(path))))
}

pub(crate) fn read_batches(path: &Path) -> Result<Vec<RecordBatch>, FileError> {
    batches(path)?.collect()
}

/// Reads a sharedness ranking written by [`write_sharedness`]: the ranked model and its rows.
pub fn read_sharedness(path: &Path) -> Result<(String, Vec<SharednessRow>), MetricsError> {
    let mut source = String::new();
    let mut rows = Vec::new();
    for batch in read_batches(path)? {
        let column =
            |name: &str| typed_column(&batch, path, SHAREDNESS, name, "a sharedness ranking");
        let feature = column("feature")?;
        let feature = feature.as_primitive::<UInt32Type>();
        let reals: Vec<ArrayRef> = ["delta", "rho_min_shared", "rho_max_not_shared", "weight"]
            .iter()
            .map(|n| column(n))
            .collect::<Result<_, _>>()?;
        let reals: Vec<&Float64Array> = reals
            .iter()
            .map(|c| c.as_primitive::<Float64Type>())
            .collect();
        let text: Vec<ArrayRef> = ["source", "source_layer"]
            .iter()
            .map(|n| column(n))
            .collect::<Result<_, _>>()?;
        let text: Vec<&StringArray> = text.iter().map(|c| c.as_string::<i32>()).collect();
        for r in 0..batch.num_rows() {
            if feature.is_null(r) || reals[0].is_null(r) || text[1].is_null(r) {
                let problem = format!("row {r}: feature, delta and source_layer must not be null");
                return Err(FileError::wrong_schema(path, problem).into());
            }
            let real = |c: usize| reals[c].is_valid(r).then(|| reals[c].value(r));
            if source.is_empty() && text[0].is_valid(r) {
                source = text[0].value(r).to_string();
            }
            rows.push(SharednessRow {
                source_layer: text[1].value(r).to_string(),
                feature: feature.value(r),
                delta: reals[0].value(r),
                rho_min_shared: real(1).unwrap_or(f64::NAN),
                rho_max_not_shared: real(2),
                weight: real(3).unwrap_or(0.0),
            });
        }
    }
    Ok((source, rows))
}
