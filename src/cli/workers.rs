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
    /// A file with one `host:port` line per process (`-h` alone prints this help).
    #[arg(short = 'h', long = "hostfile", num_args = 0..=1, value_name = "HOSTFILE")]
    pub hostfile: Option<Option<PathBuf>>,
    /// Take the process index, the process count and the hosts from the scheduler's variables
    /// (Slurm's: SLURM_PROCID, SLURM_NTASKS, SLURM_JOB_NODELIST, SLURM_TASKS_PER_NODE; ports
    /// from SAESHARE_PORT, default 2101), instead of -n, -p and -h.
    #[arg(long, conflicts_with_all = ["processes", "process", "hostfile"])]
    pub from_env: bool,
}

impl WorkerFlags {
    /// The flags as the pipeline takes them, or `None` for `-h` without a file: the user
    /// asked for help, as `-h` means everywhere else.
    pub fn args(self) -> anyhow::Result<Option<WorkerArgs>> {
        if self.from_env {
            return WorkerArgs::from_scheduler(self.workers).map(Some);
        }
        let hostfile = match self.hostfile {
            Some(None) => return Ok(None),
            Some(Some(file)) => Some(file),
            None => None,
        };
        Ok(Some(WorkerArgs {
            workers: self.workers,
            processes: self.processes,
            process: self.process,
            hostfile,
            addresses: None,
        }))
    }
}

/// Prints the help of subcommand `path` (`["run"]`, `["dataset", "scan"]`).
pub fn print_help(path: &[&str]) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut command = super::Cli::command();
    for name in path {
        command = command
            .find_subcommand(name)
            .cloned()
            .expect("the subcommand exists");
    }
    command.print_help()?;
    Ok(())
}
