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

/// Bad arguments and bad datasets are refused with one line naming the problem (status 2 for an
/// argument, 1 for the data), never a traceback. Nothing trains: the five-pair dataset is
/// refused before training, since none of its captions falls in the held-out split.
#[test]
fn align_refuses_bad_input_with_a_clear_line() {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    /// Runs `align` on `dataset` with the flags `more`: it must exit with `code`, without a
    /// traceback, and with one error line that holds each of `needles`.
    fn refused(dataset: &Path, out: &Path, more: &[&str], code: i32, needles: &[&str]) {
        let output = common::python()
            .args(["-m", "saeshare_export", "align", "--dataset"])
            .arg(dataset)
            .arg("--out")
            .arg(out)
            .args(more)
            .output()
            .unwrap();
        let stderr = common::stderr(&output);
        let case = format!("align --dataset {} {}", dataset.display(), more.join(" "));
        assert_eq!(
            output.status.code(),
            Some(code),
            "{case}: the exit status (None: killed by a signal)\n{stderr}"
        );
        assert!(
            !stderr.contains("Traceback"),
            "{case}: a traceback\n{stderr}"
        );
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
        assert_eq!(errors.len(), 1, "{case}: one error line\n{stderr}");
        for needle in needles {
            assert!(
                errors[0].contains(needle),
                "{case}: the error line does not name {needle:?}\n{stderr}"
            );
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // Captions `caption 0` to `caption 4`: none is held out (one caption in ten, by a hash).
    let tiny = dir.path().join("tiny");
    common::write_dataset(&tiny, 5, 5);

    // Arguments: refused by argparse, before anything is read.
    refused(
        &tiny,
        &out,
        &["--epochs", "0"],
        2,
        &["--epochs", "positive"],
    );
    refused(&tiny, &out, &["--batch", "0"], 2, &["--batch", "positive"]);
    refused(&tiny, &out, &["--size", "-3"], 2, &["--size", "positive"]);
    refused(&tiny, &out, &["--epochs", "two"], 2, &["--epochs"]);
    refused(&tiny, &out, &["--lr", "0"], 2, &["--lr", "positive"]);

    // The dataset folder: missing, a file, empty.
    refused(
        &dir.path().join("nowhere"),
        &out,
        &[],
        1,
        &["nowhere", "no such"],
    );
    let file = dir.path().join("file.txt");
    std::fs::write(&file, "not a dataset").unwrap();
    refused(&file, &out, &[], 1, &["file.txt", "is a file"]);
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    refused(&empty, &out, &[], 1, &["empty", "no shard"]);

    // A shard: garbage bytes, or without the image or the caption column.
    let damaged = dir.path().join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    std::fs::write(
        damaged.join("garbage.parquet"),
        b"these bytes are not Parquet",
    )
    .unwrap();
    refused(
        &damaged,
        &out,
        &[],
        1,
        &["garbage.parquet", "not a readable Parquet"],
    );
    let png = common::png(4, 4, 0);
    let columns: Vec<(Field, ArrayRef)> = vec![
        (
            Field::new("sample_id", DataType::UInt64, false),
            Arc::new(UInt64Array::from(vec![0u64, 1])) as ArrayRef,
        ),
        (
            Field::new("image", DataType::Binary, false),
            Arc::new(BinaryArray::from(vec![png.as_slice(), png.as_slice()])) as ArrayRef,
        ),
        (
            Field::new("caption", DataType::Utf8, false),
            Arc::new(StringArray::from(vec!["a cat", "a dog"])) as ArrayRef,
        ),
    ];
    for missing in ["image", "caption"] {
        let folder = dir.path().join(format!("no-{missing}"));
        std::fs::create_dir(&folder).unwrap();
        let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = (columns.iter())
            .filter(|(field, _)| field.name() != missing)
            .cloned()
            .unzip();
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
        common::write_parquet(&folder.join("shard-000000.parquet"), batch);
        let named = format!("no {missing} column");
        refused(
            &folder,
            &out,
            &[],
            1,
            &["shard-000000.parquet", named.as_str()],
        );
    }

    // Too few captions to hold any out: refused before any training, and nothing written.
    refused(&tiny, &out, &[], 1, &["tiny", "5 pairs", "held-out"]);
    assert!(!out.exists(), "a refused run writes nothing");
}
