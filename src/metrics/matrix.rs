//! The last-layer wMPPC matrix over a study's encoders: one value per ordered pair with its floor
//! and ceiling baselines, printed by `saeshare run` and drawn by the report.

use crate::metrics::{Aggregation, WmppcRow};

/// One (source, target) value of the matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct MatrixCell {
    pub wmppc: Option<f64>,
    pub floor: Option<f64>,
    pub floor_std: Option<f64>,
    pub ceiling: Option<f64>,
    pub samples: u64,
    pub source_layer: String,
    pub target_layer: String,
}

/// Rows are sources, columns targets, in the order of `encoders`.
#[derive(Clone, Debug, PartialEq)]
pub struct WmppcMatrix {
    pub encoders: Vec<String>,
    /// `cells[i][j]`: `None` on the diagonal and for a pair with no row yet.
    pub cells: Vec<Vec<Option<MatrixCell>>>,
}

impl WmppcMatrix {
    /// The matrix of each encoder's last layer: `encoders` lists (name, last layer).
    pub fn last_layers(encoders: &[(String, String)], rows: &[WmppcRow]) -> WmppcMatrix {
        let cell = |i: usize, j: usize| -> Option<MatrixCell> {
            if i == j {
                return None;
            }
            let ((source, source_layer), (target, target_layer)) = (&encoders[i], &encoders[j]);
            rows.iter()
                .find(|r| {
                    r.aggregation == Aggregation::Layer
                        && r.source == *source
                        && r.target == *target
                        && r.source_layer == *source_layer
                        && r.target_layer == *target_layer
                })
                .map(|r| MatrixCell {
                    wmppc: r.wmppc,
                    floor: r.baseline_floor,
                    floor_std: r.baseline_floor_std,
                    ceiling: r.baseline_ceiling,
                    samples: r.samples,
                    source_layer: r.source_layer.clone(),
                    target_layer: r.target_layer.clone(),
                })
        };
        let n = encoders.len();
        WmppcMatrix {
            encoders: encoders.iter().map(|(name, _)| name.clone()).collect(),
            cells: (0..n)
                .map(|i| (0..n).map(|j| cell(i, j)).collect())
                .collect(),
        }
    }

    /// Whether any value has a ceiling.
    pub fn has_ceiling(&self) -> bool {
        self.values().any(|(_, _, c)| c.ceiling.is_some())
    }

    /// Every filled cell: (row, column, cell).
    pub fn values(&self) -> impl Iterator<Item = (usize, usize, &MatrixCell)> {
        self.cells.iter().enumerate().flat_map(|(i, row)| {
            row.iter()
                .enumerate()
                .filter_map(move |(j, c)| c.as_ref().map(|c| (i, j, c)))
        })
    }

    /// `f(row, column, cell)` of every cell, filled or not, row by row.
    pub fn map_cells<T>(&self, f: impl Fn(usize, usize, Option<&MatrixCell>) -> T) -> Vec<Vec<T>> {
        self.cells
            .iter()
            .enumerate()
            .map(|(i, row)| {
                row.iter()
                    .enumerate()
                    .map(|(j, c)| f(i, j, c.as_ref()))
                    .collect()
            })
            .collect()
    }

    /// The matrix as a text table: `0.799 (0.115)` is wMPPC (floor), `(floor-ceiling)` when the
    /// study has a ceiling; `.` the diagonal, an empty cell a pair not compared (yet).
    pub fn to_text(&self) -> String {
        let text = |c: &MatrixCell| match (c.wmppc, c.floor, c.ceiling) {
            (Some(v), Some(f), Some(c)) => format!("{v:.3} ({f:.3}-{c:.3})"),
            (Some(v), Some(f), None) => format!("{v:.3} ({f:.3})"),
            (Some(v), None, Some(c)) => format!("{v:.3} (-{c:.3})"),
            (Some(v), None, None) => format!("{v:.3}"),
            _ => "-".to_string(),
        };
        let cells = self.map_cells(|i, j, c| match c {
            _ if i == j => ".".to_string(),
            Some(c) => text(c),
            None => String::new(),
        });
        let header = if self.has_ceiling() {
            "wMPPC (floor-ceiling)"
        } else {
            "wMPPC (floor)"
        };
        let width = self
            .encoders
            .iter()
            .map(String::len)
            .chain(cells.iter().flatten().map(String::len))
            .chain([header.len()])
            .max()
            .unwrap_or(8);
        let mut out = format!("{header:width$}");
        for n in &self.encoders {
            out.push_str(&format!(" {n:>width$}"));
        }
        out.push('\n');
        for (name, row) in self.encoders.iter().zip(&cells) {
            out.push_str(&format!("{name:width$}"));
            for c in row {
                out.push_str(&format!(" {c:>width$}"));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(source: &str, target: &str, layer: &str, value: f64) -> WmppcRow {
        WmppcRow {
            source: source.into(),
            target: target.into(),
            source_layer: layer.into(),
            target_layer: layer.into(),
            aggregation: Aggregation::Layer,
            wmppc: Some(value),
            baseline_floor: Some(0.1),
            baseline_floor_std: None,
            baseline_ceiling: None,
            samples: 10,
        }
    }

    #[test]
    fn picks_the_last_layers_of_each_pair_and_leaves_missing_pairs_empty() {
        let rows = vec![
            row("a", "b", "1", 0.5),
            row("a", "b", "2", 0.7),
            row("b", "a", "2", 0.6),
        ];
        let encoders = vec![("a".to_string(), "2".to_string()), ("b".into(), "2".into())];
        let m = WmppcMatrix::last_layers(&encoders, &rows);
        assert_eq!(m.cells[0][1].as_ref().unwrap().wmppc, Some(0.7));
        assert_eq!(m.cells[1][0].as_ref().unwrap().wmppc, Some(0.6));
        assert!(m.cells[0][0].is_none());
        let text = m.to_text();
        assert!(text.starts_with("wMPPC (floor)"), "{text}");
        assert!(text.contains("0.700 (0.100)"), "{text}");

        let m = WmppcMatrix::last_layers(&encoders, &rows[..2]);
        assert!(m.cells[1][0].is_none());
        assert_eq!(m.values().count(), 1);
    }
}
