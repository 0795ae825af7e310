//! The study's comparisons as the plan's pairs: which (source, target) pairs, on which layers,
//! with what fingerprint.

use std::path::Path;

use super::{PlannedEncoder, PlannedPair};
use crate::digest::fingerprint;
use crate::ids::{EncoderId, LayerId};
use crate::names::pair_key;
use crate::pipeline::study::Study;

/// The pairs of the study's comparisons, each (source, target, layers) once, in the order the
/// comparisons list them.
pub(super) fn plan_pairs(
    study: &Study,
    encoders: &[PlannedEncoder],
    path: &Path,
) -> anyhow::Result<Vec<PlannedPair>> {
    let mut pairs: Vec<PlannedPair> = Vec::new();
    for comparison in &study.comparisons {
        let pick = |names: &[toml::Spanned<String>]| -> Vec<EncoderId> {
            EncoderId::all(encoders.len())
                .filter(|e| {
                    names
                        .iter()
                        .any(|n| n.get_ref() == "*" || *n.get_ref() == encoders[e.index()].name)
                })
                .collect()
        };
        let all = match comparison.layers.as_str() {
            "last" => false,
            "all" => true,
            other => anyhow::bail!(
                "{}: comparison layers {other:?}: use \"last\" or \"all\"",
                path.display()
            ),
        };
        let layers = |e: &PlannedEncoder| -> Vec<LayerId> {
            if all {
                e.layer_ids().collect()
            } else {
                vec![LayerId::new(e.layers.len() - 1)]
            }
        };
        for s in pick(&comparison.sources) {
            for t in pick(&comparison.targets) {
                let (source, target) = (&encoders[s.index()], &encoders[t.index()]);
                let key = pair_key(&source.name, &target.name, all);
                if s == t || pairs.iter().any(|p| p.key == key) {
                    continue;
                }
                let fingerprint = fingerprint(&(
                    &source.fingerprint,
                    &target.fingerprint,
                    all,
                    study.baselines.floor_permutations,
                ));
                pairs.push(PlannedPair {
                    key,
                    source: s,
                    target: t,
                    source_layers: layers(source),
                    target_layers: layers(target),
                    fingerprint,
                    ceiling_of: None,
                });
            }
        }
    }
    Ok(pairs)
}
