//! The fault suite of the run folder: hostile names, a second run, lost and damaged files,
//! damaged shards, undecodable images, folders that are not runs, a full disk. Each case ends
//! in a clear error naming the file, row or name, or in the outputs of a clean run; never in a
//! panic, lost data or a silently wrong number.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::common;
use crate::pipeline::{assert_same_outputs, study};
use saeshare::dataset::{DatasetWriter, NewRow, WriterOptions};
use saeshare::pipeline::{RunFolder, MARKER_FILE};
use saeshare::stats::SavedSums;

const ENCODERS: [&str; 2] = ["bert", "dinov2"];

/// Two emoji shards of 100 rows and a clean run of the bert + dinov2 study over them: what the
/// faulty runs must end equal to.
fn clean() -> &'static (PathBuf, PathBuf) {
    static CLEAN: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    CLEAN.get_or_init(|| {
        let dir = common::shared_fixture("clean-run");
        let dataset = common::emoji_subset(&dir, &[20, 60]);
        let file = study(&dir, &dataset, "clean", &ENCODERS, 4);
        crate::pipeline::run(&file, &[]);
        (dataset, dir.join("clean"))
    })
}

fn saeshare(args: &[&str]) -> Output {
    common::saeshare(args)
}

fn run(study: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run", study.to_str().unwrap(), "--no-report"];
    args.extend(extra);
    saeshare(&args)
}

fn failed_with(output: &Output, needles: &[&str]) -> String {
    let err = common::stderr(output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected an error exit, got {:?}: {err}",
        output.status
    );
    assert!(!err.contains("panicked"), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    err
}

fn pair_state(output: &Path, pair: &str) -> SavedSums {
    SavedSums::latest(&output.join("pairs").join(pair)).unwrap()
}

/// A study text over `dataset` with encoders of the tiny packages, for the name cases.
fn study_text(dataset: &Path, output: &str) -> String {
    format!(
        r#"name = "faults"
output = "{output}"
dataset = {{ path = "{}" }}

[sae]
k = 4
batch_size = 64
steps = 20

[encoders.bert]
package = "{}"
layers = "last"

[encoders.dinov2]
package = "{}"
layers = "last"

[[comparisons]]
sources = ["*"]
targets = ["*"]

[[sharedness]]
name = "q"
model = "dinov2"
shared_with = ["bert"]
"#,
        dataset.display(),
        common::tiny_packages().join("bert").display(),
        common::tiny_packages().join("dinov2").display()
    )
}

#[test]
fn hostile_names_and_bad_settings_are_refused_by_check_and_run_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let (dataset, _) = clean();
    let base = study_text(dataset, "out");
    // (what replaces what, a word of the error, the line it names: a table's header line for
    // the table's own problems, the key's line for a key's)
    let cases: &[(&str, &str, &str, usize)] = &[
        ("[encoders.bert]", "[encoders.\"..\"]", "\"..\"", 10),
        ("[encoders.bert]", "[encoders.\".\"]", "\".\"", 10),
        ("[encoders.bert]", "[encoders.bert__all]", "'__'", 10),
        ("[encoders.bert]", "[encoders.\"a/b\"]", "letters", 10),
        ("[encoders.bert]", "[encoders.\"\"]", "empty", 10),
        ("name = \"q\"", "name = \"../../x\"", "../../x", 22),
        (
            "layers = \"last\"\n\n[encoders.dinov2]",
            "layers = \"2,2\"\n\n[encoders.dinov2]",
            "twice",
            12,
        ),
        (
            "layers = \"last\"\n\n[encoders.dinov2]",
            "layers = \"last\"\nbatch_size = 0\n\n[encoders.dinov2]",
            "batch_size",
            13,
        ),
        (
            "layers = \"last\"\n\n[encoders.dinov2]",
            "layers = \"last\"\nsae = { expansion = 0 }\n\n[encoders.dinov2]",
            "expansion",
            13,
        ),
        (
            "layers = \"last\"\n\n[encoders.dinov2]",
            "layers = \"last\"\nsae = { kk = 1 }\n\n[encoders.dinov2]",
            "kk",
            13,
        ),
        (
            "layers = \"last\"\n\n[encoders.dinov2]",
            "layers = \"last\"\ndevice = \"tpu\"\n\n[encoders.dinov2]",
            "tpu",
            13,
        ),
        ("k = 4", "k = 0", "k must be", 5),
        ("steps = 20", "steps = 20\nlr = -1", "learning rate", 5),
        ("\" }\n", "\", shards = [] }\n", "shards is empty", 3),
        ("\" }\n", "\", shards = [0, 0] }\n", "twice", 3),
        ("\" }\n", "\", builtin = \"coco\" }\n", "coco", 3),
        ("sources = [\"*\"]", "sources = []", "sources", 18),
        (
            "targets = [\"*\"]",
            "targets = [\"*\"]\nlayers = \"some\"",
            "\"some\"",
            18,
        ),
        (
            "shared_with = [\"bert\"]",
            "shared_with = []",
            "shared_with is empty",
            22,
        ),
        (
            "shared_with = [\"bert\"]",
            "shared_with = [\"bert\"]\nnot_shared_with = [\"bert\"]",
            "both",
            22,
        ),
        (
            "shared_with = [\"bert\"]",
            "shared_with = [\"dinov2\"]",
            "own groups",
            22,
        ),
        (
            "shared_with = [\"bert\"]",
            "shared_with = [\"bert\"]\ntop = 0",
            "top",
            22,
        ),
        (
            "sources = [\"*\"]",
            "sources = [\"bert\"]",
            "no [[comparisons]] compares dinov2 with bert",
            22,
        ),
    ];
    for (i, (from, to, word, line)) in cases.iter().enumerate() {
        assert!(base.contains(from), "case {i}: {from:?}");
        let text = base.replacen(from, to, 1);
        let file = dir.path().join(format!("case-{i}.toml"));
        std::fs::write(&file, &text).unwrap();
        let at = format!("case-{i}.toml:{line}:");
        let checked = saeshare(&["study", "check", file.to_str().unwrap()]);
        failed_with(&checked, &[word, &at]);
        let ran = run(&file, &[]);
        failed_with(&ran, &[word, &at]);
        assert!(
            !dir.path().join("out").exists(),
            "case {i} made the output folder"
        );
    }
    // The same study, clean, checks with its plan and says what `export` commands run.
    let file = dir.path().join("ok.toml");
    let with_export = base.replace(
        "[encoders.bert]\n",
        "[encoders.later]\npackage = \"missing/pkg\"\nexport = \"echo made-by-export\"\n\n[encoders.bert]\n",
    );
    std::fs::write(&file, &with_export).unwrap();
    let checked = saeshare(&["study", "check", file.to_str().unwrap()]);
    assert!(checked.status.success(), "{}", common::stderr(&checked));
    let printed = common::stdout(&checked);
    assert!(printed.contains("`echo made-by-export`"), "{printed}");
    assert!(printed.contains("shell command"), "{printed}");
    std::fs::write(&file, &base).unwrap();
    let checked = saeshare(&["study", "check", file.to_str().unwrap()]);
    assert!(common::stdout(&checked).contains("every check passed"));
}

#[test]
fn a_layer_name_from_a_package_cannot_name_a_path_outside_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (dataset, _) = clean();
    let package = dir.path().join("evil-bert");
    std::fs::create_dir_all(&package).unwrap();
    for entry in std::fs::read_dir(common::tiny_packages().join("bert")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), package.join(entry.file_name())).unwrap();
    }
    let manifest = package.join("encoder.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let layers = json["layers"].as_array_mut().unwrap();
    let last = layers.len() - 1;
    layers[last]["name"] = serde_json::json!("../../escaped");
    std::fs::write(&manifest, serde_json::to_vec(&json).unwrap()).unwrap();
    let text = study_text(dataset, "out").replace(
        &common::tiny_packages().join("bert").display().to_string(),
        &package.display().to_string(),
    );
    let file = dir.path().join("s.toml");
    std::fs::write(&file, text).unwrap();
    let err = failed_with(&run(&file, &[]), &["../../escaped", "encoder.json"]);
    assert!(!dir.path().join("escaped").exists(), "{err}");
    failed_with(
        &saeshare(&["study", "check", file.to_str().unwrap()]),
        &["../../escaped"],
    );
}

#[test]
fn a_lost_record_or_a_damaged_file_is_redone_never_counted_twice() {
    let (dataset, clean_out) = clean();
    let dir = tempfile::tempdir().unwrap();
    let file = study(dir.path(), dataset, "out", &ENCODERS, 4);
    crate::pipeline::run(&file, &[]);
    let out = dir.path().join("out");

    // The SAE record of bert replaced by `[]`: bert is fitted anew, and every pair with it is
    // summed anew rather than on top of its old sums.
    std::fs::write(out.join("units/saes/bert.json"), "[]").unwrap();
    let output = run(&file, &[]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    let state = pair_state(&out, "dinov2__bert");
    assert_eq!((state.shards.len(), state.samples), (2, 200));
    assert_same_outputs(clean_out, &out, 1e-6);

    // A truncated codes file and a changed byte in a pair's sums: both found and redone.
    let codes = out.join("codes/dinov2/2/shard-000020.parquet");
    let bytes = std::fs::read(&codes).unwrap();
    std::fs::write(&codes, &bytes[..bytes.len() / 2]).unwrap();
    let state_dir = out.join("pairs/bert__dinov2").join(format!(
        "state-{}",
        pair_state(&out, "bert__dinov2").generation
    ));
    let acc = state_dir.join("acc-0-0.coact");
    let mut bytes = std::fs::read(&acc).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&acc, &bytes).unwrap();
    let output = run(&file, &[]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    let did: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("last-run.json")).unwrap()).unwrap();
    assert_eq!(
        did["codes_units"], 1,
        "the damaged codes file's unit: {did}"
    );
    let state = pair_state(&out, "bert__dinov2");
    assert_eq!((state.shards.len(), state.samples), (2, 200));
    assert_same_outputs(clean_out, &out, 1e-6);
}

#[test]
fn one_run_at_a_time_holds_a_folder_and_a_killed_runs_lock_is_taken_over() {
    let (dataset, clean_out) = clean();
    let dir = tempfile::tempdir().unwrap();
    let file = study(dir.path(), dataset, "out", &ENCODERS, 4);
    let out = dir.path().join("out");

    // Another run holds the folder: refused at once, naming the holder.
    let holder =
        RunFolder::claim(&out, dataset, "someone-else", "saeshare run other.toml").unwrap();
    failed_with(&run(&file, &[]), &["in use by", "other.toml"]);
    drop(holder);

    // Two runs started together on the same folder: one runs, the other is refused (or, if the
    // first was done before the second began, finds nothing to do); sums are never doubled.
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_saeshare"))
            .args(["--quiet", "run", file.to_str().unwrap(), "--no-report"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outputs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let ok = outputs.iter().filter(|o| o.status.success()).count();
    for o in outputs.iter().filter(|o| !o.status.success()) {
        failed_with(o, &["in use by"]);
    }
    assert!(ok >= 1);
    let state = pair_state(&out, "dinov2__bert");
    assert_eq!((state.shards.len(), state.samples), (2, 200));
    assert_same_outputs(clean_out, &out, 1e-6);

    // A lock file left by a killed run (its holder gone) does not stop the next run.
    std::fs::write(
        out.join("saeshare.lock"),
        r#"{"run_id":"dead","pid":1,"host":"x","started_unix":0,"command":"killed"}"#,
    )
    .unwrap();
    let output = run(&file, &[]);
    assert!(output.status.success(), "{}", common::stderr(&output));
}

#[test]
fn an_undecodable_image_is_skipped_by_image_encoders_and_counted_in_the_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("data");
    let mut writer = DatasetWriter::create(&dataset, WriterOptions::new(100, "test")).unwrap();
    for i in 0..120 {
        let image = if i == 7 {
            common::truncated_png()
        } else {
            common::png(8, 8, i as u8)
        };
        writer
            .push(NewRow {
                image,
                caption: format!("caption number {i}"),
                extra: vec![],
            })
            .unwrap();
    }
    writer.finish().unwrap();
    let file = study(dir.path(), &dataset, "out", &ENCODERS, 4);
    for _ in 0..2 {
        let output = run(&file, &[]);
        assert!(output.status.success(), "{}", common::stderr(&output));
    }
    let out = dir.path().join("out");
    let did: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("last-run.json")).unwrap()).unwrap();
    assert_eq!(did["codes_units"], 0, "the second run had nothing to do");
    let state = pair_state(&out, "dinov2__bert");
    assert_eq!((state.samples, state.dropped), (119, 1));
    let wmppc = saeshare::metrics::tables::read_wmppc(&out.join("wmppc.parquet")).unwrap();
    assert!(wmppc.iter().all(|r| r.samples == 119), "{wmppc:?}");
}

#[test]
fn a_damaged_shard_stops_the_run_before_any_sae_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[21, 22, 61]);
    let shard = dataset.join("shard-000022.parquet");
    let good = std::fs::read(&shard).unwrap();
    let mut damaged = good.clone();
    // The pages damaged, the footer intact: the file opens, its rows do not read.
    let (from, to) = (good.len() / 10, good.len() * 6 / 10);
    damaged[from..to].iter_mut().for_each(|b| *b = 0x5a);
    std::fs::write(&shard, &damaged).unwrap();
    let file = study(dir.path(), &dataset, "out", &ENCODERS, 4);
    for _ in 0..2 {
        failed_with(&run(&file, &[]), &["shard-000022.parquet", "row"]);
        assert!(
            !dir.path().join("out/units/saes").exists(),
            "an SAE fitted on part of the data was recorded"
        );
    }
    std::fs::write(&shard, &good).unwrap();
    let output = run(&file, &[]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    let did: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/last-run.json")).unwrap())
            .unwrap();
    assert_eq!(did["rows"]["bert (fit)"][0], 300, "{did}");
    assert_eq!(
        pair_state(&dir.path().join("out"), "dinov2__bert").samples,
        300
    );
}

#[test]
fn a_folder_that_is_not_a_run_and_the_dataset_folder_are_refused_untouched() {
    let (dataset, _) = clean();
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs");
    std::fs::create_dir_all(theirs.join("saes/bert")).unwrap();
    std::fs::write(theirs.join("saes/bert/mine.txt"), "mine").unwrap();
    std::fs::write(theirs.join("study.json"), "their own").unwrap();
    let file = study(dir.path(), dataset, "theirs", &ENCODERS, 4);
    failed_with(&run(&file, &[]), &["theirs", "did not make", "saes"]);
    failed_with(
        &saeshare(&["study", "check", file.to_str().unwrap()]),
        &["did not make"],
    );
    assert_eq!(
        std::fs::read_to_string(theirs.join("study.json")).unwrap(),
        "their own"
    );
    assert!(theirs.join("saes/bert/mine.txt").is_file());
    assert!(!theirs.join(MARKER_FILE).exists());

    let into_dataset = dir.path().join("into-dataset.toml");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "output = \"theirs\"",
        &format!("output = \"{}\"", dataset.display()),
    );
    std::fs::write(&into_dataset, text).unwrap();
    failed_with(&run(&into_dataset, &[]), &["dataset folder"]);
}

#[test]
fn zero_workers_and_closed_pipes_end_without_a_panic() {
    let (dataset, _) = clean();
    let dir = tempfile::tempdir().unwrap();
    let file = study(dir.path(), dataset, "out", &ENCODERS, 4);
    failed_with(&run(&file, &["-w", "0"]), &["-w 0"]);
    failed_with(&run(&file, &["-n", "0"]), &["-n 0"]);
    for args in [
        format!("dataset inspect {}", common::emoji_shards().display()),
        format!("study check {}", file.display()),
    ] {
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "{} {args} | head -c 1 >/dev/null",
                env!("CARGO_BIN_EXE_saeshare")
            ))
            .output()
            .unwrap();
        let err = common::stderr(&output);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args}: {err}"
        );
    }
}

#[test]
fn a_full_disk_fails_clearly_and_the_next_run_ends_equal_to_a_clean_one() {
    let (dataset, clean_out) = clean();
    let dir = tempfile::tempdir().unwrap();
    let file = study(dir.path(), dataset, "out", &ENCODERS, 4);
    // A file size limit stands in for a full disk: writes past 16 KiB fail with EFBIG.
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 16; exec {} --quiet run {} --no-report",
            env!("CARGO_BIN_EXE_saeshare"),
            file.display()
        ))
        .output()
        .unwrap();
    failed_with(&output, &["File too large"]);
    let output = run(&file, &[]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    assert_same_outputs(clean_out, &dir.path().join("out"), 1e-6);
}

#[test]
fn a_bench_that_builds_the_dataset_in_a_new_output_folder_leaves_a_run_folder() {
    let (dataset, _) = clean();
    let dir = tempfile::tempdir().unwrap();
    let file = study(dir.path(), dataset, "benched", &ENCODERS, 4);
    // The built-in dataset inside the output folder, as the demo has it: planning builds it.
    let inside = dir.path().join("benched/emoji");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        &format!("dataset = {{ path = \"{}\" }}", dataset.display()),
        &format!(
            "dataset = {{ path = \"{}\", builtin = \"emoji\" }}",
            inside.display()
        ),
    );
    std::fs::write(&file, text).unwrap();
    let bench = saeshare(&[
        "bench",
        "encoders",
        file.to_str().unwrap(),
        "--samples",
        "4",
        "--batch-sizes",
        "2",
        "--encoders",
        "bert",
    ]);
    assert!(bench.status.success(), "{}", common::stderr(&bench));
    assert!(inside.is_dir() && dir.path().join("benched").join(MARKER_FILE).is_file());
    let check = saeshare(&["study", "check", file.to_str().unwrap()]);
    assert!(check.status.success(), "{}", common::stderr(&check));
    assert!(
        common::stdout(&check).contains("a saeshare run folder"),
        "{}",
        common::stdout(&check)
    );
}
