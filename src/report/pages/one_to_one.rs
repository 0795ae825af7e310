//! The index's one-to-one matches: per compared layer pair, how many features have a partner
//! of their own and how strongly (`matches.parquet`), the ceiling pairs' as the features a
//! second SAE seed finds again, by activation correlation and by decoder cosine; and whether
//! the shared features' decoder rows sit alike in both spaces (`decoders.parquet`).

use crate::metrics::{DecoderRow, LayerGeometry, PairedSvcca, PAIRED_AT, SHARED_AT};
use crate::report::html::{self, escape, number};
use crate::report::Site;

/// What a ceiling pair's target is to its source: `<source>.ceiling` its SAEs' second seed,
/// `<source>.ceilingK` the K-th; `None` for another encoder.
fn seed_of(source: &str, target: &str) -> Option<String> {
    match crate::names::ceiling_set_of(source, target)? {
        0 => Some("second seed".into()),
        set => Some(format!("seed {}", set + 2)),
    }
}

pub fn section(site: &Site) -> String {
    let matches = &site.inputs.matches;
    let mut s = String::from(r#"<h2 id="one-to-one">One-to-one feature matches</h2>"#);
    if matches.is_empty() {
        s.push_str(r#"<p class="note">No <code>matches.parquet</code> here (made by saeshare 0.1 runs and later).</p>"#);
        return s;
    }
    s.push_str(&format!(r#"<p class="note">Each feature matched to at most one feature of the other SAE and each of those to at most one, the matching of largest total correlation (exact). A row counts the matched features at each correlation and their share of the source SAE's features; against a second seed of the same SAE (its ceiling pair), the features another seed finds again, by correlation and by the cosine of their decoder rows (Paulo &amp; Belrose 2025). <em>Co-firing</em>: the mean Jaccard index of the samples where each feature of a pair matched at ρ ≥ 0.5 fires. <em>Decoder SVCCA</em>: for the pairs matched at ρ ≥ {PAIRED_AT}, SVCCA between the two SAEs' decoder rows of each pair, against the same with the pairing shuffled (Lan et al. 2024): the mean ± sd of the shuffles and the test's p-value.</p>"#));
    let thresholds: Vec<String> = SHARED_AT.iter().map(|t| format!("ρ ≥ {t}")).collect();
    let mut headers = vec!["source", "layer", "target", "layer", "matched"];
    headers.extend(thresholds.iter().map(String::as_str));
    headers.push("mean ρ");
    headers.push("co-firing, ρ ≥ 0.5");
    let cosines: Vec<String> = SHARED_AT.iter().map(|t| format!("cos ≥ {t}")).collect();
    headers.extend(cosines.iter().map(String::as_str));
    headers.push("decoder SVCCA");
    let rows: Vec<Vec<String>> = (matches.iter())
        .map(|m| {
            let width = (site.inputs.saes.iter())
                .find(|t| t.encoder == m.source && t.layer == m.source_layer)
                .map(|t| t.meta.d_sae);
            // A count, with its share of the source SAE's features where the SAE is known.
            let share = |count: usize| match width {
                Some(w) if w > 0 => {
                    format!("#{count} ({:.1}%)", 100.0 * count as f64 / w as f64)
                }
                _ => format!("#{count}"),
            };
            let target = seed_of(&m.source, &m.target).unwrap_or_else(|| escape(&m.target));
            let mut row = vec![
                escape(&m.source),
                escape(&m.source_layer),
                target,
                escape(&m.target_layer),
                share(m.matched),
            ];
            row.extend(m.shared.iter().map(|&c| share(c)));
            row.push(format!("#{}", number(Some(m.mean_rho), 3)));
            row.push(format!("#{}", number(m.shared_jaccard, 3)));
            let geometry = (site.inputs.decoders.iter())
                .find(|d| {
                    (d.source == m.source && d.target == m.target)
                        && (d.source_layer == m.source_layer && d.target_layer == m.target_layer)
                })
                .map(|d: &DecoderRow| &d.geometry);
            match geometry.and_then(|g| g.cosine) {
                Some((_, at)) => row.extend(at.iter().map(|&c| share(c as usize))),
                None => row.extend(SHARED_AT.iter().map(|_| "—".to_string())),
            }
            row.push(paired_svcca(geometry));
            row
        })
        .collect();
    s.push_str(&html::sortable_table("one-to-one-matches", &headers, &rows));
    s
}

/// A layer pair's decoder SVCCA in words: the value, the shuffles' mean and spread, the p-value.
fn paired_svcca(geometry: Option<&LayerGeometry>) -> String {
    match geometry {
        None => "—".into(),
        Some(LayerGeometry {
            svcca: None,
            paired,
            ..
        }) => format!("too few pairs ({paired})"),
        Some(LayerGeometry { svcca: Some(s), .. }) => svcca_cell(s),
    }
}

fn svcca_cell(s: &PairedSvcca) -> String {
    let value = number(Some(s.value), 3);
    match (s.null_mean, s.null_sd, s.p_value) {
        (Some(mean), Some(sd), Some(p)) => format!(
            "#{value} <span class=\"note\">(shuffled {} ± {}, p = {}; {} pairs)</span>",
            number(Some(mean), 3),
            number(Some(sd), 3),
            number(Some(p), 3),
            s.pairs
        ),
        _ => format!("#{value} <span class=\"note\">({} pairs)</span>", s.pairs),
    }
}
