//! Worker threads, processes and machines, as timely counts them: the flags every dataflow
//! command shares. `-w` threads per process; `-n` processes, this one `-p`, their addresses in
//! the `-h` hostfile (one `host:port` a line; without it, localhost ports from 2101).

use std::path::{Path, PathBuf};

use super::cluster::Connected;
use super::scheduler::{Environment, ScheduledProcess};

/// `-w N -n P -p I -h HOSTFILE`, as in timely's own examples (the CLI's flags convert into it).
#[derive(Clone, Debug)]
pub struct WorkerArgs {
    /// Worker threads in this process.
    pub workers: usize,
    /// Processes in the whole run, on one or several machines.
    pub processes: usize,
    /// Which of the processes this one is, from 0.
    pub process: usize,
    /// A file with one `host:port` line per process.
    pub hostfile: Option<PathBuf>,
    /// Every process's `host:port`, as a scheduler gave them (`--from-env`); the hostfile's
    /// place.
    pub addresses: Option<Vec<String>>,
}

impl Default for WorkerArgs {
    fn default() -> Self {
        WorkerArgs {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
            addresses: None,
        }
    }
}

impl WorkerArgs {
    /// This process's workers, connected to the other processes of the run (when there are
    /// others) through saeshare's handshake ([`Connected`]); `subject` is what the run works
    /// on (the study file, the dataset), which every process of it names alike.
    pub fn connect(&self, subject: &Path) -> anyhow::Result<Connected> {
        self.validate()?;
        if self.processes == 1 {
            return Connected::single(self.workers);
        }
        let addresses = self.addresses()?;
        // By content, not path: machines may mount the shared folder at other paths.
        let subject = subject_digest(subject)?;
        let launch = super::fingerprint(&(subject, &addresses, self.processes));
        Connected::cluster(&addresses, self.process, self.workers, &launch)
    }

    /// Checks the counts make sense: at least one worker and one process, `-p` among them.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.workers >= 1,
            "-w {}: a run needs at least 1 worker thread",
            self.workers
        );
        anyhow::ensure!(
            self.processes >= 1,
            "-n {}: a run needs at least 1 process",
            self.processes
        );
        anyhow::ensure!(
            self.process < self.processes,
            "-p {} is not one of the {} processes (0 to {})",
            self.process,
            self.processes,
            self.processes - 1
        );
        Ok(())
    }

    /// libtorch's intra-op threads for each worker: the machine's cores shared among the worker
    /// threads of every process of this run on this machine, so that W workers do not each start
    /// a pool of all the cores and fight over them. `OMP_NUM_THREADS`, when set, wins.
    pub fn torch_threads(&self) -> usize {
        if let Some(n) = std::env::var("OMP_NUM_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
        {
            return n;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let here = self.addresses().map_or(1, |addresses| {
            processes_on_host_of(&addresses, self.process)
        });
        torch_threads_per_worker(cores, self.workers * here)
    }

    /// This process's workers, placed in the run as the scheduler's variables say
    /// ([`ScheduledProcess`]), with `workers` threads.
    pub fn from_scheduler(workers: usize) -> anyhow::Result<WorkerArgs> {
        let scheduled = ScheduledProcess::from_slurm(&Environment)?;
        Ok(WorkerArgs {
            workers,
            processes: scheduled.processes,
            process: scheduled.process,
            hostfile: None,
            addresses: Some(scheduled.addresses),
        })
    }

    fn addresses(&self) -> anyhow::Result<Vec<String>> {
        if let Some(addresses) = &self.addresses {
            return Ok(addresses.clone());
        }
        let Some(hostfile) = &self.hostfile else {
            return Ok((0..self.processes)
                .map(|i| format!("localhost:{}", 2101 + i))
                .collect());
        };
        let text = std::fs::read_to_string(hostfile)
            .map_err(|e| anyhow::anyhow!("{}: {e}", hostfile.display()))?;
        let addresses: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        anyhow::ensure!(
            addresses.len() >= self.processes,
            "{}: {} address(es) for -n {} processes; write one host:port line per process",
            hostfile.display(),
            addresses.len(),
            self.processes
        );
        Ok(addresses[..self.processes].to_vec())
    }
}

/// What identifies a run's subject alike on every machine: a study file's bytes, or a folder's
/// canonical path (a dataset scanned).
fn subject_digest(subject: &Path) -> anyhow::Result<String> {
    if subject.is_file() {
        return Ok(crate::digest::files_digest(&[subject])?);
    }
    let path = std::path::absolute(subject).unwrap_or_else(|_| subject.to_path_buf());
    Ok(super::fingerprint(&path))
}

/// How many of the run's processes share the host of process `me` (by the host part of their
/// `host:port` address).
fn processes_on_host_of(addresses: &[String], me: usize) -> usize {
    let host = |a: &String| a.rsplit_once(':').map_or(a.clone(), |(h, _)| h.to_string());
    let Some(mine) = addresses.get(me).map(host) else {
        return 1;
    };
    addresses.iter().filter(|a| host(a) == mine).count().max(1)
}

/// `cores` shared by `workers_here` worker threads, at least one each.
fn torch_threads_per_worker(cores: usize, workers_here: usize) -> usize {
    (cores / workers_here.max(1)).max(1)
}

#[cfg(test)]
mod torch_thread_tests {
    use super::*;

    #[test]
    fn the_cores_are_shared_among_the_workers_of_one_machine() {
        assert_eq!(torch_threads_per_worker(16, 1), 16);
        assert_eq!(torch_threads_per_worker(16, 4), 4);
        assert_eq!(torch_threads_per_worker(2, 4), 1);
        assert_eq!(torch_threads_per_worker(16, 0), 16);
        let local: Vec<String> = (0..3).map(|i| format!("localhost:{}", 2101 + i)).collect();
        assert_eq!(processes_on_host_of(&local, 1), 3);
        let spread = vec![
            "10.0.0.1:2101".to_string(),
            "10.0.0.2:2101".to_string(),
            "10.0.0.2:2102".to_string(),
        ];
        assert_eq!(processes_on_host_of(&spread, 0), 1);
        assert_eq!(processes_on_host_of(&spread, 2), 2);
        assert_eq!(processes_on_host_of(&spread, 7), 1);
    }
}
