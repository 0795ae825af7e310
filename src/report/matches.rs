//! Which `mppc` row speaks for a feature's match in another model. A study may compare a
//! feature with a model twice: against each target layer, and against the union of all of
//! them (`*`); the feature pages and the sharedness table must agree on which row they show.

use std::collections::{BTreeMap, BTreeSet};

use crate::metrics::{MppcRow, ALL_LAYERS};
use crate::report::FeatureKey;

/// A best-matching feature of another encoder.
#[derive(Clone, Debug)]
pub(crate) struct Match {
    pub key: FeatureKey,
    pub rho: f64,
}

/// Per key (a feature and a target model), the row kept of those offered: the row over all
/// target layers when there is one (the first such), else the layer row with the highest ρ.
pub(crate) struct PreferredRows<'a, K> {
    rows: BTreeMap<K, &'a MppcRow>,
}

impl<'a, K: Ord> PreferredRows<'a, K> {
    /// No row yet.
    pub fn new() -> Self {
        PreferredRows {
            rows: BTreeMap::new(),
        }
    }

    /// Keeps `row` for `key` when it is preferred to the row kept so far.
    pub fn offer(&mut self, key: K, row: &'a MppcRow) {
        let keeps = self
            .rows
            .get(&key)
            .is_some_and(|kept| is_union(kept) || (!is_union(row) && kept.rho >= row.rho));
        if !keeps {
            self.rows.insert(key, row);
        }
    }

    /// The rows kept, in key order.
    pub fn into_rows(self) -> impl Iterator<Item = (K, &'a MppcRow)> {
        self.rows.into_iter()
    }
}

/// Whether `row` matches against the union of all the target's layers.
fn is_union(row: &MppcRow) -> bool {
    row.target_layer == ALL_LAYERS
}

/// The target layer of `row`'s best match: a layer row's own, a union row's `best_layer`
/// (`None` when the row has none).
pub(crate) fn matched_layer(row: &MppcRow) -> Option<&str> {
    if is_union(row) {
        row.best_layer.as_deref()
    } else {
        Some(&row.target_layer)
    }
}

/// For each feature, its best match in every other model it was compared with (ceilings
/// aside), in the order of the models' names.
pub(crate) fn best_matches(
    mppc: &[MppcRow],
    features: &BTreeSet<FeatureKey>,
) -> BTreeMap<FeatureKey, Vec<Match>> {
    let mut preferred = PreferredRows::new();
    for row in mppc {
        let key = FeatureKey {
            encoder: row.source.clone(),
            layer: row.source_layer.clone(),
            feature: row.feature,
        };
        let usable = row.best_feature.is_some() && matched_layer(row).is_some();
        if features.contains(&key) && !row.target.contains(".ceiling") && usable {
            preferred.offer((key, row.target.as_str()), row);
        }
    }
    let mut out: BTreeMap<FeatureKey, Vec<Match>> = BTreeMap::new();
    for ((key, _), row) in preferred.into_rows() {
        let (Some(feature), Some(layer)) = (row.best_feature, matched_layer(row)) else {
            continue;
        };
        out.entry(key).or_default().push(Match {
            key: FeatureKey {
                encoder: row.target.clone(),
                layer: layer.to_string(),
                feature,
            },
            rho: row.rho,
        });
    }
    out
}
