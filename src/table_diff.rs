//! Numerical differences between two Parquet tables, or between the tables of two run folders:
//! what `saeshare diff` prints. scripts/same-run.sh asks whether two runs are identical byte for
//! byte; this asks how far apart they are, which is the question for runs on different devices
//! (a GPU's reductions and TF32 convolutions round differently from the CPU's).
//!
//! Float columns, and lists of floats (activation vectors), give their largest absolute
//! difference and that difference relative to the column's largest magnitude. Every other column
//! must be equal, row by row: a key that differs means the tables do not describe the same rows.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Float64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::file_error::FileError;
use crate::pipeline::MARKER_FILE;
use crate::run_layout::RunLayout;

/// How one table of A compares with the same table of B.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TableDiff {
    /// The table's path, relative to the folders compared (the file name for two files).
    pub table: PathBuf,
    pub rows: (usize, usize),
    /// Column names of A that B lacks or holds with another type, and the reverse.
    pub schema_differences: Vec<String>,
    /// Cells of columns that are not floats that differ, summed over those columns.
    pub unequal_cells: usize,
    /// Cells that differ in the columns allowed to (`may_differ`): a choice among values equal
    /// within rounding, such as `mppc.parquet`'s `best_feature`, the argmax of `rho`.
    pub choices_differ: usize,
    /// The largest absolute difference over the float columns (0 when there are none).
    pub max_abs: f64,
    /// The largest of each float column's `max_abs / max |A|`.
    pub max_rel: f64,
    /// The column where `max_rel` was found.
    pub worst_column: Option<String>,
}

impl TableDiff {
    /// Whether B holds the same rows as A, its floats within `tolerance` (relative).
    pub fn within(&self, tolerance: f64) -> bool {
        self.rows.0 == self.rows.1
            && self.schema_differences.is_empty()
            && self.unequal_cells == 0
            && self.max_rel <= tolerance
    }
}

/// Every table of two folders (or the two files) compared.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Diff {
    pub tables: Vec<TableDiff>,
    pub only_in_a: Vec<PathBuf>,
    pub only_in_b: Vec<PathBuf>,
    /// Folders left out: a run folder's activation cache, which holds no result (a run that
    /// imports its SAEs, or caches nothing, has none).
    pub not_compared: Vec<PathBuf>,
}

impl Diff {
    pub fn within(&self, tolerance: f64) -> bool {
        self.only_in_a.is_empty()
            && self.only_in_b.is_empty()
            && self.tables.iter().all(|t| t.within(tolerance))
    }
}

/// Compares `a` with `b`: two Parquet files, or every `*.parquet` file under two folders but
/// a run folder's activation cache. Cells of the columns named in `may_differ` that differ are
/// counted apart, not as differences.
pub fn diff(a: &Path, b: &Path, may_differ: &[String]) -> anyhow::Result<Diff> {
    if a.is_file() && b.is_file() {
        let name = PathBuf::from(a.file_name().unwrap_or(a.as_os_str()));
        return Ok(Diff {
            tables: vec![diff_tables(a, b, name, may_differ)?],
            ..Diff::default()
        });
    }
    for p in [a, b] {
        anyhow::ensure!(
            p.is_dir(),
            "{}: not a folder or Parquet file (give two files or two folders)",
            p.display()
        );
    }
    let cache = RunLayout::new("").activations();
    let (in_a, in_b) = (tables_under(a, &cache)?, tables_under(b, &cache)?);
    let mut out = Diff {
        only_in_a: in_a.difference(&in_b).cloned().collect(),
        only_in_b: in_b.difference(&in_a).cloned().collect(),
        not_compared: [a, b]
            .iter()
            .any(|root| is_run_folder(root) && root.join(&cache).is_dir())
            .then_some(cache)
            .into_iter()
            .collect(),
        ..Diff::default()
    };
    for table in in_a.intersection(&in_b) {
        out.tables.push(diff_tables(
            &a.join(table),
            &b.join(table),
            table.clone(),
            may_differ,
        )?);
    }
    Ok(out)
}

fn is_run_folder(root: &Path) -> bool {
    root.join(MARKER_FILE).is_file()
}

/// The Parquet files under `root`, as paths relative to it; in a run folder, none under `cache`
/// (relative).
fn tables_under(root: &Path, cache: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let skipped = is_run_folder(root).then(|| root.join(cache));
    let mut found = BTreeSet::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(&folder)
            .map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", folder.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                if skipped.as_ref() != Some(&path) {
                    folders.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "parquet") {
                found.insert(path.strip_prefix(root)?.to_path_buf());
            }
        }
    }
    Ok(found)
}

fn read_table(path: &Path) -> anyhow::Result<RecordBatch> {
    let file = File::open(path).map_err(FileError::io(path))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(FileError::not_parquet(path))?;
    let schema = builder.schema().clone();
    let batches = (builder.build().map_err(FileError::parquet(path))?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(FileError::arrow(path))?;
    Ok(concat_batches(&schema, &batches).map_err(FileError::arrow(path))?)
}

fn diff_tables(
    a: &Path,
    b: &Path,
    table: PathBuf,
    may_differ: &[String],
) -> anyhow::Result<TableDiff> {
    let (ta, tb) = (read_table(a)?, read_table(b)?);
    let mut out = TableDiff {
        table,
        rows: (ta.num_rows(), tb.num_rows()),
        schema_differences: Vec::new(),
        unequal_cells: 0,
        choices_differ: 0,
        max_abs: 0.0,
        max_rel: 0.0,
        worst_column: None,
    };
    for field in ta.schema().fields() {
        match tb.schema().field_with_name(field.name()) {
            Ok(other) if other.data_type() == field.data_type() => {}
            _ => out.schema_differences.push(field.name().clone()),
        }
    }
    for field in tb.schema().fields() {
        if ta.schema().field_with_name(field.name()).is_err() {
            out.schema_differences.push(field.name().clone());
        }
    }
    if out.rows.0 != out.rows.1 || !out.schema_differences.is_empty() {
        return Ok(out);
    }
    for (i, field) in ta.schema().fields().iter().enumerate() {
        let (ca, cb) = (
            ta.column(i),
            tb.column_by_name(field.name()).expect("checked"),
        );
        match float_values(ca)? {
            Some(va) => {
                let vb = float_values(cb)?.expect("same type");
                if va.len() != vb.len() {
                    // Lists of other lengths: the rows are not the same rows.
                    out.unequal_cells += ca.len();
                    continue;
                }
                let (abs, scale) = float_difference(&va, &vb);
                let rel = if scale > 0.0 { abs / scale } else { abs };
                out.max_abs = out.max_abs.max(abs);
                if rel > out.max_rel || out.worst_column.is_none() {
                    out.max_rel = out.max_rel.max(rel);
                    out.worst_column = Some(field.name().clone());
                }
            }
            None if may_differ.contains(field.name()) => {
                out.choices_differ += unequal_cells(ca, cb)?
            }
            None => out.unequal_cells += unequal_cells(ca, cb)?,
        }
    }
    Ok(out)
}

/// A float column's values as f64 (a list column's values flattened), or None for other types.
fn float_values(column: &ArrayRef) -> anyhow::Result<Option<Vec<f64>>> {
    let values = match column.data_type() {
        DataType::Float16 | DataType::Float32 | DataType::Float64 => column.clone(),
        DataType::List(f) if f.data_type().is_floating() => {
            column.as_list::<i32>().values().clone()
        }
        DataType::LargeList(f) if f.data_type().is_floating() => {
            column.as_list::<i64>().values().clone()
        }
        DataType::FixedSizeList(f, _) if f.data_type().is_floating() => {
            column.as_fixed_size_list().values().clone()
        }
        _ => return Ok(None),
    };
    let values = cast(&values, &DataType::Float64)?;
    let values = values.as_primitive::<Float64Type>();
    Ok(Some(
        (0..values.len())
            .map(|i| {
                if values.is_null(i) {
                    f64::NAN
                } else {
                    values.value(i)
                }
            })
            .collect(),
    ))
}

/// The largest |a - b| (NaN against NaN counts as equal, NaN against a number as infinite) and
/// the largest |a|.
fn float_difference(a: &[f64], b: &[f64]) -> (f64, f64) {
    let mut worst = 0.0f64;
    let mut scale = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        let d = match (x.is_nan(), y.is_nan()) {
            (true, true) => 0.0,
            (false, false) => (x - y).abs(),
            _ => f64::INFINITY,
        };
        worst = worst.max(d);
        if x.is_finite() {
            scale = scale.max(x.abs());
        }
    }
    (worst, scale)
}

fn unequal_cells(a: &ArrayRef, b: &ArrayRef) -> anyhow::Result<usize> {
    if a.to_data() == b.to_data() {
        return Ok(0);
    }
    Ok((0..a.len())
        .filter(|&i| a.slice(i, 1).to_data() != b.slice(i, 1).to_data())
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float32Array, Int64Array, ListArray, StringArray};
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::ArrowWriter;
    use std::sync::Arc;

    fn write(path: &Path, ids: &[i64], names: &[&str], scores: &[f32], vectors: &[[f32; 2]]) {
        let list = ListArray::from_iter_primitive::<arrow::datatypes::Float32Type, _, _>(
            vectors.iter().map(|v| Some(v.iter().map(|x| Some(*x)))),
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("score", DataType::Float32, false),
            Field::new("vector", list.data_type().clone(), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(names.to_vec())),
                Arc::new(Float32Array::from(scores.to_vec())),
                Arc::new(list),
            ],
        )
        .unwrap();
        let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn floats_give_their_largest_difference_and_keys_must_be_equal() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(a.join("pairs")).unwrap();
        std::fs::create_dir_all(b.join("pairs")).unwrap();
        let v = [[1.0, -4.0], [0.5, 2.0]];
        let w = [[1.0, -4.0], [0.5, 2.002]];
        for (root, vectors) in [(&a, &v), (&b, &w)] {
            let table = root.join("pairs/t.parquet");
            write(&table, &[1, 2], &["x", "y"], &[0.5, 0.25], vectors);
        }
        write(&a.join("only.parquet"), &[1], &["x"], &[0.0], &v[..1]);

        let d = diff(&a, &b, &[]).unwrap();
        assert_eq!(d.only_in_a, vec![PathBuf::from("only.parquet")]);
        assert!(d.only_in_b.is_empty());
        let t = &d.tables[0];
        assert_eq!(t.unequal_cells, 0);
        assert!((t.max_abs - 0.002).abs() < 1e-5, "{t:?}");
        // Relative to the vector column's largest magnitude, 4.
        assert!((t.max_rel - 0.0005).abs() < 1e-5, "{t:?}");
        assert_eq!(t.worst_column.as_deref(), Some("vector"));
        assert!(t.within(1e-3) && !t.within(1e-4));
        assert!(!d.within(1e-3), "a table only in A is a difference");

        // A key that differs is a difference whatever the tolerance.
        let c = dir.path().join("c.parquet");
        write(&c, &[1, 3], &["x", "y"], &[0.5, 0.25], &v);
        let d = diff(&a.join("pairs/t.parquet"), &c, &[]).unwrap();
        assert_eq!(d.tables[0].unequal_cells, 1);
        assert!(!d.within(1.0));
        // Unless the column is one allowed to differ: then it is counted apart.
        let d = diff(&a.join("pairs/t.parquet"), &c, &["id".to_string()]).unwrap();
        assert_eq!(
            (d.tables[0].unequal_cells, d.tables[0].choices_differ),
            (0, 1)
        );
        assert!(d.within(1e-6));
    }

    #[test]
    fn a_run_folders_activation_cache_is_left_out_and_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let v = [[1.0, -4.0]];
        for root in [&a, &b] {
            std::fs::create_dir_all(root.join("pairs")).unwrap();
            write(&root.join("pairs/t.parquet"), &[1], &["x"], &[0.5], &v);
        }
        // A cached the activations of its encoder; B imported its SAEs and cached nothing.
        std::fs::create_dir_all(a.join("activations/bert")).unwrap();
        write(
            &a.join("activations/bert/shard-000000.parquet"),
            &[1],
            &["x"],
            &[0.0],
            &v,
        );

        // Not run folders: every table counts.
        let d = diff(&a, &b, &[]).unwrap();
        assert_eq!(
            d.only_in_a,
            vec![PathBuf::from("activations/bert/shard-000000.parquet")]
        );
        assert!(d.not_compared.is_empty() && !d.within(1e-3));

        for root in [&a, &b] {
            std::fs::write(root.join(MARKER_FILE), b"{}").unwrap();
        }
        let d = diff(&a, &b, &[]).unwrap();
        assert!(d.only_in_a.is_empty(), "{d:?}");
        assert_eq!(d.not_compared, vec![PathBuf::from("activations")]);
        assert_eq!(d.tables.len(), 1);
        assert!(d.within(1e-3));
    }

    #[test]
    fn a_file_that_is_not_parquet_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
        std::fs::write(&a, b"not parquet").unwrap();
        std::fs::write(&b, b"not parquet").unwrap();
        let err = diff(&a, &b, &[]).unwrap_err().to_string();
        assert!(err.contains("a.parquet"), "{err}");
    }
}
