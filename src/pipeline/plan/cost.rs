//! What a study will cost before it runs: rows, SAE steps and passes, forward passes and
//! layer-pair accumulations per stage; bytes on disk by folder; peak memory of a process; and
//! wall time where rates are known. From counts alone (the dataset's footers, the packages'
//! manifests, the study), plus, for time and token rows, rates measured once on this machine
//! on the study's own packages (`saeshare study plan --calibrate`, cached in
//! `$SAESHARE_CACHE/rates/`), which `saeshare bench fit` measures the same way.
//!
//! The model, and where its constants come from:
//! - SAEs: four tensors of float32 (`W_enc`, `W_dec`, two biases), the optimizer's twice that
//!   where kept, and a JSON of a few kB.
//! - Codes: [`CODE_BYTES_PER_LATENT`] bytes a sample's active latent (TopK), measured on the
//!   demo: 14.1 MB for 2.95 M active latents, ids sorted and zstd-compressed; and 2 kB a file
//!   (one per encoder, layer and shard). A dense read-out (`relu`) is stored one row per
//!   sample: [`DENSE_CODE_BYTES_PER_LATENT`] a latent, measured by `bench dense`.
//! - Pair sums: at most the dense array of each layer pair (f64), or 12 bytes for each of the
//!   `N k_A k_B` pairs of latents that fired together where fewer, and at most `[stats]
//!   keep_sums_mib`; sparse sums are far smaller (the demo's 21 pairs: 310 MB).
//! - Cells of a layer pair's sums that its compare touches: `d_A d_B` where the updates cover
//!   half of them (the accumulator then holds a dense array), else the `N k_A k_B` pairs of
//!   latents that fired together.
//! - Memory: in the largest pass of the fit stage (`[fit] memory_gib`), each fitted SAE's mixing buffer (its budget, or a pass's rows where fewer) and replay, its weights with Adam's moments and
//!   gradients (four copies), the packages' weights, and libtorch's own (about 400 MB); the
//!   compare pass's `[stats] memory_mib` per worker.
//! - Activations (`activation_cache`): float32 before compression (the demo's compress to half).
//! - Time: encodings at the calibrated samples a second, SAE steps at the calibrated seconds a
//!   row (the compare pass's SAE encoding and writing of codes at as much: measured on the
//!   demo), each layer
//!   pair's summing at the calibrated seconds per co-activation update (`N k_A k_B`, again for
//!   each floor permutation) and per cell of its sums (`d_A d_B`, for each shard's partial sums
//!   and each permutation); a pair of dense codes at the calibrated FLOP/s of `bench dense`'s
//!   compare (`2 N d_A d_B` for the sums and each permutation).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{fit_rows_per_pass, FitRowsEstimate, Plan, PlannedEncoder};
use crate::codes::DenseValues;
use crate::ids::EncoderId;
use crate::sae::{ReadOut, SaeKind};

/// Bytes a sample's active latent takes in the codes store, measured on the demo.
pub const CODE_BYTES_PER_LATENT: f64 = 4.8;
/// Bytes a latent of a dense read-out (`read_out = "relu"`, about half its latents active)
/// takes in the codes store, one row per sample: `saeshare bench dense` (half-active ReLU codes
/// at 6,144 features), whose two files took 2.3 bytes a latent (58% of their float32 values).
pub const DENSE_CODE_BYTES_PER_LATENT: f64 = 2.3;
/// Bytes a pair of latents that fired together takes at most in a layer pair's sparse sums.
const SPARSE_SUM_BYTES: u64 = 12;
/// The same with `[codes] dense_values = "float16"` (`bench dense --float16`).
pub const DENSE_CODE_BYTES_PER_LATENT_FLOAT16: f64 = 1.2;
/// Bytes of a codes file beside its latents (the footer and the schema's metadata), measured
/// on small files.
const CODE_FILE_BYTES: u64 = 2_048;
/// What libtorch and the process hold before any model or SAE, measured on this machine.
const BASELINE_BYTES: u64 = 400 << 20;

/// What one encoder does on this machine, measured by a short fit of the study's own package.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderRates {
    /// Samples a second through the encoder, the rows extracted (identical inputs run once).
    pub samples_per_second: f64,
    /// Rows a sample gives each SAE (token rows, or 1 for pooled rows).
    pub rows_per_sample: f64,
    /// Seconds an SAE step takes per row, per layer.
    pub sae_seconds_per_row: f64,
}

/// The compare pass's time for a layer pair: `per_update` seconds for each sample's pair of
/// active latents (`N k_A k_B`: reading, aligning, summing) and `per_cell` seconds for each
/// cell of the `d_A x d_B` sums (clearing them, the MPPC search), fitted to runs of `compare`
/// at two widths and two sample counts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareRates {
    pub per_update: f64,
    pub per_cell: f64,
    /// The compare of dense codes (read out without TopK), end to end, in floating-point
    /// operations of its block products (`2 N d_A d_B`) a second: `bench dense` at the study's
    /// widest SAE (at most 2,048 features) on 2,048 samples. Absent in rates of older versions.
    #[serde(default)]
    pub dense_flops: Option<f64>,
    /// The representation moments (`similarity::sum_sides`), in floating-point operations of
    /// their float64 products (`2 N (d_A^2 + d_B^2 + d_A d_B)`) a second, on 2,048 samples at
    /// `similarity_width`. Absent in rates of older versions.
    #[serde(default)]
    pub similarity_flops: Option<f64>,
    /// The seconds of one layer pair's measures at `similarity_width` beyond their moments, per
    /// run (the values, and each floor permutation): the decompositions of the CCA family,
    /// Procrustes and the ridge, and the kNN family on 2,048 samples.
    #[serde(default)]
    pub similarity_pair_seconds: Option<f64>,
    /// The read-out width those two were measured at: the study's widest (at most 1,536).
    #[serde(default)]
    pub similarity_width: Option<usize>,
}

/// Rates of a study's encoders, and the machine they were measured on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub machine: String,
    /// What the compare pass takes on this machine: `compare` on synthetic Zipf codes at the
    /// study's widest SAE and at a quarter of its width, as `bench stats` runs it.
    #[serde(default)]
    pub compare: Option<CompareRates>,
    /// By encoder name; each with [`rates_key`] of what it was measured with.
    pub encoders: BTreeMap<String, (String, EncoderRates)>,
}

impl Rates {
    /// The rates of encoder `e`, if measured with its package as it is.
    /// (Or those of another encoder measured with the same package and settings: two
    /// encoders planned with one stand-in package are measured once.)
    pub fn of(&self, e: &PlannedEncoder) -> Option<&EncoderRates> {
        let key = rates_key(e);
        match self.encoders.get(&e.name) {
            Some((digest, rates)) if *digest == key => Some(rates),
            _ => (self.encoders.values())
                .find_map(|(digest, rates)| (*digest == key).then_some(rates)),
        }
    }

    /// This machine, as rates files name it: host name, cores and processor.
    pub fn this_machine() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_string())
            })
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        format!("{host}: {cores} cores, {cpu}")
    }

    /// Where this machine's rates are cached.
    pub fn cache_file() -> PathBuf {
        let machine = crate::digest::fingerprint(&Rates::this_machine());
        crate::cache_dir()
            .join("rates")
            .join(format!("{machine}.json"))
    }
}

/// What an encoder's rates depend on: its package (its manifest, and its weights by size), the
/// input it runs at, where and how, and the SAEs' shape and batch. Not the rest of the study's
/// settings (steps, passes, buffers), which a plan is asked about before they are settled.
pub fn rates_key(e: &PlannedEncoder) -> String {
    let manifest =
        crate::digest::files_digest(&[e.package.join("encoder.json")]).unwrap_or_default();
    let weights = std::fs::metadata(e.package.join("model.pt")).map_or(0, |m| m.len());
    let device = format!("{:?}", e.device);
    let sae = (e.sae.kind, e.sae.k, e.sae.expansion, e.sae.batch_size);
    crate::digest::fingerprint(&(
        manifest,
        weights,
        &e.layers,
        e.image_size,
        e.precision,
        device,
        sae,
        e.fit_rows,
    ))
}

/// One stage's work and time.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageCost {
    pub stage: String,
    /// Samples through encoders (a sample through two encoders counts twice).
    pub forward_samples: u64,
    /// Rows through SAE steps, over every layer.
    pub sae_rows: u64,
    /// Layer pairs whose co-activations are summed.
    pub layer_pairs: u64,
    /// Seconds, where every encoder's rates are known.
    pub seconds: Option<f64>,
}

/// One encoder's fit, as planned.
#[derive(Clone, Debug, Serialize)]
pub struct FitCost {
    pub encoder: String,
    pub layers: usize,
    /// Rows a pass gives each SAE: exact for pooled rows, from the rates for token rows.
    pub rows_per_pass: Option<u64>,
    pub steps: usize,
    pub passes: Option<f64>,
    /// More than one pass is needed and a pass's rows do not fit `[fit]
    /// replay_memory_mib`: the fit would stop after its first pass.
    pub replay_short: bool,
}

/// What a study will cost.
#[derive(Clone, Debug, Serialize)]
pub struct Cost {
    pub samples: u64,
    pub fits: Vec<FitCost>,
    pub stages: Vec<StageCost>,
    /// Bytes by folder of the run folder.
    pub disk: BTreeMap<String, u64>,
    /// The most a process holds, and in which stage.
    pub peak_memory: (u64, String),
    /// Passes the fit stage makes over the dataset (`[fit] memory_gib`).
    pub fit_passes: usize,
    /// Encoders whose rates are unknown (no time, and token rows only bounded, for them).
    pub uncalibrated: Vec<String>,
}

impl Cost {
    /// Every stage's seconds added up, where all are known.
    pub fn seconds(&self) -> Option<f64> {
        self.stages.iter().map(|s| s.seconds).sum()
    }

    /// Bytes on disk, every folder added up.
    pub fn disk_bytes(&self) -> u64 {
        self.disk.values().sum()
    }
}

/// The cost of `plan` (every unit, as a run from an empty folder does it), with `rates` where
/// measured; over `samples` samples instead of the dataset's where given (a study planned at
/// another scale: its shards as many as the dataset's shards' rows make).
pub fn estimate(plan: &Plan, rates: &Rates, samples: Option<u64>) -> Cost {
    let rows = plan.dataset.rows().max(1);
    let samples = samples.unwrap_or(rows);
    let shard_count = plan.dataset.shards().len() as u64;
    let shard_count = (shard_count * samples).div_ceil(rows).max(1);
    let mut cost = Cost {
        samples,
        fits: Vec::new(),
        stages: Vec::new(),
        disk: BTreeMap::new(),
        peak_memory: (0, String::new()),
        fit_passes: 0,
        uncalibrated: Vec::new(),
    };
    let (mut fit, mut compare) = (stage("fit"), stage("compare"));
    let mut models = 0u64;
    let mut fit_memory: BTreeMap<EncoderId, u64> = BTreeMap::new();
    for (id, e) in plan.encoder_ids().zip(&plan.encoders) {
        let measured = rates.of(e);
        if measured.is_none() && e.twin_of.is_none() {
            cost.uncalibrated.push(e.name.clone());
        }
        if e.twin_of.is_none() {
            models += package_bytes(e);
        }
        let rows = rows_per_pass(e, samples, measured);
        let fitted: Vec<usize> = (e.layer_ids())
            .filter(|&l| e.imported(l).is_none())
            .map(|l| e.layer_width(l))
            .collect();
        if !fitted.is_empty() {
            let drawn = drawn_rows(plan, e, rows);
            let passes = rows.map(|r| drawn as f64 / r.max(1) as f64);
            // More than one pass replays the first from memory, or the fit stops.
            let widest = fitted.iter().copied().max().unwrap_or(0) as u64;
            let replay_short = rows.is_some_and(|r| {
                drawn > r
                    && plan.study.fit.max_passes != Some(1)
                    && r * widest * 4 > (plan.study.fit.replay_memory_mib as u64) << 20
            });
            cost.fits.push(FitCost {
                encoder: e.name.clone(),
                layers: fitted.len(),
                rows_per_pass: rows,
                steps: e.sae.steps,
                passes,
                replay_short,
            });
            // A twin reuses its encoder's rows: no forward of its own.
            let forward = if e.twin_of.is_some() { 0 } else { samples };
            fit.forward_samples += forward;
            fit.sae_rows += drawn * fitted.len() as u64;
            add_seconds(
                &mut fit.seconds,
                measured.map(|r| {
                    forward as f64 / r.samples_per_second
                        + (drawn * fitted.len() as u64) as f64 * r.sae_seconds_per_row
                }),
            );
            for &width in &fitted {
                let d_sae = width * e.sae.expansion;
                *cost.disk.entry("saes".into()).or_default() += sae_bytes(
                    width,
                    d_sae,
                    e.sae.kind,
                    plan.study.fit.keep_optimizer,
                    e.sae.steps,
                );
                *fit_memory.entry(id).or_default() += fit_bytes(plan, e, width, d_sae, rows);
            }
        }
        // The compare pass reads the activation cache where the study keeps one.
        if e.twin_of.is_none() && !plan.study.activation_cache {
            compare.forward_samples += samples;
            add_seconds(
                &mut compare.seconds,
                measured.map(|r| samples as f64 / r.samples_per_second),
            );
        }
        // Its SAEs encode every sample and the codes are written: about an SAE step's time a
        // row (on the demo, 8.7 s where a third of a step, the forward alone, said 2.6 s).
        let layers = e.layers.len() as f64;
        add_seconds(
            &mut compare.seconds,
            measured.map(|r| samples as f64 * layers * r.sae_seconds_per_row),
        );
        for l in e.layer_ids() {
            let d_sae = e.layer_width(l) * e.sae.expansion;
            let per_sample = match e.read_out {
                ReadOut::Code => e.sae.k.min(d_sae) as f64 * CODE_BYTES_PER_LATENT,
                ReadOut::Relu => {
                    d_sae as f64
                        * match plan.study.codes.dense_values {
                            DenseValues::Float32 => DENSE_CODE_BYTES_PER_LATENT,
                            DenseValues::Float16 => DENSE_CODE_BYTES_PER_LATENT_FLOAT16,
                        }
                }
            };
            *cost.disk.entry("codes".into()).or_default() +=
                (samples as f64 * per_sample) as u64 + CODE_FILE_BYTES * shard_count;
        }
        let widths: usize = e.layer_ids().map(|l| e.layer_width(l)).sum();
        if plan.study.activation_cache && e.twin_of.is_none() {
            *cost.disk.entry("activations (at most)".into()).or_default() +=
                samples * widths as u64 * 4;
        }
        if plan.keeps_readouts(id) {
            *cost.disk.entry("readouts (at most)".into()).or_default() +=
                samples * widths as u64 * 4 + CODE_FILE_BYTES * shard_count;
        }
    }
    let similarity = super::similarity::cost(plan, samples, rates);
    let mut sums_bytes = 0u64;
    let mut compare_seconds = 0f64;
    let shards = shard_count as usize;
    for pair in &plan.pairs {
        let (s, t) = (plan.encoder(pair.source), plan.encoder(pair.target));
        // The floor baseline sums each permutation of the target's samples again.
        let sums = if pair.ceiling_of.is_some() {
            1
        } else {
            1 + plan.study.baselines.floor_permutations
        };
        for &a in &pair.source_layers {
            for &b in &pair.target_layers {
                compare.layer_pairs += 1;
                let (d_a, d_b) = (
                    s.layer_width(a) * s.sae.expansion,
                    t.layer_width(b) * t.sae.expansion,
                );
                let dense = dense_codes(s) || dense_codes(t);
                // The dense array (f64), or where fewer latents fired together than it has
                // cells, a sparse entry for each pair that did (at most 12 bytes).
                let fired = samples.saturating_mul((s.sae.k * t.sae.k) as u64);
                sums_bytes += match dense {
                    true => (d_a * d_b * 8) as u64,
                    false => ((d_a * d_b * 8) as u64).min(fired.saturating_mul(SPARSE_SUM_BYTES)),
                };
                if let (true, Some(flops)) = (dense, rates.compare.and_then(|c| c.dense_flops)) {
                    let products = 2.0 * sums as f64 * samples as f64 * (d_a * d_b) as f64;
                    compare_seconds += products / flops;
                } else if let Some(measured) = &rates.compare {
                    // Each shard's partial sums hold (and clear) the cells once more. Sums of
                    // TopK codes touch at most the pairs of latents that fired together:
                    // fewer than the cells where N k_A k_B is below d_A d_B.
                    let k2 = (s.sae.k * t.sae.k) as u64;
                    let dense_fits = (d_a * d_b * 8) as u64
                        <= (plan.study.stats.memory_mib as u64).saturating_mul(1 << 20);
                    let touched = |n: u64| {
                        let (updates, cells) = (n.saturating_mul(k2), (d_a * d_b) as u64);
                        // The accumulator's own rule (`AccumulatorOptions::layout_for`): a
                        // dense array where the updates cover half its cells.
                        match updates >= cells / 2 && dense_fits {
                            true => cells as f64,
                            false => updates.min(cells) as f64,
                        }
                    };
                    let updates = sums as f64 * (samples * k2) as f64;
                    let shard_samples = samples.div_ceil(shards as u64);
                    let cells = (sums - 1) as f64 * touched(samples)
                        + shards as f64 * touched(shard_samples);
                    compare_seconds += measured.per_update * updates + measured.per_cell * cells;
                }
            }
        }
    }
    add_seconds(&mut compare.seconds, rates.compare.map(|_| compare_seconds));
    add_seconds(&mut compare.seconds, similarity.seconds);
    let budget = plan.study.stats.keep_sums_mib.saturating_mul(1 << 20);
    cost.disk.insert(
        "pairs (at most)".into(),
        (sums_bytes + similarity.sums_bytes).min(budget),
    );
    let baselines = (plan.pairs.iter())
        .map(|p| baselines_bytes(plan, p, samples))
        .max()
        .unwrap_or(0);
    let compare_memory = BASELINE_BYTES
        + models
        + (plan.study.stats.memory_mib as u64).saturating_mul(1 << 20)
        + similarity.memory
        + baselines;
    // Passes within `[fit] memory_gib` run one after another: the largest is the peak.
    let fitting: Vec<EncoderId> = fit_memory.keys().copied().collect();
    let passes = super::fit_passes::fit_passes(plan, &fitting);
    cost.fit_passes = passes.len();
    // A pass holds its own encoders' weights (a twin runs on its encoder's).
    let largest = (passes.iter())
        .map(|pass| {
            let weights: u64 = (pass.iter())
                .filter(|&&e| plan.encoder(e).twin_of.is_none())
                .map(|&e| package_bytes(plan.encoder(e)))
                .sum();
            weights + pass.iter().map(|e| fit_memory[e]).sum::<u64>()
        })
        .max()
        .unwrap_or(0);
    let fit_memory = BASELINE_BYTES + largest;
    cost.peak_memory = if fit_memory >= compare_memory {
        (fit_memory, "fit".into())
    } else {
        (compare_memory, "compare".into())
    };
    cost.stages = vec![fit, compare];
    cost
}

/// Whether `e`'s codes have no per-sample limit, and so are summed by dense block products.
fn dense_codes(e: &PlannedEncoder) -> bool {
    !crate::sae::codes_have_k(e.sae.kind, e.read_out)
}

fn stage(name: &str) -> StageCost {
    StageCost {
        stage: name.into(),
        seconds: Some(0.0),
        ..StageCost::default()
    }
}

fn add_seconds(total: &mut Option<f64>, seconds: Option<f64>) {
    *total = match (*total, seconds) {
        (Some(t), Some(s)) => Some(t + s),
        _ => None,
    };
}

/// Rows a pass gives each of `e`'s SAEs: exact for pooled rows; for token rows, from the
/// measured rows a sample, else the study's `tokens_per_sample` as an upper bound.
fn rows_per_pass(e: &PlannedEncoder, samples: u64, rates: Option<&EncoderRates>) -> Option<u64> {
    match (fit_rows_per_pass(e, samples), rates) {
        (FitRowsEstimate::Exactly(r), _) => Some(r),
        (_, Some(rates)) => Some((samples as f64 * rates.rows_per_sample) as u64),
        (FitRowsEstimate::AtMost(r), None) => Some(r),
        (FitRowsEstimate::AtLeast(_), None) => None,
    }
}

/// Rows an SAE of `e` draws: its steps' batches, or fewer where `[fit] max_passes` ends the
/// fit first.
fn drawn_rows(plan: &Plan, e: &PlannedEncoder, rows: Option<u64>) -> u64 {
    let steps = (e.sae.steps * e.sae.batch_size) as u64;
    match (plan.study.fit.max_passes, rows) {
        (Some(passes), Some(rows)) => steps.min(passes as u64 * rows),
        _ => steps,
    }
}

/// An SAE's files: its tensors (float32), Adam's two moments and the tokens since each latent
/// fired where the optimizer is kept, and its JSON (configuration, and the metrics recorded
/// every 50 of its `steps`: about 300 bytes each).
pub fn sae_bytes(d_in: usize, d_sae: usize, kind: SaeKind, optimizer: bool, steps: usize) -> u64 {
    let params = 2 * d_in * d_sae + d_sae + d_in;
    let threshold = if kind == SaeKind::BatchTopk { d_sae } else { 0 };
    let mut bytes = (params + threshold) * 4 + SAFETENSORS_HEADER;
    if optimizer {
        bytes += 2 * params * 4 + d_sae * 8 + SAFETENSORS_HEADER;
    }
    let json = 1_600 + 300 * (steps / 50 + 2);
    (bytes + json) as u64
}

/// The JSON header of a safetensors file of a few tensors, about.
const SAFETENSORS_HEADER: usize = 400;

/// What fitting one SAE holds: its mixing buffer, the replay of a pass where passes repeat
/// within the budget, and its weights, gradients and Adam's moments.
pub(super) fn fit_bytes(
    plan: &Plan,
    e: &PlannedEncoder,
    width: usize,
    d_sae: usize,
    rows: Option<u64>,
) -> u64 {
    let row = (width * 4) as u64;
    // The buffer fills to its budget, or to the rows a pass gives where fewer.
    let buffered = (plan.study.fit.buffer_rows_for(width) as u64).min(rows.unwrap_or(u64::MAX));
    let buffer = buffered * row;
    let drawn = drawn_rows(plan, e, rows);
    let budget = (plan.study.fit.replay_memory_mib as u64) << 20;
    let replay = match rows {
        _ if plan.study.fit.max_passes == Some(1) => 0,
        Some(r) if r < drawn => (r * row).min(budget),
        Some(_) => 0,
        // Rows unknown (the passes of the fit stage, counted alike on every process): the
        // budget, which a fit of more than one pass may fill.
        None => budget,
    };
    let params = ((2 * width * d_sae + d_sae + width) * 4) as u64;
    buffer + replay + 4 * params
}

fn package_bytes(e: &PlannedEncoder) -> u64 {
    std::fs::metadata(e.package.join("model.pt")).map_or(0, |m| m.len())
}

/// What a pair's floor and bootstrap hold, one pair at a time: every aligned code of its
/// layers (a feature index and a value per latent that fired), and the bootstrap's replicate
/// sums (each stream's weighted moments, each layer pair's replicate MPPC, and one layer pair's
/// candidate sums at a time).
fn baselines_bytes(plan: &Plan, pair: &super::PlannedPair, samples: u64) -> u64 {
    let b = &plan.study.baselines;
    if pair.ceiling_of.is_some() || (b.floor_permutations == 0 && b.bootstrap == 0) {
        return 0;
    }
    let (s, t) = (plan.encoder(pair.source), plan.encoder(pair.target));
    let d = |e: &super::PlannedEncoder, l: crate::ids::LayerId| {
        (e.layer_width(l) * e.sae.expansion) as u64
    };
    let streams = (pair.source_layers.iter().map(|&l| (s, l)))
        .chain(pair.target_layers.iter().map(|&l| (t, l)));
    let (mut codes, mut moments) = (0u64, 0u64);
    for (e, l) in streams {
        codes += samples * e.sae.k as u64 * 8;
        moments += d(e, l) * 16;
    }
    let r = b.bootstrap as u64;
    let sources: u64 = pair.source_layers.iter().map(|&l| d(s, l)).sum();
    let widest = pair
        .source_layers
        .iter()
        .map(|&l| d(s, l))
        .max()
        .unwrap_or(0);
    let candidates = crate::metrics::BOOTSTRAP_CANDIDATES as u64;
    codes + r * (moments + sources * pair.target_layers.len() as u64 * 4 + widest * candidates * 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte model of an SAE's files is what the trainer writes, within its JSON.
    #[test]
    fn sae_bytes_are_the_files_a_trainer_saves() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::sae::SaeConfig {
            k: 4,
            expansion: 4,
            ..crate::sae::SaeConfig::default()
        };
        let source = crate::sae::SaeSource {
            encoder: "e".into(),
            layer: "l".into(),
        };
        let trainer = crate::sae::SaeTrainer::new(&config, 256, tch::Device::Cpu, source);
        for optimizer in [false, true] {
            let out = dir.path().join(format!("{optimizer}"));
            trainer.save_with(&out, optimizer).unwrap();
            let written: u64 = std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            let model = sae_bytes(256, 1024, config.kind, optimizer, config.steps);
            let off = (written as f64 - model as f64).abs() / written as f64;
            assert!(off < 0.05, "{optimizer}: written {written}, model {model}");
        }
    }
}
