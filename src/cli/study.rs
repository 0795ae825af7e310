//! `saeshare study ...`

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::pipeline::{Study, WorkerArgs};

#[derive(Debug, Subcommand)]
pub enum StudyCommand {
    /// Check a study file and say what it would run: encoders, layers, comparisons, queries.
    Check { file: PathBuf },
}

pub fn run(command: StudyCommand) -> anyhow::Result<()> {
    match command {
        StudyCommand::Check { file } => {
            let study = Study::read(&file)?;
            println!(
                "study {} ({}): dataset {}, output {}",
                study.name,
                file.display(),
                study.dataset.path.display(),
                study.output.display()
            );
            for (name, encoder) in &study.encoders {
                let sae = study.sae_for(name).map_err(anyhow::Error::msg)?;
                println!(
                    "  encoder {name}: {} layers={} device={} sae={:?} k={} expansion={}",
                    encoder.package.display(),
                    encoder.layers,
                    encoder.device,
                    sae.kind,
                    sae.k,
                    sae.expansion
                );
            }
            for c in &study.comparisons {
                let names = |v: &[toml::Spanned<String>]| {
                    v.iter()
                        .map(|s| s.get_ref().as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                println!(
                    "  compare {} -> {} ({} layers)",
                    names(&c.sources),
                    names(&c.targets),
                    c.layers
                );
            }
            for q in &study.sharedness {
                println!(
                    "  sharedness {}: features of {} shared with {} encoder(s), not with {}",
                    q.name,
                    q.model.get_ref(),
                    q.shared_with.len(),
                    q.not_shared_with.len()
                );
            }
            Ok(())
        }
    }
}

/// `saeshare run STUDY.toml [-w N] [-n P -p I -h HOSTFILE]`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The study file (pipelines/demo.toml is the embedded default).
    pub study: PathBuf,
    #[command(flatten)]
    pub workers: WorkerArgs,
    /// Print help (-h is the hostfile here, as in timely).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

pub fn run_study(args: RunArgs) -> anyhow::Result<()> {
    let summary = crate::pipeline::run_study(&args.study, &args.workers)?;
    if args.workers.process != 0 {
        return Ok(());
    }
    let fitted = if summary.saes_fitted.is_empty() {
        "none".to_string()
    } else {
        summary.saes_fitted.join(", ")
    };
    if summary.saes_fitted.is_empty()
        && summary.codes_units == 0
        && summary.pairs_updated.is_empty()
    {
        println!("study {}: nothing to do, every unit is done", summary.study);
    } else {
        println!(
            "study {}: SAEs fitted: {fitted}; codes units: {}; pairs updated: {}",
            summary.study,
            summary.codes_units,
            summary.pairs_updated.len()
        );
    }
    for (stage, seconds) in &summary.seconds {
        println!("  {stage:>8}: {seconds:.1} s");
    }
    for (encoder, (rows, skipped)) in &summary.rows {
        let stage = encoder
            .rsplit(' ')
            .next()
            .unwrap_or("")
            .trim_matches(|c| c == '(' || c == ')');
        let seconds = summary.seconds.get(stage).copied().unwrap_or(0.0).max(1e-9);
        println!(
            "  {encoder}: {rows} rows ({:.0} rows/s over the stage), {skipped} skipped",
            *rows as f64 / seconds
        );
    }
    if let Some(peak) = summary.peak_memory_mib {
        println!("  peak memory: {peak:.0} MiB");
    }
    print!("{}", summary.matrix);
    println!("results in {}", summary.output.display());
    Ok(())
}
