//! `[fit] memory_gib`: encoders fitted in several passes over the dataset, each with its
//! ceiling twin, give the very SAEs and outputs of one pass.

use std::path::Path;

use crate::common;
use crate::pipeline::{assert_same_outputs, run, study};

/// Every SAE tensor file under `saes/`, by path relative to the run folder, with its bytes.
fn sae_tensors(output: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "safetensors") {
                let name = path.strip_prefix(root).unwrap().display().to_string();
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(&output.join("saes"), output, &mut out);
    out.sort();
    out
}

#[test]
fn encoders_fitted_in_passes_within_a_memory_budget_equal_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[13, 14]);
    let encoders = ["bert", "dinov2", "vit"];
    let with_ceiling = |file: &Path, budget: Option<&str>| {
        let text = std::fs::read_to_string(file).unwrap();
        let mut text = text.replace(
            "floor_permutations = 2",
            "floor_permutations = 2\nceiling_seed = 1",
        );
        if let Some(budget) = budget {
            text = text.replace("[fit]\n", &format!("[fit]\nmemory_gib = {budget}\n"));
        }
        std::fs::write(file, text).unwrap();
    };
    let one = study(dir.path(), &dataset, "one", &encoders, 4);
    with_ceiling(&one, None);
    run(&one, &[]);
    // A budget smaller than any encoder's fits: a pass for each encoder and its twin.
    let passes = study(dir.path(), &dataset, "passes", &encoders, 4);
    with_ceiling(&passes, Some("0.000001"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_saeshare"))
        .args(["--quiet", "run", passes.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    let log = common::stderr(&output);
    assert!(
        log.contains("fit: 3 passes over the dataset within [fit] memory_gib: bert, bert.ceiling; dinov2, dinov2.ceiling; vit, vit.ceiling"),
        "{log}"
    );

    let (a, b) = (
        sae_tensors(&dir.path().join("one")),
        sae_tensors(&dir.path().join("passes")),
    );
    assert_eq!(a.len(), b.len());
    assert!(a.len() >= 6, "{}", a.len());
    for ((name, x), (other, y)) in a.iter().zip(&b) {
        assert_eq!(name, other);
        assert!(x == y, "{name} differs between one pass and three");
    }
    assert_same_outputs(&dir.path().join("one"), &dir.path().join("passes"), 0.0);

    // The plan says so, and prices the largest pass, not the sum.
    let plan = |file: &Path| {
        let out = common::saeshare(&["study", "plan", file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        common::stdout(&out)
    };
    let planned = plan(&passes);
    assert!(
        planned.contains("the fit in 3 passes within [fit] memory_gib"),
        "{planned}"
    );
}
