//! `saeshare bench dense`: the compare of dense codes (SAEs read out without TopK) at a real
//! width, as a share of the machine's matrix product peak measured in the same process.
//!
//! Three figures over the same synthetic codes (ReLU of correlated Gaussians, about half the
//! latents active, as a TopK SAE read out with `read_out = "relu"`), interleaved run by run:
//! - the peak: the bare float32 products `X_b^T Y_b` of every block of samples, nothing else;
//! - the accumulator: [`DenseAccumulator`] on the same blocks in memory (moments, centring,
//!   float32 product, float64 totals);
//! - the compare end to end: [`compare`] on the code files (read, align, densify, accumulate,
//!   MPPC), the function `saeshare compare` and the pipeline's pairs call.
//!
//! Each is given in GFLOP/s of the product it does (`2 N d_A d_B`) and as a share of the peak.
//! `check` also computes every correlation in float64 (of the float32 codes, before any
//! rounding of the files to float16) and reports the largest difference of the compare's
//! best-match correlations from it.

use std::path::Path;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::codes::{CodesMeta, CodesWriter, DenseValues};
use crate::stats::DenseAccumulator;

use super::{compare, Backend, CompareOptions, MetricsError};

/// What to measure.
#[derive(Clone, Debug)]
pub struct DenseBenchOptions {
    /// Samples `N`.
    pub samples: usize,
    /// Features of both SAEs, `d_A = d_B`.
    pub features: usize,
    /// Samples per block (the compare's batch).
    pub block: usize,
    /// Runs of each measure, interleaved.
    pub repeats: usize,
    /// Seed of the synthetic codes.
    pub seed: u64,
    /// Where the products run.
    pub device: Device,
    /// Also check the compare's correlations against float64.
    pub check: bool,
    /// How the code files keep their values.
    pub values: DenseValues,
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct DenseBenchReport {
    /// Floating-point operations of one pass over the samples: `2 N d_A d_B`.
    pub flops: f64,
    /// Seconds of each run of the bare block products.
    pub peak_seconds: Vec<f64>,
    /// Seconds of each run of the accumulator on the blocks in memory.
    pub accumulate_seconds: Vec<f64>,
    /// Seconds of each run of `compare` on the code files.
    pub compare_seconds: Vec<f64>,
    /// Bytes of the two code files, and what the same values take as raw float32.
    pub file_bytes: u64,
    /// `2 * N * d * 4`.
    pub raw_bytes: u64,
    /// The share of latents active in the codes.
    pub density: f64,
    /// The largest difference of a best-match correlation from float64, when checked.
    pub max_rho_error: Option<f64>,
}

impl DenseBenchReport {
    /// GFLOP/s of a run of `seconds`.
    pub fn gflops(&self, seconds: f64) -> f64 {
        self.flops / seconds / 1e9
    }
}

/// The median of some runs' seconds.
pub fn median(seconds: &[f64]) -> f64 {
    let mut sorted = seconds.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Runs the benchmark: writes the codes into a temporary folder, then measures.
pub fn bench_dense(options: &DenseBenchOptions) -> Result<DenseBenchReport, MetricsError> {
    let (n, d) = (options.samples as i64, options.features as i64);
    let block = options.block.max(1) as i64;
    tch::manual_seed(options.seed as i64);
    let shared = Tensor::randn([n, d], (Kind::Float, Device::Cpu));
    let x = shared.f_relu()?;
    let noise = Tensor::randn([n, d], (Kind::Float, Device::Cpu));
    let y = (shared.f_mul_scalar(0.8)? + noise.f_mul_scalar(0.6)?).f_relu()?;
    let density = f64::try_from(x.f_ne(0.0)?.f_to_kind(Kind::Double)?.f_mean(Kind::Double)?)?;

    let dir = tempfile::tempdir().map_err(|e| MetricsError::Bench(e.to_string()))?;
    let files = [dir.path().join("a.parquet"), dir.path().join("b.parquet")];
    for (file, codes, name) in [(&files[0], &x, "a"), (&files[1], &y, "b")] {
        write_dense(file, codes, name, options.values)?;
    }
    let file_bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();

    let blocks: Vec<(Tensor, Tensor)> = (0..n)
        .step_by(block as usize)
        .map(|start| {
            let len = block.min(n - start);
            let on = |t: &Tensor| t.narrow(0, start, len).to_device(options.device);
            (on(&x), on(&y))
        })
        .collect();
    let compare_options = CompareOptions {
        backend: Backend::Dense,
        device: options.device,
        batch_samples: options.block,
        ..CompareOptions::default()
    };
    let mut report = DenseBenchReport {
        flops: 2.0 * (n * d * d) as f64,
        peak_seconds: Vec::new(),
        accumulate_seconds: Vec::new(),
        compare_seconds: Vec::new(),
        file_bytes,
        raw_bytes: (2 * n * d * 4) as u64,
        density,
        max_rho_error: None,
    };
    let mut last = None;
    for _ in 0..options.repeats.max(1) {
        let start = Instant::now();
        for (a, b) in &blocks {
            let _product = a.f_tr()?.f_mm(b)?;
            synchronize(options.device);
        }
        report.peak_seconds.push(start.elapsed().as_secs_f64());

        let start = Instant::now();
        let mut sums = DenseAccumulator::new(d as usize, d as usize, options.device);
        for (a, b) in &blocks {
            sums.add_dense(a, b)?;
        }
        let _ = sums.finish()?;
        report
            .accumulate_seconds
            .push(start.elapsed().as_secs_f64());

        let start = Instant::now();
        let result = compare(&files[..1], &files[1..], &[], &compare_options)?;
        report.compare_seconds.push(start.elapsed().as_secs_f64());
        last = Some(result);
    }
    if options.check {
        let reference = best_correlations(&x, &y)?;
        let ours = last.expect("at least one run");
        let error = ours
            .mppc
            .iter()
            .map(|row| (row.rho - reference[row.feature as usize]).abs())
            .fold(0.0, f64::max);
        report.max_rho_error = Some(error);
    }
    Ok(report)
}

/// Writes `codes` (`N x d`) as a codes file of `d` features without `k`: the writer picks the
/// dense layout for codes this active.
fn write_dense(
    file: &Path,
    codes: &Tensor,
    name: &str,
    kind: DenseValues,
) -> Result<(), MetricsError> {
    let d = codes.size()[1] as usize;
    let values: Vec<f32> = Vec::try_from(codes.f_flatten(0, -1)?)?;
    let mut writer = CodesWriter::create(file, CodesMeta::dense(name, "layer", d as u32))?
        .with_dense_values(kind);
    let features: Vec<u32> = (0..d as u32).collect();
    for (id, row) in values.chunks(d).enumerate() {
        writer.push(id as u64, &features, row)?;
    }
    writer.finish()?;
    Ok(())
}

/// Each source feature's largest Pearson correlation with a target feature, in float64 (0 for
/// a constant feature, as MPPC).
fn best_correlations(x: &Tensor, y: &Tensor) -> Result<Vec<f64>, MetricsError> {
    let standardise = |t: &Tensor| -> Result<Tensor, MetricsError> {
        let t = t.f_to_kind(Kind::Double)?;
        let centred = t.f_sub(&t.f_mean_dim(Some([0i64].as_slice()), true, Kind::Double)?)?;
        let norm = centred
            .f_square()?
            .f_sum_dim_intlist(0, true, Kind::Double)?
            .f_sqrt()?;
        let safe = norm.f_where_scalarother(&norm.f_gt(0.0)?, f64::INFINITY)?;
        Ok(centred.f_div(&safe)?)
    };
    let correlations = standardise(x)?.f_tr()?.f_mm(&standardise(y)?)?;
    let best = correlations.f_amax(&[1i64][..], false)?;
    Ok(Vec::try_from(best)?)
}

/// Waits for a GPU's queued work (a no-op on the CPU), so its time is measured.
fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}
