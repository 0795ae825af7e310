//! `saeshare compare` and `saeshare sharedness`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::metrics::tables::{self, FEATURES_FILE, MPPC_FILE, WMPPC_FILE};
use crate::metrics::{Backend, CompareOptions, Popularity, SharednessQuery};
use crate::stats::{AccumulatorOptions, MissingSamples, DEFAULT_MEMORY_MIB};
use crate::torch::DeviceSpec;

/// Arguments of `saeshare compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Codes of the source model, one per layer: a codes file, or a folder of codes files (one
    /// per dataset shard, read in sample id order).
    #[arg(long, required = true, num_args = 1..)]
    source: Vec<PathBuf>,
    /// Codes of the target model, one per layer: a codes file or a folder of shard files.
    #[arg(long, required = true, num_args = 1..)]
    target: Vec<PathBuf>,
    /// Codes files of a second SAE (another seed) of source layers: the ceiling baseline.
    #[arg(long, num_args = 1..)]
    ceiling: Vec<PathBuf>,
    /// Permutations of the target samples for the floor baseline (0: none). Holds all aligned
    /// codes in memory.
    #[arg(long, default_value_t = 0)]
    baselines: usize,
    /// Seed of the floor's permutations and of the bootstrap's weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replicates of the Poisson bootstrap over samples giving each wMPPC a 95% interval (0:
    /// none). Holds all aligned codes in memory, as the floor does.
    #[arg(long, default_value_t = 0)]
    bootstrap: usize,
    /// Leave out (and count) samples missing from some file, instead of failing.
    #[arg(long)]
    drop_missing: bool,
    /// How co-activation sums are gathered.
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
    /// Device of the dense backend: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// A folder keeping the co-activation sums: sums saved there by earlier runs are added
    /// to this run's, and the total saved, so a run on new shards completes the earlier ones.
    #[arg(long)]
    state: Option<PathBuf>,
    #[command(flatten)]
    accumulator: AccumulatorArgs,
    /// The folder receiving features.parquet, mppc.parquet and wmppc.parquet.
    #[arg(long)]
    out: PathBuf,
}

/// How the sparse backend holds and fills its sums (`compare`, `bench stats`).
#[derive(Debug, Args)]
pub struct AccumulatorArgs {
    /// Memory budget of the co-activation sums, all layer pairs together: a pair's sums are a
    /// dense d_A x d_B array of f64 when it fits (and the samples would touch much of it),
    /// else hash tables of the pairs that fired together. Either way the sums are exact.
    #[arg(long, default_value_t = DEFAULT_MEMORY_MIB)]
    memory_mib: usize,
    /// Threads adding up the co-activation sums (default: every core). The sums are the same,
    /// bit for bit, on any number.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
}

impl AccumulatorArgs {
    pub(super) fn options(&self) -> AccumulatorOptions {
        AccumulatorOptions {
            memory_mib: self.memory_mib,
            threads: self
                .threads
                .map_or_else(AccumulatorOptions::available_threads, |t| t as usize),
        }
    }
}

/// Arguments of `saeshare sharedness`.
#[derive(Debug, Args)]
pub struct SharednessArgs {
    /// mppc tables: `compare` output folders or mppc.parquet files.
    #[arg(long, required = true, num_args = 1..)]
    mppc: Vec<PathBuf>,
    /// The model M whose features are ranked.
    #[arg(long)]
    source: String,
    /// G: models the features should be shared with.
    #[arg(long, required = true, value_delimiter = ',')]
    shared_with: Vec<String>,
    /// H: models the features should not be shared with.
    #[arg(long, value_delimiter = ',')]
    not_shared_with: Vec<String>,
    /// Keep the P features of highest Delta.
    #[arg(long)]
    top: Option<usize>,
    /// The ranking's Parquet file.
    #[arg(long)]
    out: PathBuf,
}

/// Runs `saeshare compare`.
pub fn run_compare(args: CompareArgs) -> anyhow::Result<()> {
    let options = CompareOptions {
        baselines: args.baselines,
        bootstrap: args.bootstrap,
        seed: args.seed,
        missing: if args.drop_missing {
            MissingSamples::Drop
        } else {
            MissingSamples::Error
        },
        backend: args.backend,
        device: args.device.check_available()?,
        state: args.state,
        accumulator: args.accumulator.options(),
        ..CompareOptions::default()
    };
    let result = crate::metrics::compare(&args.source, &args.target, &args.ceiling, &options)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    tables::write_features(&args.out.join(FEATURES_FILE), &result.features)?;
    tables::write_mppc(&args.out.join(MPPC_FILE), &result.mppc)?;
    tables::write_wmppc(&args.out.join(WMPPC_FILE), &result.wmppc)?;
    crate::metrics::write_matches(
        &args.out.join(crate::metrics::MATCHES_FILE),
        &result.matches,
    )?;
    println!(
        "{} samples compared, {} dropped; {} mppc rows",
        result.align.samples,
        result.align.dropped,
        result.mppc.len()
    );
    let strong: Vec<String> = (crate::metrics::SHARED_AT.iter())
        .map(|&t| {
            let count = result.matches.iter().filter(|m| m.rho >= t).count();
            format!("{count} at rho >= {t}")
        })
        .collect();
    println!(
        "{} features matched one to one ({})",
        result.matches.len(),
        strong.join(", ")
    );
    if let Some(state) = &options.state {
        let total = result.wmppc.first().map_or(0, |r| r.samples);
        println!("{total} samples in the state {}", state.display());
    }
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
    println!("source\ttarget\tsource_layer\ttarget_layer\taggregation\twmppc\tfloor\tceiling");
    for r in &result.wmppc {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.source,
            r.target,
            r.source_layer,
            r.target_layer,
            r.aggregation.as_str(),
            show(r.wmppc),
            show(r.baseline_floor),
            show(r.baseline_ceiling)
        );
    }
    println!("wrote {}", args.out.display());
    Ok(())
}

/// Runs `saeshare sharedness`.
pub fn run_sharedness(args: SharednessArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for path in &args.mppc {
        rows.extend(tables::read_mppc(path)?);
    }
    let query = SharednessQuery {
        source: args.source,
        shared_with: args.shared_with,
        not_shared_with: args.not_shared_with,
        top: args.top,
    };
    let ranking = crate::metrics::sharedness(&rows, &query)?;
    tables::write_sharedness(&args.out, &query.source, &ranking)?;
    println!(
        "{} features of {} ranked; wrote {}",
        ranking.len(),
        query.source,
        args.out.display()
    );
    Ok(())
}

/// The synthetic TopK codes of the benches (`bench stats`, `bench matching`).
#[derive(Debug, Args)]
pub struct SyntheticCodesArgs {
    /// Samples N.
    #[arg(long, default_value_t = 50_000)]
    pub samples: usize,
    /// Features of both SAEs.
    #[arg(long, default_value_t = 8192)]
    pub features: usize,
    /// Active latents per sample (TopK).
    #[arg(long, default_value_t = 32)]
    pub k: usize,
    /// How often each feature fires: zipf, as in real SAEs (a few features on most samples,
    /// most rarely), or uniform.
    #[arg(long, value_enum, default_value = "zipf")]
    pub popularity: Popularity,
    /// The exponent s of Zipf popularity: the feature of rank r fires with weight r^-s.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,
}

/// Arguments of `saeshare bench stats`.
#[derive(Debug, Args)]
pub struct BenchStatsArgs {
    #[command(flatten)]
    codes: SyntheticCodesArgs,
    /// Skip the dense float32 reference (it needs 16 * N * features bytes).
    #[arg(long)]
    no_dense: bool,
    /// Runs of each side, alternating (sparse, dense, sparse, ...); medians are compared.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Seed of the synthetic codes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the code files into this folder and keep them (default: a temporary folder).
    #[arg(long)]
    codes_dir: Option<PathBuf>,
    #[command(flatten)]
    accumulator: AccumulatorArgs,
}

/// Runs `saeshare bench stats`.
pub fn run_bench_stats(args: BenchStatsArgs) -> anyhow::Result<()> {
    let options = crate::metrics::BenchOptions {
        samples: args.codes.samples,
        features: args.codes.features,
        k: args.codes.k,
        popularity: args.codes.popularity,
        zipf_exponent: args.codes.zipf_exponent,
        dense_reference: !args.no_dense,
        repeats: args.repeats,
        seed: args.seed,
        accumulator: args.accumulator.options(),
        codes_dir: args.codes_dir,
    };
    let popularity = match options.popularity {
        Popularity::Zipf => format!("zipf (s = {})", options.zipf_exponent),
        Popularity::Uniform => "uniform".into(),
    };
    println!(
        "N = {}, d_A = d_B = {}, k = {}, {popularity} popularity; {} accumulator threads, {} MiB budget, {} torch threads",
        options.samples,
        options.features,
        options.k,
        options.accumulator.threads,
        options.accumulator.memory_mib,
        tch::get_num_threads()
    );
    let report = crate::metrics::bench_stats(&options)?;
    println!(
        "codes written in {:.1} s (not timed): {}, {}",
        report.codes_seconds,
        report.files[0].display(),
        report.files[1].display()
    );
    let mib = |b: u64| b as f64 / 1048576.0;
    let peak = match (report.sparse_peak_bytes, report.baseline_bytes) {
        (Some(peak), Some(base)) => format!(
            "{:.0} MiB ({:.0} MiB above the {:.0} MiB of the process at start: binary, libtorch)",
            mib(peak),
            mib(peak.saturating_sub(base)),
            mib(base)
        ),
        _ => "unknown".into(),
    };
    let runs = |seconds: &[f64]| {
        let each: Vec<String> = seconds.iter().map(|s| format!("{s:.2}")).collect();
        each.join(", ")
    };
    println!(
        "compare from the code files (read, align, {:?} exact sums, MPPC): {:.2} s (runs: {} s), peak memory {peak}",
        report.layout,
        report.sparse_median(),
        runs(&report.sparse_seconds)
    );
    if let (Some(dense), Some(diff)) = (report.dense_median(), report.max_difference) {
        println!(
            "dense float32 all-pairs (reference way): {dense:.2} s (runs: {} s)",
            runs(&report.dense_seconds)
        );
        println!(
            "ratio dense / sparse: {:.1}x (medians); {:.1}x (first runs: the sparse side's first touch of fresh memory)",
            dense / report.sparse_median(),
            report.dense_seconds[0] / report.sparse_seconds[0]
        );
        println!("max |MPPC sparse - dense float32|: {diff:.2e}");
    }
    Ok(())
}
