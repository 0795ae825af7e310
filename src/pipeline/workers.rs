//! Worker threads, processes and machines, as timely counts them: the flags every dataflow
//! command shares. `-w` threads per process; `-n` processes, this one `-p`, their addresses in
//! the `-h` hostfile (one `host:port` a line; without it, localhost ports from 2101).

use std::path::{Path, PathBuf};

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
}

impl Default for WorkerArgs {
    fn default() -> Self {
        WorkerArgs {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
        }
    }
}

impl WorkerArgs {
    /// The timely configuration these flags describe, with errors a user can act on.
    pub fn timely_config(&self) -> anyhow::Result<timely::Config> {
        use timely::CommunicationConfig;
        self.validate()?;
        let communication = if self.processes == 1 {
            CommunicationConfig::Process(self.workers)
        } else {
            CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: self.addresses()?,
                report: false,
                zerocopy: false,
            }
        };
        Ok(timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        })
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

    /// What the processes of one run share without talking, to share the run folder's lock:
    /// the study file and the addresses of the processes. A run of one process gets an id of
    /// its own.
    pub fn run_id(&self, study: &Path) -> String {
        if self.processes == 1 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            return format!("{}-{nanos}", std::process::id());
        }
        let study = std::path::absolute(study).unwrap_or_else(|_| study.to_path_buf());
        let addresses = self.addresses().unwrap_or_default();
        super::fingerprint(&(study, addresses, self.processes))
    }

    fn addresses(&self) -> anyhow::Result<Vec<String>> {
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
