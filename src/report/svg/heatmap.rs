//! Heatmaps: a matrix of values on one colour scale, with its legend.

use std::fmt::Write;

use super::{format_tick, open_svg, text_width, viridis};
use crate::report::html::escape;

/// One cell of a heatmap.
#[derive(Clone, Debug, Default)]
pub struct HeatCell {
    /// Colours the cell; `None` draws it grey (not computed, or the diagonal).
    pub value: Option<f64>,
    /// Lines of text in the cell (the first one larger).
    pub lines: Vec<String>,
    /// Shown on hover.
    pub tooltip: String,
}

/// A matrix of values on a shared colour scale.
pub struct Heatmap {
    /// The `id` of the `<svg>` element.
    pub id: String,
    pub title: String,
    pub row_axis: String,
    pub column_axis: String,
    pub rows: Vec<String>,
    pub columns: Vec<String>,
    pub cells: Vec<Vec<HeatCell>>,
    /// The values mapped to the ends of the colour scale.
    pub range: (f64, f64),
    pub legend: String,
    pub cell_size: (f64, f64),
}

/// Where a heatmap's parts go, in pixels.
struct Layout {
    /// The grid's left edge, right of the row labels.
    left: f64,
    /// The grid's top edge, below the title and the slanted column labels.
    top: f64,
    grid_w: f64,
    grid_h: f64,
    legend_x: f64,
    width: f64,
    height: f64,
}

impl Heatmap {
    /// Drawn cells carry `class="cell"` (valued) or `class="empty"`.
    pub fn render(&self) -> String {
        let at = self.layout();
        let mut s = open_svg(Some(&self.id), "heatmap", at.width, at.height, &self.title);
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="18" font-size="15" font-weight="600">{}</text>"##,
            at.left,
            escape(&self.title)
        );
        s.push_str(&self.labels(&at));
        for (i, row) in self.cells.iter().enumerate() {
            for (j, cell) in row.iter().enumerate() {
                s.push_str(&self.cell(&at, i, j, cell));
            }
        }
        s.push_str(&self.axis_names(&at));
        s.push_str(&colour_legend(
            &format!("{}-legend", self.id),
            at.legend_x,
            at.top,
            at.grid_h.max(150.0),
            self.range,
            &self.legend,
        ));
        s.push_str("</svg>");
        s
    }

    fn layout(&self) -> Layout {
        let (cw, ch) = self.cell_size;
        let left = self
            .rows
            .iter()
            .map(|r| text_width(r, 12.0))
            .fold(40.0, f64::max)
            + 34.0;
        let top = self
            .columns
            .iter()
            .map(|c| text_width(c, 12.0) * 0.72)
            .fold(20.0, f64::max)
            + 48.0;
        let grid_w = cw * self.columns.len() as f64;
        let grid_h = ch * self.rows.len() as f64;
        let legend_x = left + grid_w + 24.0;
        Layout {
            left,
            top,
            grid_w,
            grid_h,
            legend_x,
            width: legend_x + 90.0,
            height: (top + grid_h + 46.0).max(top + 200.0),
        }
    }

    /// The column labels above the grid (slanted) and the row labels left of it.
    fn labels(&self, at: &Layout) -> String {
        let (cw, ch) = self.cell_size;
        let mut s = String::new();
        for (j, c) in self.columns.iter().enumerate() {
            let x = at.left + cw * (j as f64 + 0.5);
            let _ = write!(
                s,
                r##"<text x="{x:.1}" y="{:.1}" font-size="12" transform="rotate(-35 {x:.1} {:.1})">{}</text>"##,
                at.top - 8.0,
                at.top - 8.0,
                escape(c)
            );
        }
        for (i, r) in self.rows.iter().enumerate() {
            let y = at.top + ch * (i as f64 + 0.5) + 4.0;
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{y:.1}" font-size="12" text-anchor="end">{}</text>"##,
                at.left - 8.0,
                escape(r)
            );
        }
        s
    }

    /// Cell (`i`, `j`): its colour, its lines of text, its tooltip.
    fn cell(&self, at: &Layout, i: usize, j: usize, cell: &HeatCell) -> String {
        let (cw, ch) = self.cell_size;
        let (lo, hi) = self.range;
        let (x, y) = (at.left + cw * j as f64, at.top + ch * i as f64);
        let (fill, class, ink) = match cell.value.filter(|v| v.is_finite()) {
            Some(v) => {
                let t = (v - lo) / (hi - lo).max(1e-12);
                (viridis(t), "cell", if t < 0.6 { "#fff" } else { "#111" })
            }
            None => ("#e6e6e6".to_string(), "empty", "#555"),
        };
        let mut s = format!(
            r##"<g><title>{}</title><rect class="{class}" x="{x:.1}" y="{y:.1}" width="{cw:.1}" height="{ch:.1}" fill="{fill}" stroke="#fff" stroke-width="1.5"/>"##,
            escape(&cell.tooltip)
        );
        let n = cell.lines.len() as f64;
        for (k, line) in cell.lines.iter().enumerate() {
            let size = if k == 0 { 13.0 } else { 10.0 };
            let ly = y + ch / 2.0 + (k as f64 - (n - 1.0) / 2.0) * 13.0 + 4.0;
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{ly:.1}" font-size="{size}" text-anchor="middle" fill="{ink}">{}</text>"##,
                x + cw / 2.0,
                escape(line)
            );
        }
        s.push_str("</g>");
        s
    }

    /// The column axis's name below the grid, the row axis's left of it.
    fn axis_names(&self, at: &Layout) -> String {
        let mut s = format!(
            r##"<text x="{:.1}" y="{:.1}" font-size="12" fill="#555" text-anchor="middle">{}</text>"##,
            at.left + at.grid_w / 2.0,
            at.top + at.grid_h + 20.0,
            escape(&format!("{} →", self.column_axis))
        );
        let _ = write!(
            s,
            r##"<text x="14" y="{:.1}" font-size="12" fill="#555" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"##,
            at.top + at.grid_h / 2.0,
            at.top + at.grid_h / 2.0,
            escape(&format!("{} →", self.row_axis))
        );
        s
    }
}

/// A vertical colour bar with five ticks and a caption.
fn colour_legend(id: &str, x: f64, y: f64, h: f64, (lo, hi): (f64, f64), caption: &str) -> String {
    let mut s = format!(
        r##"<defs><linearGradient id="{}" x1="0" y1="1" x2="0" y2="0">"##,
        escape(id)
    );
    for k in 0..=10 {
        let t = k as f64 / 10.0;
        let _ = write!(
            s,
            r##"<stop offset="{t:.2}" stop-color="{}"/>"##,
            viridis(t)
        );
    }
    let _ = write!(
        s,
        r##"</linearGradient></defs><g class="legend"><rect x="{x:.1}" y="{y:.1}" width="16" height="{h:.1}" fill="url(#{})" stroke="#999"/>"##,
        escape(id)
    );
    for k in 0..=4 {
        let t = k as f64 / 4.0;
        let ty = y + h * (1.0 - t);
        let _ = write!(
            s,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{ty:.1}" y2="{ty:.1}" stroke="#333"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
            x + 16.0,
            x + 20.0,
            x + 23.0,
            ty + 4.0,
            format_tick(lo + t * (hi - lo))
        );
    }
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#555">{}</text></g>"##,
        x - 4.0,
        y + h + 18.0,
        escape(caption)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_draws_one_cell_per_value_and_escapes_labels() {
        let map = Heatmap {
            id: "m".into(),
            title: "a<b".into(),
            row_axis: "source".into(),
            column_axis: "target".into(),
            rows: vec!["x".into(), "y".into()],
            columns: vec!["x".into(), "y".into()],
            cells: vec![
                vec![
                    HeatCell::default(),
                    HeatCell {
                        value: Some(0.5),
                        ..HeatCell::default()
                    },
                ],
                vec![
                    HeatCell {
                        value: Some(0.2),
                        ..HeatCell::default()
                    },
                    HeatCell::default(),
                ],
            ],
            range: (0.0, 1.0),
            legend: "wMPPC".into(),
            cell_size: (80.0, 40.0),
        };
        let svg = map.render();
        assert_eq!(svg.matches("class=\"cell\"").count(), 2);
        assert_eq!(svg.matches("class=\"empty\"").count(), 2);
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b"));
    }
}
