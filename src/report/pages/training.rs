//! `training.html`: each SAE's training curves (FVU, L0, dead fraction against tokens seen), one
//! chart per metric and encoder with a line per layer, and the final values as a table.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::report::html::{self, escape};
use crate::report::inputs::TrainedSae;
use crate::report::svg::{LineChart, Series};
use crate::report::Site;
use crate::sae::TrainingMetrics;

type Metric = (&'static str, &'static str, fn(&TrainingMetrics) -> f64);

const METRICS: [Metric; 3] = [
    ("FVU", "fraction of variance unexplained", |m| m.fvu),
    ("L0", "active latents per sample", |m| m.l0),
    (
        "dead fraction",
        "latents silent for dead_after_tokens",
        |m| m.dead_fraction,
    ),
];

pub fn page(site: &Site) -> String {
    let mut body = String::from("<h1>SAE training</h1>");
    body.push_str(&html::partial_notice(site.missing));
    body.push_str(r#"<p class="note">Recorded while each SAE was fitted, against the samples seen. FVU: the reconstruction's squared error over the batch's variance (lower is better); L0: active latents per sample (k for TopK); dead fraction: latents that have not fired for <code>dead_after_tokens</code> samples, 0 while fewer samples than that were seen; never fired: latents that did not fire once in the fit.</p>"#);
    let mut by_encoder: BTreeMap<&str, Vec<&TrainedSae>> = BTreeMap::new();
    for sae in &site.inputs.saes {
        by_encoder.entry(&sae.encoder).or_default().push(sae);
    }
    if by_encoder.is_empty() {
        body.push_str(r#"<p class="note">No SAE has been fitted yet.</p>"#);
    }
    for (encoder, mut saes) in by_encoder {
        site.sort_by_study_layers(encoder, &mut saes, |s| &s.layer);
        let _ = write!(
            body,
            r#"<h2 id="sae-{0}">{0}</h2><div class="plots">"#,
            escape(encoder)
        );
        for (name, axis, value) in METRICS {
            let chart = LineChart {
                title: format!("{encoder}: {name}"),
                x_label: "samples seen".into(),
                y_label: axis.into(),
                series: saes
                    .iter()
                    .map(|s| Series {
                        name: s.layer.clone(),
                        points: s
                            .meta
                            .metrics
                            .iter()
                            .map(|m| (m.tokens as f64, value(m)))
                            .collect(),
                    })
                    .collect(),
            };
            body.push_str(&chart.render());
        }
        body.push_str("</div>");
        body.push_str(&final_values(encoder, &saes));
    }
    html::page(&site.inputs.name, "SAE training", "", &body)
}

/// Each SAE's shape and its last recorded metrics, as a table.
fn final_values(encoder: &str, saes: &[&TrainedSae]) -> String {
    let rows: Vec<Vec<String>> = saes
        .iter()
        .map(|s| {
            let last = s.meta.metrics.last();
            let cell = |f: fn(&TrainingMetrics) -> f64| {
                last.map_or("#–".to_string(), |m| format!("#{:.4}", f(m)))
            };
            vec![
                escape(&s.layer),
                format!("#{}", s.meta.d_in),
                format!("#{}", s.meta.d_sae),
                format!("#{}", s.meta.config.k),
                format!("#{}", s.meta.steps),
                format!("#{}", s.meta.tokens_seen),
                cell(METRICS[0].2),
                cell(METRICS[1].2),
                cell(METRICS[2].2),
                last.and_then(|m| m.never_fired)
                    .map_or("#–".to_string(), |f| format!("#{f:.4}")),
            ]
        })
        .collect();
    html::sortable_table(
        &format!("sae-table-{encoder}"),
        &[
            "layer",
            "d_in",
            "d_sae",
            "k",
            "steps",
            "samples",
            "final FVU",
            "final L0",
            "final dead fraction",
            "never fired",
        ],
        &rows,
    )
}
