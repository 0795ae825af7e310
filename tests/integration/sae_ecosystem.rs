//! saeshare's SAEs in the tools researchers already use: every SAE folder opens with SAELens'
//! `SAE.load_from_disk`, and SAELens' `encode` gives the codes `saeshare sae encode` writes.

use std::path::{Path, PathBuf};

use crate::common;

/// A small activation file written by pyarrow: 1,500 samples of width 16, layer `blocks.2`.
const WRITE_ACTIVATIONS: &str = r#"
import sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
rng = np.random.default_rng(11)
n, d_in = 1500, 16
x = rng.normal(size=(n, d_in)) + rng.normal(size=(1, d_in))
table = pa.table({
    "layer": pa.array(["blocks.2"] * n),
    "sample_id": pa.array(np.arange(n), type=pa.uint64()),
    "activation": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), type=pa.float32()), d_in),
})
pq.write_table(table, sys.argv[1])
"#;

/// Loads the SAE folder with SAELens, encodes the activations, and compares with the codes file.
const COMPARE_WITH_SAELENS: &str = r#"
import json, sys
import numpy as np, pyarrow.compute as pc, pyarrow.parquet as pq, torch
from sae_lens import SAE
sae_dir, activations, codes = sys.argv[1:4]
sae = SAE.load_from_disk(sae_dir)
table = pq.read_table(activations)
x = torch.tensor(np.stack(table.column("activation").to_pylist()), dtype=torch.float32)
with torch.no_grad():
    theirs = sae.encode(x).numpy()
ours = np.zeros_like(theirs)
c = pq.read_table(codes)
ids = c.column("sample_id").to_numpy().astype(np.int64)
if "values" in c.column_names:  # one row per sample (codes with most latents active)
    ours[ids] = np.stack(c.column("values").to_numpy(zero_copy_only=False))
else:
    c = c.filter(pc.is_valid(c["feature"]))  # a sample with no active latent is one null row
    ours[c.column("sample_id").to_numpy().astype(np.int64), c.column("feature").to_numpy().astype(np.int64)] = c.column("value").to_numpy()
cfg = sae.cfg.to_dict()
print(json.dumps({
    "class": type(sae).__name__,
    "architecture": cfg["architecture"],
    "d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "k": cfg.get("k"),
    "encoder": cfg["metadata"].get("saeshare_encoder"),
    "layer": cfg["metadata"].get("saeshare_layer"),
    "max_diff": float(np.abs(theirs - ours).max()),
    "active_theirs": int((theirs != 0).sum()),
    "active_ours": int((ours != 0).sum()),
}))
"#;

/// The activation file of [`WRITE_ACTIVATIONS`], in `dir`.
fn write_activations(dir: &Path) -> PathBuf {
    let activations = dir.join("activations.parquet");
    let status = common::python()
        .args(["-c", WRITE_ACTIVATIONS])
        .arg(&activations)
        .status()
        .unwrap();
    assert!(status.success());
    activations
}

/// `saeshare sae encode` of layer `blocks.2` of `activations` with the SAE at `sae`, and the
/// `extra` flags.
fn sae_encode(sae: &Path, activations: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "sae",
        "encode",
        "--sae",
        sae.to_str().unwrap(),
        "--activations",
        activations.to_str().unwrap(),
        "--layer",
        "blocks.2",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    common::saeshare(&args)
}

fn train_and_encode(dir: &Path, activations: &Path, kind: &str) -> (PathBuf, PathBuf) {
    let sae = dir.join(format!("sae-{kind}"));
    let codes = dir.join(format!("codes-{kind}.parquet"));
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let trained = common::saeshare(&[
        "sae",
        "train",
        "--activations",
        &path(activations),
        "--layer",
        "blocks.2",
        "--out",
        &path(&sae),
        "--kind",
        kind,
        "--k",
        "4",
        "--expansion",
        "4",
        "--steps",
        "80",
        "--batch-size",
        "128",
        "--warmup-steps",
        "10",
        "--buffer-rows",
        "1024",
        "--checkpoint-every",
        "40",
    ]);
    assert!(trained.status.success(), "{}", common::stderr(&trained));
    let encoded = sae_encode(&sae, activations, &codes, &[]);
    assert!(encoded.status.success(), "{}", common::stderr(&encoded));
    (sae, codes)
}

#[test]
fn saelens_loads_every_kind_of_saeshare_sae_and_encodes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let activations = write_activations(dir.path());

    for (kind, class, architecture) in [
        ("topk", "TopKSAE", "topk"),
        ("batch-topk", "JumpReLUSAE", "jumprelu"),
        ("relu", "StandardSAE", "standard"),
    ] {
        let (sae, codes) = train_and_encode(dir.path(), &activations, kind);
        // One weights file: SAELens' name is a link to saeshare's.
        let link = sae.join("sae_weights.safetensors");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("sae.safetensors"),
            "{kind}"
        );
        let output = common::python()
            .args(["-c", COMPARE_WITH_SAELENS])
            .arg(&sae)
            .arg(&activations)
            .arg(&codes)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{kind}: {}",
            common::stderr(&output)
        );
        let seen: serde_json::Value = serde_json::from_str(common::stdout(&output).trim()).unwrap();
        assert_eq!(seen["class"], class, "{kind}: {seen}");
        assert_eq!(seen["architecture"], architecture, "{kind}");
        assert_eq!(seen["d_in"], 16, "{kind}");
        assert_eq!(seen["d_sae"], 64, "{kind}");
        assert_eq!(seen["encoder"], "activations", "{kind}: {seen}");
        assert_eq!(seen["layer"], "blocks.2", "{kind}");
        if kind == "topk" {
            assert_eq!(seen["k"], 4);
        }
        assert!(
            seen["max_diff"].as_f64().unwrap() < 1e-5,
            "{kind}: SAELens' encode differs from saeshare's codes: {seen}"
        );
        assert_eq!(seen["active_theirs"], seen["active_ours"], "{kind}: {seen}");
        assert!(seen["active_ours"].as_u64().unwrap() > 0, "{kind}");
    }
}

/// Writes a sparsify folder and a saev checkpoint by their formats' specifications (sparsify's
/// `Sae.save_to_disk`: `cfg.json` with `d_in` + `sae.safetensors`; saev's `nn.dump`: a JSON
/// line, then `torch.save` of the state dict).
const WRITE_OTHER_FORMATS: &str = r#"
import io, json, os, sys
import torch
from safetensors.torch import save_file
sparsify, saev = sys.argv[1:3]
os.makedirs(sparsify)
json.dump({"activation": "topk", "expansion_factor": 4, "normalize_decoder": True, "num_latents": 0,
           "k": 8, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": 12},
          open(os.path.join(sparsify, "cfg.json"), "w"))
save_file({"encoder.weight": torch.zeros(48, 12), "encoder.bias": torch.zeros(48),
           "W_dec": torch.zeros(48, 12), "b_dec": torch.zeros(12)}, os.path.join(sparsify, "sae.safetensors"))
with open(saev, "wb") as fd:
    fd.write((json.dumps({"d_vit": 10, "exp_factor": 8, "sparsity_coeff": 4e-4, "seed": 0}) + "\n").encode())
    torch.save({"W_enc": torch.zeros(10, 80), "b_enc": torch.zeros(80), "W_dec": torch.zeros(80, 10),
                "b_dec": torch.zeros(10)}, fd)
"#;

#[test]
fn sae_inspect_names_the_format_and_shape_of_each_kind_of_sae() {
    let dir = tempfile::tempdir().unwrap();
    let activations = write_activations(dir.path());
    let (sae, _) = train_and_encode(dir.path(), &activations, "topk");
    let inspect = |path: &Path| {
        let output = common::saeshare(&["sae", "inspect", path.to_str().unwrap()]);
        (
            output.status.success(),
            common::stdout(&output),
            common::stderr(&output),
        )
    };
    let (ok, text, err) = inspect(&sae);
    assert!(ok, "{err}");
    for line in [
        "format:        saeshare",
        "architecture:  topk",
        "d_in:          16",
        "d_sae:         64",
        "k:             4",
        "source:        activations layer blocks.2",
        "tensor W_enc: [16, 64]",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }

    // The same SAE as SAELens alone sees it: cfg.json and its weights, no sae.json.
    let saelens = dir.path().join("saelens-only");
    std::fs::create_dir(&saelens).unwrap();
    std::fs::copy(sae.join("cfg.json"), saelens.join("cfg.json")).unwrap();
    std::fs::copy(
        sae.join("sae.safetensors"),
        saelens.join("sae_weights.safetensors"),
    )
    .unwrap();
    let (ok, text, err) = inspect(&saelens);
    assert!(ok, "{err}");
    assert!(text.contains("format:        saelens"), "{text}");
    assert!(text.contains("architecture:  topk"), "{text}");
    assert!(
        text.contains("source:        activations layer blocks.2"),
        "{text}"
    );

    let sparsify = dir.path().join("layers.6");
    let saev = dir.path().join("saev.pt");
    let status = common::python()
        .args(["-c", WRITE_OTHER_FORMATS])
        .arg(&sparsify)
        .arg(&saev)
        .status()
        .unwrap();
    assert!(status.success());
    let (ok, text, err) = inspect(&sparsify);
    assert!(ok, "{err}");
    for line in [
        "format:        sparsify",
        "d_in:          12",
        "d_sae:         48",
        "k:             8",
        "source:        layers.6",
        "tensor encoder.weight: [48, 12]",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let (ok, text, err) = inspect(&saev);
    assert!(ok, "{err}");
    assert!(text.contains("format:        saev"), "{text}");
    assert!(text.contains("d_sae:         80"), "{text}");

    // A folder of something else says what was expected.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, _, err) = inspect(&empty);
    assert!(!ok);
    assert!(
        err.contains("empty") && err.contains("sae.json") && err.contains("cfg.json"),
        "{err}"
    );
}

/// SAEs made by SAELens, sparsify and saev themselves (random weights, `save_model`,
/// `save_to_disk`, `nn.dump`), in five shapes saeshare must read: TopK with d_sae not a
/// multiple of d_in, JumpReLU with per-latent thresholds and no `b_dec` on the input, standard
/// with `layer_norm` inputs, sparsify TopK, saev ReLU on centred and scaled inputs. Then the
/// reference codes, by each tool's own encode.
const MAKE_FOREIGN_SAES: &str = r#"
import json, os, sys
import numpy as np, pyarrow.parquet as pq, torch
from sae_lens import TopKSAE, TopKSAEConfig, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig
out, activations = sys.argv[1:3]
torch.manual_seed(3)
x = torch.tensor(np.stack(pq.read_table(activations).column("activation").to_pylist()), dtype=torch.float32)
d_in = x.shape[1]
def randomise(sae):
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if name != "threshold" else 0.0))
    return sae
saes = {
    "saelens-topk": randomise(TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=40, k=5))),
    "saelens-jumprelu": randomise(JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=48, apply_b_dec_to_input=False))),
    "saelens-standard": randomise(StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=32, normalize_activations="layer_norm"))),
}
with torch.no_grad():
    saes["saelens-jumprelu"].threshold.copy_(torch.rand(48) * 0.8)
references = {}
for name, sae in saes.items():
    sae.save_model(os.path.join(out, name))
    with torch.no_grad():
        references[name] = sae.encode(x).numpy().tolist()
# sparsify, by its own library: SparseCoder.save_to_disk, and its encode (top-k values and indices).
from sparsify import SparseCoder, SparseCoderConfig
coder = SparseCoder(d_in, SparseCoderConfig(expansion_factor=2, k=6))
with torch.no_grad():
    for p in coder.parameters():
        p.copy_(torch.randn_like(p) * 0.3)
coder.save_to_disk(os.path.join(out, "sparsify-topk"))
with torch.no_grad():
    encoded = coder.encode(x)
    dense = torch.zeros(x.shape[0], coder.num_latents).scatter_(-1, encoded.top_indices, encoded.top_acts)
references["sparsify-topk"] = dense.numpy().tolist()
# saev, by its own library: nn.dump, and its forward on activations as its data loader scales
# them ((x - mean) / scalar, each saved by torch.save, as saev's scale_mean and scale_norm files).
import saev.config, saev.nn
sv = saev.nn.SparseAutoencoder(saev.config.SparseAutoencoder(d_vit=d_in, exp_factor=3))
with torch.no_grad():
    for p in sv.parameters():
        p.copy_(torch.randn_like(p) * 0.3)
saev.nn.dump(os.path.join(out, "saev", "sae.pt"), sv)
mean = x.mean(0) + 0.5
scalar = (x - mean).norm(dim=1).mean() / d_in ** 0.5
torch.save(mean, os.path.join(out, "saev", "mean.pt"))
torch.save(scalar, os.path.join(out, "saev", "scalar.pt"))
with torch.no_grad():
    references["saev"] = sv((x - mean) / scalar)[1].numpy().tolist()
json.dump(references, open(os.path.join(out, "references.json"), "w"))
"#;

const CODES_AS_DENSE: &str = r#"
import json, sys
import numpy as np, pyarrow.compute as pc, pyarrow.parquet as pq
codes, n, d_sae = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = pq.read_table(codes)
meta = {k.decode(): v.decode() for k, v in pq.read_metadata(codes).metadata.items()}
dense = np.zeros((n, d_sae), dtype=np.float32)
if "values" in c.column_names:  # one row per sample (codes with most latents active)
    dense[c.column("sample_id").to_numpy().astype(np.int64)] = np.stack(c.column("values").to_numpy(zero_copy_only=False))
else:
    c = c.filter(pc.is_valid(c["feature"]))
    dense[c.column("sample_id").to_numpy().astype(np.int64), c.column("feature").to_numpy().astype(np.int64)] = c.column("value").to_numpy()
print(json.dumps({"dense": dense.tolist(), "meta": meta}))
"#;

#[test]
fn sae_encode_reads_saelens_and_sparsify_saes_and_encodes_as_they_do() {
    let dir = tempfile::tempdir().unwrap();
    let activations = write_activations(dir.path());
    let made = common::python()
        .args(["-c", MAKE_FOREIGN_SAES])
        .arg(dir.path())
        .arg(&activations)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", common::stderr(&made));
    let references: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("references.json")).unwrap())
            .unwrap();

    let saev = dir.path().join("saev");
    let (mean, scalar) = (saev.join("mean.pt"), saev.join("scalar.pt"));
    let saev_flags = [
        "--scale-mean",
        mean.to_str().unwrap(),
        "--scale-norm",
        scalar.to_str().unwrap(),
    ];
    for (name, d_sae, architecture, extra) in [
        ("saelens-topk", 40, "topk", &[][..]),
        ("saelens-jumprelu", 48, "jumprelu", &[]),
        ("saelens-standard", 32, "standard", &[]),
        ("sparsify-topk", 32, "topk", &[]),
        ("saev", 48, "relu", &saev_flags[..]),
    ] {
        let sae = match name {
            "saev" => saev.join("sae.pt"),
            _ => dir.path().join(name),
        };
        let codes = dir.path().join(format!("{name}.parquet"));
        let encoded = sae_encode(&sae, &activations, &codes, extra);
        assert!(
            encoded.status.success(),
            "{name}: {}",
            common::stderr(&encoded)
        );
        let read = common::python()
            .args(["-c", CODES_AS_DENSE])
            .arg(&codes)
            .arg("1500")
            .arg(d_sae.to_string())
            .output()
            .unwrap();
        assert!(read.status.success(), "{}", common::stderr(&read));
        let ours: serde_json::Value = serde_json::from_str(common::stdout(&read).trim()).unwrap();
        let theirs = references[name].as_array().unwrap();
        let mut worst = 0f64;
        let mut active = 0usize;
        for (row_ours, row_theirs) in ours["dense"].as_array().unwrap().iter().zip(theirs) {
            for (a, b) in row_ours
                .as_array()
                .unwrap()
                .iter()
                .zip(row_theirs.as_array().unwrap())
            {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                worst = worst.max((a - b).abs());
                active += usize::from(b != 0.0);
            }
        }
        assert!(
            active > 1500,
            "{name}: the reference codes are nearly empty ({active})"
        );
        assert!(
            worst < 1e-5,
            "{name}: codes differ from the tool's own encode by {worst}"
        );
        let meta = &ours["meta"];
        assert_eq!(meta["saeshare.codes.encoder"], "activations", "{name}");
        assert!(
            meta["saeshare.codes.sae"]
                .as_str()
                .unwrap()
                .contains(architecture),
            "{name}: {meta}"
        );
    }

    // A width mismatch names both widths; an unsupported normalisation says what to do.
    let narrow = dir.path().join("narrow");
    let wrong = common::python()
        .args([
            "-c",
            "import sys; from sae_lens import StandardSAE, StandardSAEConfig; \
             StandardSAE(StandardSAEConfig(d_in=12, d_sae=24)).save_model(sys.argv[1]); \
             StandardSAE(StandardSAEConfig(d_in=16, d_sae=24, normalize_activations='expected_average_only_in')).save_model(sys.argv[2])",
        ])
        .arg(&narrow)
        .arg(dir.path().join("scaled"))
        .output()
        .unwrap();
    assert!(wrong.status.success(), "{}", common::stderr(&wrong));
    // A saev SAE without its scalings says which it needs.
    for (sae, expected) in [
        ("narrow", vec!["width 16", "width 12", "saelens"]),
        ("scaled", vec!["expected_average_only_in", "fold"]),
        ("saev/sae.pt", vec!["scale_mean", "scale_norm", "false"]),
    ] {
        let out = dir
            .path()
            .join(format!("{}.parquet", sae.replace('/', "-")));
        let failed = sae_encode(&dir.path().join(sae), &activations, &out, &[]);
        assert!(!failed.status.success(), "{sae}");
        let err = common::stderr(&failed);
        for word in expected {
            assert!(err.contains(word), "{sae}: {word:?} missing from {err}");
        }
        assert!(!out.exists(), "{sae}: no codes file on an error");
    }
}
