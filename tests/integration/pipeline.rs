//! `saeshare run`: the study as timely dataflows, on tiny randomly initialised encoders over
//! emoji shards. Outputs equal across worker and process counts, a run killed with SIGKILL and
//! started again equals an uninterrupted one, and a second run does only what changed.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use saeshare::metrics::tables::{read_mppc, read_wmppc};

/// The encoders a study may use: study name and tiny package.
const ENCODERS: [(&str, &str, &str); 4] = [
    ("bert", "bert", "all"),
    ("clip-text", "clip_text_model", "last"),
    ("dinov2", "dinov2", "all"),
    ("vit", "vit", "last"),
];

/// A study of `encoders` over `dataset` into `output`: every pair on last layers, dinov2 x
/// bert on all layers, one sharedness query, two floor permutations.
pub(crate) fn study(
    dir: &Path,
    dataset: &Path,
    output: &str,
    encoders: &[&str],
    k_of_vit: usize,
) -> PathBuf {
    let mut text = format!(
        r#"name = "tiny"
output = "{output}"
dataset = {{ path = "{}" }}

[sae]
k = 4
expansion = 2
steps = 40
batch_size = 64
lr = 1e-3
warmup_steps = 5
aux_k = 8

[fit]
buffer_rows = 256

[baselines]
floor_permutations = 2

[[comparisons]]
sources = ["*"]
targets = ["*"]
layers = "last"
"#,
        dataset.display()
    );
    for (name, package, layers) in ENCODERS {
        if !encoders.contains(&name) {
            continue;
        }
        text += &format!(
            "\n[encoders.{name}]\npackage = \"{}\"\nlayers = \"{layers}\"\nbatch_size = 32\n",
            common::tiny_packages().join(package).display()
        );
        if name == "vit" {
            text += &format!("sae = {{ k = {k_of_vit} }}\n");
        }
    }
    if encoders.contains(&"dinov2") && encoders.contains(&"bert") {
        text +=
            "\n[[comparisons]]\nsources = [\"dinov2\"]\ntargets = [\"bert\"]\nlayers = \"all\"\n";
        text += "\n[[sharedness]]\nname = \"dinov2-with-bert\"\nmodel = \"dinov2\"\nshared_with = [\"bert\"]\n";
        if encoders.contains(&"vit") {
            text += "not_shared_with = [\"vit\"]\n";
        }
    }
    let path = dir.join(format!("{output}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn run(study: &Path, extra: &[&str]) -> String {
    let mut args = vec!["run", study.to_str().unwrap()];
    args.extend(extra);
    let output = common::saeshare(&args);
    assert!(output.status.success(), "{}", common::stderr(&output));
    common::stdout(&output)
}

/// What the last run did, as `last-run.json` says.
fn last_run(output: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(output.join("last-run.json")).unwrap()).unwrap()
}

/// Asserts that two runs' `wmppc`, `mppc` and sharedness tables hold the same rows, values
/// within `tolerance`.
pub(crate) fn assert_same_outputs(a: &Path, b: &Path, tolerance: f64) {
    let (wa, wb) = (
        read_wmppc(&a.join("wmppc.parquet")).unwrap(),
        read_wmppc(&b.join("wmppc.parquet")).unwrap(),
    );
    assert_eq!(wa.len(), wb.len());
    assert!(!wa.is_empty());
    let close = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => (x - y).abs() <= tolerance,
        (None, None) => true,
        _ => false,
    };
    for (x, y) in wa.iter().zip(&wb) {
        assert_eq!(
            (
                &x.source,
                &x.target,
                &x.source_layer,
                &x.target_layer,
                x.aggregation,
                x.samples
            ),
            (
                &y.source,
                &y.target,
                &y.source_layer,
                &y.target_layer,
                y.aggregation,
                y.samples
            )
        );
        assert!(
            close(x.wmppc, y.wmppc) && close(x.baseline_floor, y.baseline_floor),
            "{x:?} vs {y:?}"
        );
    }
    let (ma, mb) = (
        read_mppc(&a.join("mppc.parquet")).unwrap(),
        read_mppc(&b.join("mppc.parquet")).unwrap(),
    );
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(
            (
                &x.source,
                &x.source_layer,
                x.feature,
                &x.target,
                &x.target_layer
            ),
            (
                &y.source,
                &y.source_layer,
                y.feature,
                &y.target,
                &y.target_layer
            )
        );
        assert!(
            (x.rho - y.rho).abs() <= tolerance && (x.weight - y.weight).abs() <= tolerance,
            "{x:?} vs {y:?}"
        );
    }
    let sharedness = |dir: &Path| std::fs::read(dir.join("sharedness/dinov2-with-bert.parquet"));
    assert!(sharedness(a).is_ok() && sharedness(b).is_ok());
}

fn saeshare_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_saeshare"));
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs `study` as two processes of two workers each, on this machine, each worker with
/// `torch_threads` libtorch threads when given.
pub(crate) fn run_in_two_processes(study: &Path, hosts: &Path, torch_threads: Option<usize>) {
    let processes: Vec<_> = (0..2)
        .map(|p| {
            let mut command = saeshare_command(&[
                "run",
                study.to_str().unwrap(),
                "-w",
                "2",
                "-n",
                "2",
                "-p",
                &p.to_string(),
                "-h",
                hosts.to_str().unwrap(),
            ]);
            if let Some(n) = torch_threads {
                command.env("OMP_NUM_THREADS", n.to_string());
            }
            command.spawn().unwrap()
        })
        .collect();
    for process in processes {
        let output = process.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", common::stderr(&output));
    }
}

#[test]
fn outputs_are_equal_on_1_worker_4_workers_and_2_processes_of_2_workers() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[0, 1, 2, 40, 41]);
    let all = ["bert", "clip-text", "dinov2", "vit"];
    // libtorch's CPU kernels round differently on another number of intra-op threads (by 1e-7
    // on the tiny CLIP text model), and a TopK SAE can turn that into another feature; the
    // pipeline's claim is equality for the same libtorch threads, so every run here has one.
    let run = |study: &Path, extra: &[&str]| {
        let mut args = vec!["run", study.to_str().unwrap()];
        args.extend(extra);
        let output = (saeshare_command(&args).env("OMP_NUM_THREADS", "1"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", common::stderr(&output));
        common::stdout(&output)
    };
    let one = study(dir.path(), &dataset, "one", &all, 4);
    let printed = run(&one, &[]);
    assert!(
        printed.contains("wMPPC") && printed.contains("\nfloor"),
        "{printed}"
    );
    // Each value's bootstrap interval and its test against the floor, in tables of their own.
    assert!(
        printed.contains("\n95% interval") && printed.contains("\np, above floor"),
        "{printed}"
    );
    assert_eq!(last_run(&dir.path().join("one"))["codes_units"], 4 * 5);

    let four = study(dir.path(), &dataset, "four", &all, 4);
    run(&four, &["-w", "4"]);
    assert_same_outputs(&dir.path().join("one"), &dir.path().join("four"), 0.0);

    let two = study(dir.path(), &dataset, "two", &all, 4);
    let hosts = common::hostfile(dir.path());
    run_in_two_processes(&two, &hosts, Some(1));
    assert_same_outputs(&dir.path().join("one"), &dir.path().join("two"), 0.0);
}

#[test]
fn a_run_killed_at_a_random_point_and_started_again_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[3, 4, 5, 43, 44, 45]);
    let encoders = ["bert", "dinov2", "vit"];
    let whole = study(dir.path(), &dataset, "whole", &encoders, 4);
    run(&whole, &[]);

    let killed = study(dir.path(), &dataset, "killed", &encoders, 4);
    // A random point of a run of a few seconds: during the fit, the codes or the pairs.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let delay = Duration::from_millis(400 + u64::from(nanos) % 3000);
    let mut child = saeshare_command(&["run", killed.to_str().unwrap()])
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let finished_before = child.try_wait().unwrap().is_some();
    child.kill().ok(); // SIGKILL
    child.wait().unwrap();
    let units = walk(&dir.path().join("killed/units"));
    eprintln!(
        "killed after {delay:?} ({} units recorded{})",
        units,
        if finished_before {
            ", run already done"
        } else {
            ""
        }
    );

    run(&killed, &[]);
    assert_same_outputs(&dir.path().join("whole"), &dir.path().join("killed"), 1e-6);
    let again = run(&killed, &[]);
    assert!(again.contains("nothing to do"), "{again}");
}

/// Files under `dir`, recursively.
fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| {
                if e.path().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

#[test]
fn adding_an_encoder_runs_only_it_and_the_pairs_that_involve_it() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[6, 7, 46, 47]);
    // The same output folder, a study that grows.
    let first = study(dir.path(), &dataset, "grow", &["bert", "dinov2"], 4);
    run(&first, &[]);
    assert_eq!(
        last_run(&dir.path().join("grow"))["pairs_updated"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let grown = study(dir.path(), &dataset, "grow", &["bert", "dinov2", "vit"], 4);
    run(&grown, &[]);
    let did = last_run(&dir.path().join("grow"));
    assert_eq!(did["saes_fitted"], serde_json::json!(["vit"]));
    assert_eq!(
        did["codes_units"], 4,
        "vit's codes on 4 shards, nothing else"
    );
    let mut pairs: Vec<String> = did["pairs_updated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        ["bert__vit", "dinov2__vit", "vit__bert", "vit__dinov2"],
        "only the pairs with vit (and the sharedness query now names vit)"
    );
    // The grown study equals the same study run from scratch.
    let fresh = study(dir.path(), &dataset, "fresh", &["bert", "dinov2", "vit"], 4);
    run(&fresh, &[]);
    assert_same_outputs(&dir.path().join("grow"), &dir.path().join("fresh"), 1e-6);

    // A finished study does nothing, and says so.
    let again = run(&grown, &[]);
    assert!(again.contains("nothing to do"), "{again}");
    assert_eq!(last_run(&dir.path().join("grow"))["codes_units"], 0);

    // Changing vit's SAE invalidates vit's SAEs, codes and pairs, and nothing else.
    let changed = study(dir.path(), &dataset, "grow", &["bert", "dinov2", "vit"], 3);
    run(&changed, &[]);
    let did = last_run(&dir.path().join("grow"));
    assert_eq!(did["saes_fitted"], serde_json::json!(["vit"]));
    assert_eq!(did["codes_units"], 4);
    assert_eq!(did["pairs_updated"].as_array().unwrap().len(), 4);
}

#[test]
fn new_shards_are_encoded_with_the_frozen_saes_and_added_to_the_sums() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[8, 9, 48, 49]);
    let encoders = ["bert", "dinov2"];
    let grow = study(dir.path(), &dataset, "grow", &encoders, 4);
    run(&grow, &[]);

    common::emoji_subset(dir.path(), &[10, 50]);
    run(&grow, &[]);
    let did = last_run(&dir.path().join("grow"));
    assert_eq!(
        did["saes_fitted"],
        serde_json::json!([]),
        "the SAEs stay frozen"
    );
    assert_eq!(
        did["codes_units"],
        2 * 2,
        "two encoders on the two new shards"
    );
    let state =
        saeshare::stats::SavedSums::latest(&dir.path().join("grow/pairs/dinov2__bert")).unwrap();
    assert_eq!((state.shards.len(), state.samples), (6, 600));

    // The same SAEs over all six shards at once give the same statistics.
    let fresh = study(dir.path(), &dataset, "fresh", &encoders, 4);
    for folder in ["saes", "units/saes"] {
        copy_dir(
            &dir.path().join("grow").join(folder),
            &dir.path().join("fresh").join(folder),
        );
    }
    run(&fresh, &[]);
    assert_eq!(
        last_run(&dir.path().join("fresh"))["saes_fitted"],
        serde_json::json!([])
    );
    assert_same_outputs(&dir.path().join("grow"), &dir.path().join("fresh"), 1e-6);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn an_sae_fitted_in_the_pipeline_equals_sae_train_on_the_same_activations() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[11, 12, 51]);
    let piped = study(dir.path(), &dataset, "piped", &["bert", "dinov2"], 4);
    run(&piped, &[]);

    let acts = dir.path().join("bert.parquet");
    let bert = common::tiny_packages().join("bert");
    let encoded = common::saeshare(&[
        "encode",
        "--encoder",
        bert.to_str().unwrap(),
        "--dataset",
        dataset.to_str().unwrap(),
        "--layers",
        "2",
        "--batch-size",
        "32",
        "--out",
        acts.to_str().unwrap(),
    ]);
    assert!(encoded.status.success(), "{}", common::stderr(&encoded));
    let trained_dir = dir.path().join("trained");
    #[rustfmt::skip]
    let trained = common::saeshare(&[
        "sae", "train", "--activations", acts.to_str().unwrap(), "--layer", "2",
        "--out", trained_dir.to_str().unwrap(), "--k", "4", "--expansion", "2",
        "--steps", "40", "--batch-size", "64", "--lr", "1e-3", "--warmup-steps", "5",
        "--aux-k", "8", "--buffer-rows", "256",
    ]);
    assert!(trained.status.success(), "{}", common::stderr(&trained));

    let (fitted, _) =
        saeshare::sae::Sae::load(&dir.path().join("piped/saes/bert/2"), tch::Device::Cpu).unwrap();
    let (reference, _) = saeshare::sae::Sae::load(&trained_dir, tch::Device::Cpu).unwrap();
    for (a, b) in fitted.parameters().iter().zip(reference.parameters()) {
        let diff = (*a - b).abs().max().double_value(&[]);
        assert!(diff <= 1e-6, "parameters differ by {diff}");
    }
    // A study's SAEs are saved for inference: no optimizer state unless it asks to keep it,
    // and a clear error for whoever tries to train one further.
    let fitted_dir = dir.path().join("piped/saes/bert/2");
    assert!(!fitted_dir.join("optimizer.safetensors").exists());
    let error = saeshare::sae::SaeTrainer::load(&fitted_dir, tch::Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("keep_optimizer = true"), "{error}");
}

#[test]
fn the_activation_cache_gives_the_same_outputs_from_one_encoder_pass() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[13, 14, 53]);
    let encoders = ["bert", "dinov2"];
    let streamed = study(dir.path(), &dataset, "streamed", &encoders, 4);
    run(&streamed, &[]);
    let cached = study(dir.path(), &dataset, "cached", &encoders, 4);
    let text = std::fs::read_to_string(&cached).unwrap();
    std::fs::write(&cached, format!("activation_cache = true\n{text}")).unwrap();
    run(&cached, &["-w", "2"]);
    assert_same_outputs(
        &dir.path().join("streamed"),
        &dir.path().join("cached"),
        1e-6,
    );
    let files = walk(&dir.path().join("cached/activations"));
    assert_eq!(files, 2 * 3, "one activation file per encoder and shard");
    let shards = |encoder: &str| {
        let folder = dir.path().join("cached/activations").join(encoder);
        let mut paths: Vec<_> = std::fs::read_dir(folder)
            .unwrap()
            .map(|f| f.unwrap().path())
            .collect();
        paths.sort();
        paths
    };
    let package = |name: &str| {
        let manifest = common::tiny_packages().join(name).join("encoder.json");
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
        manifest["image"]["input_size"].clone()
    };
    for path in shards("dinov2") {
        let meta = saeshare::activations::read_meta(&path).unwrap();
        let size = meta.input_size.map(|s| serde_json::json!(s));
        assert_eq!(size, Some(package("dinov2")), "{}", path.display());
    }
    for path in shards("bert") {
        assert_eq!(
            saeshare::activations::read_meta(&path).unwrap().input_size,
            None
        );
    }
}
