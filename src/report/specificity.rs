//! The paper's claim as a measurement: for a sharedness query (model M, groups G and H), how a
//! feature's MPPC with G relates to how specific it is among H. M's firing features are put in
//! bins of their best match in H (`max over H of MPPC`, low: specific to M among H), and each
//! bin shows the mean of their worst match in G (`min over G of MPPC`). The paper's finding,
//! for a vision-language image tower M, unimodal image encoders H and text encoders G: the more
//! specific a feature is among image encoders, the more it is shared with text, beyond what a
//! unimodal tower shows. The floor is the pairs' chance level: the highest wMPPC floor of M
//! against a model of G.

use std::fmt::Write;

use crate::metrics::{Aggregation, WmppcRow};
use crate::report::html::{escape, number};
use crate::report::inputs::Ranking;

/// The bins' edges over `max(0, max over H of MPPC)`.
const EDGES: [f64; 6] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];

/// One bin: how many firing features fall in it, and the mean of their `min over G of MPPC`.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecificityBin {
    pub low: f64,
    pub high: f64,
    pub features: usize,
    pub mean_shared: Option<f64>,
}

/// A query's features binned by specificity among H.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecificityBins {
    pub bins: Vec<SpecificityBin>,
    /// The mean of `min over G of MPPC` over every firing feature.
    pub mean_shared: Option<f64>,
    /// The highest wMPPC floor of M's layers against G's: what chance gives.
    pub floor: Option<f64>,
}

impl SpecificityBins {
    /// The bins of `ranking`'s query; `None` without H or without every feature's row.
    pub fn of(ranking: &Ranking, wmppc: &[WmppcRow]) -> Option<SpecificityBins> {
        if ranking.query.not_shared_with.is_empty() || ranking.all.is_empty() {
            return None;
        }
        let firing: Vec<(f64, f64)> = (ranking.all.iter())
            .filter(|r| r.weight > 0.0)
            .map(|r| {
                (
                    r.rho_max_not_shared.unwrap_or(0.0).max(0.0),
                    r.rho_min_shared,
                )
            })
            .collect();
        let bins = EDGES
            .windows(2)
            .enumerate()
            .map(|(i, edge)| {
                let last = i == EDGES.len() - 2;
                let inside: Vec<f64> = (firing.iter())
                    .filter(|(h, _)| *h >= edge[0] && (*h < edge[1] || (last && *h <= edge[1])))
                    .map(|&(_, g)| g)
                    .collect();
                SpecificityBin {
                    low: edge[0],
                    high: edge[1],
                    features: inside.len(),
                    mean_shared: mean(&inside),
                }
            })
            .collect();
        let shared: Vec<f64> = firing.iter().map(|&(_, g)| g).collect();
        let floor = (wmppc.iter())
            .filter(|w| {
                w.source == ranking.query.model
                    && ranking.query.shared_with.contains(&w.target)
                    && w.aggregation == Aggregation::Layer
            })
            .filter_map(|w| w.baseline_floor)
            .reduce(f64::max);
        Some(SpecificityBins {
            bins,
            mean_shared: mean(&shared),
            floor,
        })
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The bins of every query that has them, side by side: one column per query, one row per
/// bin, so that two models' queries against the same G compare at a glance (HTML).
pub fn table(rankings: &[Ranking], wmppc: &[WmppcRow]) -> Option<String> {
    let measured: Vec<(&Ranking, SpecificityBins)> = (rankings.iter())
        .filter_map(|r| Some((r, SpecificityBins::of(r, wmppc)?)))
        .collect();
    if measured.is_empty() {
        return None;
    }
    let mut s = String::from(
        r#"<table id="specificity-bins"><thead><tr><th>max MPPC over H (low: specific to M among H)</th>"#,
    );
    for (r, _) in &measured {
        let _ = write!(
            s,
            "<th>{}: mean min MPPC over G = {{{}}} (features)</th>",
            escape(&r.query.model),
            escape(&r.query.shared_with.join(", "))
        );
    }
    s.push_str("</tr></thead><tbody>");
    for (i, edge) in EDGES.windows(2).enumerate() {
        let _ = write!(s, "<tr><td>{:.1}–{:.1}</td>", edge[0], edge[1]);
        for (_, bins) in &measured {
            let bin = &bins.bins[i];
            let _ = write!(
                s,
                "<td>{} ({})</td>",
                number(bin.mean_shared, 3),
                bin.features
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("<tr><td>every firing feature</td>");
    for (_, bins) in &measured {
        let _ = write!(s, "<td>{}</td>", number(bins.mean_shared, 3));
    }
    s.push_str("</tr><tr><td>floor (chance: the highest wMPPC floor against G)</td>");
    for (_, bins) in &measured {
        let _ = write!(s, "<td>{}</td>", number(bins.floor, 3));
    }
    s.push_str("</tr></tbody></table>");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::SharednessRow;
    use crate::run_record::QueryRecord;

    fn row(h: f64, g: f64, weight: f64) -> SharednessRow {
        SharednessRow {
            source_layer: "last".into(),
            feature: 0,
            delta: 0.0,
            rho_min_shared: g,
            rho_max_not_shared: Some(h),
            weight,
        }
    }

    #[test]
    fn firing_features_fall_in_their_bin_and_the_floor_is_the_highest_against_g() {
        let ranking = Ranking {
            query: QueryRecord {
                name: "q".into(),
                model: "m".into(),
                shared_with: vec!["g1".into(), "g2".into()],
                not_shared_with: vec!["h".into()],
                top: 10,
            },
            rows: Vec::new(),
            all: vec![
                row(0.1, 0.5, 1.0),
                row(-0.3, 0.3, 2.0), // a negative best match is as specific as none
                row(0.9, 0.1, 1.0),
                row(1.0, 0.2, 1.0), // the top edge belongs to the last bin
                row(0.1, 0.9, 0.0), // never fires: left out
            ],
        };
        let floor = |target: &str, value: f64| WmppcRow {
            source: "m".into(),
            target: target.into(),
            source_layer: "last".into(),
            target_layer: "last".into(),
            aggregation: Aggregation::Layer,
            wmppc: Some(0.5),
            baseline_floor: Some(value),
            baseline_floor_std: None,
            baseline_ceiling: None,
            baseline_ceiling_std: None,
            samples: 10,
            ci_low: None,
            ci_high: None,
            bootstrap_bias: None,
            floor_p: None,
        };
        let wmppc = [floor("g1", 0.05), floor("g2", 0.07), floor("h", 0.5)];
        let bins = SpecificityBins::of(&ranking, &wmppc).unwrap();
        let counts: Vec<usize> = bins.bins.iter().map(|b| b.features).collect();
        assert_eq!(counts, [2, 0, 0, 0, 2]);
        assert!((bins.bins[0].mean_shared.unwrap() - 0.4).abs() < 1e-12);
        assert!((bins.bins[4].mean_shared.unwrap() - 0.15).abs() < 1e-12);
        assert_eq!(bins.bins[1].mean_shared, None);
        assert!((bins.mean_shared.unwrap() - 0.275).abs() < 1e-12);
        assert_eq!(bins.floor, Some(0.07));
        let html = table(std::slice::from_ref(&ranking), &wmppc).unwrap();
        assert!(
            html.contains("0.400 (2)") && html.contains("0.070"),
            "{html}"
        );
    }
}
