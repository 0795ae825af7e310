//! The representation measures on `index.html`: a selector that shows the last-layer matrix of
//! any measure in place of wMPPC's, the classic layer x layer CKA heatmap beside each pair's
//! wMPPC one, and wMPPC against CKA and mutual kNN over the pairs, with where they disagree.

use std::fmt::Write;

use crate::metrics::{Aggregation, WmppcRow};
use crate::report::html::{escape, number};
use crate::report::svg::{HeatCell, Heatmap, Scatter};
use crate::report::{file_name, Site};
use crate::similarity::{Measure, SimilarityRow};

/// Switches the matrix shown by the selector's value.
const SELECT_SCRIPT: &str = r#"<script>
document.getElementById('measure-select').addEventListener('change', function (e) {
  document.querySelectorAll('.measure-view').forEach(function (v) {
    v.style.display = v.dataset.measure === e.target.value ? '' : 'none';
  });
});
</script>"#;

/// The study's measures, in table order, that have rows.
fn measures(site: &Site) -> Vec<Measure> {
    (Measure::ALL.into_iter())
        .filter(|m| site.inputs.similarity.iter().any(|r| r.measure == *m))
        .collect()
}

/// The last-layer wMPPC heatmap (`wmppc`, rendered), and with the study's representation
/// measures a selector showing the same matrix for any of them instead.
pub fn matrix_views(site: &Site, wmppc: String) -> String {
    let measures = measures(site);
    if measures.is_empty() {
        return format!(r#"<div class="plots">{wmppc}</div>"#);
    }
    let mut s = String::from(
        r#"<p><label for="measure-select">Measure: </label><select id="measure-select"><option value="wmppc" selected>wMPPC</option>"#,
    );
    for m in &measures {
        let _ = write!(s, r#"<option value="{0}">{0}</option>"#, m.name());
    }
    s.push_str("</select></p>");
    let _ = write!(
        s,
        r#"<div class="plots measure-view" data-measure="wmppc">{wmppc}</div>"#
    );
    for m in measures {
        let _ = write!(
            s,
            r#"<div class="plots measure-view" data-measure="{}" style="display:none">{}</div>"#,
            m.name(),
            measure_matrix(site, m).render()
        );
    }
    s.push_str(SELECT_SCRIPT);
    s
}

/// The colour scale of a measure's values: [0, 1], widened to what the values reach
/// (Procrustes up to 2, a ridge R^2 below 0).
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values
        .filter(|v| v.is_finite())
        .fold((0.0, 1.0), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

fn find<'a>(
    rows: &'a [SimilarityRow],
    measure: Measure,
    (source, source_layer): (&str, &str),
    (target, target_layer): (&str, &str),
) -> Option<&'a SimilarityRow> {
    rows.iter().find(|r| {
        r.measure == measure
            && r.source == source
            && r.target == target
            && r.source_layer == source_layer
            && r.target_layer == target_layer
    })
}

fn cell(row: Option<&SimilarityRow>, what: String) -> HeatCell {
    let value = row.and_then(|r| r.value).filter(|v| v.is_finite());
    let mut lines = vec![number(value, 3)];
    if let Some(f) = row.and_then(|r| r.floor) {
        lines.push(format!("floor {f:.3}"));
    }
    HeatCell {
        value,
        lines,
        tooltip: format!(
            "{what}: {}, floor {}, {} samples",
            number(value, 4),
            number(row.and_then(|r| r.floor), 4),
            row.map_or(0, |r| r.samples)
        ),
    }
}

fn measure_matrix(site: &Site, measure: Measure) -> Heatmap {
    let encoders = &site.inputs.matrix_encoders;
    let rows = &site.inputs.similarity;
    let cells = (encoders.iter())
        .map(|(a, la)| {
            (encoders.iter())
                .map(|(b, lb)| {
                    let row = find(rows, measure, (a, la), (b, lb));
                    cell(row, format!("{a} {la} → {b} {lb}: {}", measure.name()))
                })
                .collect()
        })
        .collect();
    let names: Vec<String> = encoders.iter().map(|e| e.0.clone()).collect();
    Heatmap {
        id: format!("similarity-matrix-{}", measure.name()),
        title: format!("{}, last layers", measure.name()),
        row_axis: "source".into(),
        column_axis: "target".into(),
        rows: names.clone(),
        columns: names,
        cells,
        range: range(
            rows.iter()
                .filter(|r| r.measure == measure)
                .filter_map(|r| r.value),
        ),
        legend: measure.name().into(),
        cell_size: (104.0, 58.0),
    }
}

/// The classic layer x layer linear CKA heatmap of a pair compared on several layers; `None`
/// without its rows.
pub fn cka_layers(site: &Site, source: &str, target: &str) -> Option<String> {
    let rows: Vec<&SimilarityRow> = (site.inputs.similarity.iter())
        .filter(|r| r.measure == Measure::LinearCka && r.source == source && r.target == target)
        .collect();
    let layers = rows
        .iter()
        .map(|r| (r.source_layer.as_str(), r.target_layer.as_str()));
    let (source_layers, target_layers) = site.layer_grid((source, target), layers)?;
    let all = &site.inputs.similarity;
    let cells = (source_layers.iter())
        .map(|sl| {
            (target_layers.iter())
                .map(|tl| {
                    let row = find(all, Measure::LinearCka, (source, sl), (target, tl));
                    let mut c = cell(row, format!("{source} {sl} → {target} {tl}: linear CKA"));
                    c.lines.truncate(1);
                    c
                })
                .collect()
        })
        .collect();
    let heatmap = Heatmap {
        id: format!("cka-layers-{}__{}", file_name(source), file_name(target)),
        title: format!("{source} → {target}, linear CKA layer by layer"),
        row_axis: format!("{source} layer"),
        column_axis: format!("{target} layer"),
        rows: source_layers.iter().map(|l| l.to_string()).collect(),
        columns: target_layers.iter().map(|l| l.to_string()).collect(),
        cells,
        range: (0.0, 1.0),
        legend: "linear CKA".into(),
        cell_size: (52.0, 30.0),
    };
    Some(heatmap.render())
}

/// wMPPC against linear CKA and mutual kNN over the compared layer pairs, with a sentence on
/// how far their orders agree and the pair where they part most.
pub fn section(site: &Site) -> String {
    if site.inputs.similarity.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        r#"<h2 id="similarity">SAE features against representation similarity</h2><p class="note">The measures the field reads SAE results against, from the rows the codes are read from (<code>similarity.parquet</code>): linear CKA, the CCA family and Procrustes from the exact moments over every sample, ridge R² on held-out samples, mutual kNN, cycle kNN, CKNNA and kernel CKA on a fixed subsample as the Platonic Representation Hypothesis computes them. Each point is a compared layer pair; its floor is what the target's permuted samples give.</p><div class="plots" id="similarity-views">"#,
    );
    let mut sentences = Vec::new();
    for measure in [Measure::LinearCka, Measure::MutualKnn] {
        let points = paired(site, measure);
        if points.is_empty() {
            continue;
        }
        let scatter = Scatter {
            title: format!("wMPPC against {}", measure.name()),
            x_label: "wMPPC".into(),
            y_label: measure.name().into(),
            points: (points.iter())
                .map(|p| (p.wmppc, p.other, p.disagrees, p.label.clone()))
                .collect(),
            highlight: "the pair they rank most apart".into(),
        };
        s.push_str(&scatter.render());
        sentences.push(agreement(measure, &points));
    }
    s.push_str("</div>");
    for sentence in sentences {
        let _ = write!(s, "<p>{}</p>", escape(&sentence));
    }
    s
}

/// A layer pair's wMPPC and another measure's value.
struct Paired {
    label: String,
    wmppc: f64,
    other: f64,
    /// The pair whose ranks by the two differ most.
    disagrees: bool,
    /// Its place (0: first) in the order of wMPPC and in that of the other measure.
    ranks: (usize, usize),
}

impl Paired {
    fn rank_gap(&self) -> usize {
        self.ranks.0.abs_diff(self.ranks.1)
    }
}

fn paired(site: &Site, measure: Measure) -> Vec<Paired> {
    let layer_rows = (site.inputs.wmppc.iter()).filter(|r| r.aggregation == Aggregation::Layer);
    let mut points: Vec<Paired> = layer_rows
        .filter_map(|w: &WmppcRow| {
            let s = find(
                &site.inputs.similarity,
                measure,
                (&w.source, &w.source_layer),
                (&w.target, &w.target_layer),
            )?;
            Some(Paired {
                label: format!(
                    "{} {} → {} {}: wMPPC {}, {} {}",
                    w.source,
                    w.source_layer,
                    w.target,
                    w.target_layer,
                    number(w.wmppc, 3),
                    measure.name(),
                    number(s.value, 3)
                ),
                wmppc: w.wmppc.filter(|v| v.is_finite())?,
                other: s.value.filter(|v| v.is_finite())?,
                disagrees: false,
                ranks: (0, 0),
            })
        })
        .collect();
    let ranks = |key: fn(&Paired) -> f64, points: &[Paired]| -> Vec<usize> {
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by(|&a, &b| key(&points[b]).total_cmp(&key(&points[a])));
        let mut rank = vec![0; points.len()];
        for (r, i) in order.into_iter().enumerate() {
            rank[i] = r;
        }
        rank
    };
    let (by_wmppc, by_other) = (ranks(|p| p.wmppc, &points), ranks(|p| p.other, &points));
    for (i, p) in points.iter_mut().enumerate() {
        p.ranks = (by_wmppc[i], by_other[i]);
    }
    if let Some(worst) = (0..points.len()).max_by_key(|&i| points[i].rank_gap()) {
        points[worst].disagrees = points[worst].rank_gap() > 0;
    }
    points
}

/// Spearman's rank correlation of the two over the pairs, and the pair they rank most apart.
fn agreement(measure: Measure, points: &[Paired]) -> String {
    let n = points.len() as f64;
    let d2: f64 = points.iter().map(|p| (p.rank_gap() as f64).powi(2)).sum();
    let rho = if n > 1.0 {
        1.0 - 6.0 * d2 / (n * (n * n - 1.0))
    } else {
        f64::NAN
    };
    let mut text = format!(
        "Over {} layer pair(s), wMPPC and {} order the pairs with a Spearman correlation of {}.",
        points.len(),
        measure.name(),
        number(Some(rho).filter(|r| r.is_finite()), 2)
    );
    if let Some(p) = points.iter().find(|p| p.disagrees) {
        let reading = if p.ranks.1 < p.ranks.0 {
            "its representations are more alike than its SAE features are shared"
        } else {
            "its SAE features are shared more than its representations as a whole are alike"
        };
        let _ = write!(
            text,
            " They disagree most on {} (place {} by wMPPC, {} by {}): {reading}.",
            p.label,
            p.ranks.0 + 1,
            p.ranks.1 + 1,
            measure.name()
        );
    }
    text
}
