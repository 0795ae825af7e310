//! SAE steps taken on threads of their own, so that an encoder's next batch is computed while
//! the SAEs learn from the last one.
//!
//! Each fit is bound to one thread (a lane) and its steps queue there in the order its
//! [`super::BatchSchedule`] drew them: the same batches in the same order as on the caller's
//! thread, so the SAE is the same. A lane's queue is bounded, so a producer faster than the
//! SAEs waits instead of piling batches up in memory.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_channel::{bounded, Sender};

use super::buffer::RowBatch;
use super::trainer::{SaeTrainer, TrainError};

/// Batches that may wait in a lane's queue: enough to cover the jitter between the producer
/// and the SAEs, few enough that the queue is small beside the mixing buffers.
pub const QUEUED_BATCHES_PER_THREAD: usize = 4;

/// The threads a worker's fits take their steps on. Dropping it (and the fits) ends them.
pub struct StepThreads {
    lanes: Vec<Sender<Job>>,
    next: Cell<usize>,
}

impl StepThreads {
    /// Starts `threads` step threads (at least one). Each runs libtorch with as many intra-op
    /// threads as the caller has, so reductions split the same way as on the caller's thread.
    pub fn start(threads: usize) -> std::io::Result<StepThreads> {
        let torch_threads = tch::get_num_threads();
        let mut lanes = Vec::new();
        for index in 0..threads.max(1) {
            let (jobs, queue) = bounded::<Job>(QUEUED_BATCHES_PER_THREAD);
            std::thread::Builder::new()
                .name(format!("sae-steps-{index}"))
                .spawn(move || {
                    crate::torch::set_thread_torch_threads(torch_threads as usize);
                    for job in queue {
                        job.run();
                    }
                })?;
            lanes.push(jobs);
        }
        Ok(StepThreads {
            lanes,
            next: Cell::new(0),
        })
    }

    /// Moves `trainer` to the next lane, round robin: its steps will be taken there.
    pub(crate) fn adopt(&self, trainer: SaeTrainer) -> QueuedTrainer {
        let index = self.next.get();
        self.next.set((index + 1) % self.lanes.len());
        QueuedTrainer {
            slot: Arc::new(Mutex::new(Slot {
                trainer,
                error: None,
                failed: false,
            })),
            lane: self.lanes[index].clone(),
        }
    }
}

/// A trainer living on a step thread, seen from the fit that feeds it.
pub(crate) struct QueuedTrainer {
    slot: Arc<Mutex<Slot>>,
    lane: Sender<Job>,
}

impl QueuedTrainer {
    /// Queues a step on `batch`. Reports the error of an earlier step, if one failed: the steps
    /// after a failed one are not taken.
    pub fn step(&self, batch: RowBatch) -> Result<(), TrainError> {
        if let Some(error) = lock(&self.slot).error.take() {
            return Err(error);
        }
        let job = Job::Step(self.slot.clone(), batch);
        self.lane.send(job).map_err(|_| stopped())
    }

    /// Waits for every queued step and takes the trainer back, or the error of a failed step.
    pub fn into_trainer(self) -> Result<SaeTrainer, TrainError> {
        let (done, wait) = bounded(1);
        self.lane.send(Job::Flush(done)).map_err(|_| stopped())?;
        wait.recv().map_err(|_| stopped())?;
        // Every step job of this fit has run and dropped its handle on the slot.
        let slot = Arc::try_unwrap(self.slot).map_err(|_| stopped())?;
        let slot = slot
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match (slot.error, slot.failed) {
            (Some(error), _) => Err(error),
            (None, true) => Err(TrainError::Torch("a step failed (reported then)".into())),
            (None, false) => Ok(slot.trainer),
        }
    }
}

struct Slot {
    trainer: SaeTrainer,
    /// A failed step's error until it is reported.
    error: Option<TrainError>,
    /// Whether a step failed: no step is taken after it.
    failed: bool,
}

enum Job {
    Step(Arc<Mutex<Slot>>, RowBatch),
    /// Answers once every job queued before it has run.
    Flush(Sender<()>),
}

impl Job {
    fn run(self) {
        match self {
            Job::Step(slot, batch) => {
                let mut slot = lock(&slot);
                if slot.failed {
                    return;
                }
                // libtorch reports its failures (out of memory on a device...) as panics: they
                // become the fit's error instead of ending the thread silently.
                let result = catch_unwind(AssertUnwindSafe(|| slot.trainer.train_batch(&batch)));
                slot.error = match result {
                    Ok(Ok(_)) => return,
                    Ok(Err(error)) => Some(error),
                    Err(panic) => Some(TrainError::Torch(panic_message(&panic))),
                };
                slot.failed = true;
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn stopped() -> TrainError {
    TrainError::Torch("the SAE step thread stopped".to_string())
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a step panicked".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::{SaeConfig, SaeSource};
    use tch::Device;

    fn trainer() -> SaeTrainer {
        let config = SaeConfig {
            k: 2,
            expansion: 2,
            batch_size: 8,
            steps: 6,
            ..SaeConfig::default()
        };
        SaeTrainer::new(&config, 4, Device::Cpu, SaeSource::default())
    }

    fn batch(step: usize) -> RowBatch {
        RowBatch {
            values: (0..32)
                .map(|i| ((i + 7 * step) as f32 * 0.31).sin())
                .collect(),
            samples: (0..8).collect(),
        }
    }

    #[test]
    fn steps_on_a_thread_give_the_sae_of_steps_taken_here() {
        let mut here = trainer();
        for s in 0..6 {
            here.train_batch(&batch(s)).unwrap();
        }
        let threads = StepThreads::start(2).unwrap();
        let away = threads.adopt(trainer());
        for s in 0..6 {
            away.step(batch(s)).unwrap();
        }
        let back = away.into_trainer().unwrap();
        assert_eq!(back.steps_done(), 6);
        for (a, b) in here.sae.parameters().iter().zip(back.sae.parameters()) {
            assert!(a.equal(b), "parameters differ");
        }
    }

    #[test]
    fn a_failed_step_is_reported_and_no_later_step_is_taken() {
        let threads = StepThreads::start(1).unwrap();
        let away = threads.adopt(trainer());
        away.step(batch(0)).unwrap();
        let mut bad = batch(1);
        bad.values[5] = f32::NAN;
        away.step(bad).unwrap();
        // The failure surfaces on a later step or at the end, never as a smaller result.
        let later = (2..6).try_for_each(|s| away.step(batch(s)));
        let end = away.into_trainer();
        let error = later
            .err()
            .or(end.err())
            .expect("the NaN batch fails the fit");
        assert!(matches!(error, TrainError::NotFinite { row: 1 }), "{error}");
    }
}
