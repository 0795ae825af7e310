//! Model lanes: on a CPU, an encoder's forward passes run side by side, each lane a thread with
//! its share of the worker's libtorch threads, and their results go back in order.
//!
//! Why not one forward on every thread: libtorch's CPU kernels are OpenMP parallel regions, and
//! each ends at a barrier that waits for its slowest thread. Whenever the helper thread (decoding
//! images, tokenizing captions) takes a core, one thread of the team is descheduled and the whole
//! region waits for it; and the small batches a CPU runs best (activations in cache) scale
//! poorly over threads anyway. Lanes of one thread each have no barrier at all: on 2 cores, two
//! of them encoded the demo's CNNs 1.04-1.12x faster than one lane of two threads, at batches
//! of 32 (`saeshare bench encoders`, BENCHMARKS.md). Text encoders gained nothing, and get one
//! lane unless asked ([`super::Encoder::lanes`]).
//!
//! Why only lanes of one thread by default (two lanes on 2 or 3 threads, one lane beyond):
//! OpenMP (libgomp) stops spin-waiting at its barriers once it manages more threads than there
//! are cores, and lanes of several threads each, beside the worker's own team, are more; a
//! forward of two threads on a second thread then ran slower than on one. A study's `lanes`
//! sets other layouts, and `bench encoders` measures them.
//!
//! Every lane runs the same number of threads, chosen from the worker's, so a batch is computed
//! alike whichever lane runs it: the activations do not depend on the lanes' timing.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use tch::Device;

/// Jobs in flight a lane, at most: queued, running, or done and waiting for the jobs before them.
/// The slack lets one lane run ahead while another, slowed by the helper thread, finishes an
/// earlier job.
const PER_LANE: usize = 4;

/// How an encoder's forward passes share the calling thread's libtorch threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lanes {
    /// Forward passes side by side.
    pub count: usize,
    /// libtorch threads of each.
    pub threads_each: usize,
    /// The calling thread's, given back to libtorch's default when the lanes end.
    caller_threads: usize,
}

impl Lanes {
    /// `requested` lanes (`None`: two on a CPU where the calling thread has two or three
    /// libtorch threads, so that each has one; else one) sharing the calling thread's threads;
    /// one on a GPU.
    pub fn new(device: Device, requested: Option<usize>) -> Lanes {
        Lanes::of(device, requested, tch::get_num_threads().max(1) as usize)
    }

    fn of(device: Device, requested: Option<usize>, threads: usize) -> Lanes {
        let count = match (device, requested) {
            (Device::Cpu, Some(n)) => n.clamp(1, threads),
            (Device::Cpu, None) if (2..=3).contains(&threads) => 2,
            _ => 1,
        };
        Lanes {
            count,
            threads_each: (threads / count).max(1),
            caller_threads: threads,
        }
    }

    /// Runs each of `jobs` through `work` and hands `sink` the results in the jobs' order, on the
    /// lanes (a single lane on the calling thread, several on threads of their own, each taking
    /// the next job when it is free). Each lane counts into its own `S`; they come back in lane
    /// order, each with the seconds its lane waited for a job. Stops at the first error in the
    /// jobs' order, of the jobs, of `work` (a panic included) or of `sink`; the results before it
    /// reach `sink`.
    pub fn run<J: Send, R: Send, S: Default + Send>(
        &self,
        jobs: impl Iterator<Item = anyhow::Result<J>>,
        work: impl Fn(J, &mut S) -> anyhow::Result<R> + Sync,
        mut sink: impl FnMut(R) -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<(S, f64)>> {
        if self.count == 1 {
            let (mut state, mut idle) = (S::default(), Idle::start());
            for job in jobs {
                idle.stop();
                sink(work(job?, &mut state)?)?;
                idle.restart();
            }
            idle.stop();
            return Ok(vec![(state, idle.seconds)]);
        }
        let work = &work;
        let _restore = RestoreThreads(self.caller_threads);
        std::thread::scope(|scope| {
            // One queue that every lane takes from when it is free, so a lane the helper thread
            // slowed takes fewer jobs instead of holding the others up.
            let (job_tx, job_rx) = crossbeam_channel::bounded::<(usize, J)>(self.count);
            let (done_tx, done_rx) = crossbeam_channel::unbounded::<(usize, anyhow::Result<R>)>();
            let handles: Vec<_> = (0..self.count)
                .map(|_| {
                    let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
                    let threads = self.threads_each;
                    scope.spawn(move || {
                        // libtorch's thread count is the calling thread's own (OpenMP's).
                        crate::torch::set_thread_torch_threads(threads);
                        let (mut state, mut idle) = (S::default(), Idle::start());
                        for (seq, job) in job_rx {
                            idle.stop();
                            // A panic is this job's error, so that the results before it are
                            // still taken and the dispatcher never waits for a result that
                            // will not come.
                            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                                work(job, &mut state)
                            }))
                            .unwrap_or_else(|panic| {
                                Err(anyhow::anyhow!(
                                    "a model lane failed: {}",
                                    panic_message(&*panic)
                                ))
                            });
                            // After a failure too: the dispatcher stops at the first in the
                            // jobs' order, and hangs up.
                            if done_tx.send((seq, result)).is_err() {
                                break;
                            }
                            idle.restart();
                        }
                        idle.stop();
                        (state, idle.seconds)
                    })
                })
                .collect();
            drop(done_tx);
            let outcome = self.dispatch(jobs, &job_tx, done_rx, &mut sink);
            // Jobs still queued after an error are not started; then hanging up ends the lanes
            // (a busy one after its job, its result unread).
            job_rx.try_iter().for_each(drop);
            drop((job_tx, job_rx));
            let mut states = Vec::with_capacity(self.count);
            for handle in handles {
                match handle.join() {
                    Ok(state) => states.push(state),
                    Err(panic) => anyhow::bail!("a model lane failed: {}", panic_message(&*panic)),
                }
            }
            outcome.map(|()| states)
        })
    }

    /// `f` run once on every lane at the same time, each on its threads: what the lanes can do
    /// at most (`saeshare bench encoders` measures the forward pass alone so). A single lane runs
    /// on the calling thread, as [`run`](Self::run) runs it.
    pub fn side_by_side<R: Send>(&self, f: impl Fn() -> R + Sync) -> Vec<R> {
        if self.count == 1 {
            return vec![f()];
        }
        let f = &f;
        let _restore = RestoreThreads(self.caller_threads);
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..self.count)
                .map(|_| {
                    let threads = self.threads_each;
                    scope.spawn(move || {
                        crate::torch::set_thread_torch_threads(threads);
                        f()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        (results.into_iter())
            .map(|r| r.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    }

    /// Queues the jobs for the lanes, [`PER_LANE`] a lane at most between queued, running and
    /// done but not yet taken, and takes their results back in the jobs' order, until the end
    /// of the jobs or the first error in their order.
    fn dispatch<J, R>(
        &self,
        jobs: impl Iterator<Item = anyhow::Result<J>>,
        queue: &crossbeam_channel::Sender<(usize, J)>,
        done: crossbeam_channel::Receiver<(usize, anyhow::Result<R>)>,
        sink: &mut impl FnMut(R) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut jobs = jobs.fuse();
        let limit = PER_LANE * self.count;
        // Results of jobs `taken..sent`, in order, where they came back.
        let mut waiting: VecDeque<Option<anyhow::Result<R>>> = VecDeque::with_capacity(limit);
        let (mut sent, mut taken) = (0, 0);
        loop {
            while sent - taken < limit {
                let Some(job) = jobs.next() else { break };
                (queue.send((sent, job?)))
                    .map_err(|_| anyhow::anyhow!("the model lanes stopped early"))?;
                waiting.push_back(None);
                sent += 1;
            }
            if taken == sent {
                return Ok(());
            }
            let (seq, result) =
                (done.recv()).map_err(|_| anyhow::anyhow!("the model lanes stopped early"))?;
            waiting[seq - taken] = Some(result);
            while let Some(Some(_)) = waiting.front() {
                let result = waiting.pop_front().flatten().expect("checked just above");
                taken += 1;
                sink(result?)?;
            }
        }
    }
}

/// Gives libtorch back the calling thread's count when the lanes end, however they end: a
/// thread started later takes the count some thread set last, which the lanes' was.
struct RestoreThreads(usize);

impl Drop for RestoreThreads {
    fn drop(&mut self) {
        tch::set_num_threads(self.0 as i32);
    }
}

/// What a panic said, where it said it in words.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    (panic.downcast_ref::<String>().map(String::as_str))
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message")
}

/// A lane's seconds without a job.
struct Idle {
    since: Option<Instant>,
    seconds: f64,
}

impl Idle {
    fn start() -> Idle {
        Idle {
            since: Some(Instant::now()),
            seconds: 0.0,
        }
    }

    fn stop(&mut self) {
        if let Some(since) = self.since.take() {
            self.seconds += since.elapsed().as_secs_f64();
        }
    }

    fn restart(&mut self) {
        self.since = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_of_2_or_3_threads_gets_two_lanes_of_one_and_a_gpu_one_lane() {
        let lanes = |device, requested, threads| {
            let l = Lanes::of(device, requested, threads);
            (l.count, l.threads_each)
        };
        assert_eq!(lanes(Device::Cpu, None, 1), (1, 1));
        assert_eq!(lanes(Device::Cpu, None, 2), (2, 1));
        // Lanes of several threads each are asked for, not given.
        assert_eq!(lanes(Device::Cpu, None, 4), (1, 4));
        assert_eq!(lanes(Device::Cpu, None, 16), (1, 16));
        // Every lane the same count, so a batch is computed alike on either.
        assert_eq!(lanes(Device::Cpu, None, 3), (2, 1));
        assert_eq!(lanes(Device::Cpu, Some(4), 16), (4, 4));
        assert_eq!(lanes(Device::Cpu, Some(1), 16), (1, 16));
        assert_eq!(lanes(Device::Cpu, Some(8), 2), (2, 1));
        assert_eq!(lanes(Device::Cuda(0), None, 16), (1, 16));
    }

    #[test]
    fn results_come_back_in_order_from_lanes_of_uneven_speed_and_each_lane_counts_its_own() {
        for count in [1, 2, 3] {
            let lanes = Lanes {
                count,
                threads_each: 1,
                caller_threads: tch::get_num_threads().max(1) as usize,
            };
            let jobs = (0..50u64).map(Ok);
            let mut seen = Vec::new();
            let states: Vec<(u64, f64)> = lanes
                .run(
                    jobs,
                    |job, done: &mut u64| {
                        // Later jobs finish first on some lanes.
                        std::thread::sleep(std::time::Duration::from_micros((50 - job) * 20));
                        *done += 1;
                        Ok(job * 10)
                    },
                    |r| {
                        seen.push(r);
                        Ok(())
                    },
                )
                .unwrap();
            assert_eq!(seen, (0..50).map(|j| j * 10).collect::<Vec<_>>(), "{count}");
            assert_eq!(states.len(), count);
            assert_eq!(states.iter().map(|s| s.0).sum::<u64>(), 50);
            assert!(states.iter().all(|s| s.1 >= 0.0 && s.1 < 5.0), "{states:?}");
        }
    }

    #[test]
    fn the_first_error_stops_the_lanes_whoever_raises_it() {
        let lanes = Lanes {
            count: 2,
            threads_each: 1,
            caller_threads: 1,
        };
        let run = |fail_job: Option<u64>, fail_work: Option<u64>, fail_sink: Option<u64>| {
            let jobs = (0..1000u64).map(move |j| match fail_job {
                Some(f) if j == f => Err(anyhow::anyhow!("job {j} unreadable")),
                _ => Ok(j),
            });
            let mut sunk = 0;
            let outcome = lanes.run(
                jobs,
                |j, _: &mut ()| match fail_work {
                    Some(f) if j == f => Err(anyhow::anyhow!("work {j} failed")),
                    _ => Ok(j),
                },
                |r| {
                    sunk += 1;
                    match fail_sink {
                        Some(f) if r == f => Err(anyhow::anyhow!("sink {r} failed")),
                        _ => Ok(()),
                    }
                },
            );
            (outcome.err().map(|e| e.to_string()), sunk)
        };
        let (error, sunk) = run(Some(7), None, None);
        assert_eq!(error.as_deref(), Some("job 7 unreadable"));
        assert!(sunk <= 7, "{sunk}");
        let (error, sunk) = run(None, Some(7), None);
        assert_eq!(error.as_deref(), Some("work 7 failed"));
        assert_eq!(sunk, 7);
        let (error, sunk) = run(None, None, Some(7));
        assert_eq!(error.as_deref(), Some("sink 7 failed"));
        assert_eq!(sunk, 8);
        assert_eq!(run(None, None, None), (None, 1000));
    }

    #[test]
    fn the_error_reported_is_the_first_in_the_jobs_order_and_a_panic_is_one() {
        let lanes = Lanes {
            count: 2,
            threads_each: 1,
            caller_threads: 1,
        };
        let started = std::sync::atomic::AtomicU64::new(0);
        let mut sunk = Vec::new();
        let outcome = lanes.run(
            (0..100u64).map(Ok),
            |j, _: &mut ()| {
                started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match j {
                    // Job 5 fails late, after job 6 failed on the other lane.
                    5 => {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        Err(anyhow::anyhow!("work 5 failed"))
                    }
                    6 => Err(anyhow::anyhow!("work 6 failed")),
                    _ => Ok(j),
                }
            },
            |r| {
                sunk.push(r);
                Ok(())
            },
        );
        assert_eq!(outcome.unwrap_err().to_string(), "work 5 failed");
        assert_eq!(sunk, vec![0, 1, 2, 3, 4]);
        // The lanes stop soon after: the jobs queued at the error are not started.
        let started = started.into_inner();
        assert!(
            started <= 5 + 1 + 2 * PER_LANE as u64,
            "{started} jobs started"
        );

        let mut sunk = Vec::new();
        let outcome = lanes.run(
            (0..20u64).map(Ok),
            |j, _: &mut ()| {
                assert!(j != 3, "job {j} broke a lane");
                Ok(j)
            },
            |r| {
                sunk.push(r);
                Ok(())
            },
        );
        let error = outcome.unwrap_err().to_string();
        assert_eq!(error, "a model lane failed: job 3 broke a lane");
        assert_eq!(sunk, vec![0, 1, 2]);
    }
}
