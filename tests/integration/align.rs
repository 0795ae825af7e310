//! `python -m saeshare_export align`: contrastive tuning of an image tower against a locked
//! text tower, made small: 200 emoji at 32 px, 6 epochs of 3 steps, on the registry weights (a
//! randomly initialised MobileNetV2 in inference mode gives every image the same vector, so it
//! cannot show tuning). The loss falls, the same seed gives the same weights, and both packages
//! load in saeshare, whose `projection` layers give the embeddings the tuning measured
//! retrieval with.

use std::path::{Path, PathBuf};

use crate::common;

/// Runs `align` on `dataset` into `out` with seed `seed`; its printed summary.
fn align(dataset: &Path, out: &Path, seed: u32) -> serde_json::Value {
    let output = common::python()
        .args(["-m", "saeshare_export", "align", "--dataset"])
        .arg(dataset)
        .arg("--out")
        .arg(out)
        .args(["--size", "32", "--epochs", "6", "--batch", "64"])
        .args(["--seed", &seed.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    serde_json::from_str(&common::stdout(&output)).unwrap()
}

/// The held-out retrieval of the Rust side's `projection` embeddings (pooled as the packages
/// say), computed as `align` computes it.
const RETRIEVAL_FROM_RUST: &str = r#"
import json, os, sys
import numpy as np, pyarrow.parquet as pq, torch
from saeshare_export.align import held_out, retrieval
images, texts, dataset = sys.argv[1:4]
def vectors(path):
    t = pq.read_table(path)
    return dict(zip(t.column("sample_id").to_pylist(), np.stack(t.column("activation").to_pylist())))
img, txt = vectors(images), vectors(texts)
pairs = []
for f in sorted(os.listdir(dataset)):
    t = pq.read_table(os.path.join(dataset, f), columns=["sample_id", "caption"]).to_pydict()
    pairs += [(i, c.strip()) for i, c in zip(t["sample_id"], t["caption"]) if held_out(c.strip())]
captions = sorted({c for _, c in pairs})
index = {c: i for i, c in enumerate(captions)}
first = {}
for i, c in pairs:
    first.setdefault(c, i)
image_emb = torch.tensor(np.stack([img[i] for i, _ in pairs]))
text_emb = torch.tensor(np.stack([txt[first[c]] for c in captions]))
print(json.dumps(retrieval(image_emb, text_emb, torch.tensor([index[c] for _, c in pairs]))))
"#;

fn encode(package: &Path, dataset: &Path, out: &Path) {
    let encoded = common::encode(package, dataset, out, &["--layers", "projection"]);
    assert!(encoded.status.success(), "{}", common::stderr(&encoded));
}

#[test]
fn align_tunes_reproducibly_and_its_packages_give_the_measured_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[20, 60]);
    let first = dir.path().join("first");
    let summary = align(&dataset, &first, 5);
    let again = align(&dataset, &dir.path().join("again"), 5);
    assert_eq!(
        summary["weights_sha256"], again["weights_sha256"],
        "the same seed gives the same weights"
    );

    let image = first.join("mobilenet-v2-lit");
    let text = first.join("all-minilm-l6-v2-lit");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.join("alignment.json")).unwrap()).unwrap();
    let loss: Vec<f64> = (report["loss"].as_array().unwrap().iter())
        .map(|l| l.as_f64().unwrap())
        .collect();
    assert_eq!(loss.len(), 6);
    assert!(loss[5] < loss[0] * 0.95, "the loss falls: {loss:?}");
    assert!(report["tuned_stages_changed_by"].as_f64().unwrap() > 0.0);
    let held = &report["pairs"]["held_out"];
    assert!(held.as_u64().unwrap() > 5, "{report}");
    assert_eq!(
        report["pairs"]["train"].as_u64().unwrap() + held.as_u64().unwrap(),
        200
    );
    for figures in ["tuned", "linear_baseline", "chance"] {
        let r = &report["retrieval_held_out"][figures];
        assert!(
            r["image_to_text_r@5"].as_f64().unwrap() >= r["image_to_text_r@1"].as_f64().unwrap()
        );
    }

    // Both packages load; their projection layers are the shared space's width.
    let manifest = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p.join("encoder.json")).unwrap()).unwrap()
    };
    let width =
        |m: &serde_json::Value| m["layers"].as_array().unwrap().last().unwrap()["width"].clone();
    assert_eq!(width(&manifest(&image)), width(&manifest(&text)));
    assert_eq!(manifest(&image)["layers"][4]["name"], "projection");
    let (image_rows, text_rows): (PathBuf, PathBuf) = (
        dir.path().join("image.parquet"),
        dir.path().join("text.parquet"),
    );
    encode(&image, &dataset, &image_rows);
    encode(&text, &dataset, &text_rows);
    let output = common::python()
        .args(["-c", RETRIEVAL_FROM_RUST])
        .arg(&image_rows)
        .arg(&text_rows)
        .arg(&dataset)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    let ours: serde_json::Value = serde_json::from_str(common::stdout(&output).trim()).unwrap();
    let measured = &report["retrieval_held_out"]["tuned"];
    for key in [
        "image_to_text_r@1",
        "image_to_text_r@5",
        "text_to_image_r@5",
    ] {
        let (a, b) = (ours[key].as_f64().unwrap(), measured[key].as_f64().unwrap());
        // The Rust side resizes with its own bilinear filter: a rank may move, no more.
        assert!(
            (a - b).abs() <= 0.1,
            "{key}: Rust embeddings {a}, align measured {b}"
        );
    }
}
