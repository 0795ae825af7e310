//! What every stage of a run shares: the worker's first error, row counters, and running a
//! dataflow to completion with a barrier after it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::worker::Worker;

use std::sync::Arc;

use timely::progress::frontier::MutableAntichain;

use crate::dataset::{Projection, SampleBatch};
use crate::encoder::EncodedRows;
use crate::ids::EncoderId;
use crate::pipeline::encoding::WorkerModels;
use crate::pipeline::plan::{Plan, PlannedEncoder};
use crate::pipeline::source::SourceErrors;

/// The first error of a worker's stage. Operators record it and stop working, but keep
/// consuming their inputs, so the dataflow still drains and every worker of every process
/// ends; the worker then reports it.
#[derive(Clone, Default)]
pub struct Failure {
    error: Rc<RefCell<Option<anyhow::Error>>>,
    sources: Rc<RefCell<Vec<SourceErrors>>>,
}

impl Failure {
    /// Records `error` unless an earlier one is recorded.
    pub fn set(&self, error: anyhow::Error) {
        let mut slot = self.error.borrow_mut();
        if slot.is_none() {
            tracing::error!("{error:#}");
            *slot = Some(error);
        }
    }

    /// Whether an error was recorded, or stopped a watched source (a shard that could not be
    /// read: nothing made from the other shards may be recorded as complete).
    pub fn failed(&self) -> bool {
        self.error.borrow().is_some() || self.sources.borrow().iter().any(SourceErrors::is_set)
    }

    /// Also reports the error that stopped a shard source.
    pub fn watch_source(&self, errors: SourceErrors) {
        self.sources.borrow_mut().push(errors);
    }

    /// The recorded error, if any.
    pub fn take(&self) -> Option<anyhow::Error> {
        for source in self.sources.borrow().iter() {
            if let Some(error) = source.take() {
                self.set(error.into());
            }
        }
        self.error.borrow_mut().take()
    }
}

/// Rows each encoder saw in this worker, `(encoded, skipped)`, shown on the stage's bar (one
/// bar per process, shared by its workers).
#[derive(Clone, Debug)]
pub struct StageCounters {
    pub rows: BTreeMap<EncoderId, (u64, u64)>,
    bar: indicatif::ProgressBar,
}

impl StageCounters {
    pub fn new(bar: indicatif::ProgressBar) -> StageCounters {
        StageCounters {
            rows: BTreeMap::new(),
            bar,
        }
    }

    pub fn add(&mut self, encoder: EncoderId, encoded: usize, skipped: u64) {
        let entry = self.rows.entry(encoder).or_default();
        entry.0 += encoded as u64;
        entry.1 += skipped;
        self.bar.inc(encoded as u64 + skipped);
    }
}

/// What the encoding operator of a stage shares with its worker: the plan, the worker's models,
/// the stage's row counters and its first error.
#[derive(Clone)]
pub struct StageContext {
    pub plan: Arc<Plan>,
    pub models: Rc<RefCell<WorkerModels>>,
    pub counters: Rc<RefCell<StageCounters>>,
    pub failure: Failure,
}

impl StageContext {
    /// Encoder `e`'s pooled rows for `batch`, counted on the stage's bar; `None` when the
    /// activation cache served them with an earlier batch.
    pub fn pooled(&self, e: EncoderId, batch: &SampleBatch) -> anyhow::Result<Option<EncodedRows>> {
        let pooled = self.models.borrow_mut().pooled_for(e, batch)?;
        if let Some(pooled) = &pooled {
            (self.counters.borrow_mut()).add(e, pooled.sample_ids.len(), pooled.skipped);
        }
        Ok(pooled)
    }

    /// Counts `rows` on the stage's bar, once for each of `encoders` fed them.
    pub fn count(&self, encoders: &[EncoderId], rows: &EncodedRows) {
        let mut counters = self.counters.borrow_mut();
        for &e in encoders {
            counters.add(e, rows.sample_ids.len(), rows.skipped);
        }
    }
}

/// The shards (timestamps) among `keys` that the frontier has passed: every worker is done
/// with them.
pub fn passed<V>(keys: &BTreeMap<u64, V>, frontier: &MutableAntichain<u64>) -> Vec<u64> {
    keys.keys()
        .copied()
        .filter(|shard| !frontier.less_equal(shard))
        .collect()
}

/// The columns a stage reads for `encoders`: the images only when one of them needs them.
pub fn projection_for<'a>(encoders: impl IntoIterator<Item = &'a PlannedEncoder>) -> Projection {
    if encoders.into_iter().any(PlannedEncoder::is_image) {
        Projection::ALL
    } else {
        Projection::TEXT
    }
}

/// Whether any worker of any process has failed so far. Every worker calls it at the same
/// point of the run and gets the same answer, so all of them take the same next step (timely
/// needs every worker to build the same dataflows); it is also a barrier.
pub fn any_failed(worker: &mut Worker, failure: &Failure) -> bool {
    any_says(worker, failure.failed())
}

/// Whether `mine` is true in any worker of any process: [`any_failed`] for what is no
/// [`Failure`] (a process that could not start the run).
pub fn any_says(worker: &mut Worker, mine: bool) -> bool {
    use timely::dataflow::operators::vec::Broadcast;
    use timely::dataflow::operators::{Inspect, ToStream};
    let seen = Rc::new(std::cell::Cell::new(false));
    let sink = seen.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        std::iter::once(mine)
            .to_stream(scope)
            .container::<Vec<bool>>()
            .broadcast()
            .inspect(move |failed| {
                if *failed {
                    sink.set(true);
                }
            });
    });
    run_to_completion(worker);
    seen.get()
}

/// Steps the worker until every dataflow it built has completed.
pub fn run_to_completion(worker: &mut Worker) {
    while worker.step_or_park(None) {}
}

/// Returns once every worker of every process has called it: what a stage wrote to disk is
/// then there for the next stage's readers. A dataflow of one source per worker that holds
/// its capability until first scheduled: it completes only when every worker's has.
pub fn barrier(worker: &mut Worker) {
    worker.dataflow::<u64, _, _>(|scope| {
        source::<_, CapacityContainerBuilder<Vec<()>>, _, _>(
            scope,
            "Barrier",
            |capability, _info| {
                // Dropped at the first scheduling: this worker has reached the barrier.
                let mut held = Some(capability);
                move |_output| {
                    held.take();
                }
            },
        );
    });
    run_to_completion(worker);
}
