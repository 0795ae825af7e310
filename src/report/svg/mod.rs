//! The report's plots as inline SVG: heatmaps with a colour legend ([`Heatmap`]), line charts,
//! histograms and scatter plots ([`LineChart`], [`Histogram`], [`Scatter`]), with titles and
//! labelled axes. Plain strings, no dependency: a page opens from disk. This module holds what
//! they share: colours, ticks, axes.

mod charts;
mod heatmap;

use std::fmt::Write;

use super::html::escape;

pub use charts::{Histogram, LineChart, Scatter, Series};
pub use heatmap::{HeatCell, Heatmap};

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

const FONT: &str = "font-family=\"system-ui, sans-serif\"";

/// Width of `text` in pixels at `size` (a rough average glyph width, enough for layout).
fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * 0.6
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

/// The opening tag of a plot of `class`, sized in pixels, named `label` for screen readers.
fn open_svg(id: Option<&str>, class: &str, width: f64, height: f64, label: &str) -> String {
    let id = id.map_or(String::new(), |id| format!(r#"id="{}" "#, escape(id)));
    format!(
        r##"<svg {id}class="plot {class}" xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" {FONT} role="img" aria-label="{}">"##,
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
}
