//! `features/<encoder>/<layer>/<feature>.html`: one feature's top-activating images with their
//! captions, its top captions, its activation histogram, where it ranks in the sharedness
//! queries, and its best match in every other encoder with that feature's own examples.

use std::fmt::Write;

use crate::report::examples::FeatureActivity;
use crate::report::html::{self, escape};
use crate::report::svg::Histogram;
use crate::report::{FeatureKey, Site};

const ROOT: &str = "../../../";

pub fn page(site: &Site, key: &FeatureKey) -> String {
    let title = feature_title(key);
    let mut body = format!("<h1>{}</h1>", escape(&title));
    body.push_str(&html::partial_notice(site.missing));
    let activity = site.activity.get(key);
    body.push_str(&facts(site, key, activity));
    match activity {
        Some(a) if a.active > 0 => body.push_str(&activity_sections(site, key, a)),
        Some(_) => {
            body.push_str(r#"<p class="note">The feature never fires on these samples.</p>"#)
        }
        None => body.push_str(
            r#"<p class="note">No codes for this layer were found, so there are no examples.</p>"#,
        ),
    }
    body.push_str(&matches_section(site, key));
    html::page(&site.inputs.name, &title, ROOT, &body)
}

/// How a feature is named on its page and on the pages it is matched on.
fn feature_title(key: &FeatureKey) -> String {
    format!("{} · {} · feature {}", key.encoder, key.layer, key.feature)
}

/// One line of facts: how often the feature fires, its S, and its rank in every query.
fn facts(site: &Site, key: &FeatureKey, activity: Option<&FeatureActivity>) -> String {
    let mut facts = Vec::new();
    if let Some(a) = activity {
        facts.push(format!(
            "active on {} of {} samples ({:.2}%)",
            a.active,
            a.samples,
            100.0 * a.active as f64 / a.samples.max(1) as f64
        ));
    }
    let (mut weight, mut ranks) = (None, Vec::new());
    let queries = site.inputs.rankings.iter();
    for ranking in queries.filter(|r| r.query.model == key.encoder) {
        if let Some((rank, row)) = ranking
            .rows
            .iter()
            .enumerate()
            .find(|(_, r)| r.source_layer == key.layer && r.feature == key.feature)
        {
            weight.get_or_insert(row.weight);
            ranks.push(format!(
                r#"rank {} in <a href="{ROOT}sharedness/{}.html">{}</a> (Δ = {:.4})"#,
                rank + 1,
                crate::report::file_name(&ranking.query.name),
                escape(&ranking.query.name),
                row.delta
            ));
        }
    }
    if let Some(w) = weight {
        facts.push(format!("S = {w:.2} (the sum of its activations)"));
    }
    facts.extend(ranks);
    format!(r#"<p class="note">{}</p>"#, facts.join("; "))
}

/// A feature that fires: its histogram, top-activating samples and top captions.
fn activity_sections(site: &Site, key: &FeatureKey, a: &FeatureActivity) -> String {
    let mut s = format!(
        r#"<div class="plots" id="histogram">{}</div>"#,
        histogram(a, key).render()
    );
    let _ = write!(
        s,
        r#"<h2>Top-activating samples</h2><div class="examples" id="top-examples">{}</div>"#,
        examples(site, a, site.options.examples)
    );
    s.push_str("<h2>Top captions</h2><ol class=\"captions\" id=\"top-captions\">");
    for (value, id) in a.top.iter().take(site.options.captions) {
        let caption = site.samples.get(id).map_or("", |s| s.caption.as_str());
        let _ = write!(
            s,
            r#"<li><b>{}</b> {} <small>(sample {id})</small></li>"#,
            html::significant(*value as f64),
            escape(caption)
        );
    }
    s.push_str("</ol>");
    s
}

/// The feature's best match in every other encoder, each with its own examples.
fn matches_section(site: &Site, key: &FeatureKey) -> String {
    let mut s = String::from(
        r#"<h2>Best matches in other encoders</h2><p class="note">In every other encoder, the feature with the highest Pearson correlation with this one over the samples (its MPPC), with its own top-activating samples.</p><div class="matches" id="matches">"#,
    );
    for m in site.matches.get(key).into_iter().flatten() {
        let _ = write!(
            s,
            r#"<div class="match"><h3>{}</h3><p>ρ = <b>{:.3}</b>"#,
            site.feature_link(&m.key, ROOT, &feature_title(&m.key)),
            m.rho
        );
        match site.activity.get(&m.key) {
            Some(a) => {
                let _ = write!(
                    s,
                    r#"; active on {} of {} samples</p><div class="examples">{}</div>"#,
                    a.active,
                    a.samples,
                    examples(site, a, site.options.match_examples())
                );
            }
            None => s.push_str("</p>"),
        }
        s.push_str("</div>");
    }
    s.push_str("</div>");
    s
}

fn histogram(a: &FeatureActivity, key: &FeatureKey) -> Histogram {
    let values: Vec<f64> = a.values.iter().map(|&v| v as f64).collect();
    let (edges, counts) = Histogram::of(&values, 30);
    let sampled = if a.values.len() as u64 == a.active {
        String::new()
    } else {
        format!(" (a sample of {})", a.values.len())
    };
    Histogram {
        title: format!(
            "Activations of feature {} when active{sampled}",
            key.feature
        ),
        x_label: "activation".into(),
        y_label: "samples".into(),
        edges,
        counts,
        marker: None,
    }
}

/// The first `n` top-activating samples of a feature as thumbnails with value and caption.
fn examples(site: &Site, a: &FeatureActivity, n: usize) -> String {
    let mut s = String::new();
    for (value, id) in a.top.iter().take(n) {
        let sample = site.samples.get(id);
        let image = match sample.and_then(|s| s.thumbnail.as_ref()) {
            Some(path) => format!(
                r#"<img src="{ROOT}{}" alt="sample {id}" loading="eager">"#,
                escape(path)
            ),
            None => r#"<div class="missing">no image</div>"#.to_string(),
        };
        let caption = sample.map_or("", |s| s.caption.as_str());
        let _ = write!(
            s,
            r#"<div class="example">{image}<div><span class="value">{}</span> · #{id}</div><div>{}</div></div>"#,
            html::significant(*value as f64),
            escape(caption)
        );
    }
    s
}
