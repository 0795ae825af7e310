//! Packages of random weights at the paper's real shapes (`saeshare_export random`), what a
//! plan or a benchmark of the paper's study runs without the weights: the shape is the model's,
//! and saeshare encodes with it.

use crate::common;

#[test]
fn a_random_vit_b16_has_the_real_shape_and_encodes() {
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("vit-b16");
    let output = common::python()
        .args(["-m", "saeshare_export", "random", "vit-b16", "--out"])
        .arg(&package)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(package.join("encoder.json")).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 12, "{manifest}");
    assert!(layers.iter().all(|l| l["width"] == 768), "{manifest}");
    assert_eq!(
        manifest["image"]["input_size"],
        serde_json::json!([224, 224])
    );
    assert!(manifest["source"]["model"]
        .as_str()
        .unwrap()
        .contains("random weights"));

    let dataset = common::emoji_subset(dir.path(), &[20]);
    let acts = dir.path().join("acts.parquet");
    let encoded = common::encode(&package, &dataset, &acts, &["--layers", "last"]);
    assert!(encoded.status.success(), "{}", common::stderr(&encoded));

    let unknown = common::python()
        .args(["-m", "saeshare_export", "random", "vit-b17", "--out"])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(common::stderr(&unknown).contains("known: bert-base"));
}
