//! A run whose stderr is not a terminal (a log file, a pipe) reports its progress as lines: each
//! stage when it starts, then its rows, rate and ETA periodically, and when it ends.

use crate::common;
use crate::pipeline::study;

#[test]
fn a_run_into_a_log_file_prints_stage_lines_with_rows_rate_and_eta() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[3]);
    let file = study(dir.path(), &dataset, "logged", &["bert", "dinov2"], 4);
    let log = std::fs::File::create(dir.path().join("run.log")).unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_saeshare"))
        .args(["run", file.to_str().unwrap(), "--no-report"])
        // Often enough for a line in a stage of a tenth of a second (the compare stage here).
        .env("SAESHARE_PROGRESS_EVERY", "0.01")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .status()
        .unwrap();
    let text = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(status.success(), "{text}");
    assert!(
        !text.contains('\r'),
        "a bar was drawn into the log:\n{text}"
    );
    for stage in ["fit: encoding into the SAEs", "compare: encoding to codes"] {
        assert!(
            text.contains(&format!("{stage}: started, ")),
            "no start line for {stage}:\n{text}"
        );
        let periodic = (text.lines())
            .filter(|l| l.contains(&format!("{stage}: ")) && l.contains("rows/s, eta "))
            .count();
        assert!(periodic >= 1, "no periodic line for {stage}:\n{text}");
    }
    assert!(text.contains(": done, "), "no end line:\n{text}");
}
