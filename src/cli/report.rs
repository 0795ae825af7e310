//! `saeshare report RUN_DIR [--out DIR]`.

use std::path::PathBuf;

use clap::Args;

use crate::report::{write_report, ReportOptions};

/// The arguments of `saeshare report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run folder: a study's `output` (or a `saeshare compare --out` folder).
    pub run: PathBuf,
    /// Where to write the report [default: RUN/report].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The dataset of the examples [default: the one RUN/study.json names].
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Feature pages per sharedness query (its highest Delta).
    #[arg(long, default_value_t = ReportOptions::default().features_per_query)]
    pub features_per_query: usize,
    /// Top-activating images per feature.
    #[arg(long, default_value_t = ReportOptions::default().examples)]
    pub examples: usize,
    /// Top captions listed per feature.
    #[arg(long, default_value_t = ReportOptions::default().captions)]
    pub captions: usize,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let options = ReportOptions {
        out: args.out,
        dataset: args.dataset,
        features_per_query: args.features_per_query,
        examples: args.examples,
        captions: args.captions,
        ..ReportOptions::default()
    };
    let report = write_report(&args.run, &options)?;
    print!("{}", report.matrix);
    if !report.missing.is_empty() {
        println!("partial report: the run folder is not complete");
        for m in &report.missing {
            println!("  - {m}");
        }
    }
    println!(
        "report: {} ({} feature pages, {} thumbnails)",
        report.index.display(),
        report.feature_pages,
        report.thumbnails
    );
    Ok(())
}
