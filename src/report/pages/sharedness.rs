//! `sharedness/<query>.html`: a query's top features with Delta and the correlations it is made
//! of (the feature's MPPC with every model of G and H), and how Delta is distributed over all
//! features of the model.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use crate::metrics::{MppcRow, ALL_LAYERS};
use crate::report::html::{self, escape, number};
use crate::report::inputs::Ranking;
use crate::report::svg::{Histogram, Scatter};
use crate::report::{FeatureKey, Site};

const ROOT: &str = "../";

pub fn page(site: &Site, ranking: &Ranking) -> String {
    let q = &ranking.query;
    let mut body = format!("<h1>Sharedness: {}</h1>", escape(&q.name));
    body.push_str(&html::partial_notice(site.missing));
    let groups = if q.shared_with.is_empty() {
        "(G and H are not known here: this folder has no study record)".to_string()
    } else {
        format!(
            "shared with every model of G = {{{}}} and with no model of H = {{{}}}",
            escape(&q.shared_with.join(", ")),
            escape(&q.not_shared_with.join(", "))
        )
    };
    let _ = write!(
        body,
        r#"<p class="note">Features of <b>{}</b> (M) {groups}. Δ = S·(max(0, min over G of MPPC)² − max(0, max over H of MPPC)²): large when the feature has a close match in every model of G and none in H, weighted by how much the feature fires (S, the sum of its activations).</p>"#,
        escape(&q.model),
    );

    if !ranking.all.is_empty() {
        let deltas: Vec<f64> = ranking.all.iter().map(|r| r.delta).collect();
        let positive = deltas.iter().filter(|d| **d > 0.0).count();
        let (edges, counts) = Histogram::of(&deltas, 40);
        let mut layers: Vec<&str> = Vec::new();
        for r in &ranking.all {
            if !layers.contains(&r.source_layer.as_str()) {
                layers.push(&r.source_layer);
            }
        }
        let histogram = Histogram {
            title: format!(
                "Δ over the {} features of {} {}",
                deltas.len(),
                q.model,
                layers.join(", ")
            ),
            x_label: "Δ".into(),
            y_label: "features".into(),
            edges,
            counts,
            marker: Some((0.0, "0".into())),
        };
        let listed: HashSet<(&str, u32)> = ranking
            .rows
            .iter()
            .map(|r| (r.source_layer.as_str(), r.feature))
            .collect();
        let scatter = Scatter {
            title: "What Δ is made of".into(),
            x_label: "min MPPC over G".into(),
            y_label: "max MPPC over H".into(),
            points: ranking
                .all
                .iter()
                .filter(|r| r.weight > 0.0)
                .map(|r| {
                    (
                        r.rho_min_shared,
                        r.rho_max_not_shared.unwrap_or(0.0),
                        listed.contains(&(r.source_layer.as_str(), r.feature)),
                        format!("{} feature {}: Δ {:.4}", r.source_layer, r.feature, r.delta),
                    )
                })
                .collect(),
            highlight: format!("the top {}", ranking.rows.len()),
        };
        let _ = write!(
            body,
            r#"<h2>How Δ is distributed</h2><p class="note">{positive} of {} features have Δ &gt; 0 (shared with all of G more than with any of H). Most features sit near 0: rarely firing features have a small S. On the right, each feature that fires: features below the diagonal match every model of G better than any model of H.</p><div class="plots" id="delta-distribution">{}{}</div>"#,
            deltas.len(),
            histogram.render(),
            scatter.render()
        );
    }

    let paged = ranking
        .rows
        .iter()
        .filter(|r| {
            site.pages.contains(&FeatureKey {
                encoder: q.model.clone(),
                layer: r.source_layer.clone(),
                feature: r.feature,
            })
        })
        .count();
    let models: Vec<&String> = q.shared_with.iter().chain(&q.not_shared_with).collect();
    let correlations = correlation_index(&site.inputs.mppc, &q.model);
    let mut headers = vec![
        "rank",
        "layer",
        "feature",
        "Δ",
        "S",
        "min MPPC over G",
        "max MPPC over H",
    ];
    let model_headers: Vec<String> = models
        .iter()
        .map(|m| {
            let group = if q.shared_with.contains(m) { "G" } else { "H" };
            format!("MPPC with {m} ({group})")
        })
        .collect();
    headers.extend(model_headers.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = ranking
        .rows
        .iter()
        .enumerate()
        .map(|(rank, r)| {
            let key = FeatureKey {
                encoder: q.model.clone(),
                layer: r.source_layer.clone(),
                feature: r.feature,
            };
            let mut row = vec![
                format!("#{}", rank + 1),
                escape(&r.source_layer),
                site.feature_link(&key, ROOT, &r.feature.to_string()),
                format!("#{:.4}", r.delta),
                format!("#{:.2}", r.weight),
                format!("#{}", number(Some(r.rho_min_shared), 3)),
                format!("#{}", number(r.rho_max_not_shared, 3)),
            ];
            for m in &models {
                let cell = correlations
                    .get(&(r.source_layer.as_str(), r.feature, m.as_str()))
                    .map_or("–".to_string(), |(rho, layer)| {
                        format!("{rho:.3} <small>({})</small>", escape(layer))
                    });
                row.push(format!("#{cell}"));
            }
            row
        })
        .collect();
    let _ = write!(
        body,
        r#"<h2>Top features</h2><p class="note">The {} highest Δ; {} of them (linked) have a page with their examples. Each MPPC is the feature's best Pearson correlation with a feature of that model (its layer in brackets).</p>"#,
        ranking.rows.len(),
        paged
    );
    body.push_str(&html::sortable_table("ranking", &headers, &rows));
    html::page(&site.inputs.name, &q.name, ROOT, &body)
}

/// (source layer, feature, target) → (MPPC, the target layer of the best match), the row over
/// all target layers preferred, as the sharedness ranking uses it.
fn correlation_index<'a>(
    mppc: &'a [MppcRow],
    model: &str,
) -> HashMap<(&'a str, u32, &'a str), (f64, String)> {
    let mut out: HashMap<(&str, u32, &str), (bool, f64, String)> = HashMap::new();
    for r in mppc.iter().filter(|r| r.source == model) {
        let union = r.target_layer == ALL_LAYERS;
        let layer = if union {
            r.best_layer.clone().unwrap_or_else(|| ALL_LAYERS.into())
        } else {
            r.target_layer.clone()
        };
        let key = (r.source_layer.as_str(), r.feature, r.target.as_str());
        match out.get(&key) {
            Some((true, _, _)) => {}
            Some((false, rho, _)) if !union && *rho >= r.rho => {}
            _ => {
                out.insert(key, (union, r.rho, layer));
            }
        }
    }
    out.into_iter()
        .map(|(k, (_, rho, layer))| (k, (rho, layer)))
        .collect()
}
