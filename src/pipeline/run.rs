//! `saeshare run STUDY.toml`: the whole study as timely dataflows, one after the other in every
//! worker of every process: fit (the SAEs that are missing), compare (the codes and pair sums
//! that are missing), then the study-wide outputs on worker 0.
//!
//! Every worker computes the same plan and the same work from the manifest before starting,
//! so they build the same dataflows without talking. A barrier ends each stage: what one
//! worker wrote (an SAE, a codes file) is on disk before any worker reads it. Processes share
//! the output folder (on several machines, a network file system).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use super::compare::{self, CompareWork};
use super::encoding::WorkerModels;
use super::fit;
use super::outputs;
use super::pairs;
use super::plan::Plan;
use super::run_folder::RunFolder;
use super::stage::{any_failed, barrier, run_to_completion, Failure, StageCounters};
use super::study::Study;
use super::units::{remove_made, Units};
use super::WorkerArgs;
use crate::run_record::StudyRecord;
use crate::sae::CHECKPOINT_FILES;

/// What a run did (this process's share of the rows; the units of the whole run).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunSummary {
    pub study: String,
    pub output: PathBuf,
    /// Encoders whose SAEs were fitted.
    pub saes_fitted: Vec<String>,
    /// (encoder, shard) codes units run.
    pub codes_units: usize,
    /// Pairs whose sums or tables were updated.
    pub pairs_updated: Vec<String>,
    /// Seconds per stage.
    pub seconds: BTreeMap<String, f64>,
    /// Rows encoded and skipped per encoder, per stage, by this process's workers.
    pub rows: BTreeMap<String, (u64, u64)>,
    pub peak_memory_mib: Option<f64>,
    pub outputs: Vec<PathBuf>,
    /// The last-layer wMPPC matrix as printed.
    pub matrix: String,
    /// The run folder's lock, held for as long as the summary lives: the caller writes the
    /// report into the folder before letting another run in.
    #[serde(skip)]
    pub folder: Option<Arc<RunFolder>>,
}

/// Runs the study in `path` with the workers and processes of `workers`.
pub fn run_study(path: &Path, workers: &WorkerArgs) -> anyhow::Result<RunSummary> {
    let start = Instant::now();
    workers.validate()?;
    let study = Study::read(path)?;
    let (output, dataset) = Plan::folders(&study, path);
    // Held until the summary is dropped: one run at a time in a folder that is a run folder.
    let folder = RunFolder::claim(&output, &dataset, &workers.run_id(path), &command_line())?;
    let plan = Arc::new(Plan::resolve(study, path)?);
    if workers.process == 0 {
        StudyRecord::of(&plan, path).write(&plan.output)?;
    }
    let units = Units::new(&plan.output);
    let fit_todo: Vec<usize> = (0..plan.encoders.len())
        .filter(|&e| {
            let (unit, fingerprint) = plan.sae_unit(e);
            !units.is_done(&unit, &fingerprint)
        })
        .collect();
    let mut work = CompareWork::of(&plan, &units);
    // New SAEs make new codes and new sums, whatever the manifest says of older ones.
    for &e in &fit_todo {
        work.refit(&plan, e);
    }
    let (codes_units, _) = work.counts();
    let mut summary = RunSummary {
        study: plan.study.name.clone(),
        output: plan.output.clone(),
        saes_fitted: fit_todo
            .iter()
            .map(|&e| plan.encoders[e].name.clone())
            .collect(),
        codes_units,
        pairs_updated: (0..plan.pairs.len())
            .filter(|&p| work.tables[p])
            .map(|p| plan.pairs[p].key.clone())
            .collect(),
        folder: Some(Arc::new(folder)),
        ..RunSummary::default()
    };
    let nothing_to_do = fit_todo.is_empty() && codes_units == 0 && summary.pairs_updated.is_empty();
    if nothing_to_do && plan.output.join("wmppc.parquet").exists() {
        tracing::info!(
            "study {}: every unit is done and the outputs are in {}; nothing to do",
            plan.study.name,
            plan.output.display()
        );
    }
    tracing::info!(
        "study {}: {} SAE set(s) to fit, {} codes unit(s), {} pair(s) to update, on {} worker(s) x {} process(es)",
        plan.study.name,
        fit_todo.len(),
        codes_units,
        summary.pairs_updated.len(),
        workers.workers,
        workers.processes
    );
    if workers.process == 0 {
        for &e in &fit_todo {
            remove_old_saes(&plan, &units, e);
        }
    }

    // This process's share of the encoding, for its bars: the shards its workers read.
    let peers = workers.workers * workers.processes;
    let local = workers.process * workers.workers..(workers.process + 1) * workers.workers;
    let mine = |s: usize| local.contains(&(s % peers));
    let shards = plan.dataset.shards();
    let fit_rows: u64 = shards
        .iter()
        .filter(|s| mine(s.index))
        .map(|s| s.rows * fit_todo.len() as u64)
        .sum();
    let compare_rows: u64 = shards
        .iter()
        .filter(|s| mine(s.index))
        .map(|s| s.rows * work.codes.iter().filter(|row| row[s.index]).count() as u64)
        .sum();
    let fit_bar = crate::progress::bar(Some(fit_rows), "fit: encoding into the SAEs", "rows");
    let compare_bar =
        crate::progress::bar(Some(compare_rows), "compare: encoding to codes", "rows");
    let bars = (fit_bar.clone(), compare_bar.clone());

    let work = Arc::new(work);
    let shared: Arc<Mutex<RunSummary>> = Arc::new(Mutex::new(RunSummary::default()));
    let sink = shared.clone();
    let plan_for_workers = plan.clone();
    let guards = timely::execute(workers.timely_config()?, move |worker| {
        let plan = plan_for_workers.clone();
        let index = worker.index();
        let peers = worker.peers();
        let models = Rc::new(RefCell::new(WorkerModels::new(plan.clone(), index)));
        models.borrow_mut().begin_stage();
        let failure = Failure::default();
        let mut seconds = BTreeMap::new();

        // Fit. No SAE is saved or recorded unless every worker read all its shards.
        let fit_start = Instant::now();
        let fit_counters = Rc::new(RefCell::new(StageCounters::new(bars.0.clone())));
        if !fit_todo.is_empty() {
            let owned = fit::build(
                worker,
                &plan,
                &fit_todo,
                models.clone(),
                fit_counters.clone(),
                failure.clone(),
            );
            run_to_completion(worker);
            if !any_failed(worker, &failure) {
                if let Err(error) = fit::finish(&owned, &plan) {
                    failure.set(error);
                }
            }
            drop(owned);
            if !any_failed(worker, &failure) && index == 0 {
                if let Err(error) = record_saes(&plan, &fit_todo) {
                    failure.set(error);
                }
            }
            barrier(worker);
            plan.refresh_sae_ids();
        }
        seconds.insert("fit".to_string(), fit_start.elapsed().as_secs_f64());

        // Compare: codes are recorded shard by shard; pairs are merged only when every worker
        // summed all its shards.
        let compare_start = Instant::now();
        let compare_counters = Rc::new(RefCell::new(StageCounters::new(bars.1.clone())));
        if !any_failed(worker, &failure) {
            models.borrow_mut().begin_stage();
            let owned = compare::build(
                worker,
                &plan,
                &work,
                models.clone(),
                compare_counters.clone(),
                failure.clone(),
            );
            run_to_completion(worker);
            if !any_failed(worker, &failure) {
                if let Err(error) = pairs::finish(&owned, &plan, &work, index, peers) {
                    failure.set(error);
                }
            }
        }
        seconds.insert("compare".to_string(), compare_start.elapsed().as_secs_f64());

        // Outputs.
        let outputs_start = Instant::now();
        let mut mine = RunSummary::default();
        let failed_somewhere = any_failed(worker, &failure);
        if index == 0 && !failed_somewhere {
            match outputs::write(&plan) {
                Ok(written) => {
                    mine.matrix = outputs::matrix(&plan, &written.wmppc);
                    mine.outputs = written.files;
                }
                Err(error) => failure.set(error),
            }
        }
        seconds.insert("outputs".to_string(), outputs_start.elapsed().as_secs_f64());

        let mut total = sink.lock().expect("not poisoned");
        for (stage, counters) in [("fit", &fit_counters), ("compare", &compare_counters)] {
            for (&e, &(rows, skipped)) in &counters.borrow().rows {
                let entry = total
                    .rows
                    .entry(format!("{} ({stage})", plan.encoders[e].name))
                    .or_default();
                entry.0 += rows;
                entry.1 += skipped;
            }
        }
        for (stage, s) in seconds {
            let entry = total.seconds.entry(stage).or_default();
            *entry = f64::max(*entry, s);
        }
        if index == 0 {
            total.matrix = mine.matrix;
            total.outputs = mine.outputs;
        }
        drop(total);
        match failure.take() {
            Some(error) => Err(format!("{error:#}")),
            None if failed_somewhere => Err(format!(
                "worker {index} stopped: another worker failed (its error is above or in its process's output)"
            )),
            None => Ok(()),
        }
    })
    .map_err(|e| anyhow::anyhow!("timely could not start its workers: {e}"))?;
    fit_bar.finish_and_clear();
    compare_bar.finish_and_clear();
    // The error of the worker that failed, rather than of those that stopped for it.
    let errors: Vec<String> = guards
        .join()
        .into_iter()
        .filter_map(|result| match result {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error),
            Err(panic) => Some(format!("a worker failed: {panic}")),
        })
        .collect();
    if let Some(error) = errors
        .iter()
        .find(|e| !e.contains("another worker failed"))
        .or(errors.first())
    {
        anyhow::bail!("{error}");
    }
    let shared = shared.lock().expect("not poisoned").clone();
    summary.seconds = shared.seconds;
    summary
        .seconds
        .insert("total".to_string(), start.elapsed().as_secs_f64());
    summary.rows = shared.rows;
    summary.outputs = shared.outputs;
    summary.matrix = shared.matrix;
    summary.peak_memory_mib = peak_memory_mib();
    if workers.process == 0 {
        let path = plan.layout().last_run();
        crate::atomic::write(&path, &serde_json::to_vec_pretty(&summary)?)?;
    }
    Ok(summary)
}

/// Records the SAE units of the fitted encoders, once every layer's SAE is on disk.
fn record_saes(plan: &Plan, fitted: &[usize]) -> anyhow::Result<()> {
    let units = Units::new(&plan.output);
    for &e in fitted {
        for layer in plan.encoders[e].layer_names() {
            let dir = plan.sae_dir(e, &layer);
            anyhow::ensure!(
                dir.join("sae.json").is_file(),
                "the SAE of {} layer {layer} is missing from {} after the fit",
                plan.encoders[e].name,
                dir.display()
            );
        }
        let (unit, fingerprint) = plan.sae_unit(e);
        let files: Vec<PathBuf> = plan.encoders[e]
            .layer_names()
            .iter()
            .flat_map(|layer| {
                let dir = plan.sae_dir(e, layer);
                CHECKPOINT_FILES.iter().map(move |f| dir.join(f))
            })
            .collect();
        units.record(
            &unit,
            &fingerprint,
            serde_json::json!({ "layers": plan.encoders[e].layer_names() }),
            &files,
        )?;
    }
    Ok(())
}

/// Before encoder `e`'s SAEs are fitted anew: deletes the files its previous SAE record says
/// it made, each only if it lies inside `saes/<encoder>/`, then the layer folders this left
/// empty. Without a record nothing is deleted (the fit overwrites its own files).
fn remove_old_saes(plan: &Plan, units: &Units, e: usize) {
    let (unit, _) = plan.sae_unit(e);
    let Some(record) = units.get(&unit) else {
        return;
    };
    let own = plan.layout().encoder_saes(&plan.encoders[e].name);
    let own = own.strip_prefix(&plan.output).expect("inside the output");
    units.forget(&unit);
    remove_made(&plan.output, own, &record.files);
}

/// This process's command line, for whoever finds the run folder locked.
fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// The process's peak resident memory, from /proc (Linux).
pub fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
