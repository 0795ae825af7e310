//! The ceiling baseline's SAE sets: for every source encoder, an SAE set per ceiling seed fed
//! the same rows (fitted with that seed, or, for an imported layer, the second SAE the study
//! imports with `ceiling = PATH`), and a pair of the encoder against each on all its layers.

use std::path::Path;

use crate::digest::fingerprint;
use crate::ids::{EncoderId, LayerId};
use crate::names::{ceiling_set_name, pair_key};
use crate::pipeline::plan::{PlannedEncoder, PlannedPair};

/// Adds an SAE set per seed of `seeds` of every source encoder of `pairs`, each with its
/// ceiling pair. An encoder with an imported layer that has no second SAE gets none: its
/// `no_ceiling` says why, and a warning says it once; one with imported layers gets the first
/// set only (a study imports one second SAE a layer).
pub(in crate::pipeline) fn add_twins(
    encoders: &mut Vec<PlannedEncoder>,
    pairs: &mut Vec<PlannedPair>,
    seeds: &[u64],
    path: &Path,
) -> anyhow::Result<()> {
    let sources: std::collections::BTreeSet<EncoderId> = pairs.iter().map(|p| p.source).collect();
    for s in sources {
        let base = encoders[s.index()].clone();
        if let Some(layer) = without_second_sae(&base) {
            let why = format!(
                "the SAE of layer {layer} is imported and the study gives no second SAE of it \
                 (`saes.\"{layer}\" = {{ path = ..., ceiling = \"PATH\" }}`)"
            );
            tracing::warn!("no ceiling baseline for {}: {why}", base.name);
            encoders[s.index()].no_ceiling = Some(why);
            continue;
        }
        let sets = match base.imported.iter().any(Option::is_some) {
            true => &seeds[..1],
            false => seeds,
        };
        if sets.len() < seeds.len() {
            tracing::warn!(
                "{}: one ceiling SAE set, not {}: its imported layers have one second SAE each",
                base.name,
                seeds.len()
            );
        }
        for (set, &seed) in sets.iter().enumerate() {
            let twin = twin_of(&base, s, set, seed, path)?;
            anyhow::ensure!(
                encoders.iter().all(|e| e.name != twin.name),
                "{}: an encoder is named {:?}, the name of the ceiling's SAEs of {:?}; rename it",
                path.display(),
                twin.name,
                base.name
            );
            let layers: Vec<LayerId> = twin.layer_ids().collect();
            let key = pair_key(&base.name, &twin.name, false);
            let pair_fingerprint = fingerprint(&(&base.fingerprint, &twin.fingerprint));
            encoders.push(twin);
            pairs.push(PlannedPair {
                key,
                source: s,
                target: EncoderId::new(encoders.len() - 1),
                source_layers: layers.clone(),
                target_layers: layers,
                fingerprint: pair_fingerprint,
                ceiling_of: Some(s),
            });
        }
    }
    Ok(())
}

/// Ceiling set `set` of `base` (encoder `s`): its SAEs fitted with `seed` on the same rows.
fn twin_of(
    base: &PlannedEncoder,
    s: EncoderId,
    set: usize,
    seed: u64,
    path: &Path,
) -> anyhow::Result<PlannedEncoder> {
    anyhow::ensure!(
        !base.fits_any() || base.sae.seed != seed,
        "{}: [baselines] ceiling seed {seed} is the SAE seed of {:?}; the ceiling needs another",
        path.display(),
        base.name
    );
    let mut twin = base.clone();
    twin.name = ceiling_set_name(&base.name, set);
    twin.sae.seed = seed;
    twin.imported = (base.imported.iter())
        .map(|i| i.as_ref().and_then(|i| i.ceiling.as_deref().cloned()))
        .collect();
    twin.fingerprint = fingerprint(&(&base.fingerprint, "ceiling", seed));
    // As the twin's fingerprint is made from its base's: from the read-out-free one, and
    // from the one of relu studies of earlier versions.
    twin.sae_fingerprint = fingerprint(&(&base.sae_fingerprint, "ceiling", seed));
    twin.relu_era_sae_fingerprint = fingerprint(&(&base.relu_era_sae_fingerprint, "ceiling", seed));
    twin.twin_of = Some(s);
    Ok(twin)
}

/// The first imported layer of `encoder` without a second SAE.
fn without_second_sae(encoder: &PlannedEncoder) -> Option<&str> {
    encoder
        .layer_ids()
        .find(|&l| encoder.imported(l).is_some_and(|i| i.ceiling.is_none()))
        .map(|l| encoder.layer_name(l))
}
