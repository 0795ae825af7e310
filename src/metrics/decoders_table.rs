//! The `decoders` table (FORMATS.md, "Comparison tables"): each layer pair's decoder geometry
//! ([`super::decoder_geometry`]), one row per layer pair.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Float64Type, UInt32Type};

use super::decoder_geometry::{LayerGeometry, PairedSvcca};
use super::matches_table::merge_layer_pairs;
use super::tables::{read_batches, schema, strings, typed_column, write, Columns};
use super::MetricsError;

/// File name of the `decoders` table inside a pair's folder and a run folder.
pub const DECODERS_FILE: &str = "decoders.parquet";

const DECODERS: &Columns = &[
    ("source", DataType::Utf8, false),
    ("target", DataType::Utf8, false),
    ("source_layer", DataType::Utf8, false),
    ("target_layer", DataType::Utf8, false),
    ("features", DataType::UInt32, false),
    ("cosine_matched", DataType::UInt32, true),
    ("cosine_0_5", DataType::UInt32, true),
    ("cosine_0_7", DataType::UInt32, true),
    ("cosine_0_9", DataType::UInt32, true),
    ("paired", DataType::UInt32, false),
    ("svcca", DataType::Float64, true),
    ("svcca_null_mean", DataType::Float64, true),
    ("svcca_null_sd", DataType::Float64, true),
    ("svcca_p", DataType::Float64, true),
    ("permutations", DataType::UInt32, false),
];

/// A row of the `decoders` table: one layer pair's decoder geometry.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderRow {
    pub source: String,
    pub target: String,
    pub source_layer: String,
    pub target_layer: String,
    pub geometry: LayerGeometry,
}

/// Writes the `decoders` table.
pub fn write_decoders(path: &Path, rows: &[DecoderRow]) -> Result<(), MetricsError> {
    let u32s = |get: &dyn Fn(&LayerGeometry) -> Option<u32>| -> ArrayRef {
        Arc::new(UInt32Array::from_iter(
            rows.iter().map(|r| get(&r.geometry)),
        ))
    };
    let f64s = |get: fn(&PairedSvcca) -> Option<f64>| -> ArrayRef {
        let values = rows.iter().map(|r| r.geometry.svcca.as_ref().and_then(get));
        Arc::new(Float64Array::from_iter(values))
    };
    let mut columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| r.source.as_str())),
        strings(rows.iter().map(|r| r.target.as_str())),
        strings(rows.iter().map(|r| r.source_layer.as_str())),
        strings(rows.iter().map(|r| r.target_layer.as_str())),
        u32s(&|g| Some(g.features)),
        u32s(&|g| g.cosine.map(|c| c.0)),
    ];
    for t in 0..3 {
        columns.push(u32s(&|g| g.cosine.map(|c| c.1[t])));
    }
    columns.extend([
        u32s(&|g| Some(g.paired)),
        f64s(|s| Some(s.value)),
        f64s(|s| s.null_mean),
        f64s(|s| s.null_sd),
        f64s(|s| s.p_value),
        u32s(&|g| Some(g.svcca.as_ref().map_or(0, |s| s.permutations as u32))),
    ]);
    Ok(write(path, schema(DECODERS), columns)?)
}

/// Reads a `decoders` table written by [`write_decoders`] (columns found by name).
pub fn read_decoders(path: &Path) -> Result<Vec<DecoderRow>, MetricsError> {
    let mut rows = Vec::new();
    for batch in read_batches(path)? {
        let column = |name: &str| typed_column(&batch, path, DECODERS, name, "a decoders table");
        let names = ["source", "target", "source_layer", "target_layer"];
        let text: Vec<ArrayRef> = names.iter().map(|n| column(n)).collect::<Result<_, _>>()?;
        let text: Vec<&StringArray> = text.iter().map(|c| c.as_string::<i32>()).collect();
        let counts = [
            "features",
            "cosine_matched",
            "cosine_0_5",
            "cosine_0_7",
            "cosine_0_9",
            "paired",
            "permutations",
        ];
        let counts: Vec<ArrayRef> = counts.iter().map(|n| column(n)).collect::<Result<_, _>>()?;
        let counts: Vec<_> = counts
            .iter()
            .map(|c| c.as_primitive::<UInt32Type>())
            .collect();
        let reals = ["svcca", "svcca_null_mean", "svcca_null_sd", "svcca_p"];
        let reals: Vec<ArrayRef> = reals.iter().map(|n| column(n)).collect::<Result<_, _>>()?;
        let reals: Vec<_> = reals
            .iter()
            .map(|c| c.as_primitive::<Float64Type>())
            .collect();
        for r in 0..batch.num_rows() {
            let count = |c: usize| counts[c].is_valid(r).then(|| counts[c].value(r));
            let real = |c: usize| reals[c].is_valid(r).then(|| reals[c].value(r));
            let cosine = match (count(1), count(2), count(3), count(4)) {
                (Some(m), Some(a), Some(b), Some(c)) => Some((m, [a, b, c])),
                _ => None,
            };
            let svcca = real(0).map(|value| PairedSvcca {
                pairs: count(5).unwrap_or(0) as usize,
                value,
                null_mean: real(1),
                null_sd: real(2),
                p_value: real(3),
                permutations: count(6).unwrap_or(0) as usize,
            });
            rows.push(DecoderRow {
                source: text[0].value(r).to_string(),
                target: text[1].value(r).to_string(),
                source_layer: text[2].value(r).to_string(),
                target_layer: text[3].value(r).to_string(),
                geometry: LayerGeometry {
                    features: count(0).unwrap_or(0),
                    cosine,
                    paired: count(5).unwrap_or(0),
                    svcca,
                },
            });
        }
    }
    Ok(rows)
}

/// The rows of the pairs' tables that exist, each layer pair's once (as [`super::merge_matches`]).
pub fn merge_decoders(
    files: impl IntoIterator<Item = std::path::PathBuf>,
) -> Result<Vec<DecoderRow>, MetricsError> {
    merge_layer_pairs(files, read_decoders, |r| {
        [&r.source, &r.target, &r.source_layer, &r.target_layer]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_back_as_written_with_their_empty_cells() {
        let row = |layer: &str, cosine, svcca| DecoderRow {
            source: "a".into(),
            target: "a.ceiling".into(),
            source_layer: layer.into(),
            target_layer: layer.into(),
            geometry: LayerGeometry {
                features: 64,
                cosine,
                paired: 12,
                svcca,
            },
        };
        let svcca = PairedSvcca {
            pairs: 12,
            value: 0.8,
            null_mean: Some(0.3),
            null_sd: Some(0.05),
            p_value: Some(0.01),
            permutations: 99,
        };
        let rows = vec![
            row("0", Some((60, [50, 40, 10])), Some(svcca)),
            row("1", None, None),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DECODERS_FILE);
        write_decoders(&path, &rows).unwrap();
        assert_eq!(read_decoders(&path).unwrap(), rows);
    }
}
