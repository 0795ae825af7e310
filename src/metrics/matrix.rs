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
    /// The ceiling's standard deviation over its seeds.
    pub ceiling_std: Option<f64>,
    /// The value's 95% bootstrap interval, and the bootstrap's p-value against the floor.
    pub interval: Option<(f64, f64)>,
    pub floor_p: Option<f64>,
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
                    ceiling_std: r.baseline_ceiling_std,
                    interval: r.ci_low.zip(r.ci_high),
                    floor_p: r.floor_p,
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

    /// The matrix as text: the values, then their 95% intervals, floors (and the values' test
    /// against them), the ceilings and the normalised scores where there are some, each a table
    /// of its own so that no pair of numbers reads as a range or a difference; `.` the diagonal,
    /// an empty cell a pair not compared (yet). A note follows where a floor is high: at small N
    /// chance alone gives large values.
    pub fn to_text(&self) -> String {
        let mut out = self.table("wMPPC", |c| c.wmppc.map(|v| format!("{v:.3}")));
        if self.values().any(|(_, _, c)| c.interval.is_some()) {
            out.push('\n');
            out.push_str(&self.table("95% interval", |c| {
                c.interval.map(|(l, h)| format!("[{l:.3}, {h:.3}]"))
            }));
        }
        if self.values().any(|(_, _, c)| c.floor.is_some()) {
            out.push('\n');
            out.push_str(&self.table("floor", |c| c.floor.map(|v| format!("{v:.3}"))));
        }
        if self.values().any(|(_, _, c)| c.floor_p.is_some()) {
            out.push('\n');
            out.push_str(&self.table("p, above floor", |c| c.floor_p.map(|p| format!("{p:.3}"))));
        }
        if self.has_ceiling() {
            out.push('\n');
            out.push_str(&self.table("ceiling", |c| c.ceiling.map(|v| format!("{v:.3}"))));
        }
        if self.values().any(|(_, _, c)| c.ceiling_std.is_some()) {
            out.push('\n');
            out.push_str(&self.table("ceiling sd", |c| c.ceiling_std.map(|v| format!("{v:.3}"))));
        }
        if self.values().any(|(_, _, c)| c.normalised().is_some()) {
            out.push('\n');
            out.push_str(&self.table("normalised", |c| c.normalised().map(|v| format!("{v:.3}"))));
        }
        let highest = (self.values())
            .filter_map(|(_, _, c)| c.floor.map(|f| (f, c.samples)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((floor, samples)) = highest.filter(|&(f, _)| f >= HIGH_FLOOR) {
            out.push_str(&format!(
                "note: floors reach {floor:.3} (N = {samples}): with this few samples chance alone \
                 matches features this well; read each value against its floor, or compare more samples\n"
            ));
        }
        out
    }

    /// One table of `value` (as written) per cell, headed `header`.
    fn table(&self, header: &str, value: impl Fn(&MatrixCell) -> Option<String>) -> String {
        let cells = self.map_cells(|i, j, c| match c {
            _ if i == j => ".".to_string(),
            Some(c) => value(c).unwrap_or_else(|| "-".to_string()),
            None => String::new(),
        });
        let width = (self.encoders.iter())
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

/// A floor at or above this is worth a note: chance alone matches features that well.
const HIGH_FLOOR: f64 = 0.2;

impl MatrixCell {
    /// `(wMPPC - floor) / (ceiling - floor)`: 0 at chance, 1 at the ceiling.
    pub fn normalised(&self) -> Option<f64> {
        normalised(self.wmppc, self.floor, self.ceiling)
    }
}

/// `(value - floor) / (ceiling - floor)`, where the ceiling is above the floor.
pub fn normalised(value: Option<f64>, floor: Option<f64>, ceiling: Option<f64>) -> Option<f64> {
    let (v, f, c) = (value?, floor?, ceiling?);
    (c > f).then(|| (v - f) / (c - f))
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
            baseline_ceiling_std: None,
            samples: 10,
            ci_low: None,
            ci_high: None,
            bootstrap_bias: None,
            floor_p: None,
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
        let (values, floors) = text.split_once("\nfloor").unwrap();
        assert!(
            values.starts_with("wMPPC") && values.contains("0.700"),
            "{text}"
        );
        assert!(
            floors.contains("0.100") && !floors.contains("0.700"),
            "{text}"
        );
        assert!(
            !text.contains("ceiling") && !text.contains("note"),
            "{text}"
        );

        let m = WmppcMatrix::last_layers(&encoders, &rows[..2]);
        assert!(m.cells[1][0].is_none());
        assert_eq!(m.values().count(), 1);
    }
}

#[cfg(test)]
mod normalised_tests {
    use super::*;

    #[test]
    fn the_normalised_score_is_0_at_the_floor_1_at_the_ceiling_and_none_without_room() {
        let near = |v: Option<f64>, want: f64| (v.unwrap() - want).abs() < 1e-12;
        assert!(near(normalised(Some(0.2), Some(0.2), Some(0.8)), 0.0));
        assert!(near(normalised(Some(0.8), Some(0.2), Some(0.8)), 1.0));
        assert!(near(normalised(Some(0.5), Some(0.2), Some(0.8)), 0.5));
        assert_eq!(normalised(Some(0.5), Some(0.3), Some(0.3)), None);
        assert_eq!(normalised(Some(0.5), None, Some(0.9)), None);
    }

    #[test]
    fn a_high_floor_gets_a_note_and_a_ceiling_its_tables() {
        let cell = |floor: f64| MatrixCell {
            wmppc: Some(0.5),
            floor: Some(floor),
            floor_std: None,
            ceiling: Some(0.9),
            ceiling_std: Some(0.02),
            interval: Some((0.45, 0.55)),
            floor_p: Some(0.01),
            samples: 200,
            source_layer: "1".into(),
            target_layer: "1".into(),
        };
        let m = WmppcMatrix {
            encoders: vec!["a".into(), "b".into()],
            cells: vec![vec![None, Some(cell(0.3))], vec![Some(cell(0.1)), None]],
        };
        let text = m.to_text();
        for header in [
            "\n95% interval",
            "\nfloor",
            "\np, above floor",
            "\nceiling",
            "\nceiling sd",
            "\nnormalised",
        ] {
            assert!(text.contains(header), "{text}");
        }
        assert!(text.contains("[0.450, 0.550]"), "{text}");
        // (0.5 - 0.3) / (0.9 - 0.3)
        assert!(text.contains("0.333"), "{text}");
        assert!(text.contains("floors reach 0.300 (N = 200)"), "{text}");
    }
}
