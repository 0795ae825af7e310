//! The ceiling baseline's second SAEs: for every source encoder, a second SAE set fed the same
//! rows (fitted with another seed, or, for an imported layer, the second SAE the study imports
//! with `ceiling = PATH`), and a pair of the encoder against it on all its layers.

use std::path::Path;

use crate::digest::fingerprint;
use crate::ids::{EncoderId, LayerId};
use crate::names::pair_key;
use crate::pipeline::plan::{PlannedEncoder, PlannedPair};

/// Adds the second SAE set (seed `seed`) of every source encoder of `pairs` and its ceiling
/// pair. An encoder with an imported layer that has no second SAE gets none: its
/// `no_ceiling` says why, and a warning says it once.
pub(in crate::pipeline) fn add_twins(
    encoders: &mut Vec<PlannedEncoder>,
    pairs: &mut Vec<PlannedPair>,
    seed: u64,
    path: &Path,
) -> anyhow::Result<()> {
    let sources: std::collections::BTreeSet<EncoderId> = pairs.iter().map(|p| p.source).collect();
    for s in sources {
        let base = &encoders[s.index()];
        let mut twin = base.clone();
        twin.name = format!("{}.ceiling", base.name);
        anyhow::ensure!(
            encoders.iter().all(|e| e.name != twin.name),
            "{}: an encoder is named {:?}, the name of the ceiling's second SAEs of {:?}; rename it",
            path.display(),
            twin.name,
            base.name
        );
        if let Some(layer) = without_second_sae(base) {
            let why = format!(
                "the SAE of layer {layer} is imported and the study gives no second SAE of it \
                 (`saes.\"{layer}\" = {{ path = ..., ceiling = \"PATH\" }}`)"
            );
            tracing::warn!("no ceiling baseline for {}: {why}", base.name);
            encoders[s.index()].no_ceiling = Some(why);
            continue;
        }
        anyhow::ensure!(
            !base.fits_any() || twin.sae.seed != seed,
            "{}: [baselines] ceiling_seed {seed} is the SAE seed of {:?}; the ceiling needs another",
            path.display(),
            base.name
        );
        twin.sae.seed = seed;
        twin.imported = (base.imported.iter())
            .map(|i| i.as_ref().and_then(|i| i.ceiling.as_deref().cloned()))
            .collect();
        twin.fingerprint = fingerprint(&(&base.fingerprint, "ceiling", seed));
        // As the twin's fingerprint is made from its base's: from the read-out-free one, and
        // from the one of relu studies of earlier versions.
        twin.sae_fingerprint = fingerprint(&(&base.sae_fingerprint, "ceiling", seed));
        twin.relu_era_sae_fingerprint =
            fingerprint(&(&base.relu_era_sae_fingerprint, "ceiling", seed));
        twin.twin_of = Some(s);
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
    Ok(())
}

/// The first imported layer of `encoder` without a second SAE.
fn without_second_sae(encoder: &PlannedEncoder) -> Option<&str> {
    encoder
        .layer_ids()
        .find(|&l| encoder.imported(l).is_some_and(|i| i.ceiling.is_none()))
        .map(|l| encoder.layer_name(l))
}
