//! Command-line parsing and dispatch. Everything clap knows of sits here: argument structs that
//! convert into the library's option types, and how the library's enums are spelled as flag
//! values (`values.rs`).

mod bench_dense;
mod bench_matching;
mod compare;
mod dataset;
mod encode;
mod plan;
mod report;
mod sae;
mod similarity;
mod study;
mod values;
mod workers;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// How much do vision, text and multimodal encoders share concepts? SAE features, wMPPC and
/// Comparative Sharedness, as a streaming dataflow.
#[derive(Debug, Parser)]
#[command(
    name = "saeshare",
    version = concat!(
        env!("CARGO_PKG_VERSION"),
        " (libtorch ",
        env!("SAESHARE_LIBTORCH_VERSION"),
        ")"
    ),
    about,
    long_about = None
)]
pub struct Cli {
    /// No progress bars; only warnings and errors on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build, import and inspect datasets of (image, caption) rows.
    #[command(subcommand)]
    Dataset(dataset::DatasetCommand),
    /// Run an encoder package over a dataset: pooled activations per sample and layer, or
    /// (`--tokens`) every token row.
    Encode(encode::EncodeArgs),
    /// Check study files.
    #[command(subcommand)]
    Study(study::StudyCommand),
    /// Run a study: fit the SAEs, encode the codes, compare the pairs, write the outputs;
    /// only what is missing or out of date.
    #[command(disable_help_flag = true)]
    Run(study::RunArgs),
    /// Write the static HTML report of a run folder: the wMPPC matrix, sharedness rankings,
    /// feature pages with their top images, SAE training curves.
    Report(report::ReportArgs),
    /// Train sparse autoencoders and encode activations with them.
    #[command(subcommand)]
    Sae(sae::SaeCommand),
    /// Say which libtorch this binary runs on and which devices it sees.
    Info,
    /// How far apart two runs' tables are: two Parquet files, or every table under two run
    /// folders (e.g. the same study run on a GPU and on the CPU).
    Diff(DiffArgs),
    /// Compare two models through their SAE codes: MPPC per feature and wMPPC per layer pair.
    Compare(compare::CompareArgs),
    /// Rank a model's features by Comparative Sharedness from mppc tables.
    Sharedness(compare::SharednessArgs),
    /// Representation similarity of two activation files: linear CKA, the CCA family,
    /// Procrustes, ridge R^2 and the kNN family, each with its floor (similarity.parquet).
    Similarity(similarity::SimilarityArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Exact sparse MPPC against the dense float32 all-pairs correlation, side by side.
    Stats(compare::BenchStatsArgs),
    /// The compare of dense codes (SAEs read out without TopK) as a share of the machine's
    /// matrix product peak, checked against float64.
    Dense(bench_dense::BenchDenseArgs),
    /// The exact one-to-one feature matching against MPPC on the same sums: time, the
    /// candidate pairs it searches, its memory.
    Matching(bench_matching::BenchMatchingArgs),
    /// Peak memory of one study on datasets of different sizes (it should not grow).
    Pipeline(study::BenchPipelineArgs),
    /// Per encoder of a study: its rows/s, its SAEs' rows/s, and the fit with the SAE steps
    /// on the worker's thread against on step threads.
    Fit(study::BenchFitArgs),
    /// Per encoder of a study: the forward pass alone at several batch sizes beside the
    /// encoding a study runs, on the study's samples.
    Encoders(study::BenchEncodersArgs),
}

/// Parses the process arguments and runs the command; errors are printed with their causes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::progress::init(cli.quiet);
    let result = run(cli);
    crate::progress::log_finished();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dataset(command) => dataset::run(command),
        Command::Sae(command) => sae::run(command),
        Command::Encode(args) => encode::run(args),
        Command::Study(command) => study::run(command),
        Command::Run(args) => study::run_study(args),
        Command::Report(args) => report::run(args),
        Command::Compare(args) => compare::run_compare(args),
        Command::Sharedness(args) => compare::run_sharedness(args),
        Command::Similarity(args) => similarity::run(args),
        Command::Bench(BenchCommand::Stats(args)) => compare::run_bench_stats(args),
        Command::Bench(BenchCommand::Dense(args)) => bench_dense::run(args),
        Command::Bench(BenchCommand::Matching(args)) => bench_matching::run(args),
        Command::Bench(BenchCommand::Pipeline(args)) => study::run_bench_pipeline(args),
        Command::Bench(BenchCommand::Fit(args)) => study::run_bench_fit(args),
        Command::Bench(BenchCommand::Encoders(args)) => study::run_bench_encoders(args),
        Command::Diff(args) => run_diff(args),
        Command::Info => {
            println!("saeshare {}", env!("CARGO_PKG_VERSION"));
            println!("{}", crate::torch::describe());
            Ok(())
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// A Parquet file or a run folder.
    pub a: std::path::PathBuf,
    /// The Parquet file or run folder to compare with A.
    pub b: std::path::PathBuf,
    /// The largest difference of a float column allowed, relative to the column's largest
    /// magnitude in A; every other column must be equal.
    #[arg(long, default_value_t = 1e-4, value_parser = parse_tolerance)]
    pub tolerance: f64,
    /// Columns whose cells may differ, counted apart (comma-separated): choices among values
    /// equal within rounding, like `best_feature`, the partner whose `rho` is largest, which a
    /// tie at the last bit decides (tied features of one run on 1 and 2 workers). Their values
    /// are still checked through the float columns. By default `best_feature` and `best_layer`
    /// (the all-layers argmax); `--may-differ ''` counts their cells as differences too.
    #[arg(long, value_delimiter = ',', default_value = "best_feature,best_layer")]
    pub may_differ: Vec<String>,
    /// Also write the comparison to this JSON file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// A tolerance is a finite number, 0 or more: NaN would let every difference through.
fn parse_tolerance(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(format!(
            "{text} is not a tolerance: give a finite number, 0 or more"
        ))
    }
}

/// Prints one line per table and fails when a table differs beyond the tolerance.
fn run_diff(args: DiffArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let diff = crate::table_diff::diff(&args.a, &args.b, &args.may_differ)?;
    for t in &diff.tables {
        let verdict = if t.within(args.tolerance) {
            "ok"
        } else {
            "DIFFERS"
        };
        let worst = t.worst_column.as_deref().unwrap_or("-");
        println!(
            "{verdict:<8} {}: rows {}/{}, max abs {:.3e}, max rel {:.3e} ({worst}), unequal cells {}{}{}",
            t.table.display(),
            t.rows.0,
            t.rows.1,
            t.max_abs,
            t.max_rel,
            t.unequal_cells,
            if t.choices_differ > 0 {
                format!(", choices differ {}", t.choices_differ)
            } else {
                String::new()
            },
            if t.schema_differences.is_empty() {
                String::new()
            } else {
                format!(", columns differ: {}", t.schema_differences.join(", "))
            }
        );
    }
    for (side, tables) in [("A", &diff.only_in_a), ("B", &diff.only_in_b)] {
        for t in tables.iter() {
            println!("only in {side}: {}", t.display());
        }
    }
    for folder in &diff.not_compared {
        println!(
            "not compared: {}/ (the activation cache, holding no result)",
            folder.display()
        );
    }
    if let Some(path) = &args.json {
        let mut json = serde_json::to_value(&diff).expect("a diff serialises");
        json["tolerance"] = args.tolerance.into();
        json["within_tolerance"] = diff.within(args.tolerance).into();
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    anyhow::ensure!(
        diff.within(args.tolerance),
        "{} and {} differ beyond a relative {:e} (lines marked DIFFERS above)",
        args.a.display(),
        args.b.display(),
        args.tolerance
    );
    println!(
        "{} table(s) within a relative {:e}",
        diff.tables.len(),
        args.tolerance
    );
    Ok(())
}
