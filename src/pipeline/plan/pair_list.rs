//! The study's comparisons as the plan's pairs: which (source, target) pairs, on which layers,
//! with what fingerprint, and where their tables go.

use std::path::{Path, PathBuf};

use super::{Plan, PlannedEncoder, PlannedPair};
use crate::digest::fingerprint;
use crate::ids::{EncoderId, EncoderLayer, LayerId, PairId};
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

impl PlannedPair {
    /// Whether `encoder` is one of the pair's two sides.
    pub fn involves(&self, encoder: EncoderId) -> bool {
        self.source == encoder || self.target == encoder
    }

    /// The compared layers of the source side, in order.
    pub fn source_at(&self) -> impl Iterator<Item = EncoderLayer> + '_ {
        (self.source_layers.iter()).map(|&layer| EncoderLayer {
            encoder: self.source,
            layer,
        })
    }

    /// The compared layers of the target side, in order.
    pub fn target_at(&self) -> impl Iterator<Item = EncoderLayer> + '_ {
        (self.target_layers.iter()).map(|&layer| EncoderLayer {
            encoder: self.target,
            layer,
        })
    }
}

impl Plan {
    /// The fingerprint of a pair's sums: its settings and the SAEs of both sides.
    pub fn pair_fingerprint(&self, pair: PairId) -> String {
        let p = self.pair(pair);
        // The tables a pair writes, with what makes them: a pair made before `matches` or
        // `decoders` existed is made again.
        let baselines = &self.study.baselines;
        let tables = (
            "mppc wmppc features matches decoders",
            (baselines.geometry_permutations, baselines.bootstrap),
        );
        let sums = (
            &p.fingerprint,
            self.sae_id(p.source),
            self.sae_id(p.target),
            tables,
        );
        if self.similarity_of(pair) {
            // The saved sums hold the moments too, and the tables the measures.
            let moments = crate::similarity::SUMS_VERSION;
            let mirror = self.similarity_mirror(pair).is_some();
            fingerprint(&(sums, &self.study.similarity, moments, mirror))
        } else {
            fingerprint(&sums)
        }
    }

    /// The folder of a pair's accumulators and tables.
    pub fn pair_dir(&self, pair: PairId) -> PathBuf {
        self.layout().pair_dir(&self.pair(pair).key)
    }

    /// The unit name and fingerprint of a pair's tables.
    pub fn pair_unit(&self, pair: PairId) -> (String, String) {
        (
            format!("pairs/{}", self.pair(pair).key),
            self.pair_fingerprint(pair),
        )
    }
}
