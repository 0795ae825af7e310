//! The SAEs' weights after the compare pass: loading a layer's SAE, and a pair's decoder
//! geometry (`decoders.parquet`) from its decoders and its one-to-one matches.

use std::collections::HashMap;

use tch::{Device, Tensor};

use crate::ids::{EncoderLayer, PairId};
use crate::metrics::{layer_geometry, DecoderRow, GeometryOptions, MatchRow};
use crate::pipeline::plan::Plan;
use crate::sae::Sae;

/// An encoder's SAE of one layer, fitted here or imported, loaded onto `device`.
pub(in crate::pipeline) fn load_sae(
    plan: &Plan,
    at: EncoderLayer,
    device: Device,
) -> anyhow::Result<Sae> {
    let dir = plan.sae_dir(at.encoder, at.layer);
    Ok(match plan.encoder(at.encoder).imported(at.layer) {
        Some(imported) => crate::sae::load(&dir, device, &imported.options)?.sae,
        None => Sae::load(&dir, device)?.0,
    })
}

/// The decoder geometry of every layer pair of pair `p` that `matches` (its own) holds,
/// the layer against its second seed's for a ceiling pair.
pub(in crate::pipeline) fn pair_geometry(
    plan: &Plan,
    p: PairId,
    matches: &[MatchRow],
    seed: u64,
) -> anyhow::Result<Vec<DecoderRow>> {
    let pair = plan.pair(p);
    let options = GeometryOptions {
        permutations: plan.study.baselines.geometry_permutations,
        seed,
        svcca: plan.study.similarity.clone(),
    };
    let mut decoders: HashMap<EncoderLayer, Tensor> = HashMap::new();
    let mut decoder = |at: EncoderLayer| -> anyhow::Result<Tensor> {
        if let std::collections::hash_map::Entry::Vacant(slot) = decoders.entry(at) {
            slot.insert(load_sae(plan, at, Device::Cpu)?.w_dec.detach());
        }
        Ok(decoders[&at].shallow_clone())
    };
    let mut rows = Vec::new();
    for s in pair.source_at() {
        for t in pair.target_at() {
            let (s_name, t_name) = (layer_name(plan, s), layer_name(plan, t));
            let held: Vec<(u32, u32, f64)> = (matches.iter())
                .filter(|m| m.source_layer == s_name && m.target_layer == t_name)
                .map(|m| (m.source_feature, m.target_feature, m.rho))
                .collect();
            let same_sae = pair.ceiling_of.is_some() && s.layer == t.layer;
            if held.is_empty() && !same_sae {
                continue;
            }
            let geometry = layer_geometry(&decoder(s)?, &decoder(t)?, &held, same_sae, &options);
            rows.push(DecoderRow {
                source: plan.encoder(s.encoder).name.clone(),
                target: plan.encoder(t.encoder).name.clone(),
                source_layer: s_name.to_string(),
                target_layer: t_name.to_string(),
                geometry,
            });
        }
    }
    Ok(rows)
}

fn layer_name(plan: &Plan, at: EncoderLayer) -> &str {
    plan.encoder(at.encoder).layer_name(at.layer)
}
