//! What a study, or a command, is told before any work: a study `check` passes is one `run`
//! can do, the settings that cannot work are refused with their line, and the small commands
//! say what they mean (`diff`'s tolerance and ties, `run -h`).

use std::path::{Path, PathBuf};

use crate::common;
use saeshare::metrics::tables::write_mppc;
use saeshare::metrics::MppcRow;

/// A study of bert and a CNN over `dataset`, with `extra` lines at the end of `[sae]`'s table
/// and `cnn` lines in the CNN's table.
fn study(dir: &Path, dataset: &Path, sae: &str, cnn: &str) -> PathBuf {
    let text = format!(
        r#"name = "checks"
output = "out"
dataset = {{ path = "{}" }}

[sae]
k = 4
expansion = 2
steps = 20
{sae}

[encoders.bert]
package = "{}"
layers = "last"

[encoders.cnn]
package = "{}"
layers = "last"
{cnn}

[[comparisons]]
sources = ["*"]
targets = ["*"]
"#,
        dataset.display(),
        common::tiny_packages().join("bert").display(),
        common::tiny_packages()
            .join("torchvision-resnet18")
            .display(),
    );
    let file = dir.join("checks.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn check(file: &Path) -> std::process::Output {
    common::saeshare(&["study", "check", file.to_str().unwrap()])
}

#[test]
fn check_fails_when_the_study_cannot_run_and_says_how_many_passes_the_fits_take() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[20]);

    // A batch larger than the rows a pass gives: refused by check and by run, before work.
    let file = study(dir.path(), &dataset, "batch_size = 1024", "");
    for output in [
        check(&file),
        common::saeshare(&["run", file.to_str().unwrap(), "--no-report"]),
    ] {
        let err = common::stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{err}");
        assert!(err.contains("batches of 1024 rows"), "{err}");
        assert!(err.contains("exactly 100 rows"), "{err}");
    }
    assert!(!dir.path().join("out/saes").exists());

    // Many passes: checked clean, with the passes printed and a warning.
    let file = study(dir.path(), &dataset, "batch_size = 64", "");
    let output = check(&file);
    assert!(output.status.success(), "{}", common::stderr(&output));
    let printed = common::stdout(&output);
    assert!(
        printed.contains("fit bert: 20 steps of 64 rows over 100 rows a pass: 12.8 passes"),
        "{printed}"
    );
    assert!(common::stderr(&output).contains("see each row about 13 times"));

    // A dataset that is missing: check says what is missing, and fails.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace(&dataset.display().to_string(), "/nowhere/data");
    std::fs::write(&file, text).unwrap();
    let output = check(&file);
    assert_eq!(output.status.code(), Some(1), "{}", common::stderr(&output));
    assert!(common::stdout(&output).contains("it cannot run until these exist"));
    assert!(common::stderr(&output).contains("cannot run until"));
}

#[test]
fn token0_leaves_a_cnn_its_pooling_study_wide_and_is_an_error_on_its_own_table() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[20]);
    let file = study(dir.path(), &dataset, "batch_size = 64", "");
    let text = std::fs::read_to_string(&file).unwrap() + "\n[codes]\nposition = \"token0\"\n";
    std::fs::write(&file, text).unwrap();
    let output = check(&file);
    assert!(output.status.success(), "{}", common::stderr(&output));

    let file = study(
        dir.path(),
        &dataset,
        "batch_size = 64",
        "position = \"token0\"",
    );
    let output = check(&file);
    let err = common::stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    // The error names the CNN's table by its line.
    assert!(err.contains("checks.toml:15: [encoders.cnn]"), "{err}");
    assert!(err.contains("needs tokens"), "{err}");
}

#[test]
fn settings_that_cannot_work_are_refused_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[20]);
    let base = std::fs::read_to_string(study(dir.path(), &dataset, "batch_size = 64", "")).unwrap();
    for (fit, word) in [
        ("buffer_mib = 17592186044416", "buffer_mib at most"),
        ("buffer_rows = 1099511627776", "buffer_rows at most"),
        ("sae_threads = 100000", "sae_threads is per worker"),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, format!("{base}\n[fit]\n{fit}\n")).unwrap();
        let output = check(&file);
        let err = common::stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{fit}: {err}");
        assert!(
            err.contains(word) && err.contains("bad.toml:"),
            "{fit}: {err}"
        );
    }
}

fn mppc_row(best_feature: u32, rho: f64) -> MppcRow {
    MppcRow {
        source: "a".into(),
        source_layer: "0".into(),
        feature: 0,
        target: "b".into(),
        target_layer: "0".into(),
        best_feature: Some(best_feature),
        best_layer: Some("0".into()),
        rho,
        weight: 1.0,
    }
}

#[test]
fn diff_takes_ties_as_choices_and_refuses_a_tolerance_that_is_not_one() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
    // Two features tied at rho 0.5: one run names one, the other the other.
    write_mppc(&a, &[mppc_row(3, 0.5)]).unwrap();
    write_mppc(&b, &[mppc_row(7, 0.5)]).unwrap();
    let diff = |extra: &[&str]| {
        let mut args = vec!["diff", a.to_str().unwrap(), b.to_str().unwrap()];
        args.extend(extra);
        common::saeshare(&args)
    };
    let output = diff(&[]);
    assert!(output.status.success(), "{}", common::stdout(&output));
    let output = diff(&["--may-differ", ""]);
    assert_eq!(output.status.code(), Some(1), "{}", common::stdout(&output));

    for bad in ["NaN", "inf", "-1"] {
        let output = diff(&[&format!("--tolerance={bad}")]);
        let err = common::stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("not a tolerance"), "{bad}: {err}");
    }
}

#[test]
fn run_dash_h_alone_prints_the_help() {
    for args in [vec!["run", "-h"], vec!["dataset", "scan", "-h"]] {
        let output = common::saeshare(&args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            common::stderr(&output)
        );
        let printed = common::stdout(&output);
        assert!(
            printed.contains("Usage:") && printed.contains("--hostfile"),
            "{printed}"
        );
    }
}
