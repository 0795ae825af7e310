//! The `matches` table (FORMATS.md, "Comparison tables"): every layer pair's one-to-one feature
//! matches ([`super::one_to_one`]), one row per matched pair.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Float64Type, UInt32Type};

use super::tables::{optional_column, read_batches, schema, strings, typed_column, write, Columns};
use super::MetricsError;

/// File name of the `matches` table inside a `compare` output folder and a pair's folder.
pub const MATCHES_FILE: &str = "matches.parquet";

const MATCHES: &Columns = &[
    ("source", DataType::Utf8, false),
    ("target", DataType::Utf8, false),
    ("source_layer", DataType::Utf8, false),
    ("target_layer", DataType::Utf8, false),
    ("source_feature", DataType::UInt32, false),
    ("target_feature", DataType::UInt32, false),
    ("rho", DataType::Float64, false),
    ("jaccard", DataType::Float64, true),
];

/// A row of the `matches` table: two features matched one to one.
#[derive(Clone, Debug, PartialEq)]
pub struct MatchRow {
    pub source: String,
    pub target: String,
    pub source_layer: String,
    pub target_layer: String,
    pub source_feature: u32,
    pub target_feature: u32,
    /// Their Pearson correlation over the samples compared.
    pub rho: f64,
    /// How often they fire together: the Jaccard index of the samples where each fires (`None`
    /// where the comparison kept no codes: no floor nor bootstrap).
    pub jaccard: Option<f64>,
}

/// Writes the `matches` table.
pub fn write_matches(path: &Path, rows: &[MatchRow]) -> Result<(), MetricsError> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| r.source.as_str())),
        strings(rows.iter().map(|r| r.target.as_str())),
        strings(rows.iter().map(|r| r.source_layer.as_str())),
        strings(rows.iter().map(|r| r.target_layer.as_str())),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.source_feature),
        )),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.target_feature),
        )),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.rho))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.jaccard))),
    ];
    Ok(write(path, schema(MATCHES), columns)?)
}

/// The rows of several tables (the pairs' own), each layer pair's once: a last-layers pair and
/// an all-layers pair of the same encoders share their last layers' matches. Files that do not
/// exist are passed over (pairs not finished).
pub fn merge_matches(
    files: impl IntoIterator<Item = std::path::PathBuf>,
) -> Result<Vec<MatchRow>, MetricsError> {
    merge_layer_pairs(files, read_matches, |r| {
        [&r.source, &r.target, &r.source_layer, &r.target_layer]
    })
}

/// The rows of the tables `files` that exist, read by `read`, each layer pair (`key`) from the
/// first file that holds it.
pub(crate) fn merge_layer_pairs<R>(
    files: impl IntoIterator<Item = std::path::PathBuf>,
    read: impl Fn(&Path) -> Result<Vec<R>, MetricsError>,
    key: impl Fn(&R) -> [&String; 4],
) -> Result<Vec<R>, MetricsError> {
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    for file in files.into_iter().filter(|f| f.is_file()) {
        let mut new = std::collections::HashSet::new();
        for row in read(&file)? {
            let k = key(&row).map(String::clone);
            if !seen.contains(&k) {
                new.insert(k);
                rows.push(row);
            }
        }
        // A file may hold many rows of each of its layer pairs.
        seen.extend(new);
    }
    Ok(rows)
}

/// A layer pair's matches in a few numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct MatchSummary {
    pub source: String,
    pub target: String,
    pub source_layer: String,
    pub target_layer: String,
    /// Features matched (at any positive correlation).
    pub matched: usize,
    /// Matched at `rho >=` each of [`super::SHARED_AT`].
    pub shared: [usize; 3],
    pub mean_rho: f64,
    /// The mean co-firing rate (Jaccard) of the matches at `rho >=` [`super::SHARED_AT`]`[0]`,
    /// where the table has rates and such matches.
    pub shared_jaccard: Option<f64>,
}

/// Each layer pair's [`MatchSummary`] in `path`, in the order the table lists them, without
/// holding its rows.
pub fn summarize_matches(path: &Path) -> Result<Vec<MatchSummary>, MetricsError> {
    let mut out: Vec<MatchSummary> = Vec::new();
    // Per summary: the co-firing rates of its shared matches, summed, and their count.
    let mut sums: Vec<(f64, usize)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for batch in read_batches(path)? {
        let column = |name: &str| typed_column(&batch, path, MATCHES, name, "a matches table");
        let text = layer_pair_columns(&batch, path)?;
        let text: Vec<&StringArray> = text.iter().map(|c| c.as_string::<i32>()).collect();
        let rho = column("rho")?;
        let rho = rho.as_primitive::<Float64Type>();
        let jaccard = optional_column(&batch, path, MATCHES, "jaccard", "a matches table")?;
        let jaccard = jaccard.as_ref().map(|c| c.as_primitive::<Float64Type>());
        for r in 0..batch.num_rows() {
            let key: [&str; 4] = std::array::from_fn(|c| text[c].value(r));
            let at = *index.entry(key.map(str::to_string)).or_insert_with(|| {
                out.push(MatchSummary {
                    source: key[0].into(),
                    target: key[1].into(),
                    source_layer: key[2].into(),
                    target_layer: key[3].into(),
                    matched: 0,
                    shared: [0; 3],
                    mean_rho: 0.0,
                    shared_jaccard: None,
                });
                sums.push((0.0, 0usize));
                out.len() - 1
            });
            let summary = &mut out[at];
            let value = rho.value(r);
            summary.matched += 1;
            summary.mean_rho += value;
            for (count, t) in summary.shared.iter_mut().zip(super::SHARED_AT) {
                *count += usize::from(value >= t);
            }
            let rate = jaccard.and_then(|j| j.is_valid(r).then(|| j.value(r)));
            if let Some(rate) = rate.filter(|_| value >= super::SHARED_AT[0]) {
                sums[at].0 += rate;
                sums[at].1 += 1;
            }
        }
    }
    for (s, (sum, count)) in out.iter_mut().zip(sums) {
        s.mean_rho /= s.matched.max(1) as f64;
        s.shared_jaccard = (count > 0).then(|| sum / count as f64);
    }
    Ok(out)
}

/// Reads a `matches` table written by [`write_matches`] (columns found by name).
pub fn read_matches(path: &Path) -> Result<Vec<MatchRow>, MetricsError> {
    let mut rows = Vec::new();
    for batch in read_batches(path)? {
        let column = |name: &str| typed_column(&batch, path, MATCHES, name, "a matches table");
        let text = layer_pair_columns(&batch, path)?;
        let text: Vec<&StringArray> = text.iter().map(|c| c.as_string::<i32>()).collect();
        let (a, b, rho) = (
            column("source_feature")?,
            column("target_feature")?,
            column("rho")?,
        );
        let (a, b) = (
            a.as_primitive::<UInt32Type>(),
            b.as_primitive::<UInt32Type>(),
        );
        let rho = rho.as_primitive::<Float64Type>();
        // Tables of earlier versions have no co-firing rate.
        let jaccard = optional_column(&batch, path, MATCHES, "jaccard", "a matches table")?;
        let jaccard = jaccard.as_ref().map(|c| c.as_primitive::<Float64Type>());
        for r in 0..batch.num_rows() {
            rows.push(MatchRow {
                source: text[0].value(r).to_string(),
                target: text[1].value(r).to_string(),
                source_layer: text[2].value(r).to_string(),
                target_layer: text[3].value(r).to_string(),
                source_feature: a.value(r),
                target_feature: b.value(r),
                rho: rho.value(r),
                jaccard: jaccard.and_then(|j| j.is_valid(r).then(|| j.value(r))),
            });
        }
    }
    Ok(rows)
}

/// The columns naming a row's layer pair: source, target, source layer, target layer.
fn layer_pair_columns(
    batch: &arrow::array::RecordBatch,
    path: &Path,
) -> Result<Vec<ArrayRef>, crate::file_error::FileError> {
    ["source", "target", "source_layer", "target_layer"]
        .iter()
        .map(|n| typed_column(batch, path, MATCHES, n, "a matches table"))
        .collect()
}
