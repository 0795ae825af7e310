//! `saeshare study plan STUDY`: what a study will cost, before it runs.

use std::path::PathBuf;

use clap::Args;

use crate::pipeline::{calibrate, cost, stand_ins, Cost, Plan, Rates, Study};

/// `saeshare study plan STUDY [--calibrate] [--rates FILE] [--json FILE]`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The study file.
    pub file: PathBuf,
    /// Measure the rates of the study's encoders not measured yet on this machine (a short
    /// fit of each on the study's first samples, as `bench fit`), and keep them in
    /// $SAESHARE_CACHE/rates/ for later plans.
    #[arg(long)]
    pub calibrate: bool,
    /// Measure every encoder again, even those with kept rates.
    #[arg(long, requires = "calibrate")]
    pub again: bool,
    /// Rates of another machine (a file that `--calibrate` wrote there) instead of this one's.
    #[arg(long, conflicts_with = "calibrate")]
    pub rates: Option<PathBuf>,
    /// Plan the study over this many samples instead of its dataset's rows (the paper's
    /// 118,287 COCO images, say), with the dataset's shard size; rates still come from the
    /// dataset's own samples.
    #[arg(long)]
    pub assume_samples: Option<u64>,
    /// Plan with stand-ins for what is missing: a package of random weights at an encoder's
    /// `shape` for its package, the embedded emoji dataset at --assume-samples for the dataset,
    /// this machine's CPU for a GPU it lacks, unless --rates gives a machine's that has it
    /// (each said).
    #[arg(long)]
    pub stand_ins: bool,
    /// Also write the plan to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn plan(args: PlanArgs) -> anyhow::Result<()> {
    let mut study = Study::read(&args.file)?;
    let rates_file = args.rates.clone().unwrap_or_else(Rates::cache_file);
    let mut rates: Rates = match std::fs::read(&rates_file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a rates file ({e})", rates_file.display()))?,
        Err(_) if args.rates.is_none() => Rates::default(),
        Err(e) => anyhow::bail!("{}: {e}", rates_file.display()),
    };
    let stand_ins = if args.stand_ins {
        let elsewhere = args.rates.is_some().then_some(rates.machine.as_str());
        stand_ins::stand_in(&mut study, &args.file, args.assume_samples, elsewhere)?
    } else {
        Vec::new()
    };
    let checked = Plan::check(study.clone(), &args.file)?;
    let Some(plan) = checked.plan else {
        let missing: Vec<String> = (checked.to_make.iter().map(|(what, _)| what.clone()))
            .chain(checked.to_provide.iter().cloned())
            .collect();
        anyhow::bail!(
            "{}: a plan needs the dataset and the packages, and these are missing: {}; \
             `saeshare study check` says how they are made, and --stand-ins plans without them \
             (packages of random weights at each encoder's `shape`)",
            args.file.display(),
            missing.join("; ")
        );
    };
    if args.calibrate {
        calibrate::calibrate(&args.file, &study, &plan, &mut rates, args.again)?;
        std::fs::create_dir_all(rates_file.parent().expect("in a folder"))?;
        crate::atomic::write(&rates_file, &serde_json::to_vec_pretty(&rates)?)?;
        println!("rates of this machine kept in {}", rates_file.display());
    }
    let cost = cost::estimate(&plan, &rates, args.assume_samples);
    for line in &stand_ins {
        println!("stand-in: {line}");
    }
    print(&plan, &cost, &rates);
    if let Some(path) = &args.json {
        crate::atomic::write(path, &serde_json::to_vec_pretty(&cost)?)?;
    }
    Ok(())
}

fn print(plan: &Plan, cost: &Cost, rates: &Rates) {
    println!(
        "study {}: {} samples, {} encoder(s), {} pair(s)",
        plan.study.name,
        cost.samples,
        plan.named_encoders().count(),
        plan.pairs.len()
    );
    if cost.uncalibrated.is_empty() {
        println!("rates measured on {}", rates.machine);
    } else {
        println!(
            "no rates for {} on this machine: no time for them, and their token rows bounded \
             at best (run with --calibrate)",
            cost.uncalibrated.join(", ")
        );
    }
    println!(
        "fit:\n  {:<28} {:>6} {:>12} {:>7} {:>7}",
        "encoder", "layers", "rows a pass", "steps", "passes"
    );
    for fit in &cost.fits {
        let or_unknown = |v: Option<String>| v.unwrap_or_else(|| "?".into());
        println!(
            "  {:<28} {:>6} {:>12} {:>7} {:>7}",
            fit.encoder,
            fit.layers,
            or_unknown(fit.rows_per_pass.map(|r| r.to_string())),
            fit.steps,
            or_unknown(fit.passes.map(|p| format!("{p:.1}"))),
        );
    }
    for fit in cost.fits.iter().filter(|f| f.replay_short) {
        println!(
            "  warning: {} needs {:.1} passes and a pass's rows do not fit [fit] \
             replay_memory_mib: its fit would stop after the first pass; raise \
             replay_memory_mib, lower [sae] steps, or set [fit] max_passes = 1",
            fit.encoder,
            fit.passes.unwrap_or(0.0)
        );
    }
    println!(
        "stages:\n  {:<8} {:>16} {:>14} {:>12} {:>12}",
        "stage", "forward samples", "SAE rows", "layer pairs", "time"
    );
    for stage in &cost.stages {
        println!(
            "  {:<8} {:>16} {:>14} {:>12} {:>12}",
            stage.stage,
            stage.forward_samples,
            stage.sae_rows,
            stage.layer_pairs,
            stage.seconds.map_or("?".into(), duration)
        );
    }
    let disk: Vec<String> = (cost.disk.iter())
        .map(|(folder, bytes)| format!("{folder} {}", size(*bytes)))
        .collect();
    println!(
        "disk: {} (in all {})",
        disk.join(", "),
        size(cost.disk_bytes())
    );
    println!(
        "peak memory of a process: {} (in the {} stage{})",
        size(cost.peak_memory.0),
        cost.peak_memory.1,
        match cost.fit_passes {
            n if n > 1 => format!("; the fit in {n} passes within [fit] memory_gib"),
            _ => String::new(),
        }
    );
    if let Some(seconds) = cost.seconds() {
        println!("time: {} in all", duration(seconds));
    }
}

fn size(bytes: u64) -> String {
    let b = bytes as f64;
    match b {
        b if b >= 1e12 => format!("{:.1} TB", b / 1e12),
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.0} MB", b / 1e6),
        b => format!("{:.0} kB", b / 1e3),
    }
}

fn duration(seconds: f64) -> String {
    match seconds {
        s if s >= 86_400.0 => format!("{:.1} days", s / 86_400.0),
        s if s >= 3_600.0 => format!("{:.1} h", s / 3_600.0),
        s if s >= 60.0 => format!("{:.1} min", s / 60.0),
        s => format!("{s:.0} s"),
    }
}
