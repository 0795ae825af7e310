//! SAE training: planted dictionaries are recovered, training lowers the error, bad input is
//! named, and a resumed run equals an uninterrupted one.

use rand::{Rng, SeedableRng};
use saeshare::activations::{ActivationWriter, ActivationsMeta, LayerWidth};
use saeshare::sae::{
    train_from_file, Sae, SaeConfig, SaeKind, SaeSource, SaeTrainer, TrainFileOptions,
};
use tch::{Device, Kind, Tensor};

/// `n` samples in `d_in` dimensions, each a positive mix of `k_true` of `d_true` random unit
/// atoms plus a little noise. Returns (atoms row-major d_true x d_in, samples n x d_in).
fn planted(seed: u64, d_in: usize, d_true: usize, k_true: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut atoms = vec![0f32; d_true * d_in];
    for atom in atoms.chunks_mut(d_in) {
        for v in atom.iter_mut() {
            *v = rng.random_range(-1.0..1.0);
        }
        let norm = atom.iter().map(|v| v * v).sum::<f32>().sqrt();
        atom.iter_mut().for_each(|v| *v /= norm);
    }
    let mut samples = vec![0f32; n * d_in];
    for sample in samples.chunks_mut(d_in) {
        for _ in 0..k_true {
            let atom = &atoms[rng.random_range(0..d_true) * d_in..][..d_in];
            let c: f32 = rng.random_range(0.5..2.0);
            sample.iter_mut().zip(atom).for_each(|(s, a)| *s += c * a);
        }
        sample
            .iter_mut()
            .for_each(|s| *s += rng.random_range(-0.01..0.01));
    }
    (atoms, samples)
}

/// Fraction of atoms with a decoder row at cosine >= 0.9.
fn recovered(sae: &Sae, atoms: &[f32], d_in: usize) -> f64 {
    let atoms = Tensor::from_slice(atoms).reshape([-1, d_in as i64]);
    let rows = sae.w_dec.detach().to_device(Device::Cpu);
    let rows = &rows / rows.norm_scalaropt_dim(2, [1i64].as_slice(), true);
    let best = atoms
        .mm(&rows.transpose(0, 1))
        .amax([1i64].as_slice(), false);
    best.ge(0.9)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[])
}

fn write_activations(path: &std::path::Path, samples: &[f32], d_in: usize) {
    let meta = ActivationsMeta {
        encoder: "planted".into(),
        pooling: "none".into(),
        layers: vec![LayerWidth {
            name: "0".into(),
            width: d_in,
        }],
        ..ActivationsMeta::default()
    };
    let mut writer = ActivationWriter::create(path, meta).unwrap();
    for (i, row) in samples.chunks(d_in).enumerate() {
        writer.push(i as u64, "0", row).unwrap();
    }
    writer.finish().unwrap();
}

fn small_config(kind: SaeKind) -> SaeConfig {
    SaeConfig {
        kind,
        k: 4,
        expansion: 4,
        lr: 3e-3,
        warmup_steps: 50,
        steps: 1500,
        batch_size: 256,
        dead_after_tokens: 20_000,
        aux_k: 32,
        ..SaeConfig::default()
    }
}

/// A TopK SAE of `config` trained on `samples`, batches drawn with seed 9.
fn train(config: &SaeConfig, samples: &[f32], d_in: usize) -> SaeTrainer {
    let mut trainer =
        SaeTrainer::new(config, d_in, Device::Cpu, SaeSource::default()).log_every(100);
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let n = samples.len() / d_in;
    for _ in 0..config.steps {
        let batch: Vec<f32> = (0..config.batch_size)
            .flat_map(|_| {
                let i = rng.random_range(0..n);
                samples[i * d_in..(i + 1) * d_in].to_vec()
            })
            .collect();
        trainer
            .train_step(&Tensor::from_slice(&batch).reshape([-1, d_in as i64]))
            .unwrap();
    }
    trainer
}

#[test]
fn a_topk_sae_recovers_a_planted_dictionary_and_its_error_falls() {
    let (d_in, d_true) = (32, 64);
    let (atoms, samples) = planted(1, d_in, d_true, 3, 20_000);
    let config = small_config(SaeKind::Topk);
    let trainer = train(&config, &samples, d_in);
    let history = trainer.history();
    let (first, last) = (history.first().unwrap(), history.last().unwrap());
    assert!(
        last.fvu < 0.5 * first.fvu,
        "FVU went from {} to {}",
        first.fvu,
        last.fvu
    );
    assert!(last.fvu < 0.1, "final FVU {}", last.fvu);
    assert_eq!(last.l0, 4.0);
    let fraction = recovered(&trainer.sae, &atoms, d_in);
    assert!(
        fraction >= 0.9,
        "recovered {:.0}% of the planted atoms",
        100.0 * fraction
    );

    // A second seed finds the same atoms: matched one to one by decoder cosine, nearly every
    // planted atom has its pair of features, one of each seed, at cosine >= 0.9.
    let other = train(&SaeConfig { seed: 5, ..config }, &samples, d_in);
    let decoder = |t: &SaeTrainer| t.sae.w_dec.detach().to_device(Device::Cpu);
    let matches = saeshare::metrics::cosine_matches(&decoder(&trainer), &decoder(&other));
    let strong = matches.iter().filter(|m| m.2 >= 0.9).count();
    assert!(
        strong as f64 >= 0.85 * d_true as f64,
        "{strong} features of {} matched at cosine 0.9 across seeds",
        d_true
    );
    let mut partners: Vec<u32> = matches.iter().map(|m| m.1).collect();
    partners.sort_unstable();
    partners.dedup();
    assert_eq!(partners.len(), matches.len(), "one to one");
}

#[test]
fn batch_topk_and_relu_saes_train_too() {
    let d_in = 16;
    let (atoms, samples) = planted(2, d_in, 24, 2, 8_000);
    for kind in [SaeKind::BatchTopk, SaeKind::Relu] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("acts.parquet");
        write_activations(&file, &samples, d_in);
        let config = SaeConfig {
            k: 3,
            l1_coefficient: 0.1,
            steps: 800,
            ..small_config(kind)
        };
        let options = TrainFileOptions {
            activations: file,
            layer: "0".into(),
            out: dir.path().join("sae"),
            device: Device::Cpu,
            buffer_rows: 4096,
            checkpoint_every: 0,
            resume: false,
            log_every: 100,
        };
        let report = train_from_file(&config, &options).unwrap();
        let last = report.last.unwrap();
        // The L1 penalty trades reconstruction for sparsity; TopK-like variants need not.
        let bound = if kind == SaeKind::Relu { 0.4 } else { 0.2 };
        assert!(last.fvu < bound, "{kind:?}: final FVU {}", last.fvu);
        let (sae, meta) = Sae::load(&options.out, Device::Cpu).unwrap();
        assert_eq!(meta.config.kind, kind);
        let fraction = recovered(&sae, &atoms, d_in);
        assert!(
            fraction >= 0.6,
            "{kind:?} recovered {fraction} of the atoms, FVU {}",
            last.fvu
        );
        // Codes at inference are sparse for both.
        let x = Tensor::from_slice(&samples[..100 * d_in]).reshape([100, d_in as i64]);
        let l0 = sae.encode(&x).mean_l0(100);
        assert!(l0 > 0.5 && l0 < 12.0, "{kind:?}: inference L0 {l0}");
    }
}

#[test]
fn nan_or_infinite_activations_are_errors_naming_the_row() {
    let config = small_config(SaeKind::Topk);
    let mut trainer = SaeTrainer::new(&config, 4, Device::Cpu, SaeSource::default());
    let batch =
        Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 1.0, f32::NAN, 0.0, 0.0]).reshape([2, 4]);
    let err = trainer.train_step(&batch).unwrap_err().to_string();
    assert!(err.contains("row 1"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acts.parquet");
    let mut rows = vec![0.5f32; 4 * 300];
    rows[4 * 217 + 2] = f32::INFINITY;
    write_activations(&file, &rows, 4);
    let options = TrainFileOptions {
        activations: file,
        layer: "0".into(),
        out: dir.path().join("sae"),
        device: Device::Cpu,
        buffer_rows: 1000,
        checkpoint_every: 0,
        resume: false,
        log_every: 100,
    };
    let config = SaeConfig {
        batch_size: 100,
        ..config
    };
    let err = train_from_file(&config, &options).unwrap_err().to_string();
    assert!(
        err.contains("acts.parquet") && err.contains("row 217") && err.contains("sample_id 217"),
        "{err}"
    );
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    let d_in = 12;
    let (_, samples) = planted(3, d_in, 20, 2, 3_000);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acts.parquet");
    write_activations(&file, &samples, d_in);
    let config = SaeConfig {
        steps: 120,
        batch_size: 64,
        dead_after_tokens: 2_000,
        ..small_config(SaeKind::Topk)
    };
    let options = |out: &str, every: usize| TrainFileOptions {
        activations: file.clone(),
        layer: "0".into(),
        out: dir.path().join(out),
        device: Device::Cpu,
        buffer_rows: 1_000,
        checkpoint_every: every,
        resume: true,
        log_every: 10,
    };

    let whole = options("whole", 0);
    train_from_file(&config, &whole).unwrap();

    // A run that checkpoints every 50 steps, then "dies" after its last checkpoint (step 100):
    // its final SAE is removed, and a new run resumes from the checkpoint.
    let broken = options("broken", 50);
    train_from_file(&config, &broken).unwrap();
    for file in ["sae.json", "sae.safetensors", "optimizer.safetensors"] {
        std::fs::remove_file(broken.out.join(file)).unwrap();
    }
    let resumed = train_from_file(&config, &broken).unwrap();
    assert_eq!((resumed.steps, resumed.steps_run), (120, 20));

    let (a, _) = Sae::load(&whole.out, Device::Cpu).unwrap();
    let (b, _) = Sae::load(&broken.out, Device::Cpu).unwrap();
    for (x, y) in a.parameters().iter().zip(b.parameters()) {
        let diff = (*x - y).abs().max().double_value(&[]);
        assert!(diff <= 1e-6, "parameters differ by {diff}");
    }
    // A finished SAE resumed again does nothing.
    assert_eq!(train_from_file(&config, &broken).unwrap().steps_run, 0);
}
