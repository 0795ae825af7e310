//! Encoders fitted in passes within `[fit] memory_gib`: what the fits of a pass hold, and
//! which encoders share a pass.
//!
//! A pass feeds every SAE of its encoders at once, so its memory is the sum of theirs: at the
//! paper's scale (ten encoders of 12 layers, their ceiling twins, SAEs x8) far more than one
//! node has. Passes one after another read the dataset again, but run each encoder once
//! (with its ceiling twin, which is fed the same rows), so the forward passes and SAE steps
//! are those of one pass.

use crate::ids::EncoderId;

use super::{cost, Plan};

/// Bytes the fits of encoder `e` hold while they run, its layers added up, with `rows` rows a
/// pass (each mixing buffer fills to its budget or to a pass's rows; `None`: to its budget).
pub fn encoder_fit_bytes(plan: &Plan, e: EncoderId, rows: Option<u64>) -> u64 {
    let encoder = plan.encoder(e);
    (encoder.layer_ids())
        .filter(|&l| encoder.imported(l).is_none())
        .map(|l| {
            let width = encoder.layer_width(l);
            cost::fit_bytes(plan, encoder, width, width * encoder.sae.expansion, rows)
        })
        .sum()
}

/// `todo`'s encoders in passes: in `todo`'s order, each encoder with its ceiling twin, a pass
/// closed when the next encoder would take it past `[fit] memory_gib` (one pass without it).
/// Every process computes the same passes from the same plan: the budget is the study's, and
/// the bytes are counted from its settings, not from this machine.
pub fn fit_passes(plan: &Plan, todo: &[EncoderId]) -> Vec<Vec<EncoderId>> {
    let budget = (plan.study.fit.memory_gib).map(|g| (g * (1u64 << 30) as f64) as u64);
    // An encoder and its twin, as one unit.
    let mut units: Vec<Vec<EncoderId>> = Vec::new();
    for &e in todo {
        let base = plan.encoder(e).twin_of.unwrap_or(e);
        match units.iter_mut().find(|u| {
            u.iter()
                .any(|&o| plan.encoder(o).twin_of.unwrap_or(o) == base)
        }) {
            Some(unit) => unit.push(e),
            None => units.push(vec![e]),
        }
    }
    let Some(budget) = budget else {
        return if units.is_empty() {
            Vec::new()
        } else {
            vec![units.concat()]
        };
    };
    let mut passes: Vec<(Vec<EncoderId>, u64)> = Vec::new();
    for unit in units {
        let bytes: u64 = unit.iter().map(|&e| encoder_fit_bytes(plan, e, None)).sum();
        match passes.last_mut() {
            Some((pass, held)) if *held + bytes <= budget => {
                pass.extend(unit);
                *held += bytes;
            }
            _ => passes.push((unit, bytes)),
        }
    }
    passes.into_iter().map(|(pass, _)| pass).collect()
}
