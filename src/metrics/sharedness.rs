//! Comparative Sharedness: which features of a model M every model of G has and no model of H
//! has (docs/DESIGN.md, section 1).
//!
//! `Delta_i = S_i * (max(0, min_{g in G} MPPC_i^{M->g})^2 - max(0, max_{h in H} MPPC_i^{M->h})^2)`,
//! the min starting at +inf and the max at -inf. The reference started its min at 0, which made
//! every Delta 0 or less and the ranking meaningless.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::ALL_LAYERS;
use super::{MetricViews, MetricsError, MppcRow};

/// A sharedness query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharednessQuery {
    /// The model M whose features are ranked.
    pub source: String,
    /// G: models the feature should be shared with (at least one).
    pub shared_with: Vec<String>,
    /// H: models the feature should not be shared with (may be empty).
    pub not_shared_with: Vec<String>,
    /// Keep only the `top` highest Delta.
    pub top: Option<usize>,
}

/// One feature of M in the ranking.
#[derive(Clone, Debug, PartialEq)]
pub struct SharednessRow {
    /// The layer of M.
    pub source_layer: String,
    /// The feature.
    pub feature: u32,
    /// `Delta_i`.
    pub delta: f64,
    /// `min_{g in G} MPPC_i^{M->g}` (before the clamp at 0).
    pub rho_min_shared: f64,
    /// `max_{h in H} MPPC_i^{M->h}` (before the clamp); `None` when H is empty.
    pub rho_max_not_shared: Option<f64>,
    /// `S_i`.
    pub weight: f64,
}

/// Ranks the features of `query.source` by Delta, highest first (ties: layer, then feature).
///
/// For each target model the rows of the union of its layers (`target_layer` = `*`) are used
/// when present, else the rows of its only layer; a model compared at several layers without a
/// union is an error, as is a feature of M without a row for some model of G or H.
pub fn sharedness(
    rows: &[MppcRow],
    query: &SharednessQuery,
) -> Result<Vec<SharednessRow>, MetricsError> {
    check_query(query)?;
    let mine: Vec<&MppcRow> = rows.iter().filter(|r| r.source == query.source).collect();
    if mine.is_empty() {
        let known: BTreeSet<&str> = rows.iter().map(|r| r.source.as_str()).collect();
        return Err(MetricsError::BadInput(format!(
            "no mppc rows with source {:?}; sources in the given tables: {known:?}",
            query.source
        )));
    }
    let standing = StandingLayers::of(&mine);
    let features = gather(&mine, query, &standing)?;
    for ((source_layer, feature), entry) in features {
        let missing = (query.shared_with.iter())
            .find(|g| !entry.shared.contains_key(*g))
            .or_else(|| {
                (query.not_shared_with.iter()).find(|h| !entry.not_shared.contains_key(*h))
            });
        if let Some(model) = missing {
            return Err(MetricsError::BadInput(format!(
                "no MPPC of {} layer {source_layer:?} feature {feature} towards {model}; give the mppc table of `saeshare compare --source <{} codes> --target <{model} codes>`",
                query.source, query.source
            )));
        }
    }
    // The ranking itself comes from the differential views, as a study's does.
    let mine: Vec<MppcRow> = mine.into_iter().cloned().collect();
    let mut views = MetricViews::new();
    views.add_mppc(&mine)?;
    views.add_query("query", query.clone())?;
    views.step();
    Ok(views.sharedness("query").unwrap_or_default())
}

/// G is not empty and shares no model with H.
fn check_query(query: &SharednessQuery) -> Result<(), MetricsError> {
    if query.shared_with.is_empty() {
        return Err(MetricsError::BadInput(
            "--shared-with: name at least one model".into(),
        ));
    }
    if let Some(m) = (query.shared_with.iter()).find(|m| query.not_shared_with.contains(m)) {
        return Err(MetricsError::BadInput(format!(
            "{m:?} is both in --shared-with and in --not-shared-with"
        )));
    }
    Ok(())
}

/// The target layers M's rows were compared with, per (target model, source layer).
struct StandingLayers<'a> {
    source: &'a str,
    layers: HashMap<(&'a str, &'a str), BTreeSet<&'a str>>,
}

impl<'a> StandingLayers<'a> {
    fn of(mine: &[&'a MppcRow]) -> StandingLayers<'a> {
        let mut layers: HashMap<(&str, &str), BTreeSet<&str>> = HashMap::new();
        for r in mine {
            layers
                .entry((r.target.as_str(), r.source_layer.as_str()))
                .or_default()
                .insert(r.target_layer.as_str());
        }
        let source = mine.first().map_or("", |r| r.source.as_str());
        StandingLayers { source, layers }
    }

    /// The target layer standing for `target` at `source_layer`: the union when there is one,
    /// else the only layer; several layers without a union are an error.
    fn at(&self, target: &str, source_layer: &str) -> Result<Option<&'a str>, MetricsError> {
        let Some(set) = self.layers.get(&(target, source_layer)) else {
            return Ok(None);
        };
        if set.contains(ALL_LAYERS) {
            return Ok(Some(ALL_LAYERS));
        }
        match set.len() {
            1 => Ok(set.iter().next().copied()),
            _ => Err(MetricsError::BadInput(format!(
                "{} layer {source_layer:?} was compared with layers {set:?} of {target} separately, without their union; compare it with all layers of {target} in one run",
                self.source
            ))),
        }
    }
}

/// One feature of M: its MPPC towards the models of G and of H.
struct Entry {
    shared: HashMap<String, f64>,
    not_shared: HashMap<String, f64>,
}

/// Each feature of M with its MPPC towards the models of G and H at the standing layers: what
/// checks that the rows are complete and not given twice.
fn gather(
    mine: &[&MppcRow],
    query: &SharednessQuery,
    standing: &StandingLayers<'_>,
) -> Result<BTreeMap<(String, u32), Entry>, MetricsError> {
    let mut features: BTreeMap<(String, u32), Entry> = BTreeMap::new();
    for r in mine {
        let shared = query.shared_with.contains(&r.target);
        if !shared && !query.not_shared_with.contains(&r.target) {
            continue;
        }
        if standing.at(&r.target, &r.source_layer)? != Some(r.target_layer.as_str()) {
            continue;
        }
        let entry = features
            .entry((r.source_layer.clone(), r.feature))
            .or_insert_with(|| Entry {
                shared: HashMap::new(),
                not_shared: HashMap::new(),
            });
        let map = if shared {
            &mut entry.shared
        } else {
            &mut entry.not_shared
        };
        if map.insert(r.target.clone(), r.rho).is_some() {
            return Err(MetricsError::BadInput(format!(
                "{} layer {:?} feature {} has two rows for target {} layer {:?}; was one table given twice?",
                r.source, r.source_layer, r.feature, r.target, r.target_layer
            )));
        }
    }
    Ok(features)
}

/// The row of one feature of weight `S_i` from its MPPC towards each model of G and of H.
/// The one formula of Delta: the differential views call it for every feature they rank.
pub(crate) fn feature_delta(
    source_layer: String,
    feature: u32,
    weight: f64,
    shared: impl IntoIterator<Item = f64>,
    not_shared: impl IntoIterator<Item = f64>,
) -> SharednessRow {
    // +inf and -inf: the neutral elements of min and max, never 0.
    let min_shared = shared.into_iter().fold(f64::INFINITY, f64::min);
    let max_not_shared = not_shared.into_iter().fold(f64::NEG_INFINITY, f64::max);
    let delta = weight * (min_shared.max(0.0).powi(2) - max_not_shared.max(0.0).powi(2));
    SharednessRow {
        source_layer,
        feature,
        delta,
        rho_min_shared: min_shared,
        rho_max_not_shared: max_not_shared.is_finite().then_some(max_not_shared),
        weight,
    }
}

/// Sorts a ranking by Delta, highest first (ties: layer, then feature), and keeps the `top`.
pub(crate) fn rank(rows: &mut Vec<SharednessRow>, top: Option<usize>) {
    rows.sort_by(|x, y| {
        y.delta
            .total_cmp(&x.delta)
            .then_with(|| x.source_layer.cmp(&y.source_layer))
            .then(x.feature.cmp(&y.feature))
    });
    if let Some(top) = top {
        rows.truncate(top);
    }
}
