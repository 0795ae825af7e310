//! Launches of multi-process runs: a second launch of a running study, on the same hostfile,
//! is another run and is refused the run folder; the processes' start-up says nothing on
//! stdout under `--quiet`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::pipeline::study;

/// Process `p` of a 2-process run of `study` on `hosts`.
fn process(study: &Path, hosts: &Path, p: usize) -> Child {
    Command::new(env!("CARGO_BIN_EXE_saeshare"))
        .args(["--quiet", "run", study.to_str().unwrap(), "--no-report"])
        .args(["-w", "1", "-n", "2", "-p", &p.to_string()])
        .arg("-h")
        .arg(hosts)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_second_launch_of_a_running_study_is_refused_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[20, 60]);
    let file = study(dir.path(), &dataset, "out", &["bert", "dinov2"], 4);
    // More steps, so that the first launch is still fitting when the second one starts.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("steps = 40", "steps = 400");
    std::fs::write(&file, text).unwrap();
    let hosts = common::hostfile(dir.path());
    let first: Vec<Child> = (0..2).map(|p| process(&file, &hosts, p)).collect();

    // The first launch holds the lock once both its processes have claimed the folder.
    let lock = dir.path().join("out/saeshare.lock");
    let start = Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|t| t.contains("run_id")) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the first launch never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let second: Vec<Child> = (0..2).map(|p| process(&file, &hosts, p)).collect();
    for child in second {
        let output = child.wait_with_output().unwrap();
        let err = common::stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{err}");
        assert!(err.contains("is in use by saeshare process"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    for child in first {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", common::stderr(&output));
        let printed = common::stdout(&output);
        assert!(!printed.contains("awaiting"), "{printed}");
    }
    assert!(dir.path().join("out/wmppc.parquet").is_file());
}
