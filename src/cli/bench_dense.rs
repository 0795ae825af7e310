//! `saeshare bench dense`: the compare of dense codes as a share of the matrix product peak.

use clap::Args;

use crate::codes::DenseValues;
use crate::metrics::{bench_dense, median, DenseBenchOptions};
use crate::torch::DeviceSpec;

/// Arguments of `saeshare bench dense`.
#[derive(Debug, Args)]
pub struct BenchDenseArgs {
    /// Samples N.
    #[arg(long, default_value_t = 8192)]
    samples: usize,
    /// Features of both SAEs (6,144: a 768-wide layer x8).
    #[arg(long, default_value_t = 6144)]
    features: usize,
    /// Samples per block product (the compare's batch).
    #[arg(long, default_value_t = 4096)]
    block: usize,
    /// Runs of each measure, interleaved; medians are compared.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Seed of the synthetic codes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the products run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Skip the float64 check of every correlation (it needs 16 * N * features bytes more, and
    /// a float64 product).
    #[arg(long)]
    no_check: bool,
    /// Store the code files' values as float16 (`[codes] dense_values = "float16"`).
    #[arg(long)]
    float16: bool,
}

/// Runs `saeshare bench dense`.
pub fn run(args: BenchDenseArgs) -> anyhow::Result<()> {
    let options = DenseBenchOptions {
        samples: args.samples,
        features: args.features,
        block: args.block,
        repeats: args.repeats,
        seed: args.seed,
        device: args.device.check_available()?,
        check: !args.no_check,
        values: if args.float16 {
            DenseValues::Float16
        } else {
            DenseValues::Float32
        },
    };
    println!(
        "N = {}, d_A = d_B = {}, blocks of {} samples, on {:?} ({} torch threads)",
        options.samples,
        options.features,
        options.block,
        options.device,
        tch::get_num_threads()
    );
    let report = bench_dense(&options)?;
    println!(
        "codes: {:.0}% of latents active; two dense code files ({:?}) {:.1} MB, {:.0}% of their float32 values ({:.1} MB)",
        100.0 * report.density,
        options.values,
        report.file_bytes as f64 / 1e6,
        100.0 * report.file_bytes as f64 / report.raw_bytes as f64,
        report.raw_bytes as f64 / 1e6
    );
    let peak = median(&report.peak_seconds);
    let line = |what: &str, seconds: &[f64]| {
        let s = median(seconds);
        let runs: Vec<String> = seconds.iter().map(|s| format!("{s:.2}")).collect();
        println!(
            "{what}: {s:.2} s (runs: {} s), {:.1} GFLOP/s, {:.0}% of the peak, {:.0} samples/s",
            runs.join(", "),
            report.gflops(s),
            100.0 * peak / s,
            options.samples as f64 / s
        );
    };
    line("peak: float32 block products alone", &report.peak_seconds);
    line(
        "accumulator: moments, centring, products, float64 sums",
        &report.accumulate_seconds,
    );
    line(
        "compare end to end: read, align, accumulate, MPPC",
        &report.compare_seconds,
    );
    if let Some(error) = report.max_rho_error {
        println!("largest difference of a best-match correlation from float64: {error:.2e}");
    }
    Ok(())
}
