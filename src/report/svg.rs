//! The report's plots as inline SVG: heatmaps with a colour legend, line charts and histograms,
//! with titles and labelled axes. Plain strings, no dependency: a page opens from disk.

use std::fmt::Write;

use super::html::escape;

/// Perceptually uniform (viridis) colour of `t` in [0, 1].
pub fn viridis(t: f64) -> String {
    const STOPS: [(f64, [f64; 3]); 5] = [
        (0.0, [68.0, 1.0, 84.0]),
        (0.25, [59.0, 82.0, 139.0]),
        (0.5, [33.0, 145.0, 140.0]),
        (0.75, [94.0, 201.0, 98.0]),
        (1.0, [253.0, 231.0, 37.0]),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let k = STOPS.iter().position(|(s, _)| *s >= t).unwrap_or(4).max(1);
    let ((s0, c0), (s1, c1)) = (STOPS[k - 1], STOPS[k]);
    let u = (t - s0) / (s1 - s0);
    let c: Vec<u8> = (0..3)
        .map(|i| (c0[i] + u * (c1[i] - c0[i])).round() as u8)
        .collect();
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// Ten distinct colours for the lines of a chart (matplotlib's tab10).
pub fn category(i: usize) -> &'static str {
    const TAB10: [&str; 10] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22", "#17becf",
    ];
    TAB10[i % TAB10.len()]
}

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

const FONT: &str = "font-family=\"system-ui, sans-serif\"";

/// Width of `text` in pixels at `size` (a rough average glyph width, enough for layout).
fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * 0.6
}

impl Heatmap {
    /// Drawn cells carry `class="cell"` (valued) or `class="empty"`.
    pub fn render(&self) -> String {
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
        let width = legend_x + 90.0;
        let height = (top + grid_h + 46.0).max(top + 200.0);
        let mut s = String::new();
        let _ = write!(
            s,
            r##"<svg id="{}" class="plot heatmap" xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" {FONT} role="img" aria-label="{}">"##,
            escape(&self.id),
            escape(&self.title)
        );
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="18" font-size="15" font-weight="600">{}</text>"##,
            left,
            escape(&self.title)
        );
        for (j, c) in self.columns.iter().enumerate() {
            let x = left + cw * (j as f64 + 0.5);
            let _ = write!(
                s,
                r##"<text x="{x:.1}" y="{:.1}" font-size="12" transform="rotate(-35 {x:.1} {:.1})">{}</text>"##,
                top - 8.0,
                top - 8.0,
                escape(c)
            );
        }
        for (i, r) in self.rows.iter().enumerate() {
            let y = top + ch * (i as f64 + 0.5) + 4.0;
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{y:.1}" font-size="12" text-anchor="end">{}</text>"##,
                left - 8.0,
                escape(r)
            );
        }
        let (lo, hi) = self.range;
        let scale = |v: f64| (v - lo) / (hi - lo).max(1e-12);
        for (i, row) in self.cells.iter().enumerate() {
            for (j, cell) in row.iter().enumerate() {
                let (x, y) = (left + cw * j as f64, top + ch * i as f64);
                let (fill, class, ink) = match cell.value.filter(|v| v.is_finite()) {
                    Some(v) => {
                        let t = scale(v);
                        (viridis(t), "cell", if t < 0.6 { "#fff" } else { "#111" })
                    }
                    None => ("#e6e6e6".to_string(), "empty", "#555"),
                };
                let _ = write!(
                    s,
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
            }
        }
        // Axis names.
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" fill="#555" text-anchor="middle">{}</text>"##,
            left + grid_w / 2.0,
            top + grid_h + 20.0,
            escape(&format!("{} →", self.column_axis))
        );
        let _ = write!(
            s,
            r##"<text x="14" y="{:.1}" font-size="12" fill="#555" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"##,
            top + grid_h / 2.0,
            top + grid_h / 2.0,
            escape(&format!("{} →", self.row_axis))
        );
        s.push_str(&colour_legend(
            &format!("{}-legend", self.id),
            legend_x,
            top,
            grid_h.max(150.0),
            self.range,
            &self.legend,
        ));
        s.push_str("</svg>");
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

/// About five round tick values covering [lo, hi].
pub fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

fn format_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(0.001..1e7).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A plotting area with axes: maps data to pixels and draws the frame, ticks and labels.
struct Axes {
    left: f64,
    top: f64,
    w: f64,
    h: f64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Axes {
    fn px(&self, x: f64) -> f64 {
        self.left + (x - self.x.0) / (self.x.1 - self.x.0).max(1e-12) * self.w
    }

    fn py(&self, y: f64) -> f64 {
        self.top + self.h - (y - self.y.0) / (self.y.1 - self.y.0).max(1e-12) * self.h
    }

    fn frame(&self, title: &str, x_label: &str, y_label: &str, counts: bool) -> String {
        let mut s = format!(
            r##"<text x="{:.1}" y="16" font-size="14" font-weight="600">{}</text>"##,
            self.left,
            escape(title)
        );
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#999"/>"##,
            self.left, self.top, self.w, self.h
        );
        for t in ticks(self.x.0, self.x.1) {
            let x = self.px(t);
            let _ = write!(
                s,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
                self.top + self.h,
                self.top + self.h + 4.0,
                self.top + self.h + 16.0,
                format_tick(t)
            );
        }
        let y_ticks = ticks(self.y.0, self.y.1);
        // Counts take whole values only.
        let y_ticks = y_ticks.into_iter().filter(|t| !counts || t.fract() == 0.0);
        for t in y_ticks {
            let y = self.py(t);
            let _ = write!(
                s,
                r##"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                self.left,
                self.left + self.w,
                self.left - 5.0,
                y + 4.0,
                format_tick(t)
            );
        }
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" fill="#444" text-anchor="middle">{}</text>"##,
            self.left + self.w / 2.0,
            self.top + self.h + 34.0,
            escape(x_label)
        );
        let cy = self.top + self.h / 2.0;
        let _ = write!(
            s,
            r##"<text x="13" y="{cy:.1}" font-size="12" fill="#444" text-anchor="middle" transform="rotate(-90 13 {cy:.1})">{}</text>"##,
            escape(y_label)
        );
        s
    }
}

fn open_svg(class: &str, width: f64, height: f64, label: &str) -> String {
    format!(
        r##"<svg class="plot {class}" xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" {FONT} role="img" aria-label="{}">"##,
        escape(label)
    )
}

/// Padded range of `values` (a flat range widened so it draws).
fn extent(values: impl Iterator<Item = f64>, include_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if include_zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    if hi - lo < 1e-12 {
        if include_zero && lo == 0.0 {
            return (0.0, 1.0);
        }
        let pad = if hi == 0.0 { 1.0 } else { hi.abs() * 0.1 };
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.05;
    (
        if include_zero && lo == 0.0 {
            0.0
        } else {
            lo - pad
        },
        hi + pad,
    )
}

/// One named line of a [`LineChart`].
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Lines over a shared x axis, with a legend naming each line.
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

impl LineChart {
    pub fn render(&self) -> String {
        let legend_w = self
            .series
            .iter()
            .map(|s| text_width(&s.name, 11.0))
            .fold(0.0, f64::max)
            + 30.0;
        // Room for one legend line per series.
        let h = f64::max(170.0, 16.0 * self.series.len() as f64);
        let axes = Axes {
            left: 62.0,
            top: 28.0,
            w: 300.0,
            h,
            x: extent(
                self.series
                    .iter()
                    .flat_map(|s| s.points.iter().map(|p| p.0)),
                false,
            ),
            y: extent(
                self.series
                    .iter()
                    .flat_map(|s| s.points.iter().map(|p| p.1)),
                true,
            ),
        };
        let (width, height) = (
            axes.left + axes.w + 14.0 + legend_w,
            axes.top + axes.h + 44.0,
        );
        let mut s = open_svg("lines", width, height, &self.title);
        s.push_str(&axes.frame(&self.title, &self.x_label, &self.y_label, false));
        // Ten distinct colours; more series (layers of a deep model) follow a colour scale.
        let n = self.series.len();
        let colour = |i: usize| {
            if n <= 10 {
                category(i).to_string()
            } else {
                viridis(i as f64 / (n - 1) as f64 * 0.9)
            }
        };
        for (i, series) in self.series.iter().enumerate() {
            let points: Vec<String> = series
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", axes.px(x), axes.py(y)))
                .collect();
            let _ = write!(
                s,
                r##"<polyline class="series" fill="none" stroke="{}" stroke-width="1.8" points="{}"><title>{}</title></polyline>"##,
                colour(i),
                points.join(" "),
                escape(&series.name)
            );
            let ly = axes.top + 8.0 + 16.0 * i as f64;
            let lx = axes.left + axes.w + 14.0;
            let _ = write!(
                s,
                r##"<line x1="{lx:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
                lx + 16.0,
                colour(i),
                lx + 21.0,
                ly + 4.0,
                escape(&series.name)
            );
        }
        s.push_str("</svg>");
        s
    }
}

/// Counts over consecutive bins.
pub struct Histogram {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// `counts.len() + 1` increasing bin edges.
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
    /// A vertical marker at this x, with its label (a threshold, a value of interest).
    pub marker: Option<(f64, String)>,
}

impl Histogram {
    /// Bins `values` into `bins` equal bins over their range.
    pub fn of(values: &[f64], bins: usize) -> (Vec<f64>, Vec<u64>) {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let (lo, hi) = finite
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        if finite.is_empty() {
            return (vec![0.0, 1.0], vec![0]);
        }
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else {
            (lo - 0.5, hi + 0.5)
        };
        let bins = bins.max(1);
        let width = (hi - lo) / bins as f64;
        let mut counts = vec![0u64; bins];
        for v in finite {
            let b = (((v - lo) / width) as usize).min(bins - 1);
            counts[b] += 1;
        }
        let edges = (0..=bins).map(|k| lo + k as f64 * width).collect();
        (edges, counts)
    }

    pub fn render(&self) -> String {
        let axes = Axes {
            left: 62.0,
            top: 28.0,
            w: 360.0,
            h: 170.0,
            x: (
                *self.edges.first().unwrap_or(&0.0),
                *self.edges.last().unwrap_or(&1.0),
            ),
            y: (
                0.0,
                self.counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.05,
            ),
        };
        let (width, height) = (axes.left + axes.w + 16.0, axes.top + axes.h + 44.0);
        let mut s = open_svg("histogram", width, height, &self.title);
        s.push_str(&axes.frame(&self.title, &self.x_label, &self.y_label, true));
        for (b, &count) in self.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let (x0, x1) = (axes.px(self.edges[b]), axes.px(self.edges[b + 1]));
            let y = axes.py(count as f64);
            let _ = write!(
                s,
                r##"<rect class="bar" x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="#3b528b"><title>{} to {}: {count}</title></rect>"##,
                (x1 - x0 - 0.5).max(0.5),
                axes.top + axes.h - y,
                format_tick(self.edges[b]),
                format_tick(self.edges[b + 1])
            );
        }
        if let Some((x, label)) = &self.marker {
            let px = axes.px(*x);
            let _ = write!(
                s,
                r##"<line x1="{px:.1}" x2="{px:.1}" y1="{:.1}" y2="{:.1}" stroke="#d62728" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" font-size="11" fill="#d62728">{}</text>"##,
                axes.top,
                axes.top + axes.h,
                px + 4.0,
                axes.top + 12.0,
                escape(label)
            );
        }
        s.push_str("</svg>");
        s
    }
}

/// Points on two axes, some highlighted, with the diagonal `y = x` for reference.
pub struct Scatter {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// (x, y, highlighted, tooltip).
    pub points: Vec<(f64, f64, bool, String)>,
    /// What the highlighted points are, for the legend.
    pub highlight: String,
}

impl Scatter {
    pub fn render(&self) -> String {
        let range = extent(self.points.iter().flat_map(|p| [p.0, p.1]), true);
        let axes = Axes {
            left: 62.0,
            top: 28.0,
            w: 300.0,
            h: 300.0,
            x: range,
            y: range,
        };
        let legend_w = text_width(&self.highlight, 11.0) + 30.0;
        let (width, height) = (
            axes.left + axes.w + 16.0 + legend_w,
            axes.top + axes.h + 44.0,
        );
        let mut s = open_svg("scatter", width, height, &self.title);
        s.push_str(&axes.frame(&self.title, &self.x_label, &self.y_label, false));
        let _ = write!(
            s,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="4 3"/>"##,
            axes.px(range.0),
            axes.py(range.0),
            axes.px(range.1),
            axes.py(range.1)
        );
        // Highlighted points last, on top.
        for highlighted in [false, true] {
            for (x, y, h, tooltip) in self.points.iter().filter(|p| p.2 == highlighted) {
                if !(x.is_finite() && y.is_finite()) {
                    continue;
                }
                let (fill, r) = if *h {
                    ("#d62728", 3.5)
                } else {
                    ("#3b528b", 2.0)
                };
                let _ = write!(
                    s,
                    r##"<circle class="point" cx="{:.1}" cy="{:.1}" r="{r}" fill="{fill}" fill-opacity="0.6"><title>{}</title></circle>"##,
                    axes.px(*x),
                    axes.py(*y),
                    escape(tooltip)
                );
            }
        }
        let lx = axes.left + axes.w + 16.0;
        let _ = write!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#d62728"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
            lx + 5.0,
            axes.top + 8.0,
            lx + 14.0,
            axes.top + 12.0,
            escape(&self.highlight)
        );
        s.push_str("</svg>");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let t = ticks(3.0, 1234.0);
        assert!(t.len() >= 3 && t.len() <= 7, "{t:?}");
        assert!(t.iter().all(|v| *v >= 3.0 && *v <= 1234.0));
        assert_eq!(ticks(1.0, 1.0), vec![1.0]);
    }

    #[test]
    fn viridis_runs_from_purple_to_yellow() {
        assert_eq!(viridis(0.0), "#440154");
        assert_eq!(viridis(1.0), "#fde725");
        assert_eq!(viridis(f64::NAN), "#440154");
    }

    #[test]
    fn histogram_counts_every_finite_value_once() {
        let values = [0.0, 0.1, 0.5, 0.99, 1.0, f64::NAN];
        let (edges, counts) = Histogram::of(&values, 4);
        assert_eq!(edges.len(), 5);
        assert_eq!(counts.iter().sum::<u64>(), 5);
        assert_eq!(counts, vec![2, 0, 1, 2]);
    }

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
