//! `saeshare study plan`: what a study will cost, before it runs, held against the run: the
//! rows and forward passes exactly, the codes and SAEs on disk within 30%, and time only where
//! rates were measured on this machine.

use std::path::Path;

use crate::common;
use crate::pipeline::{run, study};

/// Bytes of every file under `dir`.
fn folder_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            total += folder_bytes(&entry.path());
        } else if kind.is_file() {
            total += entry.metadata().unwrap().len();
        }
    }
    total
}

#[test]
fn a_plan_says_what_the_run_then_does_and_takes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let dataset = common::emoji_subset(dir.path(), &[20, 60]);
    let file = study(dir.path(), &dataset, "out", &["bert", "dinov2"], 4);
    let plan = |extra: &[&str]| {
        let json = dir.path().join("plan.json");
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_saeshare"))
            .args(["--quiet", "study", "plan", file.to_str().unwrap(), "--json"])
            .arg(&json)
            .args(extra)
            .env("SAESHARE_CACHE", &cache)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", common::stderr(&output));
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        (common::stdout(&output), json)
    };

    // Without rates: the counts, no time.
    let (printed, cost) = plan(&[]);
    assert!(printed.contains("no rates for bert, dinov2"), "{printed}");
    assert!(!printed.contains("time:"), "{printed}");
    assert_eq!(cost["samples"], 200);
    assert_eq!(cost["stages"][0]["forward_samples"], 400, "{cost}");
    assert!(cost["stages"][0]["seconds"].is_null(), "{cost}");

    // Calibrated: time, and the rates kept for the next plan.
    let (printed, cost) = plan(&["--calibrate"]);
    assert!(printed.contains("time:"), "{printed}");
    assert!(
        cost["stages"][0]["seconds"].as_f64().unwrap() > 0.0,
        "{cost}"
    );
    assert_eq!(std::fs::read_dir(cache.join("rates")).unwrap().count(), 1);
    let (again, _) = plan(&[]);
    assert!(again.contains("rates measured on"), "{again}");

    // The run: the SAEs and codes it writes are what the plan said, within 30%.
    run(&file, &["--no-report"]);
    let out = dir.path().join("out");
    for folder in ["saes", "codes"] {
        let planned = cost["disk"][folder].as_f64().unwrap();
        let written = folder_bytes(&out.join(folder)) as f64;
        let off = (planned - written).abs() / written;
        assert!(off <= 0.3, "{folder}: planned {planned}, written {written}");
    }
    // Every pooled fit's rows a pass: one a sample.
    for fit in cost["fits"].as_array().unwrap() {
        assert_eq!(fit["rows_per_pass"], 200, "{fit}");
    }
}
