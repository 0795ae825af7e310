//! The SAE training step with the decoder on the k active latents (gathered rows of W_dec)
//! against the dense formulation (a `(batch x d_sae) x (d_sae x d_in)` product), side by side
//! in one run, on the same SAE and the same batch.
//!
//! `cargo bench --bench sae_step` uses the shape: d_in = 768, expansion 8, k = 32,
//! batch 4096. Pass `--device cuda` to run on a GPU. Under `cargo test` it runs a tiny shape once
//! as a smoke test.

use std::time::Instant;

use saeshare::sae::{Code, SaeConfig, SaeSource, SaeTrainer};
use tch::{Device, Kind, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benchmarking = args.iter().any(|a| a == "--bench");
    let device = match args.iter().position(|a| a == "--device") {
        Some(i) => match args[i + 1].as_str() {
            "cpu" => Device::Cpu,
            other => Device::Cuda(
                other
                    .strip_prefix("cuda:")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
            ),
        },
        None => Device::Cpu,
    };
    let (d_in, batch, repeats) = if benchmarking {
        (768, 4096, 7)
    } else {
        (16, 64, 1)
    };
    let config = SaeConfig {
        k: 32.min(d_in),
        expansion: 8,
        batch_size: batch,
        ..SaeConfig::default()
    };
    let x = Tensor::randn([batch as i64, d_in as i64], (Kind::Float, device));

    let trainer = |dense: bool| {
        let mut trainer = SaeTrainer::new(&config, d_in, device, SaeSource::default());
        trainer.sae.use_dense_decoding(dense);
        trainer.train_step(&x).expect("step"); // warm-up, and b_dec initialisation
        trainer
    };
    let (mut a, mut b) = (trainer(false), trainer(true));
    let timed = |trainer: &mut SaeTrainer| {
        synchronise(device);
        let start = Instant::now();
        trainer.train_step(&x).expect("step");
        synchronise(device);
        start.elapsed().as_secs_f64()
    };
    // Interleaved, so that load from elsewhere on a shared machine hits both alike.
    let (mut sparse, mut dense) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        sparse.push(timed(&mut a));
        dense.push(timed(&mut b));
    }
    let (sparse, dense) = (median(sparse), median(dense));

    // The decoder alone, forward and backward, on the codes of the same batch: the part the
    // two formulations differ in, without the encoder's dense products around it.
    let code = a.sae.encode(&x);
    let code = match code {
        Code::Sparse {
            latents,
            values,
            offsets,
        } => Code::Sparse {
            latents,
            values: values.detach().set_requires_grad(true),
            offsets,
        },
        dense => dense,
    };
    let upstream = Tensor::randn([batch as i64, d_in as i64], (Kind::Float, device));
    let mut decode = |dense: bool| {
        a.sae.use_dense_decoding(dense);
        synchronise(device);
        let start = Instant::now();
        let out = a.sae.decode_without_bias(&code);
        (out * &upstream).sum(Kind::Float).backward();
        synchronise(device);
        start.elapsed().as_secs_f64()
    };
    let (mut sparse_decoder, mut dense_decoder) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        sparse_decoder.push(decode(false));
        dense_decoder.push(decode(true));
    }
    let (sparse_decoder, dense_decoder) = (median(sparse_decoder), median(dense_decoder));
    // Same SAE, same batch, same steps: the two formulations must agree.
    let drift = (&a.sae.w_dec - &b.sae.w_dec).abs().max().double_value(&[]);
    assert!(
        drift < 1e-3,
        "sparse and dense decoding disagree by {drift}"
    );

    println!(
        "sae_step on {device:?}: d_in {d_in}, d_sae {}, k {}, batch {batch}",
        d_in * config.expansion,
        config.k
    );
    println!("  training step, dense decoder   {:>8.1} ms", dense * 1e3);
    println!("  training step, sparse decoder  {:>8.1} ms", sparse * 1e3);
    println!("  step speedup                   {:>8.2}x", dense / sparse);
    println!(
        "  decoder fwd+bwd, dense         {:>8.1} ms",
        dense_decoder * 1e3
    );
    println!(
        "  decoder fwd+bwd, sparse        {:>8.1} ms",
        sparse_decoder * 1e3
    );
    println!(
        "  decoder speedup                {:>8.2}x",
        dense_decoder / sparse_decoder
    );
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn synchronise(device: Device) {
    if let Device::Cuda(n) = device {
        tch::Cuda::synchronize(n as i64);
    }
}
