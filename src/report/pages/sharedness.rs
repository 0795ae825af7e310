//! `sharedness/<query>.html`: a query's top features with Delta and the correlations it is made
//! of (the feature's MPPC with every model of G and H), and how Delta is distributed over all
//! features of the model.

use std::collections::{BTreeMap, HashSet};

use crate::metrics::{MppcRow, SharednessRow, ALL_LAYERS};
use crate::report::html::{self, escape, number};
use crate::report::inputs::Ranking;
use crate::report::matches::{matched_layer, PreferredRows};
use crate::report::svg::{Histogram, Scatter};
use crate::report::{distinct, specificity, Site};

const ROOT: &str = "../";

pub fn page(site: &Site, ranking: &Ranking) -> String {
    let q = &ranking.query;
    let mut body = format!("<h1>Sharedness: {}</h1>", escape(&q.name));
    body.push_str(&html::partial_notice(site.missing));
    body.push_str(&query_note(ranking));
    if !ranking.all.is_empty() {
        body.push_str(&distribution_section(ranking));
    }
    let measured = specificity::table(std::slice::from_ref(ranking), &site.inputs.wmppc);
    if let Some(table) = measured {
        body.push_str(r#"<h2>Shared with G, by how specific to M among H</h2><p class="note">The firing features in bins of their best match among H (the lower, the more specific to M), with the mean of their worst match among G, how many fall in each bin, and the floor (chance) of M against G.</p>"#);
        body.push_str(&table);
    }
    body.push_str(&top_features_section(site, ranking));
    html::page(&site.inputs.name, &q.name, ROOT, &body)
}

/// What the query asks for, and how Delta answers it.
fn query_note(ranking: &Ranking) -> String {
    let q = &ranking.query;
    let groups = if q.shared_with.is_empty() {
        "(G and H are not known here: this folder has no study record)".to_string()
    } else {
        format!(
            "shared with every model of G = {{{}}} and with no model of H = {{{}}}",
            escape(&q.shared_with.join(", ")),
            escape(&q.not_shared_with.join(", "))
        )
    };
    format!(
        r#"<p class="note">Features of <b>{}</b> (M) {groups}. Δ = S·(max(0, min over G of MPPC)² − max(0, max over H of MPPC)²): large when the feature has a close match in every model of G and none in H, weighted by how much the feature fires (S, the sum of its activations).</p>"#,
        escape(&q.model),
    )
}

/// Delta over all the model's features: its histogram, and the correlations it is made of.
fn distribution_section(ranking: &Ranking) -> String {
    format!(
        r#"<h2>How Δ is distributed</h2><p class="note">{} of {} features have Δ &gt; 0 (shared with all of G more than with any of H). Most features sit near 0: rarely firing features have a small S. On the right, each feature that fires: features below the diagonal match every model of G better than any model of H.</p><div class="plots" id="delta-distribution">{}{}</div>"#,
        ranking.positive(),
        ranking.all.len(),
        delta_histogram(ranking).render(),
        delta_scatter(ranking).render()
    )
}

fn delta_histogram(ranking: &Ranking) -> Histogram {
    let deltas: Vec<f64> = ranking.all.iter().map(|r| r.delta).collect();
    let (edges, counts) = Histogram::of(&deltas, 40);
    let layers = distinct(ranking.all.iter().map(|r| r.source_layer.as_str()));
    Histogram {
        title: format!(
            "Δ over the {} features of {} {}",
            deltas.len(),
            ranking.query.model,
            layers.join(", ")
        ),
        x_label: "Δ".into(),
        y_label: "features".into(),
        edges,
        counts,
        marker: Some((0.0, "0".into())),
    }
}

/// Each feature that fires at (min MPPC over G, max MPPC over H), the ranked ones highlighted.
fn delta_scatter(ranking: &Ranking) -> Scatter {
    let listed: HashSet<(&str, u32)> = ranking
        .rows
        .iter()
        .map(|r| (r.source_layer.as_str(), r.feature))
        .collect();
    Scatter {
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
    }
}

/// The ranked features, linked to their pages where they have one.
fn top_features_section(site: &Site, ranking: &Ranking) -> String {
    let paged = ranking
        .rows
        .iter()
        .filter(|r| site.pages.contains(&ranking.feature(r)))
        .count();
    format!(
        r#"<h2>Top features</h2><p class="note">The {} highest Δ; {} of them (linked) have a page with their examples. Each MPPC is the feature's best Pearson correlation with a feature of that model (its layer in brackets).</p>{}"#,
        ranking.rows.len(),
        paged,
        RankingTable::new(site, ranking).render()
    )
}

/// The ranking as a table: each feature's Δ and S, and its MPPC with every model of G and H.
struct RankingTable<'a> {
    site: &'a Site<'a>,
    ranking: &'a Ranking,
    /// The models of G, then those of H.
    models: Vec<&'a String>,
    correlations: BTreeMap<(&'a str, u32, &'a str), (f64, String)>,
}

impl<'a> RankingTable<'a> {
    fn new(site: &'a Site<'a>, ranking: &'a Ranking) -> Self {
        let q = &ranking.query;
        RankingTable {
            site,
            ranking,
            models: q.shared_with.iter().chain(&q.not_shared_with).collect(),
            correlations: correlation_index(&site.inputs.mppc, &q.model),
        }
    }

    fn render(&self) -> String {
        let q = &self.ranking.query;
        let mut headers: Vec<String> = [
            "rank",
            "layer",
            "feature",
            "Δ",
            "S",
            "min MPPC over G",
            "max MPPC over H",
        ]
        .map(String::from)
        .into();
        headers.extend(self.models.iter().map(|m| {
            let group = if q.shared_with.contains(m) { "G" } else { "H" };
            format!("MPPC with {m} ({group})")
        }));
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let rows: Vec<Vec<String>> = self
            .ranking
            .rows
            .iter()
            .enumerate()
            .map(|(rank, r)| self.row(rank, r))
            .collect();
        html::sortable_table("ranking", &headers, &rows)
    }

    fn row(&self, rank: usize, r: &SharednessRow) -> Vec<String> {
        let key = self.ranking.feature(r);
        let mut row = vec![
            format!("#{}", rank + 1),
            escape(&r.source_layer),
            self.site.feature_link(&key, ROOT, &r.feature.to_string()),
            format!("#{:.4}", r.delta),
            format!("#{:.2}", r.weight),
            format!("#{}", number(Some(r.rho_min_shared), 3)),
            format!("#{}", number(r.rho_max_not_shared, 3)),
        ];
        for m in &self.models {
            let cell = self
                .correlations
                .get(&(r.source_layer.as_str(), r.feature, m.as_str()))
                .map_or("–".to_string(), |(rho, layer)| {
                    format!("{rho:.3} <small>({})</small>", escape(layer))
                });
            row.push(format!("#{cell}"));
        }
        row
    }
}

/// (source layer, feature, target) → (MPPC, the target layer of the best match), the row over
/// all target layers preferred, as the sharedness ranking uses it.
fn correlation_index<'a>(
    mppc: &'a [MppcRow],
    model: &str,
) -> BTreeMap<(&'a str, u32, &'a str), (f64, String)> {
    let mut preferred = PreferredRows::new();
    for r in mppc.iter().filter(|r| r.source == model) {
        preferred.offer((r.source_layer.as_str(), r.feature, r.target.as_str()), r);
    }
    preferred
        .into_rows()
        .map(|(k, r)| {
            let layer = matched_layer(r).unwrap_or(ALL_LAYERS);
            (k, (r.rho, layer.to_string()))
        })
        .collect()
}
