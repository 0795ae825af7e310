//! The worker flags every dataflow command shares (`dataset scan`, `run`).

use std::path::PathBuf;

use clap::Args;

use crate::pipeline::WorkerArgs;

/// `-w N -n P -p I -h HOSTFILE`, as in timely's own examples.
#[derive(Clone, Debug, Args)]
pub struct WorkerFlags {
    /// Worker threads in this process.
    #[arg(short = 'w', long = "workers", default_value_t = WorkerArgs::default().workers)]
    pub workers: usize,
    /// Processes in the whole run, on one or several machines.
    #[arg(short = 'n', long = "processes", default_value_t = WorkerArgs::default().processes)]
    pub processes: usize,
    /// Which of the processes this one is, from 0.
    #[arg(short = 'p', long = "process", default_value_t = WorkerArgs::default().process)]
    pub process: usize,
    /// A file with one `host:port` line per process.
    #[arg(short = 'h', long = "hostfile")]
    pub hostfile: Option<PathBuf>,
}

impl From<WorkerFlags> for WorkerArgs {
    fn from(flags: WorkerFlags) -> Self {
        WorkerArgs {
            workers: flags.workers,
            processes: flags.processes,
            process: flags.process,
            hostfile: flags.hostfile,
        }
    }
}
