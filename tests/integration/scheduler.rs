//! Runs started as a cluster's scheduler starts them: `saeshare run STUDY --from-env`, each
//! process told its index, the count and the hosts by Slurm's variables (set here by hand, on
//! this machine: one host, 2 or 4 tasks). The outputs equal a run of one process.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common;
use crate::pipeline::{assert_same_outputs, run, study};

/// A port from which `count` ports are free.
fn free_ports_from(count: u16) -> u16 {
    for base in (20_000u16..60_000).step_by(997) {
        let free = (0..count).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no {count} free ports in a row");
}

/// `study` run by `tasks` processes of one worker, as `srun --ntasks TASKS` on one host starts
/// them.
fn run_as_slurm_tasks(study: &Path, tasks: usize) {
    let port = free_ports_from(tasks as u16).to_string();
    let processes: Vec<_> = (0..tasks)
        .map(|task| {
            Command::new(env!("CARGO_BIN_EXE_saeshare"))
                .args(["--quiet", "run", study.to_str().unwrap(), "--no-report"])
                .arg("--from-env")
                .env("SLURM_PROCID", task.to_string())
                .env("SLURM_NTASKS", tasks.to_string())
                .env("SLURM_JOB_NODELIST", "localhost")
                .env("SLURM_TASKS_PER_NODE", tasks.to_string())
                .env("SAESHARE_PORT", &port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for process in processes {
        let output = process.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", common::stderr(&output));
    }
}

#[test]
fn processes_started_by_a_scheduler_give_the_outputs_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[20, 60, 61]);
    let one = study(dir.path(), &dataset, "one", &["bert", "dinov2"], 4);
    run(&one, &["--no-report"]);
    for tasks in [2, 4] {
        let name = format!("tasks-{tasks}");
        let file = study(dir.path(), &dataset, &name, &["bert", "dinov2"], 4);
        run_as_slurm_tasks(&file, tasks);
        assert_same_outputs(&dir.path().join("one"), &dir.path().join(&name), 1e-6);
    }
    // Outside a scheduler, --from-env says what it misses.
    let output = common::saeshare(&["run", one.to_str().unwrap(), "--from-env"]);
    let err = common::stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("SLURM_PROCID is not set"), "{err}");
}
