//! Null baselines for wMPPC, which every reader of a number needs (docs/DESIGN.md, section 1).
//!
//! - Floor: the target's sample ids permuted (a fixed seed, several permutations): what wMPPC
//!   is by chance, far from 0 at small N since it is a max over thousands of features.
//! - Ceiling: the source layer against a second SAE of the same encoder and layer (another
//!   seed): what a comparison scores when both sides see the very same activations.

use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::codes::{CodeBatch, CodesMeta};

use super::compare::{accumulate, all_layers, keyed_values, side, Key, Matches, PairAcc};
use super::{mppc, wmppc, Aggregation, CompareOptions, FeatureMatch, MetricsError};

/// Mean and sample standard deviation of one value over permutations.
pub(crate) type Spread = (Option<f64>, Option<f64>);

/// Mean and sample standard deviation of each `wmppc` value (in table order) over
/// `options.baselines` permutations of the target samples. `kept` holds every aligned code of
/// every stream, sources first.
pub(crate) fn floor_values(
    kept: &[CodeBatch],
    source: &[CodesMeta],
    target: &[CodesMeta],
    options: &CompareOptions,
) -> Result<Vec<Spread>, MetricsError> {
    let l_a = source.len();
    let n = kept[0].len();
    let mut runs: Vec<Vec<Option<f64>>> = Vec::new();
    let block = options.batch_samples.max(1);
    for (run, permutation) in target_permutations(options.seed, n)
        .take(options.baselines)
        .enumerate()
    {
        let share = options.accumulator.shared_by(source.len() * target.len());
        let mut accs: Vec<Vec<PairAcc>> = source
            .iter()
            .map(|a| {
                target
                    .iter()
                    .map(|b| PairAcc::new((a, b), (Some(n as u64), 0), options, share))
                    .collect()
            })
            .collect();
        let mut blocks = vec![CodeBatch::new(); kept.len()];
        for start in (0..n).step_by(block) {
            let end = (start + block).min(n);
            for (s, out) in blocks.iter_mut().enumerate() {
                out.clear();
                for (p, &permuted) in permutation.iter().enumerate().take(end).skip(start) {
                    // Source p meets target permutation[p]: the same permutation for every
                    // target layer, as when the target model's sample ids are shuffled.
                    let from = if s < l_a { p } else { permuted };
                    out.push(kept[s].get(from));
                }
            }
            for (a, row) in accs.iter_mut().enumerate() {
                for (b, acc) in row.iter_mut().enumerate() {
                    acc.add(&blocks[a], &blocks[l_a + b])?;
                }
            }
        }
        let matches: Matches = accs
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|acc| Ok(mppc(&acc.finish()?)))
                    .collect::<Result<Vec<_>, MetricsError>>()
            })
            .collect::<Result<_, _>>()?;
        runs.push(keyed_values(&matches).into_iter().map(|(_, v)| v).collect());
        tracing::debug!(run = run + 1, of = options.baselines, "floor baseline");
    }
    let rows = runs.first().map_or(0, Vec::len);
    Ok((0..rows)
        .map(|r| spread(runs.iter().map(|run| run[r])))
        .collect())
}

/// The permutations of `0..n` the floor baselines pair the source's samples with (source sample
/// `p` meets target sample `permutation[p]`), in order: the same for every measure given the
/// same seed, so that the floors of wMPPC and of the representation measures are comparable.
pub(crate) fn target_permutations(seed: u64, n: usize) -> impl Iterator<Item = Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    std::iter::repeat_with(move || {
        let mut permutation: Vec<usize> = (0..n).collect();
        permutation.shuffle(&mut rng);
        permutation
    })
}

/// Mean and sample standard deviation of a value over runs; none where a run has none.
pub(crate) fn spread(values: impl Iterator<Item = Option<f64>>) -> Spread {
    match values.collect::<Option<Vec<f64>>>() {
        Some(v) if !v.is_empty() => {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let std = (v.len() > 1).then(|| {
                (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
            });
            (Some(mean), std)
        }
        _ => (None, None),
    }
}

/// The ceiling of each `wmppc` value (in the order of `values`), when `ceilings` names a second
/// SAE for source layers: `None` overall when no ceiling file is given; `None` for a row whose
/// source layers lack one.
pub(crate) fn ceiling_values(
    sources: &[PathBuf],
    source: &[CodesMeta],
    ceilings: &[PathBuf],
    values: &[(Key, Option<f64>)],
    options: &CompareOptions,
) -> Result<Option<Vec<Option<f64>>>, MetricsError> {
    if ceilings.is_empty() {
        return Ok(None);
    }
    let metas = side(ceilings, "--ceiling")?;
    let mut per_layer: Vec<Option<Vec<FeatureMatch>>> = vec![None; source.len()];
    for (path, meta) in ceilings.iter().zip(&metas) {
        let a = source
            .iter()
            .position(|s| s.encoder == meta.encoder && s.layer == meta.layer)
            .ok_or_else(|| {
                MetricsError::BadInput(format!(
                    "--ceiling {}: encoder {:?} layer {:?} is not a source layer; a ceiling is a second SAE of a source layer",
                    path.display(),
                    meta.encoder,
                    meta.layer
                ))
            })?;
        let options = CompareOptions {
            baselines: 0,
            ..options.clone()
        };
        let pass = accumulate(&sources[a..=a], std::slice::from_ref(path), &options, false)?;
        per_layer[a] = Some(mppc(&pass.accumulators[0][0]));
    }
    let unions: Option<Vec<Vec<FeatureMatch>>> = per_layer.iter().cloned().collect();
    Ok(Some(
        values
            .iter()
            .map(|(key, _)| match (key.aggregation, key.source_layer) {
                (Aggregation::Layer | Aggregation::Union, Some(a)) => {
                    per_layer[a].as_ref().and_then(wmppc)
                }
                (aggregation, _) => unions
                    .as_deref()
                    .and_then(|u| ceiling_for(u, aggregation, None)),
            })
            .collect(),
    ))
}

/// The ceiling of one `wmppc` row, from each source layer's matches against the same layer of a
/// second SAE (`per_layer`, in the row's source layers' order): the layer's value for a `Layer`
/// or `Union` row of `source_layer`, the all-layers aggregation otherwise. What
/// `compare --ceiling` computes, for matches gathered elsewhere (a study's pipeline).
pub fn ceiling_for(
    per_layer: &[Vec<FeatureMatch>],
    aggregation: Aggregation,
    source_layer: Option<usize>,
) -> Option<f64> {
    match (aggregation, source_layer) {
        (Aggregation::Layer | Aggregation::Union, Some(a)) => wmppc(per_layer.get(a)?),
        (aggregation, _) => all_layers(per_layer)
            .into_iter()
            .find(|(k, _)| k.aggregation == aggregation)
            .and_then(|(_, v)| v),
    }
}
