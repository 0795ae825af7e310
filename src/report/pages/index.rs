//! `index.html`: the study, the last-layer wMPPC matrix (heatmap and table), a layer x layer
//! heatmap per all-layers pair, and the sharedness queries.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::metrics::{Aggregation, WmppcRow};
use crate::report::html::{self, escape, number};
use crate::report::pages::{one_to_one, similarity};
use crate::report::svg::{HeatCell, Heatmap};
use crate::report::{file_name, specificity, MatrixCell, Site, WmppcMatrix};
use crate::run_record::EncoderRecord;
use crate::sae::ReadOut;

pub fn page(site: &Site) -> String {
    let inputs = site.inputs;
    let mut body = format!("<h1>Study {}</h1>", escape(&inputs.name));
    body.push_str(&html::partial_notice(site.missing));
    body.push_str(&study_facts(site));
    body.push_str(&matrix_section(site));
    body.push_str(&layers_section(site));
    body.push_str(&one_to_one::section(site));
    body.push_str(&similarity::section(site));
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
        r#"<p class="note">{} samples from {} ({} shard(s)). Study file: <code>{}</code>.</p><table id="encoders"><thead><tr><th>encoder</th><th>modality</th><th>layers</th><th>SAEs</th><th>features read</th></tr></thead><tbody>"#,
        record.dataset.rows,
        escape(&record.dataset.path.display().to_string()),
        record.dataset.shards.len(),
        escape(&record.study_file.display().to_string())
    );
    for e in record.named_encoders() {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&e.name),
            escape(&e.modality),
            escape(&e.layers.join(", ")),
            sae_cell(e),
            escape(&read_at(e))
        );
    }
    s.push_str("</tbody></table>");
    for e in record.named_encoders() {
        if let Some(why) = &e.no_ceiling {
            let _ = write!(
                s,
                r#"<p class="note">No ceiling baseline for {}: {}.</p>"#,
                escape(&e.name),
                escape(why)
            );
        }
    }
    s
}

/// What an encoder's SAEs are: fitted on what, and those imported instead (escaped HTML).
fn sae_cell(e: &EncoderRecord) -> String {
    let imported: Vec<String> = (e.imported.iter())
        .map(|(layer, sae)| format!("layer {}: imported {}", escape(layer), escape(sae)))
        .collect();
    let fitted = format!("fitted on {}", escape(&fitted_on(e)));
    match imported.len() {
        0 => fitted,
        n if n == e.layers.len() => imported.join("<br>"),
        _ => format!("{}<br>other layers {fitted}", imported.join("<br>")),
    }
}

/// `pooled rows`, `every token`, `16 tokens a sample`.
fn fitted_on(e: &EncoderRecord) -> String {
    match (e.fit_on.as_str(), e.tokens_per_sample) {
        ("tokens", Some(n)) => format!("{n} tokens a sample"),
        ("tokens", None) => "every token".to_string(),
        (other, _) => format!("{other} rows"),
    }
}

/// `top-k at mean pooling`, `ReLU at cls`.
fn read_at(e: &EncoderRecord) -> String {
    let values = match e.read_out {
        ReadOut::Code => "SAE code",
        ReadOut::Relu => "dense ReLU",
    };
    match e.read_at {
        Some(pooling) => format!(
            "{values}, {} pooling",
            format!("{pooling:?}").to_lowercase()
        ),
        None => values.to_string(),
    }
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
    s.push_str(&similarity::matrix_views(
        site,
        matrix_heatmap(site).render(),
    ));
    s.push_str("<h3>As a table (click a column to sort)</h3>");
    s.push_str(&matrix_table(m));
    s
}

fn matrix_heatmap(site: &Site) -> Heatmap {
    let m = site.matrix;
    let cells = m.map_cells(|i, j, c| match c {
        Some(c) => valued_cell(m, i, j, c),
        None if i == j => HeatCell {
            lines: vec!["·".into()],
            tooltip: m.encoders[i].clone(),
            ..HeatCell::default()
        },
        None => missing_cell(site, &m.encoders[i], &m.encoders[j]),
    });
    Heatmap {
        id: "wmppc-matrix".into(),
        title: "wMPPC, last layers".into(),
        row_axis: "source".into(),
        column_axis: "target".into(),
        rows: m.encoders.clone(),
        columns: m.encoders.clone(),
        cells,
        range: (0.0, 1.0),
        legend: "wMPPC".into(),
        cell_size: (124.0, 64.0),
    }
}

/// A compared pair: its wMPPC, with the floor and ceiling below it.
fn valued_cell(m: &WmppcMatrix, i: usize, j: usize, c: &MatrixCell) -> HeatCell {
    let mut lines = vec![number(c.wmppc, 3)];
    if let Some((low, high)) = c.interval {
        lines.push(format!("95% [{low:.3}, {high:.3}]"));
    }
    if let Some(f) = c.floor {
        lines.push(format!("floor {f:.3}"));
    }
    if let Some(x) = c.ceiling {
        match c.ceiling_std {
            Some(sd) => lines.push(format!("ceiling {x:.3} ± {sd:.3}")),
            None => lines.push(format!("ceiling {x:.3}")),
        }
    }
    HeatCell {
        value: c.wmppc.filter(|v| v.is_finite()),
        tooltip: format!(
            "{} {} → {} {}: wMPPC {}{}, floor {}, ceiling {}, normalised {}, {} samples",
            m.encoders[i],
            c.source_layer,
            m.encoders[j],
            c.target_layer,
            number(c.wmppc, 4),
            interval_words(c),
            number(c.floor, 4),
            number(c.ceiling, 4),
            number(c.normalised(), 3),
            c.samples
        ),
        lines,
    }
}

/// The interval and the floor test, as words after the value.
fn interval_words(c: &MatrixCell) -> String {
    let interval = c.interval.map_or_else(String::new, |(low, high)| {
        format!(" (95% interval {low:.4} to {high:.4})")
    });
    let test = c
        .floor_p
        .map_or_else(String::new, |p| format!(", p = {p:.3} against the floor"));
    interval + &test
}

/// A pair without a value: pending when the study compares it, else not part of the study.
fn missing_cell(site: &Site, source: &str, target: &str) -> HeatCell {
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

const MATRIX_COLUMNS: [&str; 14] = [
    "source",
    "target",
    "source layer",
    "target layer",
    "wMPPC",
    "95% low",
    "95% high",
    "floor",
    "p, above floor",
    "floor std",
    "ceiling",
    "wMPPC − floor",
    "normalised",
    "samples",
];

/// Every compared pair of the matrix as a sortable row.
fn matrix_table(m: &WmppcMatrix) -> String {
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
                format!("#{}", number(c.interval.map(|i| i.0), 4)),
                format!("#{}", number(c.interval.map(|i| i.1), 4)),
                format!("#{}", number(c.floor, 4)),
                format!("#{}", number(c.floor_p, 3)),
                format!("#{}", number(c.floor_std, 4)),
                format!("#{}", number(c.ceiling, 4)),
                format!("#{}", number(above, 4)),
                format!("#{}", number(c.normalised(), 4)),
                format!("#{}", c.samples),
            ]
        })
        .collect();
    html::sortable_table("wmppc-table", &MATRIX_COLUMNS, &rows)
}

/// A heatmap per (source, target) compared on several layers.
fn layers_section(site: &Site) -> String {
    let mut pairs: BTreeMap<(&str, &str), Vec<&WmppcRow>> = BTreeMap::new();
    for r in &site.inputs.wmppc {
        pairs
            .entry((r.source.as_str(), r.target.as_str()))
            .or_default()
            .push(r);
    }
    let mut s = String::new();
    for ((source, target), rows) in pairs {
        let Some(grid) = LayerGrid::of(site, source, target, &rows) else {
            continue;
        };
        let _ = write!(
            s,
            r#"<h3>{} → {}</h3><p class="note">Over all layers: {}.</p><div class="plots">{}{}</div>"#,
            escape(source),
            escape(target),
            escape(&over_layers_summary(&rows)),
            grid.heatmap().render(),
            similarity::cka_layers(site, source, target).unwrap_or_default()
        );
    }
    if s.is_empty() {
        return s;
    }
    format!(
        r#"<h2 id="layers">wMPPC layer by layer</h2><p class="note">Pairs compared on all their layers: each cell matches the source layer's features against one target layer's. <code>mean_over_layers</code> averages, over source layers, the match against the union of all target layers' features; <code>all_features</code> is one S-weighted mean over every source feature.</p>{s}"#
    )
}

/// The pair's values over all layers (`mean_over_layers`, `all_features`), as a sentence.
fn over_layers_summary(rows: &[&WmppcRow]) -> String {
    let over_layers = rows.iter().filter(|r| {
        matches!(
            r.aggregation,
            Aggregation::MeanOverLayers | Aggregation::AllFeatures
        )
    });
    let summary: Vec<String> = over_layers
        .map(|r| {
            format!(
                "{} = {} (floor {})",
                r.aggregation.as_str(),
                number(r.wmppc, 3),
                number(r.baseline_floor, 3)
            )
        })
        .collect();
    summary.join("; ")
}

/// A pair's layer-by-layer rows, on the source's and the target's layers.
struct LayerGrid<'a> {
    source: &'a str,
    target: &'a str,
    source_layers: Vec<&'a str>,
    target_layers: Vec<&'a str>,
    rows: Vec<&'a WmppcRow>,
}

impl<'a> LayerGrid<'a> {
    /// The grid of a pair's rows, its layers in the study's order where known; `None` when
    /// the pair was compared on one layer of each encoder only.
    fn of(site: &Site, source: &'a str, target: &'a str, rows: &[&'a WmppcRow]) -> Option<Self> {
        let rows: Vec<&WmppcRow> = rows
            .iter()
            .copied()
            .filter(|r| r.aggregation == Aggregation::Layer)
            .collect();
        let layers = rows
            .iter()
            .map(|r| (r.source_layer.as_str(), r.target_layer.as_str()));
        let (source_layers, target_layers) = site.layer_grid((source, target), layers)?;
        Some(LayerGrid {
            source,
            target,
            source_layers,
            target_layers,
            rows,
        })
    }

    fn cell(&self, source_layer: &str, target_layer: &str) -> HeatCell {
        let (source, target) = (self.source, self.target);
        let r = self
            .rows
            .iter()
            .find(|r| r.source_layer == source_layer && r.target_layer == target_layer);
        let value = r.and_then(|r| r.wmppc).filter(|v| v.is_finite());
        HeatCell {
            value,
            lines: vec![value.map_or("–".into(), |v| format!("{v:.2}"))],
            tooltip: format!(
                "{source} {source_layer} → {target} {target_layer}: wMPPC {}, floor {}",
                number(value, 4),
                number(r.and_then(|r| r.baseline_floor), 4)
            ),
        }
    }

    fn heatmap(&self) -> Heatmap {
        let (source, target) = (self.source, self.target);
        let cells = self
            .source_layers
            .iter()
            .map(|sl| {
                self.target_layers
                    .iter()
                    .map(|tl| self.cell(sl, tl))
                    .collect()
            })
            .collect();
        Heatmap {
            id: format!("layers-{}__{}", file_name(source), file_name(target)),
            title: format!("{source} → {target}, layer by layer"),
            row_axis: format!("{source} layer"),
            column_axis: format!("{target} layer"),
            rows: self.source_layers.iter().map(|l| l.to_string()).collect(),
            columns: self.target_layers.iter().map(|l| l.to_string()).collect(),
            cells,
            range: (0.0, 1.0),
            legend: "wMPPC".into(),
            cell_size: (52.0, 30.0),
        }
    }
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
                r.positive(),
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
    if let Some(table) = specificity::table(&site.inputs.rankings, &site.inputs.wmppc) {
        s.push_str(r#"<h3 id="specificity">Shared with G, by how specific to M among H</h3><p class="note">Each query's firing features in bins of their best match among H (max MPPC over H: the lower, the more specific the feature is to M among the models of H), with the mean of their worst match among G (min MPPC over G) and how many fall in the bin. The paper's finding, for a vision-language image tower M against unimodal image encoders H and text encoders G: features specific to M among image encoders are shared with text, more than a unimodal tower's are. The floor is chance: the highest wMPPC floor of M against a model of G.</p>"#);
        s.push_str(&table);
    }
    s
}
