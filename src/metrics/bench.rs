//! `saeshare bench stats`: exact sparse MPPC against the reference's dense float32 all-pairs
//! correlation, side by side in one process on the same synthetic TopK codes.
//!
//! The sparse side streams its codes (generated batch by batch from a seed), so its peak memory
//! is the accumulator's, whatever N; the dense side materialises `N x d` float32 matrices as the
//! reference does (standardize both, `X^T Y / N`, max over rows).

use std::time::Instant;

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::codes::{CodeBatch, SparseCode};
use crate::stats::CoactivationAccumulator;

use super::{mppc, MetricsError};

/// Samples per batch given to the accumulator: large batches let the dense layout visit each
/// row of its array once per batch.
const BATCH: usize = 32 * 1024;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Samples `N`.
    pub samples: usize,
    /// Features of both SAEs, `d_A = d_B`.
    pub features: usize,
    /// Active latents per sample.
    pub k: usize,
    /// Also run the dense float32 reference (needs `~4 * 2 * N * d` bytes).
    pub dense_reference: bool,
    /// Seed of the synthetic codes.
    pub seed: u64,
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Seconds of the sparse exact MPPC (accumulate + MPPC).
    pub sparse_seconds: f64,
    /// Peak resident memory of the process after the sparse run, bytes (Linux; `None`
    /// elsewhere). The sparse run goes first, so this is its peak.
    pub sparse_peak_bytes: Option<u64>,
    /// Resident memory before the sparse run (libtorch and the binary), bytes.
    pub baseline_bytes: Option<u64>,
    /// Seconds of the dense reference (densify + standardize + matmul + max), if run.
    pub dense_seconds: Option<f64>,
    /// Largest |sparse - dense| MPPC over features, if the reference ran (float32 error).
    pub max_difference: Option<f64>,
}

/// Streams the synthetic codes in batches: source features uniform among `d`, and target codes
/// that copy half of the source's latents (shifted by one feature) so that real matches exist.
fn codes(options: &BenchOptions, mut each: impl FnMut(&CodeBatch, &CodeBatch)) {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let (mut a, mut b) = (CodeBatch::new(), CodeBatch::new());
    let k = options.k.min(options.features);
    let mut fb: Vec<u32> = Vec::with_capacity(k);
    for n in 0..options.samples {
        let fa: Vec<u32> = sample(&mut rng, options.features, k)
            .into_iter()
            .map(|f| f as u32)
            .collect();
        let va: Vec<f32> = (0..k).map(|_| rng.random_range(0.01..4.0)).collect();
        fb.clear();
        fb.extend(
            fa.iter()
                .take(k / 2)
                .map(|&f| (f + 1) % options.features as u32),
        );
        while fb.len() < k {
            let f = rng.random_range(0..options.features as u32);
            if !fb.contains(&f) {
                fb.push(f);
            }
        }
        let vb: Vec<f32> = (0..k).map(|_| rng.random_range(0.01..4.0)).collect();
        let id = n as u64;
        a.push(SparseCode {
            sample_id: id,
            features: &fa,
            values: &va,
        });
        b.push(SparseCode {
            sample_id: id,
            features: &fb,
            values: &vb,
        });
        if a.len() == BATCH || n + 1 == options.samples {
            each(&a, &b);
            a.clear();
            b.clear();
        }
    }
}

/// Runs the sparse exact MPPC, then (if asked) the dense reference, on the same codes.
pub fn bench_stats(options: &BenchOptions) -> Result<BenchReport, MetricsError> {
    let d = options.features;
    let baseline_bytes = rss("VmRSS:");
    // Only accumulation and MPPC are timed, not the generation of the synthetic codes, just as
    // the dense side is timed from its matrices.
    let mut timed = std::time::Duration::ZERO;
    let k = options.k.min(d) as u64;
    let updates = options.samples as u64 * k * k;
    let mut acc = CoactivationAccumulator::with_expected_updates(d, d, updates);
    codes(options, |a, b| {
        let start = Instant::now();
        acc.add_batch(a, b);
        timed += start.elapsed();
    });
    let start = Instant::now();
    let sparse = mppc(&acc);
    tracing::info!(
        accumulate_s = timed.as_secs_f64(),
        mppc_s = start.elapsed().as_secs_f64(),
        "sparse exact MPPC"
    );
    let sparse_seconds = (timed + start.elapsed()).as_secs_f64();
    drop(acc);
    let sparse_peak_bytes = rss("VmHWM:");

    let (mut dense_seconds, mut max_difference) = (None, None);
    if options.dense_reference {
        let n = options.samples;
        let mut x = vec![0f32; n * d];
        let mut y = vec![0f32; n * d];
        let mut row = 0;
        codes(options, |a, b| {
            for (ca, cb) in a.iter().zip(b.iter()) {
                for (&f, &v) in ca.features.iter().zip(ca.values) {
                    x[row * d + f as usize] = v;
                }
                for (&f, &v) in cb.features.iter().zip(cb.values) {
                    y[row * d + f as usize] = v;
                }
                row += 1;
            }
        });
        // Timed from the dense matrices the reference starts from.
        let start = Instant::now();
        let standardize = |m: Vec<f32>| -> Result<Tensor, MetricsError> {
            let t = Tensor::from_slice(&m).view([n as i64, d as i64]);
            let mean = t.f_mean_dim(0, true, Kind::Float).map_err(torch)?;
            let std = t
                .f_std_dim(0, false, true)
                .map_err(torch)?
                .f_clamp_min(1e-8)
                .map_err(torch)?;
            (t - mean).f_div(&std).map_err(torch)
        };
        let xs = standardize(std::mem::take(&mut x))?;
        let ys = standardize(std::mem::take(&mut y))?;
        let corr = xs
            .f_tr()
            .and_then(|t| t.f_mm(&ys))
            .map_err(torch)?
            .f_div_scalar(n as f64)
            .map_err(torch)?;
        let (best, _) = corr.f_max_dim(1, false).map_err(torch)?;
        let dense: Vec<f32> = Vec::try_from(&best.to_device(Device::Cpu)).map_err(torch)?;
        dense_seconds = Some(start.elapsed().as_secs_f64());
        max_difference = Some(
            sparse
                .iter()
                .zip(&dense)
                .map(|(s, &r)| (s.rho - r as f64).abs())
                .fold(0.0, f64::max),
        );
    }
    Ok(BenchReport {
        sparse_seconds,
        sparse_peak_bytes,
        baseline_bytes,
        dense_seconds,
        max_difference,
    })
}

fn torch(e: tch::TchError) -> MetricsError {
    MetricsError::Stats(e.into())
}

/// A memory figure of this process from `/proc/self/status` (`VmRSS:` now, `VmHWM:` peak), on
/// Linux.
fn rss(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
