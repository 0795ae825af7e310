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

/// Copies the folder `from` into `to` (a package or a dataset, a few files).
fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().map(Result::unwrap) {
        if entry.file_type().unwrap().is_dir() {
            copy_folder(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn a_study_without_its_dataset_and_packages_is_planned_with_stand_ins() {
    // The study of a user who has neither COCO nor the weights: the dataset and one package
    // missing; the package's `shape` names the random-weights package that stands in (kept in
    // the cache: made here beforehand from a tiny model, where saeshare would export it).
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    copy_folder(
        &common::tiny_packages().join("bert"),
        &cache.join("encoders/random/tiny-bert"),
    );
    let emoji = common::emoji_subset(dir.path(), &[20, 60]);
    copy_folder(&emoji, &cache.join("stand-ins/emoji"));
    let file = dir.path().join("paper.toml");
    std::fs::write(
        &file,
        format!(
            r#"name = "paper"
output = "runs/paper"
dataset = {{ path = "data/coco" }}

[sae]
k = 4
expansion = 2
batch_size = 64

[encoders.bert]
shape = "tiny-bert"
package = "encoders/bert"
device = "cuda"

[encoders.dinov2]
package = "{}"

[[comparisons]]
sources = ["dinov2"]
targets = ["bert"]
layers = "all"
"#,
            common::tiny_packages().join("dinov2").display()
        ),
    )
    .unwrap();
    let plan = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_saeshare"))
            .args(["--quiet", "study", "plan", file.to_str().unwrap()])
            .args(extra)
            .env("SAESHARE_CACHE", &cache)
            .output()
            .unwrap()
    };
    let refused = plan(&[]);
    assert!(!refused.status.success());
    assert!(
        common::stderr(&refused).contains("--stand-ins"),
        "{}",
        common::stderr(&refused)
    );
    let refused = plan(&["--stand-ins"]);
    assert!(!refused.status.success());
    let message = common::stderr(&refused);
    assert!(
        message.contains("data/coco") && message.contains("--assume-samples"),
        "{message}"
    );

    let planned = plan(&["--stand-ins", "--assume-samples", "118287"]);
    assert!(planned.status.success(), "{}", common::stderr(&planned));
    let out = String::from_utf8_lossy(&planned.stdout);
    assert!(
        out.contains("stand-in: dataset") && out.contains("118287 samples"),
        "{out}"
    );
    assert!(
        out.contains("stand-in: package of bert is missing: random weights at its shape tiny-bert"),
        "{out}"
    );
    assert!(
        out.contains("bert runs on cuda in the study: planned on this machine's CPU")
            || tch::Cuda::is_available(),
        "{out}"
    );
    // The tiny BERT's 3 layers against DINOv2's, every layer of each.
    let layers = |name: &str| -> usize {
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(common::tiny_packages().join(name).join("encoder.json")).unwrap(),
        )
        .unwrap();
        manifest["layers"].as_array().unwrap().len()
    };
    let pairs = layers("bert") * layers("dinov2");
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("compare")
            && l.split_whitespace().nth(3) == Some(&pairs.to_string())),
        "{out}"
    );
    // With another machine's rates (one with the GPU), the encoder keeps its device.
    let rates = dir.path().join("gpu-rates.json");
    std::fs::write(
        &rates,
        r#"{"machine": "gpu-box: 16 cores", "encoders": {}}"#,
    )
    .unwrap();
    let elsewhere = plan(&[
        "--stand-ins",
        "--assume-samples",
        "5000",
        "--rates",
        rates.to_str().unwrap(),
    ]);
    assert!(elsewhere.status.success(), "{}", common::stderr(&elsewhere));
    let out = String::from_utf8_lossy(&elsewhere.stdout);
    assert!(
        out.contains("bert runs on cuda in the study: planned with the rates of gpu-box")
            || tch::Cuda::is_available(),
        "{out}"
    );
    // Planning made neither the study's output folder nor its dataset.
    assert!(!dir.path().join("runs").exists());
    assert!(!dir.path().join("data").exists());
}
