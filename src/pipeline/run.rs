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
use timely::worker::Worker;

use super::cluster::Connected;
use super::compare;
use super::encoding::WorkerModels;
use super::fit;
use super::outputs;
use super::pairs;
use super::plan::fit_passes::fit_passes;
use super::plan::Plan;
use super::run_folder::RunFolder;
use super::stage::{
    any_failed, any_says, barrier, run_to_completion, Failure, StageContext, StageCounters,
};
use super::study::Study;
use super::todo::Todo;
use super::units::{remove_made, Units};
use super::WorkerArgs;
use crate::ids::EncoderId;
use crate::run_record::StudyRecord;
use crate::sae::{CHECKPOINT_FILES, OPTIMIZER};

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
    // The processes connect first: the run id that shares the lock is one they agree on.
    let connected = workers.connect(path)?;
    // Whether every process got through its start is the workers' first agreement: a process
    // that failed (another run holds the folder, its plan is refused) still starts its workers,
    // which say so and end, so that no peer waits for it.
    let (begun, error) = match begin(study, path, workers, &connected.run_id) {
        Ok(begun) => (Some(begun), None),
        Err(error) => (None, Some(error)),
    };
    let started = begun.as_ref().map(|(plan, todo, _)| Started {
        plan: plan.clone(),
        bars: StageBars::new(plan, todo, workers),
    });
    let (todo, summary) = match begun {
        Some((_, todo, summary)) => (Some(todo), Some(summary)),
        None => (None, None),
    };
    let totals = run_workers(connected, started.clone(), todo, workers);
    if let Some(started) = &started {
        started.bars.finish();
    }
    let (Some(started), Some(mut summary)) = (started, summary) else {
        return Err(error.expect("a process that did not begin has its error"));
    };
    summary.add_totals(totals?, start);
    if workers.process == 0 {
        let path = started.plan.layout().last_run();
        crate::atomic::write(&path, &serde_json::to_vec_pretty(&summary)?)?;
    }
    Ok(summary)
}

/// What a process that got through its start gives its workers.
#[derive(Clone)]
struct Started {
    plan: Arc<Plan>,
    bars: StageBars,
}

/// Everything before the workers start: the folder claimed for `run_id` (and cleared of what
/// killed runs left), the plan, what is to do, and the SAEs to be fitted again removed.
fn begin(
    study: Study,
    path: &Path,
    workers: &WorkerArgs,
    run_id: &str,
) -> anyhow::Result<(Arc<Plan>, Todo, RunSummary)> {
    let begun_at = std::time::SystemTime::now();
    let (output, dataset) = Plan::folders(&study, path);
    // Held until the summary is dropped: one run at a time in a folder that is a run folder.
    let folder = RunFolder::claim(&output, &dataset, run_id, &command_line())?;
    if workers.process == 0 {
        // Temporaries older than this run are a killed run's: no other run writes here now.
        // The processes on other machines write theirs after connecting; their clocks may
        // be a little off this one's.
        // Only the run's own folders and files: a dataset or packages kept in the run folder
        // are another command's, which may be writing now.
        let margin = std::time::Duration::from_secs(if workers.processes == 1 { 0 } else { 60 });
        let before = begun_at - margin;
        let layout = crate::run_layout::RunLayout::new(&output);
        for folder in layout.own_folders() {
            crate::atomic::remove_stale_temporaries(&folder, before);
        }
        for file in layout.own_files() {
            crate::atomic::remove_stale_temporaries_of(&file, before);
        }
    }
    let plan = Arc::new(Plan::resolve(study, path)?);
    if workers.process == 0 {
        StudyRecord::of(&plan, path).write(&plan.output)?;
        plan.contents.save(&plan.layout().shard_contents())?;
    }
    let todo = Todo::of(&plan);
    todo.log(&plan, workers);
    let summary = todo.summary(&plan, folder);
    if workers.process == 0 {
        for &e in &todo.fit {
            remove_old_saes(&plan, e);
        }
    }
    Ok((plan, todo, summary))
}

/// This process's progress bars, one per stage, shared by its workers.
#[derive(Clone)]
struct StageBars {
    fit: indicatif::ProgressBar,
    compare: indicatif::ProgressBar,
}

impl StageBars {
    /// Bars sized to this process's share of the encoding: the shards its workers read.
    fn new(plan: &Plan, todo: &Todo, workers: &WorkerArgs) -> StageBars {
        let peers = workers.workers * workers.processes;
        let local = workers.process * workers.workers..(workers.process + 1) * workers.workers;
        let mine = || {
            plan.shard_ids()
                .filter(|s| local.contains(&(s.index() % peers)))
        };
        let fit_rows: u64 = mine()
            .map(|s| plan.shard(s).rows * todo.fitted(plan).count() as u64)
            .sum();
        let compare_rows: u64 = mine()
            .map(|s| plan.shard(s).rows * todo.compare.encoders_needing(s) as u64)
            .sum();
        StageBars {
            fit: crate::progress::bar(Some(fit_rows), "fit: encoding into the SAEs", "rows"),
            compare: crate::progress::bar(Some(compare_rows), "compare: encoding to codes", "rows"),
        }
    }

    fn finish(&self) {
        self.fit.finish_and_clear();
        self.compare.finish_and_clear();
    }
}

/// What the workers of this process add up to: rows per encoder and stage, seconds per stage
/// (the slowest worker's), and worker 0's outputs.
#[derive(Default)]
struct WorkerTotals {
    seconds: BTreeMap<String, f64>,
    rows: BTreeMap<String, (u64, u64)>,
    outputs: Vec<PathBuf>,
    matrix: String,
}

impl RunSummary {
    fn add_totals(&mut self, totals: WorkerTotals, start: Instant) {
        self.seconds = totals.seconds;
        self.seconds
            .insert("total".to_string(), start.elapsed().as_secs_f64());
        self.rows = totals.rows;
        self.outputs = totals.outputs;
        self.matrix = totals.matrix;
        self.peak_memory_mib = peak_memory_mib();
    }
}

/// Runs the stages on this process's workers and returns their totals, or the error of the
/// worker that failed (rather than of those that stopped for it).
fn run_workers(
    connected: Connected,
    started: Option<Started>,
    todo: Option<Todo>,
    workers: &WorkerArgs,
) -> anyhow::Result<WorkerTotals> {
    let todo = todo.map(Arc::new);
    let totals = Arc::new(Mutex::new(WorkerTotals::default()));
    let sink = totals.clone();
    let torch_threads = workers.torch_threads();
    tracing::debug!(torch_threads, "libtorch intra-op threads per worker");
    let guards = connected.execute(move |worker| {
        if any_says(worker, started.is_none()) {
            return Err(StoppedForAnother(worker.index()).into());
        }
        let (Some(started), Some(todo)) = (&started, &todo) else {
            unreachable!("a process that did not start has failed, and every worker saw it");
        };
        // Per thread in OpenMP: each worker sets its own, and its step threads copy it.
        crate::torch::set_thread_torch_threads(torch_threads);
        let (plan, bars) = (started.plan.clone(), started.bars.clone());
        let mut stages = WorkerStages::new(worker, plan, todo.clone(), bars);
        stages.fit(worker);
        stages.compare(worker);
        stages.outputs(worker);
        stages.end(worker, &sink)
    })?;
    let mut errors: Vec<anyhow::Error> = guards
        .join()
        .into_iter()
        .filter_map(|result| match result {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error),
            Err(panic) => Some(anyhow::anyhow!("a worker failed: {panic}")),
        })
        .collect();
    if !errors.is_empty() {
        let first = (errors.iter())
            .position(|e| !e.is::<StoppedForAnother>())
            .unwrap_or(0);
        return Err(errors.swap_remove(first));
    }
    let totals = std::mem::take(&mut *totals.lock().expect("not poisoned"));
    Ok(totals)
}

/// How a worker ends when another worker failed: its own work is not to blame.
#[derive(Debug, thiserror::Error)]
#[error(
    "worker {0} stopped: another worker failed (its error is above or in its process's output)"
)]
struct StoppedForAnother(usize);

/// One worker's run: the stages in order, each ended by a point where every worker agrees
/// whether any failed, so that all build the same next dataflow.
struct WorkerStages {
    plan: Arc<Plan>,
    todo: Arc<Todo>,
    models: Rc<RefCell<WorkerModels>>,
    failure: Failure,
    counters: Vec<(&'static str, Rc<RefCell<StageCounters>>)>,
    seconds: BTreeMap<String, f64>,
    bars: StageBars,
    outputs: Option<outputs::Outputs>,
    /// Whether any worker failed, as all agreed before the outputs.
    failed_somewhere: bool,
}

impl WorkerStages {
    fn new(worker: &Worker, plan: Arc<Plan>, todo: Arc<Todo>, bars: StageBars) -> WorkerStages {
        let models = Rc::new(RefCell::new(WorkerModels::new(
            plan.clone(),
            worker.index(),
        )));
        WorkerStages {
            plan,
            todo,
            models,
            failure: Failure::default(),
            counters: Vec::new(),
            seconds: BTreeMap::new(),
            bars,
            outputs: None,
            failed_somewhere: false,
        }
    }

    /// A stage's row counters, kept for the totals.
    fn counters(
        &mut self,
        stage: &'static str,
        bar: indicatif::ProgressBar,
    ) -> Rc<RefCell<StageCounters>> {
        let counters = Rc::new(RefCell::new(StageCounters::new(bar)));
        self.counters.push((stage, counters.clone()));
        counters
    }

    /// What a stage's operators share with this worker.
    fn context(&self, counters: Rc<RefCell<StageCounters>>) -> StageContext {
        StageContext {
            plan: self.plan.clone(),
            models: self.models.clone(),
            counters,
            failure: self.failure.clone(),
        }
    }

    /// Fit. No SAE is saved or recorded unless every worker read all its shards.
    fn fit(&mut self, worker: &mut Worker) {
        let start = Instant::now();
        let counters = self.counters("fit", self.bars.fit.clone());
        let passes = fit_passes(&self.plan, &self.todo.fit);
        if passes.len() > 1 && worker.index() == 0 {
            tracing::info!(
                "fit: {} passes over the dataset within [fit] memory_gib: {}",
                passes.len(),
                (passes.iter())
                    .map(|pass| {
                        let names: Vec<&str> = pass
                            .iter()
                            .map(|&e| self.plan.encoder(e).name.as_str())
                            .collect();
                        names.join(", ")
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        for pass in passes {
            let (plan, failure) = (&self.plan, &self.failure);
            // Encoders whose every SAE is imported have nothing to fit: only their record.
            if pass.iter().any(|&e| plan.encoder(e).fits_any()) {
                let base: Vec<_> = (pass.iter())
                    .map(|&e| plan.encoder(e).twin_of.unwrap_or(e))
                    .collect();
                self.models.borrow_mut().keep_only(&base);
                self.models.borrow_mut().begin_stage();
                let owned = fit::build(worker, &self.context(counters.clone()), &pass);
                run_to_completion(worker);
                if !any_failed(worker, failure) {
                    if let Err(error) = fit::finish(&owned, plan) {
                        failure.set(error);
                    }
                }
            }
            // Each pass's SAEs are recorded when it ends: a run stopped in a later pass
            // keeps them.
            if !any_failed(worker, failure) && worker.index() == 0 {
                if let Err(error) = record_saes(plan, &pass) {
                    failure.set(error);
                }
            }
            barrier(worker);
            plan.refresh_sae_ids();
            if any_failed(worker, failure) {
                break;
            }
        }
        self.seconds
            .insert("fit".to_string(), start.elapsed().as_secs_f64());
    }

    /// Compare: codes are recorded shard by shard; pairs are merged only when every worker
    /// summed all its shards.
    fn compare(&mut self, worker: &mut Worker) {
        let start = Instant::now();
        let counters = self.counters("compare", self.bars.compare.clone());
        if !any_failed(worker, &self.failure) {
            self.models.borrow_mut().begin_stage();
            let work = Arc::new(self.todo.compare.clone());
            let owned = compare::build(worker, &self.context(counters), &work);
            let (plan, failure) = (&self.plan, &self.failure);
            run_to_completion(worker);
            if !any_failed(worker, failure) {
                let (index, peers) = (worker.index(), worker.peers());
                if let Err(error) = pairs::finish(&owned, plan, &work, index, peers) {
                    failure.set(error);
                }
            }
            // Once every pair is finished: the saved sums within their disk budget.
            if !any_failed(worker, failure) && worker.index() == 0 {
                if let Err(error) = pairs::keep_sums_within_budget(plan) {
                    failure.set(error);
                }
            }
        }
        self.seconds
            .insert("compare".to_string(), start.elapsed().as_secs_f64());
    }

    /// The study-wide outputs, on worker 0 once every worker is done.
    fn outputs(&mut self, worker: &mut Worker) {
        let start = Instant::now();
        self.failed_somewhere = any_failed(worker, &self.failure);
        if worker.index() == 0 && !self.failed_somewhere {
            match outputs::write(&self.plan) {
                Ok(written) => self.outputs = Some(written),
                Err(error) => self.failure.set(error),
            }
        }
        self.seconds
            .insert("outputs".to_string(), start.elapsed().as_secs_f64());
    }

    /// Adds this worker's counts to the process's totals and says how the worker ended.
    fn end(self, worker: &Worker, totals: &Mutex<WorkerTotals>) -> anyhow::Result<()> {
        let mut total = totals.lock().expect("not poisoned");
        for (stage, counters) in &self.counters {
            for (&e, &(rows, skipped)) in &counters.borrow().rows {
                let name = format!("{} ({stage})", self.plan.encoder(e).name);
                let entry = total.rows.entry(name).or_default();
                entry.0 += rows;
                entry.1 += skipped;
            }
        }
        for (stage, s) in self.seconds {
            let entry = total.seconds.entry(stage).or_default();
            *entry = f64::max(*entry, s);
        }
        if let Some(written) = self.outputs {
            total.matrix = outputs::matrix(&self.plan, &written.wmppc);
            total.outputs = written.files;
        }
        drop(total);
        let index = worker.index();
        match self.failure.take() {
            Some(error) => Err(error),
            None if self.failed_somewhere => Err(StoppedForAnother(index).into()),
            None => Ok(()),
        }
    }
}

/// Records the SAE units of the fitted encoders, once every layer's SAE is on disk: the files
/// of the SAEs fitted, and which layers' SAEs are imported (their files are the user's; their
/// digests are part of the plan).
fn record_saes(plan: &Plan, fitted: &[EncoderId]) -> anyhow::Result<()> {
    let units = Units::new(&plan.output);
    for &e in fitted {
        let encoder = plan.encoder(e);
        let fitted_layers = || {
            encoder
                .layer_ids()
                .filter(|&l| encoder.imported(l).is_none())
        };
        for layer in fitted_layers() {
            let dir = plan.sae_dir(e, layer);
            anyhow::ensure!(
                dir.join("sae.json").is_file(),
                "the SAE of {} layer {} is missing from {} after the fit",
                encoder.name,
                encoder.layer_name(layer),
                dir.display()
            );
        }
        let (unit, fingerprint) = plan.sae_unit(e);
        let files: Vec<PathBuf> = fitted_layers()
            .flat_map(|layer| {
                let dir = plan.sae_dir(e, layer);
                (CHECKPOINT_FILES.iter())
                    .filter(|&&f| f != OPTIMIZER || plan.study.fit.keep_optimizer)
                    .map(move |f| dir.join(f))
            })
            .collect();
        let imported: BTreeMap<&str, String> = (encoder.layer_ids())
            .filter_map(|l| Some((encoder.layer_name(l), encoder.imported(l)?.label())))
            .collect();
        let mut detail =
            serde_json::json!({ "layers": encoder.layer_names(), "imported": imported });
        if encoder.fits_any() {
            detail["fitted_on"] = serde_json::to_value(plan.shard_identities())?;
        }
        units.record(&unit, &fingerprint, detail, &files)?;
    }
    Ok(())
}

/// Before encoder `e`'s SAEs are fitted anew: deletes the files its previous SAE record says
/// it made, each only if it lies inside `saes/<encoder>/`, then the layer folders this left
/// empty. Without a record nothing is deleted (the fit overwrites its own files).
fn remove_old_saes(plan: &Plan, e: EncoderId) {
    let units = Units::new(&plan.output);
    let (unit, _) = plan.sae_unit(e);
    let Some(record) = units.get(&unit) else {
        return;
    };
    let own = plan.layout().encoder_saes(&plan.encoder(e).name);
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
