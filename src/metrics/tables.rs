//! The Parquet tables of FORMATS.md ("Comparison tables"): `mppc`, `wmppc` and `sharedness`, zstd-compressed,
//! written atomically (temporary file, then rename; a newer result replaces an older one).
//! The core columns come first in a fixed order, the others after them (FORMATS.md says what each holds).

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
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

/// File name of the `mppc` table inside a `compare` output folder.
pub const MPPC_FILE: &str = "mppc.parquet";
/// File name of the `wmppc` table inside a `compare` output folder.
pub const WMPPC_FILE: &str = "wmppc.parquet";
/// File name of the `features` table inside a `compare` output folder.
pub const FEATURES_FILE: &str = "features.parquet";

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn field(name: &str, data_type: DataType, nullable: bool) -> Field {
    Field::new(name, data_type, nullable)
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
    let schema = Schema::new(vec![
        field("encoder", DataType::Utf8, false),
        field("layer", DataType::Utf8, false),
        field("feature", DataType::UInt32, false),
        field("count", DataType::UInt64, false),
        field("sum", DataType::Float64, false),
        field("sum_sq", DataType::Float64, false),
        field("samples", DataType::UInt64, false),
    ]);
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
    write(path, schema, columns)
}

/// Writes the `mppc` table.
pub fn write_mppc(path: &Path, rows: &[MppcRow]) -> Result<(), MetricsError> {
    let schema = Schema::new(vec![
        field("source", DataType::Utf8, false),
        field("source_layer", DataType::Utf8, false),
        field("feature", DataType::UInt32, false),
        field("target", DataType::Utf8, false),
        field("target_layer", DataType::Utf8, false),
        field("best_feature", DataType::UInt32, true),
        field("rho", DataType::Float64, false),
        field("weight", DataType::Float64, false),
        field("best_layer", DataType::Utf8, true),
    ]);
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
    write(path, schema, columns)
}

/// Writes the `wmppc` table.
pub fn write_wmppc(path: &Path, rows: &[WmppcRow]) -> Result<(), MetricsError> {
    let schema = Schema::new(vec![
        field("source", DataType::Utf8, false),
        field("target", DataType::Utf8, false),
        field("source_layer", DataType::Utf8, false),
        field("target_layer", DataType::Utf8, false),
        field("wmppc", DataType::Float64, true),
        field("baseline_floor", DataType::Float64, true),
        field("baseline_ceiling", DataType::Float64, true),
        field("aggregation", DataType::Utf8, false),
        field("baseline_floor_std", DataType::Float64, true),
        field("samples", DataType::UInt64, false),
    ]);
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
    ];
    write(path, schema, columns)
}

/// Writes a `sharedness` ranking of `source`'s features.
pub fn write_sharedness(
    path: &Path,
    source: &str,
    rows: &[SharednessRow],
) -> Result<(), MetricsError> {
    let schema = Schema::new(vec![
        field("feature", DataType::UInt32, false),
        field("delta", DataType::Float64, false),
        field("rho_min_shared", DataType::Float64, false),
        field("rho_max_not_shared", DataType::Float64, true),
        field("weight", DataType::Float64, false),
        field("source", DataType::Utf8, false),
        field("source_layer", DataType::Utf8, false),
    ]);
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
    write(path, schema, columns)
}

fn write(path: &Path, schema: Schema, columns: Vec<ArrayRef>) -> Result<(), MetricsError> {
    let schema = Arc::new(schema);
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(MetricsError::arrow(path))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(MetricsError::io(&dir))?;
    let temp = tempfile::Builder::new()
        .prefix(".table.")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(MetricsError::io(&dir))?;
    let file = temp.reopen().map_err(MetricsError::io(path))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema, Some(properties))
        .map_err(MetricsError::parquet(path))?;
    writer.write(&batch).map_err(MetricsError::parquet(path))?;
    let file = writer.into_inner().map_err(MetricsError::parquet(path))?;
    file.sync_all().map_err(MetricsError::io(path))?;
    temp.persist(path)
        .map_err(|e| MetricsError::io(path)(e.error))?;
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
    let file = File::open(&file_path).map_err(MetricsError::io(&file_path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(MetricsError::parquet(&file_path))?
        .build()
        .map_err(MetricsError::parquet(&file_path))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(MetricsError::arrow(&file_path))?;
        let column = |name: &str, data_type: DataType, nullable: bool| {
            let wrong = |problem: String| MetricsError::WrongSchema {
                file: file_path.clone(),
                problem: format!("column `{name}`: {problem}"),
            };
            let c = batch
                .column_by_name(name)
                .ok_or_else(|| wrong("missing; is this an mppc table?".into()))?;
            if !nullable && c.null_count() > 0 {
                return Err(wrong("holds nulls".into()));
            }
            cast(c, &data_type).map_err(|e| wrong(e.to_string()))
        };
        let text = |name: &str| -> Result<StringArray, MetricsError> {
            Ok(column(name, DataType::Utf8, false)?
                .as_string::<i32>()
                .clone())
        };
        let (source, source_layer) = (text("source")?, text("source_layer")?);
        let (target, target_layer) = (text("target")?, text("target_layer")?);
        let feature = column("feature", DataType::UInt32, false)?;
        let feature = feature.as_primitive::<UInt32Type>();
        let best = column("best_feature", DataType::UInt32, true)?;
        let best = best.as_primitive::<UInt32Type>();
        let rho = column("rho", DataType::Float64, false)?;
        let rho = rho.as_primitive::<Float64Type>();
        let weight = column("weight", DataType::Float64, false)?;
        let weight = weight.as_primitive::<Float64Type>();
        let best_layer = match batch.column_by_name("best_layer") {
            Some(_) => Some(column("best_layer", DataType::Utf8, true)?),
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
        let column = |name: &str, data_type: DataType| {
            typed_column(&batch, path, name, data_type, "a wmppc table")
        };
        let text: Vec<ArrayRef> = [
            "source",
            "target",
            "source_layer",
            "target_layer",
            "aggregation",
        ]
        .iter()
        .map(|n| column(n, DataType::Utf8))
        .collect::<Result<_, _>>()?;
        let text: Vec<&StringArray> = text.iter().map(|c| c.as_string::<i32>()).collect();
        let reals: Vec<ArrayRef> = [
            "wmppc",
            "baseline_floor",
            "baseline_floor_std",
            "baseline_ceiling",
        ]
        .iter()
        .map(|n| column(n, DataType::Float64))
        .collect::<Result<_, _>>()?;
        let reals: Vec<&Float64Array> = reals
            .iter()
            .map(|c| c.as_primitive::<Float64Type>())
            .collect();
        let samples = column("samples", DataType::UInt64)?;
        let samples = samples.as_primitive::<arrow::datatypes::UInt64Type>();
        let real = |c: usize, r: usize| reals[c].is_valid(r).then(|| reals[c].value(r));
        for r in 0..batch.num_rows() {
            let aggregation = super::Aggregation::parse(text[4].value(r)).ok_or_else(|| {
                MetricsError::WrongSchema {
                    file: path.to_path_buf(),
                    problem: format!("row {r}: unknown aggregation {:?}", text[4].value(r)),
                }
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
            });
        }
    }
    Ok(rows)
}

/// The column `name` of a batch of `path`, cast to `data_type` (tables rewritten by other tools
/// may use other integer or float widths); `what` names the table in the error.
fn typed_column(
    batch: &RecordBatch,
    path: &Path,
    name: &str,
    data_type: DataType,
    what: &str,
) -> Result<ArrayRef, MetricsError> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| MetricsError::WrongSchema {
            file: path.to_path_buf(),
            problem: format!("column `{name}` is missing; is this {what}?"),
        })?;
    cast(c, &data_type).map_err(|e| MetricsError::WrongSchema {
        file: path.to_path_buf(),
        problem: format!("column `{name}`: {e}"),
    })
}

fn read_batches(path: &Path) -> Result<Vec<RecordBatch>, MetricsError> {
    let file = File::open(path).map_err(MetricsError::io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(MetricsError::parquet(path))?
        .build()
        .map_err(MetricsError::parquet(path))?;
    reader
        .map(|b| b.map_err(MetricsError::arrow(path)))
        .collect()
}

/// Reads a sharedness ranking written by [`write_sharedness`]: the ranked model and its rows.
pub fn read_sharedness(path: &Path) -> Result<(String, Vec<SharednessRow>), MetricsError> {
    let mut source = String::new();
    let mut rows = Vec::new();
    for batch in read_batches(path)? {
        let column = |name: &str, data_type: DataType| {
            typed_column(&batch, path, name, data_type, "a sharedness ranking")
        };
        let feature = column("feature", DataType::UInt32)?;
        let feature = feature.as_primitive::<UInt32Type>();
        let reals: Vec<ArrayRef> = ["delta", "rho_min_shared", "rho_max_not_shared", "weight"]
            .iter()
            .map(|n| column(n, DataType::Float64))
            .collect::<Result<_, _>>()?;
        let reals: Vec<&Float64Array> = reals
            .iter()
            .map(|c| c.as_primitive::<Float64Type>())
            .collect();
        let text: Vec<ArrayRef> = ["source", "source_layer"]
            .iter()
            .map(|n| column(n, DataType::Utf8))
            .collect::<Result<_, _>>()?;
        let text: Vec<&StringArray> = text.iter().map(|c| c.as_string::<i32>()).collect();
        for r in 0..batch.num_rows() {
            if feature.is_null(r) || reals[0].is_null(r) || text[1].is_null(r) {
                return Err(MetricsError::WrongSchema {
                    file: path.to_path_buf(),
                    problem: format!("row {r}: feature, delta and source_layer must not be null"),
                });
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
