//! `index.html`: the study, the last-layer wMPPC matrix (heatmap and table), a layer x layer
//! heatmap per all-layers pair, and the sharedness queries.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::metrics::{Aggregation, WmppcRow};
use crate::report::html::{self, escape, number};
use crate::report::svg::{HeatCell, Heatmap};
use crate::report::{file_name, Site};

pub fn page(site: &Site) -> String {
    let inputs = site.inputs;
    let mut body = format!("<h1>Study {}</h1>", escape(&inputs.name));
    body.push_str(&html::partial_notice(site.missing));
    body.push_str(&study_facts(site));
    body.push_str(&matrix_section(site));
    body.push_str(&layers_section(site));
    body.push_str(&sharedness_section(site));
    let _ = write!(
        body,
        r#"<h2>SAE training</h2><p><a href="training.html">Training curves</a> of the {} SAE(s): FVU, L0 and dead fraction per encoder and layer.</p>"#,
        inputs.saes.len()
    );
    html::page(&inputs.name, "wMPPC", "", &body)
}

fn study_facts(site: &Site) -> String {
    let Some(record) = &site.inputs.record else {
        return format!(
            r#"<p class="note">From the tables in {} (no study record: feature examples need a <code>saeshare run</code> folder).</p>"#,
            escape(&site.inputs.dir.display().to_string())
        );
    };
    let mut s = format!(
        r#"<p class="note">{} samples from {} ({} shard(s)). Study file: <code>{}</code>.</p><table id="encoders"><thead><tr><th>encoder</th><th>modality</th><th>layers</th></tr></thead><tbody>"#,
        record.dataset.rows,
        escape(&record.dataset.path.display().to_string()),
        record.dataset.shards.len(),
        escape(&record.study_file.display().to_string())
    );
    for e in record.named_encoders() {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&e.name),
            escape(&e.modality),
            escape(&e.layers.join(", "))
        );
    }
    s.push_str("</tbody></table>");
    s
}

fn matrix_section(site: &Site) -> String {
    let m = site.matrix;
    let mut s = String::from(r#"<h2 id="wmppc">wMPPC between last layers</h2>"#);
    s.push_str(
        r#"<p class="note">Row: the source encoder, whose SAE features are matched; column: the target. Each cell is the S-weighted mean over the source's features of their best Pearson correlation with a target feature. Below it, the floor (the same with the target's samples permuted: what chance gives) and, when the study has one, the ceiling (the source against a second SAE of itself).</p>"#,
    );
    if m.values().next().is_none() {
        s.push_str(r#"<p class="note">No pair has a wMPPC yet.</p>"#);
        return s;
    }
    let cells = m
        .cells
        .iter()
        .enumerate()
        .map(|(i, row)| {
            row.iter()
                .enumerate()
                .map(|(j, c)| match c {
                    Some(c) => {
                        let mut lines = vec![number(c.wmppc, 3)];
                        if let Some(f) = c.floor {
                            lines.push(format!("floor {f:.3}"));
                        }
                        if let Some(x) = c.ceiling {
                            lines.push(format!("ceiling {x:.3}"));
                        }
                        HeatCell {
                            value: c.wmppc.filter(|v| v.is_finite()),
                            tooltip: format!(
                                "{} {} → {} {}: wMPPC {}, floor {}, ceiling {}, {} samples",
                                m.encoders[i],
                                c.source_layer,
                                m.encoders[j],
                                c.target_layer,
                                number(c.wmppc, 4),
                                number(c.floor, 4),
                                number(c.ceiling, 4),
                                c.samples
                            ),
                            lines,
                        }
                    }
                    None if i == j => HeatCell {
                        lines: vec!["·".into()],
                        tooltip: m.encoders[i].clone(),
                        ..HeatCell::default()
                    },
                    None => {
                        let (source, target) = (&m.encoders[i], &m.encoders[j]);
                        let planned = site.inputs.record.as_ref().is_none_or(|r| {
                            r.pairs
                                .iter()
                                .any(|p| p.source == *source && p.target == *target)
                        });
                        let (line, tooltip) = if planned {
                            ("pending", "not compared yet")
                        } else {
                            ("–", "not in the study's comparisons")
                        };
                        HeatCell {
                            lines: vec![line.into()],
                            tooltip: format!("{source} → {target}: {tooltip}"),
                            ..HeatCell::default()
                        }
                    }
                })
                .collect()
        })
        .collect();
    let heatmap = Heatmap {
        id: "wmppc-matrix".into(),
        title: "wMPPC, last layers".into(),
        row_axis: "source".into(),
        column_axis: "target".into(),
        rows: m.encoders.clone(),
        columns: m.encoders.clone(),
        cells,
        range: (0.0, 1.0),
        legend: "wMPPC".into(),
        cell_size: (104.0, 58.0),
    };
    let _ = write!(s, r#"<div class="plots">{}</div>"#, heatmap.render());
    let rows: Vec<Vec<String>> = m
        .values()
        .map(|(i, j, c)| {
            let above = match (c.wmppc, c.floor) {
                (Some(v), Some(f)) => Some(v - f),
                _ => None,
            };
            vec![
                escape(&m.encoders[i]),
                escape(&m.encoders[j]),
                escape(&c.source_layer),
                escape(&c.target_layer),
                format!("#{}", number(c.wmppc, 4)),
                format!("#{}", number(c.floor, 4)),
                format!("#{}", number(c.floor_std, 4)),
                format!("#{}", number(c.ceiling, 4)),
                format!("#{}", number(above, 4)),
                format!("#{}", c.samples),
            ]
        })
        .collect();
    s.push_str("<h3>As a table (click a column to sort)</h3>");
    s.push_str(&html::sortable_table(
        "wmppc-table",
        &[
            "source",
            "target",
            "source layer",
            "target layer",
            "wMPPC",
            "floor",
            "floor std",
            "ceiling",
            "wMPPC − floor",
            "samples",
        ],
        &rows,
    ));
    s
}

/// A heatmap per (source, target) compared on several layers.
fn layers_section(site: &Site) -> String {
    let rows = &site.inputs.wmppc;
    // The study's layer order where known (the table lists shared last-layer rows first).
    let order = |encoder: &str, layers: &mut Vec<&str>| {
        if let Some(e) = site.inputs.record.as_ref().and_then(|r| r.encoder(encoder)) {
            layers.sort_by_key(|l| e.layers.iter().position(|x| x == l));
        }
    };
    let mut pairs: BTreeMap<(&str, &str), Vec<&WmppcRow>> = BTreeMap::new();
    for r in rows {
        pairs
            .entry((r.source.as_str(), r.target.as_str()))
            .or_default()
            .push(r);
    }
    let mut s = String::new();
    for ((source, target), rows) in pairs {
        let layer_rows: Vec<&&WmppcRow> = rows
            .iter()
            .filter(|r| r.aggregation == Aggregation::Layer)
            .collect();
        let mut source_layers: Vec<&str> = Vec::new();
        let mut target_layers: Vec<&str> = Vec::new();
        for r in &layer_rows {
            if !source_layers.contains(&r.source_layer.as_str()) {
                source_layers.push(&r.source_layer);
            }
            if !target_layers.contains(&r.target_layer.as_str()) {
                target_layers.push(&r.target_layer);
            }
        }
        if source_layers.len() < 2 && target_layers.len() < 2 {
            continue;
        }
        order(source, &mut source_layers);
        order(target, &mut target_layers);
        let cells = source_layers
            .iter()
            .map(|sl| {
                target_layers
                    .iter()
                    .map(|tl| {
                        let r = layer_rows
                            .iter()
                            .find(|r| r.source_layer == *sl && r.target_layer == *tl);
                        let value = r.and_then(|r| r.wmppc).filter(|v| v.is_finite());
                        HeatCell {
                            value,
                            lines: vec![value.map_or("–".into(), |v| format!("{v:.2}"))],
                            tooltip: format!(
                                "{source} {sl} → {target} {tl}: wMPPC {}, floor {}",
                                number(value, 4),
                                number(r.and_then(|r| r.baseline_floor), 4)
                            ),
                        }
                    })
                    .collect()
            })
            .collect();
        let heatmap = Heatmap {
            id: format!("layers-{}__{}", file_name(source), file_name(target)),
            title: format!("{source} → {target}, layer by layer"),
            row_axis: format!("{source} layer"),
            column_axis: format!("{target} layer"),
            rows: source_layers.iter().map(|l| l.to_string()).collect(),
            columns: target_layers.iter().map(|l| l.to_string()).collect(),
            cells,
            range: (0.0, 1.0),
            legend: "wMPPC".into(),
            cell_size: (52.0, 30.0),
        };
        let summary: Vec<String> = rows
            .iter()
            .filter(|r| {
                matches!(
                    r.aggregation,
                    Aggregation::MeanOverLayers | Aggregation::AllFeatures
                )
            })
            .map(|r| {
                format!(
                    "{} = {} (floor {})",
                    r.aggregation.as_str(),
                    number(r.wmppc, 3),
                    number(r.baseline_floor, 3)
                )
            })
            .collect();
        let _ = write!(
            s,
            r#"<h3>{} → {}</h3><p class="note">Over all layers: {}.</p><div class="plots">{}</div>"#,
            escape(source),
            escape(target),
            escape(&summary.join("; ")),
            heatmap.render()
        );
    }
    if s.is_empty() {
        return s;
    }
    format!(
        r#"<h2 id="layers">wMPPC layer by layer</h2><p class="note">Pairs compared on all their layers: each cell matches the source layer's features against one target layer's. <code>mean_over_layers</code> averages, over source layers, the match against the union of all target layers' features; <code>all_features</code> is one S-weighted mean over every source feature.</p>{s}"#
    )
}

fn sharedness_section(site: &Site) -> String {
    let mut s = String::from(r#"<h2 id="sharedness">Comparative sharedness</h2>"#);
    if site.inputs.rankings.is_empty() {
        s.push_str(r#"<p class="note">The study has no sharedness query.</p>"#);
        return s;
    }
    s.push_str(r#"<p class="note">Features of a model M shared with every model of G and with no model of H: Δ = S·(max(0, min over G of MPPC)² − max(0, max over H of MPPC)²).</p><ul>"#);
    for r in &site.inputs.rankings {
        let groups = if r.query.shared_with.is_empty() {
            "G and H unknown (no study record)".to_string()
        } else {
            format!(
                "shared with {{{}}}, not with {{{}}}",
                r.query.shared_with.join(", "),
                r.query.not_shared_with.join(", ")
            )
        };
        let positive = if r.all.is_empty() {
            String::new()
        } else {
            format!(
                "; {} of {} features with Δ &gt; 0",
                r.all.iter().filter(|x| x.delta > 0.0).count(),
                r.all.len()
            )
        };
        let _ = write!(
            s,
            r#"<li><a href="sharedness/{}.html">{}</a>: features of <b>{}</b> {}; top Δ {}{positive}</li>"#,
            file_name(&r.query.name),
            escape(&r.query.name),
            escape(&r.query.model),
            escape(&groups),
            number(r.rows.first().map(|x| x.delta), 3),
        );
    }
    s.push_str("</ul>");
    s
}
