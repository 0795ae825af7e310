//! The index's one-to-one matches: per compared layer pair, how many features have a partner
//! of their own and how strongly (`matches.parquet`), the ceiling pairs' as the features a
//! second SAE seed finds again.

use crate::metrics::SHARED_AT;
use crate::report::html::{self, escape, number};
use crate::report::Site;

/// Suffix of a ceiling pair's target: the source encoder's second SAEs.
const SECOND_SEED: &str = ".ceiling";

pub fn section(site: &Site) -> String {
    let matches = &site.inputs.matches;
    let mut s = String::from(r#"<h2 id="one-to-one">One-to-one feature matches</h2>"#);
    if matches.is_empty() {
        s.push_str(r#"<p class="note">No <code>matches.parquet</code> here (made by saeshare 0.1 runs and later).</p>"#);
        return s;
    }
    s.push_str(r#"<p class="note">Each feature matched to at most one feature of the other SAE and each of those to at most one, the matching of largest total correlation (exact). A row counts the matched features at each correlation and their share of the source SAE's features; against a second seed of the same SAE (its ceiling pair), the features another seed finds again.</p>"#);
    let thresholds: Vec<String> = SHARED_AT.iter().map(|t| format!("ρ ≥ {t}")).collect();
    let mut headers = vec!["source", "layer", "target", "layer", "matched"];
    headers.extend(thresholds.iter().map(String::as_str));
    headers.push("mean ρ");
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
            let target = match m.target.strip_suffix(SECOND_SEED) {
                Some(base) if base == m.source => "second seed".to_string(),
                _ => escape(&m.target),
            };
            let mut row = vec![
                escape(&m.source),
                escape(&m.source_layer),
                target,
                escape(&m.target_layer),
                share(m.matched),
            ];
            row.extend(m.shared.iter().map(|&c| share(c)));
            row.push(format!("#{}", number(Some(m.mean_rho), 3)));
            row
        })
        .collect();
    s.push_str(&html::sortable_table("one-to-one-matches", &headers, &rows));
    s
}
