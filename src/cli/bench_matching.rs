//! `saeshare bench matching`: the one-to-one matching against MPPC on the same sums.

use clap::Args;

use crate::metrics::{bench_matching, median, MatchingBenchOptions};

use super::compare::{AccumulatorArgs, SyntheticCodesArgs};

/// Arguments of `saeshare bench matching`.
#[derive(Debug, Args)]
pub struct BenchMatchingArgs {
    #[command(flatten)]
    codes: SyntheticCodesArgs,
    /// Runs of each, alternating; medians are compared.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Seed of the synthetic codes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    accumulator: AccumulatorArgs,
}

/// Runs `saeshare bench matching`.
pub fn run(args: BenchMatchingArgs) -> anyhow::Result<()> {
    let options = MatchingBenchOptions {
        samples: args.codes.samples,
        features: args.codes.features,
        k: args.codes.k,
        popularity: args.codes.popularity,
        zipf_exponent: args.codes.zipf_exponent,
        repeats: args.repeats,
        seed: args.seed,
        accumulator: args.accumulator.options(),
    };
    println!(
        "N = {}, d_A = d_B = {}, k = {}, {:?} popularity",
        options.samples, options.features, options.k, options.popularity
    );
    let r = bench_matching(&options);
    let d = options.features as f64;
    println!(
        "sums: {:?}, added in {:.1} s (not timed); {} candidate pairs of positive correlation ({:.2}% of d^2)",
        r.layout,
        r.accumulate_seconds,
        r.candidates,
        100.0 * r.candidates as f64 / (d * d)
    );
    let (mppc, matching) = (median(&r.mppc_seconds), median(&r.matching_seconds));
    println!(
        "MPPC {mppc:.3} s, one-to-one matching {matching:.3} s (median of {}): {:.2}x MPPC",
        r.mppc_seconds.len(),
        matching / mppc
    );
    if let Some(bytes) = r.matching_added_bytes {
        println!(
            "the matching's peak memory: {:.0} MiB above the process before it ({:.1} bytes a candidate pair)",
            bytes as f64 / 1048576.0,
            bytes as f64 / r.candidates.max(1) as f64
        );
    }
    println!(
        "{} of {} fired source features matched; {} to their planted copy",
        r.matched, r.fired, r.copies_found
    );
    Ok(())
}
