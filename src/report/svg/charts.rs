//! Charts on x and y axes: lines, histograms, scatter plots.

use std::fmt::Write;

use super::{category, extent, format_tick, open_svg, text_width, viridis, Axes};
use crate::report::html::escape;

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
        let mut s = open_svg(None, "lines", width, height, &self.title);
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
        let mut s = open_svg(None, "histogram", width, height, &self.title);
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
        let mut s = open_svg(None, "scatter", width, height, &self.title);
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
    fn histogram_counts_every_finite_value_once() {
        let values = [0.0, 0.1, 0.5, 0.99, 1.0, f64::NAN];
        let (edges, counts) = Histogram::of(&values, 4);
        assert_eq!(edges.len(), 5);
        assert_eq!(counts.iter().sum::<u64>(), 5);
        assert_eq!(counts, vec![2, 0, 1, 2]);
    }
}
