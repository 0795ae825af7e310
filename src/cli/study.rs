//! `saeshare study ...`

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::workers::WorkerFlags;
use crate::pipeline::{FitOn, FolderState, Plan, Study};
use crate::report::ReportOptions;

#[derive(Debug, Subcommand)]
pub enum StudyCommand {
    /// Check a study file and say what it would run: encoders, layers, comparisons, queries.
    Check { file: PathBuf },
    /// What the study will cost before it runs: rows, SAE steps and passes, forward passes and
    /// layer-pair accumulations per stage, bytes on disk by folder, peak memory of a process,
    /// and wall time from rates measured on this machine (--calibrate) or given (--rates).
    Plan(super::plan::PlanArgs),
}

pub fn run(command: StudyCommand) -> anyhow::Result<()> {
    match command {
        StudyCommand::Check { file } => check(&file),
        StudyCommand::Plan(args) => super::plan::plan(args),
    }
}

/// Everything `run` checks before it starts work, and what it would do first.
fn check(file: &std::path::Path) -> anyhow::Result<()> {
    let study = Study::read(file)?;
    println!(
        "study {} ({}): dataset {}, output {}",
        study.name,
        file.display(),
        study.dataset.path.display(),
        study.output.display()
    );
    for (name, encoder) in &study.encoders {
        let sae = study.sae_for(name)?;
        println!(
            "  encoder {name}: {} layers={} device={} sae={:?} k={} expansion={}",
            encoder.package.display(),
            encoder.layers,
            encoder.device,
            sae.kind,
            sae.k,
            sae.expansion
        );
        if let Some(side) = encoder.image_size {
            println!("    images resized to {side} x {side} px, uncropped (image_size)");
        }
        for (layer, import) in &encoder.saes {
            println!(
                "    layer {layer}: imports the SAE at {}",
                import.path.display()
            );
        }
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
    let checked = Plan::check(study, file)?;
    match checked.folder {
        FolderState::New => println!("output: a new run folder"),
        FolderState::Run { adopted: false } => {
            println!("output: a saeshare run folder; a run does what is missing")
        }
        FolderState::Run { adopted: true } => {
            println!("output: a run folder of an earlier saeshare; a run marks it as one")
        }
    }
    if !checked.to_make.is_empty() {
        println!("before it starts, `saeshare run` makes what is missing:");
        for (what, how) in &checked.to_make {
            println!("  {what}: {how}");
        }
        println!(
            "(an `export` key is a shell command, run as it is written, like a Makefile's; the \
             rest of the checks are made once these exist)"
        );
    }
    if !checked.to_provide.is_empty() {
        println!("it cannot run until these exist:");
        for what in &checked.to_provide {
            println!("  {what}");
        }
        anyhow::bail!(
            "{}: the study cannot run until the {} thing(s) listed above exist",
            file.display(),
            checked.to_provide.len()
        );
    }
    if let Some(plan) = checked.plan {
        print_fit_passes(&plan);
        println!(
            "plan: {} shard(s), {} rows; {} SAE set(s), {} pair(s); every check passed",
            plan.dataset.shards().len(),
            plan.dataset.rows(),
            plan.encoders.len(),
            plan.pairs.len()
        );
    }
    Ok(())
}

/// How many passes over its rows each fitted encoder's SAEs take, warned of where many: a pass
/// beyond the first replays rows from memory (or encodes the dataset again), and SAEs that
/// see the same rows dozens of times learn them by heart.
fn print_fit_passes(plan: &Plan) {
    use crate::pipeline::{fit_rows_per_pass, FitRowsEstimate};
    for (_, e) in plan.named_encoders().filter(|(_, e)| e.fits_any()) {
        let estimate = fit_rows_per_pass(e, plan.dataset.rows());
        let passes = estimate.passes(e.sae.steps, e.sae.batch_size);
        let (rows, said) = match estimate {
            FitRowsEstimate::Exactly(r) => (format!("{r} rows"), format!("{passes:.1} passes")),
            FitRowsEstimate::AtMost(r) => (
                format!("at most {r} rows"),
                format!("at least {passes:.1} passes"),
            ),
            FitRowsEstimate::AtLeast(r) => (
                format!("at least {r} rows"),
                format!("at most {passes:.1} passes"),
            ),
        };
        println!(
            "  fit {}: {} steps of {} rows over {rows} a pass: {said}",
            e.name, e.sae.steps, e.sae.batch_size
        );
        if !matches!(estimate, FitRowsEstimate::AtLeast(_)) && passes > MANY_PASSES {
            tracing::warn!(
                "{}: the SAEs of {} see each row about {passes:.0} times ({} steps x {} rows over \
                 {rows}); fewer steps, or more data, fit them without learning the rows by heart",
                plan.study.name,
                e.name,
                e.sae.steps,
                e.sae.batch_size
            );
        }
    }
}

/// Passes over the rows beyond which `study check` warns.
const MANY_PASSES: f64 = 10.0;

/// `saeshare run STUDY.toml [-w N] [-n P -p I -h HOSTFILE]`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The study file (pipelines/demo.toml is the embedded default).
    #[arg(required_unless_present = "hostfile")]
    pub study: Option<PathBuf>,
    #[command(flatten)]
    pub workers: WorkerFlags,
    /// Skip the HTML report (`saeshare report OUTPUT` makes it later).
    #[arg(long)]
    pub no_report: bool,
    /// Print help (-h is the hostfile here, as in timely).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

pub fn run_study(args: RunArgs) -> anyhow::Result<()> {
    let Some(workers) = args.workers.args()? else {
        return super::workers::print_help(&["run"]);
    };
    let Some(study) = args.study else {
        anyhow::bail!("name the study file to run: saeshare run STUDY.toml -h HOSTFILE ...");
    };
    let summary = crate::pipeline::run_study(&study, &workers)?;
    if workers.process != 0 {
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
        let suffix = format!(" ({stage})");
        let rows: u64 = summary
            .rows
            .iter()
            .filter(|(name, _)| name.ends_with(&suffix))
            .map(|(_, (rows, _))| rows)
            .sum();
        if rows > 0 {
            println!(
                "  {stage:>8}: {seconds:.1} s, {rows} rows through encoders ({:.0} rows/s)",
                rows as f64 / seconds.max(1e-9)
            );
        } else {
            println!("  {stage:>8}: {seconds:.1} s");
        }
    }
    for (encoder, (rows, skipped)) in &summary.rows {
        println!("  {encoder}: {rows} rows, {skipped} skipped");
    }
    if let Some(peak) = summary.peak_memory_mib {
        println!("  peak memory: {peak:.0} MiB");
    }
    print!("{}", summary.matrix);
    println!("results in {}", summary.output.display());
    // Process 0 only (the others returned above): it wrote the tables the report reads.
    if !args.no_report {
        let report = crate::report::write_report(&summary.output, &ReportOptions::default())
            .with_context(|| {
                format!(
                    "the study's outputs are complete in {}, but its report could not be written",
                    summary.output.display()
                )
            })?;
        println!("report: {}", report.index.display());
    }
    Ok(())
}

/// `saeshare bench pipeline --encoder PKG [--rows 10000,40000] [--fit-on tokens]`.
#[derive(Debug, Args)]
pub struct BenchPipelineArgs {
    /// An encoder package (a text encoder keeps it quick; with `--fit-on tokens`, a text
    /// encoder: `python -m saeshare_export.tiny --token-stream DIR` makes one of width 768
    /// whose forward costs nearly nothing).
    #[arg(long)]
    pub encoder: PathBuf,
    /// Dataset sizes (samples), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,40000")]
    pub rows: Vec<usize>,
    /// `pooled`, or `tokens`: the SAEs are fitted on every token of the captions.
    #[arg(long, default_value = "pooled", value_parser = parse_fit_on)]
    pub fit_on: FitOn,
    /// Words per synthetic caption (with tokens: about the token rows of a sample, plus 2).
    #[arg(long, default_value_t = 6)]
    pub caption_words: usize,
    /// Where the datasets and runs go (kept, so a second bench reuses the datasets).
    #[arg(long, default_value = "runs/bench-pipeline")]
    pub workdir: PathBuf,
}

pub fn run_bench_pipeline(args: BenchPipelineArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let encoder = std::fs::canonicalize(&args.encoder)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.encoder.display()))?;
    let bench = crate::pipeline::MemoryBench {
        fit_on: args.fit_on,
        caption_words: args.caption_words,
    };
    let figures = crate::pipeline::bench_memory(&exe, &encoder, &args.rows, &args.workdir, bench)?;
    println!("samples   token rows   peak memory   time");
    let token_rows =
        |f: &crate::pipeline::MemoryFigure| f.token_rows.map_or("-".to_string(), |t| t.to_string());
    for f in &figures {
        println!(
            "{:<9} {:>10}   {:>8.0} MiB   {:>6.1} s",
            f.rows,
            token_rows(f),
            f.peak_memory_mib,
            f.seconds
        );
    }
    if let (Some(first), Some(last)) = (figures.first(), figures.last()) {
        let rows = |f: &crate::pipeline::MemoryFigure| f.token_rows.unwrap_or(f.rows as u64);
        println!(
            "peak memory x{:.2} for x{:.1} rows",
            last.peak_memory_mib / first.peak_memory_mib,
            rows(last) as f64 / rows(first) as f64
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct BenchFitArgs {
    /// The study whose encoders, SAE settings and dataset are benchmarked (built and exported
    /// where missing, as `run` does).
    pub study: PathBuf,
    /// Samples read from the study's dataset (decoded before any clock starts).
    #[arg(long, default_value_t = 512)]
    pub samples: usize,
    /// Only these encoders (comma-separated study names); all when absent.
    #[arg(long, value_delimiter = ',')]
    pub encoders: Vec<String>,
    /// Step threads for the overlapped fit (the study's `[fit] sae_threads`).
    #[arg(long, default_value_t = 1)]
    pub sae_threads: usize,
    /// Also write the figures to this JSON file (one object per encoder, rates included).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run_bench_fit(args: BenchFitArgs) -> anyhow::Result<()> {
    let figures =
        crate::pipeline::bench_fit(&args.study, args.samples, &args.encoders, args.sae_threads)?;
    println!(
        "{:<20} {:>6} {:>9} {:>6}  {:>13} {:>13}  {:>9} {:>9} {:>8}  same SAEs",
        "encoder",
        "layers",
        "rows",
        "steps",
        "encoder row/s",
        "SAEs row/s",
        "inline",
        "overlap",
        "speed-up"
    );
    for f in &figures {
        println!(
            "{:<20} {:>6} {:>9} {:>6}  {:>13.0} {:>13.0}  {:>8.1}s {:>8.1}s {:>7.2}x  {}",
            f.encoder,
            f.layers,
            f.rows_per_layer,
            f.steps,
            f.encoder_rows_per_second(),
            f.sae_rows_per_second(),
            f.inline_seconds,
            f.overlapped_seconds,
            f.inline_seconds / f.overlapped_seconds,
            if f.same_saes { "yes" } else { "NO" }
        );
    }
    println!(
        "rows: rows each SAE takes from {} samples; row/s: encoding alone, and every layer's \
         SAE steps alone on rows in memory",
        figures.first().map_or(0, |f| f.samples)
    );
    if let Some(path) = &args.json {
        let json: Vec<serde_json::Value> = (figures.iter())
            .map(|f| {
                let mut v = serde_json::to_value(f).expect("figures serialise");
                v["encoder_rows_per_second"] = f.encoder_rows_per_second().into();
                v["sae_rows_per_second"] = f.sae_rows_per_second().into();
                v
            })
            .collect();
        write_json(path, &json)?;
    }
    anyhow::ensure!(
        figures.iter().all(|f| f.same_saes),
        "the SAEs fitted with step threads differ from those fitted on the worker's thread"
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct BenchEncodersArgs {
    /// The study whose encoders, batch sizes and dataset are benchmarked (built and exported
    /// where missing, as `run` does).
    pub study: PathBuf,
    /// Samples read from the study's dataset for the encoding (decoded before the clock starts).
    #[arg(long, default_value_t = 512)]
    pub samples: usize,
    /// Only these encoders (comma-separated study names); all when absent.
    #[arg(long, value_delimiter = ',')]
    pub encoders: Vec<String>,
    /// Batch sizes of the forward pass alone, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32,64")]
    pub batch_sizes: Vec<usize>,
    /// Also write the figures to this JSON file (one object per encoder, ratios included).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run_bench_encoders(args: BenchEncodersArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.batch_sizes.is_empty() && !args.batch_sizes.contains(&0),
        "--batch-sizes: give batch sizes of at least 1"
    );
    let figures = crate::pipeline::bench_encoders(
        &args.study,
        args.samples,
        &args.encoders,
        &args.batch_sizes,
    )?;
    let sizes: Vec<String> = args.batch_sizes.iter().map(|b| format!("b={b}")).collect();
    println!(
        "{:<20} {:<6} forward alone, inputs/s: {:<32} encode, inputs/s          of the best          samples/s",
        "encoder",
        "lanes",
        sizes.join(" ")
    );
    for f in &figures {
        let best = f.best_forward();
        // One row per lane layout (lanes x threads each); the encoding's on its layout's row.
        let mut layouts: Vec<(usize, usize)> = f
            .forward
            .iter()
            .map(|g| (g.lanes, g.threads_each))
            .collect();
        layouts.sort();
        layouts.dedup();
        for (row, &(lanes, threads)) in layouts.iter().enumerate() {
            let rates: Vec<String> = (f.forward.iter())
                .filter(|g| (g.lanes, g.threads_each) == (lanes, threads))
                .map(|g| format!("{:.1}", g.rate))
                .collect();
            let name = if row == 0 { f.encoder.as_str() } else { "" };
            let encode = if (lanes, threads) == (f.lanes, f.threads_each) {
                format!(
                    "{:>7.1} (b={}, {}x{})  {:>4.0}% (best b={}, {}x{})  {:>9.1}",
                    f.encode,
                    f.batch_size,
                    f.lanes,
                    f.threads_each,
                    100.0 * f.encode / best.rate,
                    best.batch_size,
                    best.lanes,
                    best.threads_each,
                    f.encode_samples,
                )
            } else {
                String::new()
            };
            println!(
                "{name:<20} {:<6} {:<57} {encode}",
                format!("{lanes}x{threads}"),
                rates.join(" "),
            );
        }
    }
    println!(
        "\n{:<20} {:>8}  helper thread: {:>7} {:>9}  model lanes, each: {:>7} {:>7} {:>7} {:>7}  {:>14}  {:>7}",
        "encode, seconds",
        "wall",
        "cutting",
        "preparing",
        "waiting",
        "inputs",
        "forward",
        "outputs",
        "prepare alone",
        "padding"
    );
    for f in &figures {
        let s = &f.stages;
        println!(
            "{:<20} {:>8.3}  {:>22.3} {:>9.3}  {:>26.3} {:>7.3} {:>7.3} {:>7.3}  {:>7.1} inputs/s  {:>7}",
            f.encoder,
            f.seconds,
            s.cutting,
            s.preparing,
            s.waiting,
            s.inputs,
            s.forward,
            s.outputs,
            f.prepare,
            f.padding
                .map_or("-".to_string(), |p| format!("{:.1}%", 100.0 * p)),
        );
    }
    for f in &figures {
        let Some(on_batches) = f.forward_on_batches else {
            continue;
        };
        println!(
            "{}: the forward alone on the encoding's batch shapes: {on_batches:.1} inputs/s \
             ({:.0}% of the best forward); encode runs at {:.0}% of it",
            f.encoder,
            100.0 * on_batches / f.best_forward().rate,
            100.0 * f.encode / on_batches,
        );
    }
    if let Some(path) = &args.json {
        let json: Vec<serde_json::Value> = (figures.iter())
            .map(|f| {
                let mut v = serde_json::to_value(f).expect("figures serialise");
                let best = f.best_forward();
                v["best_forward"] = best.rate.into();
                v["best_forward_batch_size"] = best.batch_size.into();
                v["best_forward_lanes"] = best.lanes.into();
                v["encode_of_best_forward"] = (f.encode / best.rate).into();
                if let Some(on_batches) = f.forward_on_batches {
                    v["encode_of_forward_on_batches"] = (f.encode / on_batches).into();
                }
                v
            })
            .collect();
        write_json(path, &json)?;
    }
    println!(
        "forward alone: random inputs of the package's shape (captions of the samples' mean \
         length, no padding), on one lane of every libtorch thread and on the encoding's lanes \
         (LxT: L forward passes side by side, T threads each); encode: the study's samples \
         decoded, preprocessed, tokenized, encoded and pooled, counted as the distinct inputs \
         the model ran (samples/s counts every sample: identical captions or images are \
         encoded once); its seconds: the helper thread cuts windows and prepares inputs while \
         the lanes run the last ones (each lane's stages, averaged over the lanes), so a large \
         `waiting` means the helper thread sets the pace (on several lanes it also counts a \
         lane waiting for the rows before its to be taken); prepare alone: the helper thread's \
         work without the model, on the threads it has on this device (all the cores beside a \
         GPU, one beside a CPU's forward); padding: the share of the token positions the \
         encoding computes that pads its sorted batches to their longest caption; the forward \
         alone on the encoding's batch shapes: random captions in the shapes of up to {} of \
         its model batches, spread over the set (padding and the spread of lengths included), \
         on its lanes, so that encode's share of it is the encoding's own overhead",
        crate::pipeline::SHAPES_TIMED
    );
    Ok(())
}

fn parse_fit_on(value: &str) -> Result<FitOn, String> {
    match value {
        "pooled" => Ok(FitOn::Pooled),
        "tokens" => Ok(FitOn::Tokens),
        other => Err(format!("{other:?}: use pooled or tokens")),
    }
}

/// Writes a benchmark's figures as pretty JSON, naming the file when it cannot.
fn write_json(path: &Path, figures: &[serde_json::Value]) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(figures).expect("JSON values serialise");
    std::fs::write(path, text + "\n")
        .with_context(|| format!("writing the figures to {}", path.display()))
}
