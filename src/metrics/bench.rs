//! `saeshare bench stats`: `saeshare compare` end to end (read the code files, align them,
//! accumulate the exact sums, MPPC) against the reference's dense float32 all-pairs
//! correlation, interleaved in one process on the same synthetic TopK codes.
//!
//! The codes are written to Parquet code files first (not timed), uniform or with the Zipf
//! popularity of real SAE features. The sparse side is [`compare`] on those files, the function
//! the command calls, so it streams them: its peak memory is the accumulator's and the
//! readers', whatever N. The dense side starts from the `N x d` float32 matrices the reference
//! builds (read from the same files, not timed) and standardizes both, `X^T Y / N`, max over
//! rows.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::codes::{CodesMeta, CodesReader, CodesWriter};
use crate::stats::{AccumulatorOptions, Layout};

use super::bench_codes::{Popularity, SyntheticCodes, SyntheticPair};
use super::{compare, CompareOptions, MetricsError};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Samples `N`.
    pub samples: usize,
    /// Features of both SAEs, `d_A = d_B`.
    pub features: usize,
    /// Active latents per sample.
    pub k: usize,
    /// How often each feature fires.
    pub popularity: Popularity,
    /// The exponent `s` of Zipf popularity (weight `rank^-s`).
    pub zipf_exponent: f64,
    /// Also run the dense float32 reference (needs `~4 * 2 * N * d` bytes, and as much again
    /// for its standardized copies).
    pub dense_reference: bool,
    /// Runs of each side, alternating: sparse, dense, sparse, dense, ...
    pub repeats: usize,
    /// Seed of the synthetic codes.
    pub seed: u64,
    /// Layout budget and threads of the sparse side's accumulators.
    pub accumulator: AccumulatorOptions,
    /// Where the code files are written and kept; a temporary folder when `None`.
    pub codes_dir: Option<PathBuf>,
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// The code files compared (deleted afterwards unless a folder was given).
    pub files: [PathBuf; 2],
    /// Seconds spent generating and writing them (not part of either side's time).
    pub codes_seconds: f64,
    /// The layout of the sparse side's cross sums.
    pub layout: Layout,
    /// Seconds of each run of `compare` on the files (read, align, accumulate, MPPC).
    pub sparse_seconds: Vec<f64>,
    /// Peak resident memory of the process during the first sparse run, bytes (Linux; `None`
    /// elsewhere). It runs before any dense run.
    pub sparse_peak_bytes: Option<u64>,
    /// Resident memory at the start (binary, libtorch), bytes.
    pub baseline_bytes: Option<u64>,
    /// Seconds of each run of the dense reference (standardize + matmul + max), if run.
    pub dense_seconds: Vec<f64>,
    /// Largest |sparse - dense| MPPC over features, if the reference ran (float32 error).
    pub max_difference: Option<f64>,
}

impl BenchReport {
    /// The median time of the sparse runs.
    pub fn sparse_median(&self) -> f64 {
        median(&self.sparse_seconds)
    }

    /// The median time of the dense runs, if any ran.
    pub fn dense_median(&self) -> Option<f64> {
        (!self.dense_seconds.is_empty()).then(|| median(&self.dense_seconds))
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Writes the codes, then runs the sparse side and (if asked) the dense reference, alternating.
pub fn bench_stats(options: &BenchOptions) -> Result<BenchReport, MetricsError> {
    let baseline_bytes = rss("VmRSS:");
    let temp;
    let dir = match &options.codes_dir {
        Some(dir) => dir.as_path(),
        None => {
            temp = tempfile::tempdir()
                .map_err(crate::file_error::FileError::io(std::env::temp_dir()))?;
            temp.path()
        }
    };
    let start = Instant::now();
    let files = write_codes(options, dir)?;
    let codes_seconds = start.elapsed().as_secs_f64();
    let compare_options = CompareOptions {
        accumulator: options.accumulator,
        ..CompareOptions::default()
    };
    let d = options.features;
    let k = options.k.min(d) as u64;
    let layout = (options.accumulator).layout_for(d, d, options.samples as u64 * k * k);

    let mut report = BenchReport {
        files: files.clone(),
        codes_seconds,
        layout,
        sparse_seconds: Vec::new(),
        sparse_peak_bytes: None,
        baseline_bytes,
        dense_seconds: Vec::new(),
        max_difference: None,
    };
    let mut sparse_rho = Vec::new();
    for run in 0..options.repeats.max(1) {
        if run == 0 {
            // The peak of the sparse run alone, not of writing the codes.
            reset_peak();
        }
        let start = Instant::now();
        let comparison = compare(&files[..1], &files[1..], &[], &compare_options)?;
        report.sparse_seconds.push(start.elapsed().as_secs_f64());
        if run == 0 {
            report.sparse_peak_bytes = rss("VmHWM:");
            sparse_rho = comparison.mppc.iter().map(|r| r.rho).collect();
        }
        drop(comparison);
        if options.dense_reference {
            let (seconds, dense) = dense_reference(&files, d, options.samples)?;
            report.dense_seconds.push(seconds);
            let difference = sparse_rho
                .iter()
                .zip(&dense)
                .map(|(s, &r)| (s - r as f64).abs())
                .fold(0.0, f64::max);
            report.max_difference = Some(difference);
        }
    }
    Ok(report)
}

/// Writes `N` synthetic samples of both sides as code files in `dir`: source, then target.
fn write_codes(options: &BenchOptions, dir: &Path) -> Result<[PathBuf; 2], MetricsError> {
    let d = options.features as u32;
    let k = options.k.min(options.features) as u32;
    let files = [
        dir.join("bench-source.parquet"),
        dir.join("bench-target.parquet"),
    ];
    let mut source = CodesWriter::create(&files[0], CodesMeta::topk("bench-a", "l0", d, k))?;
    let mut target = CodesWriter::create(&files[1], CodesMeta::topk("bench-b", "l0", d, k))?;
    let mut codes = SyntheticCodes::new(
        options.features,
        options.k,
        options.popularity,
        options.zipf_exponent,
        options.seed,
    );
    let mut pair = SyntheticPair::default();
    for id in 0..options.samples as u64 {
        codes.next_into(&mut pair);
        source.push(id, &pair.source_features, &pair.source_values)?;
        target.push(id, &pair.target_features, &pair.target_values)?;
    }
    source.finish()?;
    target.finish()?;
    Ok(files)
}

/// The reference's way from the codes: `N x d` float32 matrices (built untimed), then timed:
/// standardize both, `X^T Y / N`, max over rows. Returns the seconds and each source feature's
/// best correlation.
fn dense_reference(
    files: &[PathBuf; 2],
    d: usize,
    n: usize,
) -> Result<(f64, Vec<f32>), MetricsError> {
    let matrix = |path: &Path| -> Result<Vec<f32>, MetricsError> {
        let mut m = vec![0f32; n * d];
        let mut row = 0;
        for batch in CodesReader::open(path)? {
            for code in batch?.iter() {
                for (&f, &v) in code.features.iter().zip(code.values) {
                    m[row * d + f as usize] = v;
                }
                row += 1;
            }
        }
        Ok(m)
    };
    let (x, y) = (matrix(&files[0])?, matrix(&files[1])?);
    let start = Instant::now();
    let standardize = |m: Vec<f32>| -> Result<Tensor, MetricsError> {
        let t = Tensor::from_slice(&m).view([n as i64, d as i64]);
        drop(m);
        let mean = t.f_mean_dim(0, true, Kind::Float).map_err(torch)?;
        let std = t
            .f_std_dim(0, false, true)
            .map_err(torch)?
            .f_clamp_min(1e-8)
            .map_err(torch)?;
        (t - mean).f_div(&std).map_err(torch)
    };
    let xs = standardize(x)?;
    let ys = standardize(y)?;
    let corr = xs
        .f_tr()
        .and_then(|t| t.f_mm(&ys))
        .map_err(torch)?
        .f_div_scalar(n as f64)
        .map_err(torch)?;
    let (best, _) = corr.f_max_dim(1, false).map_err(torch)?;
    let best: Vec<f32> = Vec::try_from(&best.to_device(Device::Cpu)).map_err(torch)?;
    Ok((start.elapsed().as_secs_f64(), best))
}

fn torch(e: tch::TchError) -> MetricsError {
    MetricsError::Stats(e.into())
}

/// A memory figure of this process from `/proc/self/status` (`VmRSS:` now, `VmHWM:` peak), on
/// Linux.
pub(super) fn rss(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak resident memory (`VmHWM`) to the current one (Linux 4.0 and later); where
/// it cannot, the peak stays that of the whole process.
pub(super) fn reset_peak() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        tracing::debug!("could not reset the peak memory figure: {e}");
    }
}

/// The peak resident memory since the last [`reset_peak`] (or the process's start), bytes.
pub(super) fn peak_since_reset() -> Option<u64> {
    rss("VmHWM:")
}
