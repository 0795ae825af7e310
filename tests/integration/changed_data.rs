//! The fault suite's cases of a dataset that changes under a run folder: a shard rewritten under
//! its name, a shard of no rows, a dataset of nothing but empty shards, and the `export`
//! command of a study file named without a folder. Each ends in a clean run's outputs or in a
//! clear error before any work, never in sums counted twice.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use arrow::record_batch::RecordBatch;

use crate::common;
use crate::pipeline::{assert_same_outputs, study};
use saeshare::stats::SavedSums;

const ENCODERS: [&str; 2] = ["bert", "dinov2"];

fn run(study: &Path) -> std::process::Output {
    common::saeshare(&["run", study.to_str().unwrap(), "--no-report"])
}

fn succeeded(output: &std::process::Output) -> String {
    let err = common::stderr(output);
    assert!(output.status.success(), "{err}");
    err
}

/// A rewritten shard (other rows under the same name) is summed once, its codes are made again,
/// and the SAEs fitted on the old one are fitted again, with the log saying why: the run folder
/// ends equal to a fresh run of the dataset as it now is.
#[test]
fn a_shard_rewritten_under_its_name_is_summed_once_and_its_saes_fitted_again() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[20, 60]);
    let file = study(dir.path(), &dataset, "out", &ENCODERS, 4);
    succeeded(&run(&file));
    let out = dir.path().join("out");
    // Results are made as any file (0666 less the umask), not the temporary files' 0600.
    let umask = umask();
    for table in ["wmppc.parquet", "units/saes/bert.json"] {
        let mode = std::fs::metadata(out.join(table))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o666 & !umask, "{table}: {mode:o}");
    }

    // Shard 60 rewritten with other rows (those of shard 61): 100 rows, another size.
    std::fs::copy(
        common::emoji_shards().join("shard-000061.parquet"),
        dataset.join("shard-000060.parquet"),
    )
    .unwrap();
    let err = succeeded(&run(&file));
    assert!(
        err.contains("shard-000060.parquet changed since its SAEs were fitted on it"),
        "{err}"
    );
    assert!(err.contains("every shard is summed anew"), "{err}");
    for pair in ["dinov2__bert", "bert__dinov2", "dinov2__bert__all"] {
        let state = SavedSums::latest(&out.join("pairs").join(pair)).unwrap();
        assert_eq!((state.shards.len(), state.samples), (2, 200), "{pair}");
    }

    let fresh = study(dir.path(), &dataset, "fresh", &ENCODERS, 4);
    succeeded(&run(&fresh));
    assert_same_outputs(&dir.path().join("fresh"), &out, 1e-6);

    // Nothing changed since: nothing is redone.
    let again = succeeded(&run(&file));
    assert!(!again.contains("changed"), "{again}");
    let last: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("last-run.json")).unwrap()).unwrap();
    assert_eq!(last["codes_units"], 0, "{last}");
    assert_eq!(last["saes_fitted"], serde_json::json!([]), "{last}");
}

/// This process's umask, from /proc.
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

/// Changing only the read-out remakes the codes and the pairs, and keeps the SAEs.
#[test]
fn changing_only_the_read_out_keeps_the_saes() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[20]);
    let file = study(dir.path(), &dataset, "out", &ENCODERS, 4);
    // The optimizer's state kept, as a study that will train its SAEs further asks.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("[fit]\n", "[fit]\nkeep_optimizer = true\n");
    std::fs::write(&file, text).unwrap();
    succeeded(&run(&file));
    let optimizer = dir.path().join("out/saes/bert/2/optimizer.safetensors");
    assert!(optimizer.is_file());
    let text = std::fs::read_to_string(&file).unwrap() + "\n[codes]\nread_out = \"relu\"\n";
    std::fs::write(&file, text).unwrap();
    succeeded(&run(&file));
    let last: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/last-run.json")).unwrap())
            .unwrap();
    assert_eq!(last["saes_fitted"], serde_json::json!([]), "{last}");
    assert_eq!(last["codes_units"], 2, "{last}");
}

/// A shard of the dataset's schema and no rows.
fn write_empty_shard(path: &Path) {
    let schema = saeshare::dataset::format::schema(&[]);
    common::write_parquet(path, RecordBatch::new_empty(schema));
}

/// An empty shard is left out with a line in the log, and the outputs are those of the dataset
/// without it; a dataset of nothing but empty shards is refused before any work.
#[test]
fn empty_shards_are_left_out_and_a_dataset_of_only_empty_shards_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[20, 60]);
    let file = study(dir.path(), &dataset, "clean", &ENCODERS, 4);
    succeeded(&run(&file));

    write_empty_shard(&dataset.join("shard-000030.parquet"));
    let with_empty = study(dir.path(), &dataset, "with-empty", &ENCODERS, 4);
    let err = succeeded(&run(&with_empty));
    assert!(
        err.contains("shard-000030.parquet: an empty shard"),
        "{err}"
    );
    assert_same_outputs(
        &dir.path().join("clean"),
        &dir.path().join("with-empty"),
        1e-9,
    );

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    write_empty_shard(&empty.join("shard-000000.parquet"));
    write_empty_shard(&empty.join("shard-000001.parquet"));
    let file = study(dir.path(), &empty, "none", &ENCODERS, 4);
    for command in ["check", "run"] {
        let output = if command == "run" {
            run(&file)
        } else {
            common::saeshare(&["study", "check", file.to_str().unwrap()])
        };
        let err = common::stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{command}: {err}");
        assert!(err.contains("has no rows"), "{command}: {err}");
        assert!(err.contains("2 shard(s) is empty"), "{command}: {err}");
    }
    assert!(!dir.path().join("none/saes").exists());
}

/// The `export` command sees absolute folders even when the study file is named without one.
#[test]
fn export_sees_absolute_folders_when_the_study_file_has_no_folder_in_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[20]);
    let file = study(dir.path(), &dataset, "s", &["bert"], 4);
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "[encoders.bert]\n",
        "[encoders.later]\npackage = \"missing/pkg\"\n\
         export = 'echo \"$SAESHARE_STUDY_DIR|$SAESHARE_DATASET\" > seen.txt'\n\n[encoders.bert]\n",
    );
    std::fs::write(&file, text).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_saeshare"))
        .args(["--quiet", "run", "s.toml", "--no-report"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    // The command made no package: the run says so.
    assert_eq!(output.status.code(), Some(1), "{}", common::stderr(&output));
    assert!(common::stderr(&output).contains("did not make"));
    let seen = std::fs::read_to_string(dir.path().join("seen.txt")).unwrap();
    let real = dir.path().canonicalize().unwrap();
    let (study_dir, data) = seen.trim().split_once('|').unwrap();
    assert_eq!(Path::new(study_dir).canonicalize().unwrap(), real, "{seen}");
    assert!(Path::new(study_dir).is_absolute(), "{seen}");
    assert!(Path::new(data).is_absolute(), "{seen}");
    assert_eq!(
        Path::new(data).canonicalize().unwrap(),
        dataset.canonicalize().unwrap()
    );
}

/// The ceiling's second SAEs are fitted on the very rows of the SAEs they are compared with:
/// a ceiling asked for after rows were appended refits both, saying why.
#[test]
fn a_ceiling_added_after_appended_rows_refits_the_saes_it_is_compared_with() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[20]);
    let file = study(dir.path(), &dataset, "out", &["bert", "dinov2"], 4);
    succeeded(&run(&file));
    std::fs::copy(
        common::emoji_shards().join("shard-000060.parquet"),
        dataset.join("shard-000060.parquet"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("[baselines]\n", "[baselines]\nceiling_seed = 7\n");
    std::fs::write(&file, text).unwrap();
    let err = succeeded(&run(&file));
    assert!(err.contains("so that both see the same rows"), "{err}");
    let fitted_on = |name: &str| {
        let record: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("out/units/saes/{name}.json"))).unwrap(),
        )
        .unwrap();
        record["detail"]["fitted_on"].clone()
    };
    for name in ["bert", "dinov2"] {
        let on = fitted_on(name);
        assert_eq!(on.as_array().map(Vec::len), Some(2), "{name}: {on}");
        assert_eq!(on, fitted_on(&format!("{name}.ceiling")), "{name}");
    }
}
