//! Studies that use SAEs trained elsewhere (`saes = { LAYER = PATH }`): a layer with an
//! imported SAE is not fitted, and its codes, pairs, floor and report are made as for a fitted
//! one. The import here is the very SAE a first run fitted, as SAELens alone sees it, so the
//! study's outputs must be those of the run that fitted it.

use std::path::{Path, PathBuf};

use crate::common;
use crate::pipeline::{assert_same_outputs, run, study};

/// The SAE in saeshare folder `from`, as SAELens alone sees it (its `cfg.json` and weights
/// under SAELens' name), in `to`.
fn saelens_copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(from.join("cfg.json"), to.join("cfg.json")).unwrap();
    std::fs::copy(
        from.join("sae.safetensors"),
        to.join("sae_weights.safetensors"),
    )
    .unwrap();
}

/// A copy of study `base` into `output`, with `saes` added to dinov2's table and `extra`
/// settings in front.
fn with_imports(dir: &Path, base: &Path, output: &str, saes: &str, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(base).unwrap();
    let name = base.file_stem().unwrap().to_str().unwrap();
    let text = text
        .replace(
            &format!("output = \"{name}\""),
            &format!("output = \"{output}\""),
        )
        .replace(
            "[encoders.dinov2]\n",
            &format!("[encoders.dinov2]\nsaes = {saes}\n"),
        );
    let text = match extra {
        "" => text,
        extra => text.replace("[baselines]\n", &format!("[baselines]\n{extra}\n")),
    };
    let path = dir.join(format!("{output}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn last_run(output: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(output.join("last-run.json")).unwrap()).unwrap()
}

#[test]
fn a_study_with_an_imported_sae_runs_resumes_and_reports_as_with_the_fitted_one() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[16, 56]);
    let fitted = study(dir.path(), &dataset, "fitted", &["bert", "dinov2"], 4);
    run(&fitted, &["--no-report"]);

    // dinov2's last layer imports the SAE the first run fitted there; its other layers are
    // fitted. The ceiling has second SAEs of bert, and says why it has none of dinov2.
    let imported = dir.path().join("elsewhere/dinov2-2");
    saelens_copy(&dir.path().join("fitted/saes/dinov2/2"), &imported);
    let saes = format!("{{ \"2\" = \"{}\" }}", imported.display());
    let mixed = with_imports(dir.path(), &fitted, "mixed", &saes, "ceiling_seed = 7");
    let output = common::saeshare(&["run", mixed.to_str().unwrap()]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    let stderr = common::stderr(&output);
    assert!(
        stderr.contains("no ceiling baseline for dinov2") && stderr.contains("layer 2"),
        "{stderr}"
    );
    let out = dir.path().join("mixed");
    assert!(
        !out.join("saes/dinov2/2").exists(),
        "the imported layer is not fitted"
    );
    assert!(
        out.join("saes/dinov2/1/sae.json").is_file(),
        "the others are"
    );
    assert!(out.join("saes/bert.ceiling/2/sae.json").is_file());
    assert_same_outputs(&dir.path().join("fitted"), &out, 1e-6);
    let meta = saeshare::codes::CodesReader::open(&out.join("codes/dinov2/2/shard-000016.parquet"))
        .unwrap()
        .meta()
        .clone();
    assert!(
        meta.sae
            .as_deref()
            .is_some_and(|s| s.contains("dinov2-2 (saelens topk)")),
        "{meta:?}"
    );
    let index = std::fs::read_to_string(out.join("report/index.html")).unwrap();
    assert!(
        index.contains("layer 2: imported"),
        "the report names the import"
    );
    assert!(index.contains("No ceiling baseline for dinov2"));

    // Resumed: nothing to do.
    run(&mixed, &["--no-report"]);
    let again = last_run(&out);
    assert_eq!(again["saes_fitted"], serde_json::json!([]), "{again}");
    assert_eq!(again["codes_units"], 0, "{again}");

    // The imported SAE changed: dinov2's codes and its pairs are made again, nothing is fitted.
    let changed = common::python()
        .args([
            "-c",
            "import sys; from safetensors.torch import load_file, save_file; \
             w = load_file(sys.argv[1]); w['W_enc'] = w['W_enc'] * 1.5; save_file(w, sys.argv[1])",
        ])
        .arg(imported.join("sae_weights.safetensors"))
        .output()
        .unwrap();
    assert!(changed.status.success(), "{}", common::stderr(&changed));
    run(&mixed, &["--no-report"]);
    let after = last_run(&out);
    assert_eq!(after["saes_fitted"], serde_json::json!([]), "{after}");
    assert_eq!(after["codes_units"], 2, "dinov2 on two shards: {after}");
    let updated = after["pairs_updated"].as_array().unwrap();
    assert!(
        !updated.is_empty()
            && updated
                .iter()
                .all(|p| p.as_str().unwrap().contains("dinov2")),
        "{after}"
    );
}

#[test]
fn a_bad_import_is_refused_before_any_work_naming_the_layer_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[17]);
    let base = study(dir.path(), &dataset, "base", &["bert", "dinov2"], 4);
    // An SAE of width 5 by SAELens, for a layer that is wider.
    let narrow = dir.path().join("narrow");
    let made = common::python()
        .args([
            "-c",
            "import sys; from sae_lens import TopKSAE, TopKSAEConfig; \
             TopKSAE(TopKSAEConfig(d_in=5, d_sae=10, k=2)).save_model(sys.argv[1])",
        ])
        .arg(&narrow)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", common::stderr(&made));
    let refused = |saes: &str, words: &[&str]| {
        let file = with_imports(dir.path(), &base, "bad", saes, "");
        for args in [
            vec!["study", "check", file.to_str().unwrap()],
            vec!["run", file.to_str().unwrap()],
        ] {
            let output = common::saeshare(&args);
            let err = common::stderr(&output);
            assert!(!output.status.success(), "{saes}: {args:?} succeeded");
            for word in words {
                assert!(
                    err.contains(word),
                    "{saes}: {args:?}: {word:?} missing from {err}"
                );
            }
            assert!(!err.contains("panicked"), "{err}");
        }
        assert!(
            !dir.path().join("bad/saes/bert").exists(),
            "{saes}: nothing was fitted"
        );
    };
    let at = |path: &Path| format!("{{ \"2\" = \"{}\" }}", path.display());
    let table = |rest: &str| {
        format!(
            "{{ \"2\" = {{ path = \"{}\", {rest} }} }}",
            narrow.display()
        )
    };
    refused(&at(&narrow), &["layer \"2\"", "width 5", "wide"]);
    refused(
        &format!("{{ \"9\" = \"{}\" }}", narrow.display()),
        &["\"9\"", "chosen layers"],
    );
    refused(
        &at(&dir.path().join("missing")),
        &["missing", "no such file"],
    );
    refused(
        &table("format = \"sparsify\""),
        &["saelens", "format = \"sparsify\""],
    );
    refused(&table("formt = \"saelens\""), &["formt"]);
    refused(
        &table("scale_mean = true"),
        &["scale_mean", "did not save it"],
    );
    // An SAE inside the run folder, whose files saeshare replaces, is refused, however the
    // path reaches it.
    let inside = dir.path().join("bad/kept/x");
    std::fs::create_dir_all(&inside).unwrap();
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    for file in ["cfg.json", "sae_weights.safetensors"] {
        std::fs::copy(narrow.join(file), inside.join(file)).unwrap();
    }
    refused(&at(&inside), &["inside the study's output folder"]);
    let roundabout = dir.path().join("other/../bad/kept/x");
    refused(&at(&roundabout), &["inside the study's output folder"]);

    // SAEs of the layer's width whose weights cannot encode: a NaN in W_enc, and a cfg.json
    // whose d_sae contradicts the tensors. Both are read before any work, naming the SAE.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::tiny_packages().join("dinov2/encoder.json")).unwrap(),
    )
    .unwrap();
    let width = (manifest["layers"].as_array().unwrap().iter())
        .find(|l| l["name"] == "2")
        .unwrap()["width"]
        .as_u64()
        .unwrap();
    let (nan, contradicting) = (dir.path().join("nan"), dir.path().join("contradicting"));
    let made = common::python()
        .args([
            "-c",
            "import json, sys, torch; from sae_lens import TopKSAE, TopKSAEConfig\n\
             w = int(sys.argv[1])\n\
             sae = TopKSAE(TopKSAEConfig(d_in=w, d_sae=2 * w, k=2))\n\
             sae.save_model(sys.argv[3])\n\
             with torch.no_grad(): sae.W_enc[0, 0] = float('nan')\n\
             sae.save_model(sys.argv[2])\n\
             cfg = json.load(open(sys.argv[3] + '/cfg.json'))\n\
             cfg['d_sae'] = 3 * w\n\
             json.dump(cfg, open(sys.argv[3] + '/cfg.json', 'w'))",
        ])
        .arg(width.to_string())
        .arg(&nan)
        .arg(&contradicting)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", common::stderr(&made));
    refused(
        &at(&nan),
        &["NaN or infinite", "W_enc", nan.to_str().unwrap()],
    );
    refused(
        &at(&contradicting),
        &[contradicting.to_str().unwrap(), "d_sae"],
    );
}
