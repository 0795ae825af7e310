//! scripts/device-check.sh, the one command a lent GPU machine runs, in its CPU half (no CUDA
//! here): it exports tiny packages with this machine's Python, runs the study, measures the
//! rates and writes its JSON; and it refuses a binary built for another libtorch than the
//! machine's torch before doing anything.

use std::path::Path;
use std::process::{Command, Output};

use crate::common;

fn device_check(out: &Path, python: &Path) -> Output {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/device-check.sh"))
        .env("SAESHARE_BIN", env!("CARGO_BIN_EXE_saeshare"))
        .env("SAESHARE_PYTHON", python)
        .env("OUT", out)
        // Not what `prepare` left here: the dataset is built, and no real model is carried.
        .env("DEVICE_CHECK_FIXTURES", out.join("no-fixtures"))
        .env("DEVICE_CHECK_SHARD_ROWS", "24")
        .env("DEVICE_CHECK_SAMPLES", "24")
        .env("DEVICE_CHECK_SAE_STEPS", "10")
        .env("DEVICE_CHECK_BATCH_SIZES", "8")
        // One id no cache holds: the branch that leaves a missing real model out.
        .env("DEVICE_CHECK_REAL_MODELS", "saeshare-tests/no-such-model")
        .output()
        .expect("the script runs")
}

#[test]
fn the_cpu_half_exports_runs_measures_and_writes_its_json() {
    let out = tempfile::tempdir().unwrap();
    let python = std::env::var("SAESHARE_PYTHON").expect("run under scripts/python-env.sh");
    let output = device_check(out.path(), Path::new(&python));
    let stderr = common::stderr(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("no CUDA device: the CPU half only"),
        "{stderr}"
    );
    assert!(
        stderr.contains("saeshare-tests/no-such-model: not in this machine's Hugging Face cache"),
        "{stderr}"
    );

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("device-check.json")).unwrap())
            .unwrap();
    assert_eq!(report["passed"], true);
    assert_eq!(report["cuda"], false);
    assert_eq!(report["devices"], serde_json::json!(["cpu"]));
    assert_eq!(
        report["encoders"],
        serde_json::json!(["bert", "vit", "torchvision-resnet18"])
    );
    let libtorch = report["binary_libtorch"].as_str().unwrap();
    assert!(libtorch.starts_with("2."), "{report}");
    assert_eq!(report["torch"].as_str().unwrap(), libtorch);
    // Every encoder measured: encoding against the forward alone, and its SAE's rows/s.
    for bench in ["bench_encoders", "bench_fit"] {
        let figures = report[bench]["cpu"].as_array().unwrap();
        assert_eq!(figures.len(), 3, "{bench}: {report}");
    }
    for f in report["bench_encoders"]["cpu"].as_array().unwrap() {
        let ratio = f["encode_of_best_forward"].as_f64().unwrap();
        assert!(ratio > 0.0 && ratio.is_finite(), "{f}");
        // The helper thread's work alone, measured apart: what the model can be fed at most.
        let prepare = f["prepare"].as_f64().unwrap();
        assert!(prepare > 0.0 && prepare.is_finite(), "{f}");
        // The stages say where the encoding's time went: the model thread's add up to about
        // its wall time (the rest is starting the helper thread and putting rows in order).
        let stage = |k: &str| f["stages"][k].as_f64().unwrap();
        let model_thread: f64 = ["waiting", "inputs", "forward", "outputs"]
            .map(stage)
            .iter()
            .sum();
        let wall = f["seconds"].as_f64().unwrap();
        assert!(stage("forward") > 0.0 && stage("preparing") > 0.0, "{f}");
        // (On runs of a few milliseconds, starting the helper thread can be most of the wall
        // time: then at most 20 ms of it is not the model thread's.)
        assert!(
            model_thread <= wall && (model_thread >= 0.5 * wall || wall - model_thread < 0.02),
            "model thread {model_thread} s of {wall} s: {f}"
        );
    }
    for f in report["bench_fit"]["cpu"].as_array().unwrap() {
        assert!(f["sae_rows_per_second"].as_f64().unwrap() > 0.0, "{f}");
        assert_eq!(f["same_saes"], true, "{f}");
    }
    let stages = &report["stage_seconds"]["cpu"];
    for stage in ["fit", "compare"] {
        assert!(stages[stage].as_f64().unwrap() > 0.0, "{report}");
    }
    // No GPU: the study with the SAEs the first run fitted, imported, runs on the CPU too, and
    // equals it (the GPU's half of the check, on the CPU).
    assert_eq!(report["study_parity"]["device"], "cpu");
    assert_eq!(report["study_parity"]["result"], "ok", "{report}");
    assert!(report["fitted_apart"].is_null(), "{report}");
    assert!(report["encode_parity"]["result"]
        .as_object()
        .unwrap()
        .is_empty());
    assert!(std::fs::read_to_string(out.path().join("device-check.log"))
        .unwrap()
        .contains(" run "));
}

#[test]
fn a_binary_for_another_libtorch_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    // A "Python" whose torch is another release.
    let python = dir.path().join("python");
    std::fs::write(
        &python,
        "#!/bin/sh\ncase \"$2\" in *__version__*) echo 9.9.9+cu999 ;; *) echo /nonexistent ;; esac\n",
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&python).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&python, permissions).unwrap();

    let out = dir.path().join("out");
    let output = device_check(&out, &python);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("this machine's torch is 9.9.9+cu999"),
        "{stderr}"
    );
    assert!(
        stderr.contains("scripts/build-for-torch.sh 9.9.9"),
        "{stderr}"
    );
    assert!(!out.join("device-check.json").exists());
}
