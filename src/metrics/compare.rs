//! `compare`: code files of a source and a target model in, `mppc` and `wmppc` rows out.
//!
//! One pass over all files, joined by sample id, fills one accumulator per (source layer,
//! target layer); MPPC comes from each, then the aggregations of docs/DESIGN.md, section 1. The floor
//! pairs each source sample with a permuted target sample (fixed seed, several permutations);
//! the ceiling compares each source layer with a second SAE of the same encoder and layer; the
//! bootstrap reweighs the samples for each value's interval.

use std::path::PathBuf;

use crate::codes::{CodeBatch, CodesMeta, CodesReader};
use crate::stats::{
    align, AccumulatorOptions, AlignReport, CoactivationAccumulator, MissingSamples, StatsError,
};

use super::baselines::{ceiling_values, floor_values};
use super::bootstrap::{intervals, replicate_values};
pub(crate) use super::pair_acc::PairAcc;
use super::state;
use super::{best_over_layers, mean_over_layers, mppc, wmppc, FeatureMatch, MetricsError};
use super::{Aggregation, FeatureRow, MppcRow, WmppcRow, ALL_LAYERS};

/// How co-activation sums are gathered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Sparse for TopK codes (files that declare `k`), dense otherwise.
    #[default]
    Auto,
    /// `k_A * k_B` updates per sample.
    Sparse,
    /// Blocked matmuls through libtorch.
    Dense,
}

/// How to compare.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// Permutations for the floor baseline (0: none). The floor holds every aligned code in
    /// memory, `O(N * k)`, unlike the main pass.
    pub baselines: usize,
    /// Seed of the permutations: equal seeds give equal floors.
    pub seed: u64,
    /// Samples missing from some file: an error, or dropped and counted.
    pub missing: MissingSamples,
    /// Sparse or dense sums.
    pub backend: Backend,
    /// Where the dense backend runs.
    pub device: tch::Device,
    /// Samples per batch read and accumulated at once.
    pub batch_samples: usize,
    /// The sparse backend's layout budget, for all the layer pairs of a pass together, and its
    /// threads.
    pub accumulator: AccumulatorOptions,
    /// A folder keeping the accumulators: those of earlier runs are added to this run's and
    /// the sums saved, so that a run on new shards of the same layers completes the earlier
    /// ones. Incompatible with the baselines, which need every sample's codes.
    pub state: Option<PathBuf>,
    /// Replicates of the Poisson bootstrap over samples (0: none), seeded by `seed`. Holds
    /// every aligned code in memory, as the floor does.
    pub bootstrap: usize,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            baselines: 0,
            seed: 0,
            missing: MissingSamples::Error,
            backend: Backend::Auto,
            device: tch::Device::Cpu,
            batch_samples: 16 * 1024,
            accumulator: AccumulatorOptions::default(),
            state: None,
            bootstrap: 0,
        }
    }
}

/// Everything `compare` computed.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// Rows of the `features` table: every source layer's features, then every target layer's.
    pub features: Vec<FeatureRow>,
    /// Rows of the `mppc` table.
    pub mppc: Vec<MppcRow>,
    /// Rows of the `wmppc` table.
    pub wmppc: Vec<WmppcRow>,
    /// Rows of the `matches` table: every layer pair's one-to-one matches.
    pub matches: Vec<super::MatchRow>,
    /// Samples compared and dropped.
    pub align: AlignReport,
}

/// A row of the `wmppc` table before names and baselines: which layers (`None`: all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    pub source_layer: Option<usize>,
    pub target_layer: Option<usize>,
    pub aggregation: Aggregation,
}

/// Matches indexed `[source layer][target layer][feature]`.
pub(crate) type Matches = Vec<Vec<Vec<FeatureMatch>>>;

/// Compares the source model's code files (one per layer) with the target model's.
pub fn compare(
    sources: &[PathBuf],
    targets: &[PathBuf],
    ceilings: &[PathBuf],
    options: &CompareOptions,
) -> Result<Comparison, MetricsError> {
    let source = side(sources, "--source")?;
    let target = side(targets, "--target")?;
    if options.state.is_some()
        && (options.baselines > 0 || options.bootstrap > 0 || !ceilings.is_empty())
    {
        return Err(MetricsError::BadInput(
            "--state with baselines or the bootstrap: the floor, the ceiling and the intervals need every sample's codes in one run; compare without --state for them (or give --baselines 0 --bootstrap 0)".into(),
        ));
    }

    // Checked before the pass, which may take long.
    let inputs: Vec<PathBuf> = sources.iter().chain(targets).cloned().collect();
    let state = options
        .state
        .as_deref()
        .map(|dir| state::open(dir, &source, &target, &inputs))
        .transpose()?;

    let keep = options.baselines > 0 || options.bootstrap > 0;
    let mut pass = accumulate(sources, targets, options, keep)?;
    if let Some(state) = state {
        let accumulators = std::mem::take(&mut pass.accumulators);
        pass.accumulators = state::merge_and_save(state, accumulators, &pass.report)?;
    }
    assemble(
        pass.accumulators,
        pass.report,
        (&source, &target),
        pass.kept.as_deref(),
        options,
        |values| ceiling_values(sources, &source, ceilings, values, options),
    )
}

/// Compares a source and a target model from accumulators gathered elsewhere (a streaming
/// pipeline, shard by shard): `accumulators[a][b]` holds source layer `a` against target layer
/// `b`. `aligned`, when given, holds every aligned code of every layer (sources first) for the
/// floor baseline of `options.baselines` permutations.
pub fn compare_accumulated(
    accumulators: Vec<Vec<CoactivationAccumulator>>,
    report: AlignReport,
    source: &[CodesMeta],
    target: &[CodesMeta],
    aligned: Option<&[CodeBatch]>,
    options: &CompareOptions,
) -> Result<Comparison, MetricsError> {
    assemble(
        accumulators,
        report,
        (source, target),
        aligned,
        options,
        |_| Ok(None),
    )
}

/// The co-activation accumulators of source files against target files (one file per layer,
/// joined by sample id): `[source layer][target layer]`.
pub fn accumulate_files(
    sources: &[PathBuf],
    targets: &[PathBuf],
    options: &CompareOptions,
) -> Result<(Vec<Vec<CoactivationAccumulator>>, AlignReport), MetricsError> {
    let pass = accumulate(sources, targets, options, false)?;
    Ok((pass.accumulators, pass.report))
}

/// MPPC, the `features`, `mppc` and `wmppc` rows, from accumulators, with the floor and the
/// bootstrap where `options` asks for them (from `aligned`, every aligned code) and the ceiling.
fn assemble(
    accumulators: Vec<Vec<CoactivationAccumulator>>,
    report: AlignReport,
    (source, target): (&[CodesMeta], &[CodesMeta]),
    aligned: Option<&[CodeBatch]>,
    options: &CompareOptions,
    ceiling: impl FnOnce(&[(Key, Option<f64>)]) -> Result<Option<Vec<Option<f64>>>, MetricsError>,
) -> Result<Comparison, MetricsError> {
    let floor = match aligned {
        Some(kept) if options.baselines > 0 => Some(floor_values(kept, source, target, options)?),
        _ => None,
    };
    // With a state, N counts the samples of earlier runs too.
    let samples = accumulators[0][0].samples();
    let features = feature_rows(&accumulators, source, target);
    warn_dropped(&report);
    let matches: Matches = accumulators
        .iter()
        .map(|row| row.iter().map(mppc).collect())
        .collect();
    let values = keyed_values(&matches);
    let ceiling = ceiling(&values)?;
    let intervals = match aligned {
        Some(kept) if options.bootstrap > 0 => {
            let replicates = replicate_values(
                kept,
                &accumulators,
                &matches,
                options.bootstrap,
                options.seed,
            );
            let floors: Vec<Option<f64>> = match &floor {
                Some(f) => f.iter().map(|s| s.0).collect(),
                None => Vec::new(),
            };
            let estimates: Vec<Option<f64>> = values.iter().map(|v| v.1).collect();
            intervals(&replicates, &estimates, &floors)
        }
        _ => Vec::new(),
    };
    let layer_name = |layers: &[CodesMeta], index: Option<usize>| {
        index.map_or_else(|| ALL_LAYERS.to_string(), |i| layers[i].layer.clone())
    };
    let wmppc_rows = values
        .iter()
        .enumerate()
        .map(|(r, (key, value))| WmppcRow {
            source: source[0].encoder.clone(),
            target: target[0].encoder.clone(),
            source_layer: layer_name(source, key.source_layer),
            target_layer: layer_name(target, key.target_layer),
            aggregation: key.aggregation,
            wmppc: *value,
            baseline_floor: floor.as_ref().and_then(|f| f[r].0),
            baseline_floor_std: floor.as_ref().and_then(|f| f[r].1),
            baseline_ceiling: ceiling.as_ref().and_then(|c| c[r]),
            baseline_ceiling_std: None,
            samples,
            ci_low: intervals.get(r).and_then(|i| i.low),
            ci_high: intervals.get(r).and_then(|i| i.high),
            bootstrap_bias: intervals.get(r).and_then(|i| i.bias),
            floor_p: intervals.get(r).and_then(|i| i.floor_p),
        })
        .collect();
    Ok(Comparison {
        features,
        mppc: mppc_rows(&matches, source, target),
        wmppc: wmppc_rows,
        matches: super::one_to_one::match_rows(&accumulators, (source, target), aligned),
        align: report,
    })
}

/// Says how many samples some file lacked, naming the first.
fn warn_dropped(report: &AlignReport) {
    if report.dropped == 0 {
        return;
    }
    // A pipeline's pair carries the first left-out sample of the shards summed this run only;
    // earlier runs' are counted but not named.
    let first = (report.first_dropped.as_ref()).map_or_else(String::new, |(id, file)| {
        format!(
            " (the first: sample_id {id}, missing from {})",
            file.display()
        )
    });
    tracing::warn!(
        dropped = report.dropped,
        "left out {} samples missing from some file{first}",
        report.dropped,
    );
}

/// One `mppc` row per source feature and target layer, and over the union of the target
/// layers when there are several.
fn mppc_rows(matches: &Matches, source: &[CodesMeta], target: &[CodesMeta]) -> Vec<MppcRow> {
    let mut rows = Vec::new();
    for (a, per_target) in matches.iter().enumerate() {
        let mut row =
            |feature: usize, target_layer: String, m: FeatureMatch, best: Option<usize>| {
                rows.push(MppcRow {
                    source: source[0].encoder.clone(),
                    source_layer: source[a].layer.clone(),
                    feature: feature as u32,
                    target: target[0].encoder.clone(),
                    target_layer,
                    best_feature: m.best,
                    best_layer: best.map(|b| target[b].layer.clone()),
                    rho: m.rho,
                    weight: m.weight,
                })
            };
        for (b, layer) in per_target.iter().enumerate() {
            for (i, m) in layer.iter().enumerate() {
                row(i, target[b].layer.clone(), *m, m.best.map(|_| b));
            }
        }
        if per_target.len() > 1 {
            for (i, (m, b)) in best_over_layers(per_target).into_iter().enumerate() {
                row(i, ALL_LAYERS.to_string(), m, b);
            }
        }
    }
    rows
}

/// The moments of every source layer (from its first accumulator) and every target layer.
fn feature_rows(
    accumulators: &[Vec<CoactivationAccumulator>],
    source: &[CodesMeta],
    target: &[CodesMeta],
) -> Vec<FeatureRow> {
    let sides = accumulators
        .iter()
        .zip(source)
        .map(|(row, meta)| (row[0].source(), meta))
        .chain(
            accumulators[0]
                .iter()
                .zip(target)
                .map(|(acc, meta)| (acc.target(), meta)),
        );
    let mut rows = Vec::new();
    for (moments, meta) in sides {
        for i in 0..moments.d() {
            rows.push(FeatureRow {
                encoder: meta.encoder.clone(),
                layer: meta.layer.clone(),
                feature: i as u32,
                count: moments.counts()[i],
                sum: moments.sums()[i],
                sum_sq: moments.sums_sq()[i],
                samples: moments.samples(),
            });
        }
    }
    rows
}

/// Reads the metadata of one side's files: one encoder, distinct layers.
pub(crate) fn side(paths: &[PathBuf], flag: &str) -> Result<Vec<CodesMeta>, MetricsError> {
    if paths.is_empty() {
        return Err(MetricsError::BadInput(format!(
            "{flag}: give at least one codes file"
        )));
    }
    let metas = paths
        .iter()
        .map(|p| Ok(CodesReader::open(p)?.meta().clone()))
        .collect::<Result<Vec<_>, MetricsError>>()?;
    for (p, m) in paths.iter().zip(&metas).skip(1) {
        if m.encoder != metas[0].encoder {
            return Err(MetricsError::BadInput(format!(
                "{flag}: {} holds codes of encoder {:?}, {} of {:?}; the files of one side are the layers of one model",
                paths[0].display(), metas[0].encoder, p.display(), m.encoder
            )));
        }
    }
    for (x, mx) in metas.iter().enumerate() {
        if let Some(y) = metas[x + 1..].iter().position(|my| my.layer == mx.layer) {
            return Err(MetricsError::BadInput(format!(
                "{flag}: {} and {} are both layer {:?} of {:?}",
                paths[x].display(),
                paths[x + 1 + y].display(),
                mx.layer,
                mx.encoder
            )));
        }
    }
    Ok(metas)
}

/// The accumulators of one pass, `[source][target]`, and, when asked, every aligned code of
/// every stream (sources first) for the floor.
pub(crate) struct Pass {
    pub accumulators: Vec<Vec<CoactivationAccumulator>>,
    pub report: AlignReport,
    pub kept: Option<Vec<CodeBatch>>,
}

/// Reads the files once, joined by sample id, filling every (source, target) accumulator.
pub(crate) fn accumulate(
    sources: &[PathBuf],
    targets: &[PathBuf],
    options: &CompareOptions,
    keep: bool,
) -> Result<Pass, MetricsError> {
    let started = std::time::Instant::now();
    let open = |p: &PathBuf| -> Result<CodesReader, MetricsError> {
        Ok(CodesReader::open(p)?.with_batch_samples(options.batch_samples))
    };
    let readers: Vec<CodesReader> = sources
        .iter()
        .chain(targets)
        .map(open)
        .collect::<Result<_, _>>()?;
    let metas: Vec<CodesMeta> = readers.iter().map(|r| r.meta().clone()).collect();
    let expected = readers[0].samples();
    let sizes: Vec<_> = readers.iter().map(|r| (expected, r.rows())).collect();
    let l_a = sources.len();
    let share = options.accumulator.shared_by(l_a * targets.len());
    let mut accs: Vec<Vec<PairAcc>> = (0..l_a)
        .map(|a| {
            (l_a..metas.len())
                .map(|b| PairAcc::new((&metas[a], &metas[b]), sizes[a], options, share))
                .collect()
        })
        .collect();
    let mut buffers: Vec<CodeBatch> = vec![CodeBatch::new(); readers.len()];
    let mut kept: Option<Vec<CodeBatch>> = keep.then(|| vec![CodeBatch::new(); readers.len()]);
    let bar = crate::progress::bar(expected, &describe(sources, targets), "samples");
    let flush = |accs: &mut Vec<Vec<PairAcc>>, buffers: &mut Vec<CodeBatch>| {
        for (a, row) in accs.iter_mut().enumerate() {
            for (b, acc) in row.iter_mut().enumerate() {
                acc.add(&buffers[a], &buffers[l_a + b])?;
            }
        }
        buffers.iter_mut().for_each(CodeBatch::clear);
        Ok::<(), StatsError>(())
    };
    let report = align(readers, options.missing, |codes| {
        for (s, code) in codes.iter().enumerate() {
            buffers[s].push(*code);
            if let Some(kept) = kept.as_mut() {
                kept[s].push(*code);
            }
        }
        if buffers[0].len() >= options.batch_samples {
            flush(&mut accs, &mut buffers)?;
            bar.inc(options.batch_samples as u64);
        }
        Ok(())
    });
    let report = report?;
    flush(&mut accs, &mut buffers)?;
    bar.finish_and_clear();
    tracing::debug!(
        samples = report.samples,
        seconds = started.elapsed().as_secs_f64(),
        "{}",
        describe(sources, targets)
    );
    let accumulators = accs
        .into_iter()
        .map(|row| row.into_iter().map(PairAcc::finish).collect())
        .collect::<Result<_, _>>()?;
    Ok(Pass {
        accumulators,
        report,
        kept,
    })
}

fn describe(sources: &[PathBuf], targets: &[PathBuf]) -> String {
    let names = |paths: &[PathBuf]| {
        paths
            .iter()
            .map(|p| {
                p.file_name().map_or_else(
                    || p.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    format!("co-activations {} x {}", names(sources), names(targets))
}

/// The `wmppc` values of one set of matches, in table order: every layer pair, the union per
/// source layer (several target layers), then both all-layers aggregations (several pairs).
pub(crate) fn keyed_values(matches: &Matches) -> Vec<(Key, Option<f64>)> {
    let (l_a, l_b) = (matches.len(), matches[0].len());
    let mut out = Vec::new();
    for (a, per_target) in matches.iter().enumerate() {
        for (b, m) in per_target.iter().enumerate() {
            let key = Key {
                source_layer: Some(a),
                target_layer: Some(b),
                aggregation: Aggregation::Layer,
            };
            out.push((key, wmppc(m)));
        }
    }
    let unions: Vec<Vec<FeatureMatch>> = matches
        .iter()
        .map(|per_target| {
            best_over_layers(per_target)
                .into_iter()
                .map(|(m, _)| m)
                .collect()
        })
        .collect();
    if l_b > 1 {
        for (a, u) in unions.iter().enumerate() {
            let key = Key {
                source_layer: Some(a),
                target_layer: None,
                aggregation: Aggregation::Union,
            };
            out.push((key, wmppc(u)));
        }
    }
    if l_a * l_b > 1 {
        out.extend(all_layers(&unions));
    }
    out
}

/// Both all-layers aggregations of per-source-layer union matches.
pub(crate) fn all_layers(unions: &[Vec<FeatureMatch>]) -> [(Key, Option<f64>); 2] {
    let per_layer: Vec<(Option<f64>, usize)> = unions.iter().map(|u| (wmppc(u), u.len())).collect();
    let key = |aggregation| Key {
        source_layer: None,
        target_layer: None,
        aggregation,
    };
    [
        (
            key(Aggregation::MeanOverLayers),
            mean_over_layers(&per_layer),
        ),
        (
            key(Aggregation::AllFeatures),
            wmppc(unions.iter().flatten()),
        ),
    ]
}
