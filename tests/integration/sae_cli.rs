//! `saeshare sae train` on an activation file written by another tool (pyarrow, no saeshare
//! metadata, float64 fixed-size lists): the planted dictionary comes back out.

use crate::common;

use saeshare::sae::Sae;
use tch::{Device, Kind, Tensor};

const WRITE_PLANTED: &str = r#"
import json, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
rng = np.random.default_rng(5)
d_in, d_true, k_true, n = 24, 48, 3, 16000
atoms = rng.normal(size=(d_true, d_in)); atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
x = np.zeros((n, d_in))
for i in range(n):
    for j in rng.choice(d_true, size=k_true, replace=False):
        x[i] += rng.uniform(0.5, 2.0) * atoms[j]
x += rng.normal(scale=0.01, size=x.shape)
flat = pa.array(x.reshape(-1), type=pa.float64())
table = pa.table({
    "layer": pa.array(["blocks.3"] * n),
    "sample_id": pa.array(np.arange(1000, 1000 + n), type=pa.uint64()),
    "activation": pa.FixedSizeListArray.from_arrays(flat, d_in),
})
pq.write_table(table, sys.argv[1])
json.dump(atoms.tolist(), open(sys.argv[2], "w"))
"#;

#[test]
fn sae_train_recovers_atoms_from_a_file_written_by_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("planted.parquet");
    let atoms_file = dir.path().join("atoms.json");
    let status = common::python()
        .args(["-c", WRITE_PLANTED])
        .arg(&file)
        .arg(&atoms_file)
        .status()
        .unwrap();
    assert!(status.success());

    let out = dir.path().join("sae");
    let args = [
        "sae",
        "train",
        "--activations",
        file.to_str().unwrap(),
        "--layer",
        "blocks.3",
        "--out",
        out.to_str().unwrap(),
        "--k",
        "4",
        "--expansion",
        "4",
        "--lr",
        "3e-3",
        "--steps",
        "1500",
        "--batch-size",
        "256",
        "--warmup-steps",
        "50",
        "--dead-after-tokens",
        "20000",
        "--aux-k",
        "32",
        "--buffer-rows",
        "8192",
        "--checkpoint-every",
        "500",
    ];
    let trained = common::saeshare(&args);
    assert!(trained.status.success(), "{}", common::stderr(&trained));
    let report = common::stdout(&trained);
    assert!(
        report.contains("1500 steps") && report.contains("final: FVU"),
        "{report}"
    );
    assert!(report.contains("never fired"), "{report}");

    let (sae, meta) = Sae::load(&out, Device::Cpu).unwrap();
    assert_eq!((meta.d_in, meta.d_sae, meta.steps), (24, 96, 1500));
    assert_eq!(meta.source.layer, "blocks.3");
    assert!(meta.metrics.last().unwrap().fvu < 0.1);
    assert!(out.join("checkpoints").read_dir().unwrap().count() <= 2);

    let atoms: Vec<Vec<f32>> =
        serde_json::from_slice(&std::fs::read(&atoms_file).unwrap()).unwrap();
    let atoms = Tensor::from_slice(&atoms.concat()).reshape([48, 24]);
    let rows = sae.w_dec.detach();
    let best = atoms
        .mm(&rows.transpose(0, 1))
        .amax([1i64].as_slice(), false);
    let recovered = best
        .ge(0.9)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(
        recovered >= 0.9,
        "recovered {:.0}% of the atoms",
        recovered * 100.0
    );

    // The codes: exactly k = 4 active latents for every one of the 16,000 samples, readable by
    // the statistics. The layer is the one the SAE records it was trained on.
    let help = common::stdout(&common::saeshare(&["sae", "encode", "--help"]));
    assert!(
        help.contains("The activation file") && help.contains("The layer to encode"),
        "{help}"
    );
    let codes = dir.path().join("codes.parquet");
    let encoded = common::saeshare(&[
        "sae",
        "encode",
        "--sae",
        out.to_str().unwrap(),
        "--activations",
        file.to_str().unwrap(),
        "--out",
        codes.to_str().unwrap(),
    ]);
    assert!(encoded.status.success(), "{}", common::stderr(&encoded));
    assert!(
        common::stdout(&encoded).contains("16000 samples (64000 active latents"),
        "{}",
        common::stdout(&encoded)
    );
    let reader = saeshare::codes::CodesReader::open(&codes).unwrap();
    assert_eq!(reader.meta().k, Some(4));
    let mut samples = 0;
    for batch in reader {
        let batch = batch.unwrap();
        for code in batch.iter() {
            assert_eq!(code.features.len(), 4, "sample {}", code.sample_id);
            assert_eq!(code.sample_id, 1000 + samples);
            samples += 1;
        }
    }
    assert_eq!(samples, 16000);

    // Training into the same folder again is refused without --resume, and is a no-op with it.
    let again = common::saeshare(&args);
    assert!(!again.status.success() && common::stderr(&again).contains("--resume"));
    let mut resume = args.to_vec();
    resume.push("--resume");
    let resumed = common::saeshare(&resume);
    assert!(resumed.status.success(), "{}", common::stderr(&resumed));
    assert!(common::stdout(&resumed).contains("(0 this run)"));
}
