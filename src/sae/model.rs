//! The SAE's weights and its forward pass:
//! `z = act(ReLU((x - b_dec) W_enc + b_enc))`, `x_hat = z W_dec + b_dec`.
//!
//! Orientation (the SAELens convention): `W_enc` is `d_in x d_sae`, `W_dec` is `d_sae x d_in`
//! with unit-norm rows (a row is a feature's direction), `b_enc` is `d_sae`, `b_dec` is `d_in`.
//! Sparse codes are decoded by gathering the k active rows of `W_dec` (`embedding_bag`), never
//! by a dense `(rows x d_sae) x (d_sae x d_in)` product; its gradient touches only those rows.

use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

use super::code::Code;
use super::config::SaeConfig;
use super::variant::{variant_for, Variant};

/// Names of the weight tensors in `sae.safetensors`.
pub const W_ENC: &str = "W_enc";
pub const B_ENC: &str = "b_enc";
pub const W_DEC: &str = "W_dec";
pub const B_DEC: &str = "b_dec";

/// An SAE: weights on a device, and its variant.
pub struct Sae {
    pub config: SaeConfig,
    pub d_in: i64,
    pub d_sae: i64,
    pub w_enc: Tensor,
    pub b_enc: Tensor,
    pub w_dec: Tensor,
    pub b_dec: Tensor,
    pub(crate) variant: Box<dyn Variant>,
    /// How an input row is scaled before the encoder: none for saeshare's SAEs; an SAE trained
    /// elsewhere on normalised activations (SAELens' `normalize_activations`) says which.
    pub input_norm: InputNorm,
    /// Decode sparse codes through the dense product instead, for the benchmark that measures
    /// what the gather saves.
    dense_decoding: bool,
}

/// A per-row scaling of the SAE's input, as SAELens applies it at run time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InputNorm {
    #[default]
    None,
    /// `x * sqrt(d_in) / |x|` (SAELens' `constant_norm_rescale`).
    ConstantNormRescale,
    /// `(x - mean(x)) / (std(x) + 1e-5)` per row, the unbiased standard deviation (SAELens'
    /// `layer_norm`).
    LayerNorm,
}

impl InputNorm {
    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            InputNorm::None => x.shallow_clone(),
            InputNorm::ConstantNormRescale => {
                let d_in = x.size()[1] as f64;
                let norm = x.norm_scalaropt_dim(2, [1i64].as_slice(), true);
                x * d_in.sqrt() / norm
            }
            InputNorm::LayerNorm => {
                let mean = x.mean_dim([1i64].as_slice(), true, Kind::Float);
                let centred = x - mean;
                let std = centred.std_dim([1i64].as_slice(), true, true);
                centred / (std + 1e-5)
            }
        }
    }
}

impl Sae {
    /// A new SAE for inputs of width `d_in`: decoder rows drawn from the seed and normalised,
    /// encoder initialised as the decoder's transpose (Gao et al.), biases zero. The draw is
    /// made on the CPU from the seed, so every device starts from the same weights.
    pub fn new(config: &SaeConfig, d_in: usize, device: Device) -> Sae {
        let d_sae = config.expansion * d_in;
        let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
        let bound = 1.0 / (d_in as f32).sqrt();
        let weights: Vec<f32> = (0..d_sae * d_in)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let w_dec = Tensor::from_slice(&weights)
            .reshape([d_sae as i64, d_in as i64])
            .to_device(device);
        let w_dec = &w_dec / w_dec.norm_scalaropt_dim(2, [1i64].as_slice(), true);
        let w_enc = w_dec.transpose(0, 1).contiguous();
        let sae = Sae {
            config: config.clone(),
            d_in: d_in as i64,
            d_sae: d_sae as i64,
            w_enc,
            b_enc: Tensor::zeros([d_sae as i64], (Kind::Float, device)),
            w_dec,
            b_dec: Tensor::zeros([d_in as i64], (Kind::Float, device)),
            variant: variant_for(config, d_sae, device),
            input_norm: InputNorm::None,
            dense_decoding: false,
        };
        for p in sae.parameters() {
            let _ = p.set_requires_grad(true);
        }
        sae
    }

    /// An SAE for inference from weights made elsewhere (`W_enc` d_in x d_sae, `b_enc`, `W_dec`
    /// d_sae x d_in, `b_dec`, and the variant's own state such as a per-latent `threshold`),
    /// float32 on `device`. `config` gives the variant (`kind`, `k`); `d_sae` need not be a
    /// multiple of `d_in`.
    pub fn from_weights(
        config: &SaeConfig,
        weights: [Tensor; 4],
        state: &[(String, Tensor)],
        device: Device,
    ) -> Result<Sae, String> {
        let [w_enc, b_enc, w_dec, b_dec] =
            weights.map(|t| t.to_device(device).to_kind(Kind::Float).detach());
        let (d_in, d_sae) = w_enc
            .size2()
            .map_err(|_| format!("W_enc has shape {:?}, not d_in x d_sae", w_enc.size()))?;
        for (name, tensor, shape) in [
            ("b_enc", &b_enc, vec![d_sae]),
            ("W_dec", &w_dec, vec![d_sae, d_in]),
            ("b_dec", &b_dec, vec![d_in]),
        ] {
            if tensor.size() != shape {
                return Err(format!(
                    "{name} has shape {:?}; with W_enc of {d_in} x {d_sae} it must be {shape:?}",
                    tensor.size()
                ));
            }
        }
        let mut variant = variant_for(config, d_sae as usize, device);
        variant.load_state(state).map_err(|e| e.to_string())?;
        Ok(Sae {
            config: config.clone(),
            d_in,
            d_sae,
            w_enc,
            b_enc,
            w_dec,
            b_dec,
            variant,
            input_norm: InputNorm::None,
            dense_decoding: false,
        })
    }

    /// The four trainable tensors, in a fixed order: W_enc, b_enc, W_dec, b_dec.
    pub fn parameters(&self) -> [&Tensor; 4] {
        [&self.w_enc, &self.b_enc, &self.w_dec, &self.b_dec]
    }

    pub fn device(&self) -> Device {
        self.w_dec.device()
    }

    /// `ReLU((x - b_dec) W_enc + b_enc)`, `rows x d_sae` (`x` normalised first where the SAE
    /// expects it).
    pub fn pre_activations(&self, x: &Tensor) -> Tensor {
        let x = self.input_norm.apply(x);
        (x - &self.b_dec).mm(&self.w_enc).g_add(&self.b_enc).relu()
    }

    /// [`pre_activations`](Self::pre_activations) for a training step: `(x - b_dec) W_enc` as
    /// `x W_enc - b_dec W_enc`, equal but for rounding. The batch needs no gradient, so backward
    /// then makes one product the batch's size (`W_enc`'s gradient) instead of two: `b_dec`'s
    /// gradient through the encoder becomes a vector product.
    pub(crate) fn pre_activations_for_training(&self, x: &Tensor) -> Tensor {
        let x = self.input_norm.apply(x);
        let shift = self.b_dec.unsqueeze(0).mm(&self.w_enc).squeeze_dim(0);
        x.mm(&self.w_enc).g_add(&(&self.b_enc - shift)).relu()
    }

    /// The codes of `x` (`rows x d_in`) at inference.
    pub fn encode(&self, x: &Tensor) -> Code {
        tch::no_grad(|| self.variant.encode(&self.pre_activations(x)))
    }

    /// Makes sparse codes decode through a dense `(rows x d_sae) x (d_sae x d_in)` product, as
    /// reference implementations do. Only for measuring the difference: results are the same.
    pub fn use_dense_decoding(&mut self, dense: bool) {
        self.dense_decoding = dense;
    }

    /// `z W_dec` without the bias, `rows x d_in`.
    pub fn decode_without_bias(&self, code: &Code) -> Tensor {
        match code {
            Code::Sparse {
                latents,
                values,
                offsets,
            } if self.dense_decoding => {
                let rows = offsets.size()[0];
                let counts = offsets.diff(
                    1,
                    0,
                    None::<Tensor>,
                    Some(Tensor::from_slice(&[latents.size()[0]]).to_device(latents.device())),
                );
                let row = Tensor::arange(rows, (tch::Kind::Int64, latents.device()))
                    .repeat_interleave_self_tensor(&counts, 0, None);
                let flat = row * self.d_sae + latents;
                let z = Tensor::zeros([rows * self.d_sae], (values.kind(), values.device()))
                    .index_add(0, &flat, values)
                    .reshape([rows, self.d_sae]);
                z.mm(&self.w_dec)
            }
            Code::Sparse {
                latents,
                values,
                offsets,
            } => {
                Tensor::embedding_bag(
                    &self.w_dec,
                    latents,
                    offsets,
                    false,
                    0, // sum
                    false,
                    Some(values),
                    false,
                )
                .0
            }
            Code::Dense(z) => z.mm(&self.w_dec),
        }
    }

    /// `x_hat = z W_dec + b_dec`.
    pub fn decode(&self, code: &Code) -> Tensor {
        self.decode_without_bias(code) + &self.b_dec
    }

    /// Rescales every decoder row to unit norm.
    pub(crate) fn normalise_decoder(&mut self) {
        tch::no_grad(|| {
            let norms = self
                .w_dec
                .norm_scalaropt_dim(2, [1i64].as_slice(), true)
                .clamp_min(1e-12);
            let _ = self.w_dec.g_div_(&norms);
        });
    }

    /// Sets `b_dec` from the first batch (mean or geometric median).
    pub(crate) fn init_decoder_bias(&mut self, x: &Tensor) {
        use super::config::DecoderBiasInit;
        let centre = match self.config.b_dec_init {
            DecoderBiasInit::Mean => x.mean_dim([0i64].as_slice(), false, Kind::Float),
            DecoderBiasInit::GeometricMedian => geometric_median(x),
        };
        tch::no_grad(|| {
            self.b_dec.copy_(&centre);
        });
    }
}

/// Weiszfeld's iterations from the mean: the point minimising the sum of distances to the rows
/// of `x`, robust to the outliers that pull the mean.
fn geometric_median(x: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let mut median = x.mean_dim([0i64].as_slice(), false, Kind::Float);
        for _ in 0..50 {
            let distances = (x - &median)
                .norm_scalaropt_dim(2, [1i64].as_slice(), false)
                .clamp_min(1e-8);
            let weights = distances.reciprocal();
            let next =
                (x * weights.unsqueeze(1)).sum_dim_intlist([0i64].as_slice(), false, Kind::Float)
                    / weights.sum(Kind::Float);
            let moved = (&next - &median).norm().double_value(&[]);
            median = next;
            if moved < 1e-6 {
                break;
            }
        }
        median
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::config::SaeKind;

    fn dense_reference(sae: &Sae, code: &Code, rows: i64) -> Tensor {
        let z = match code {
            Code::Dense(z) => z.shallow_clone(),
            Code::Sparse { .. } => {
                let (r, l, v) = code.triples();
                let z = Tensor::zeros([rows, sae.d_sae], (Kind::Float, Device::Cpu));
                for i in 0..r.len() {
                    let _ = z.get(r[i]).get(l[i]).fill_(v[i] as f64);
                }
                z
            }
        };
        z.mm(&sae.w_dec) + &sae.b_dec
    }

    #[test]
    fn sparse_decoding_equals_the_dense_product_for_every_variant() {
        for kind in [SaeKind::Topk, SaeKind::BatchTopk, SaeKind::Relu] {
            let config = SaeConfig {
                kind,
                k: 3,
                expansion: 4,
                ..SaeConfig::default()
            };
            let mut sae = Sae::new(&config, 6, Device::Cpu);
            let x = Tensor::randn([5, 6], (Kind::Float, Device::Cpu));
            let pre = sae.pre_activations(&x);
            let code = sae.variant.encode_train(&pre);
            let fast = tch::no_grad(|| sae.decode(&code));
            let slow = tch::no_grad(|| dense_reference(&sae, &code, 5));
            let diff = (fast - slow).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{kind:?}: {diff}");
        }
    }

    #[test]
    fn sparse_and_dense_decoding_give_the_same_gradients() {
        let config = SaeConfig {
            k: 3,
            expansion: 4,
            ..SaeConfig::default()
        };
        let mut sae = Sae::new(&config, 6, Device::Cpu);
        let x = Tensor::randn([5, 6], (Kind::Float, Device::Cpu));
        let upstream = Tensor::randn([5, 6], (Kind::Float, Device::Cpu));
        let mut grads = Vec::new();
        for dense in [false, true] {
            sae.use_dense_decoding(dense);
            let mut g = sae.w_dec.grad();
            if g.defined() {
                let _ = g.zero_();
            }
            let code = sae.variant.encode_train(&sae.pre_activations(&x));
            (sae.decode(&code) * &upstream).sum(Kind::Float).backward();
            grads.push(sae.w_dec.grad().copy());
        }
        let diff = (&grads[0] - &grads[1]).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
        assert!(grads[0].abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn training_pre_activations_equal_the_plain_formula_and_its_gradients() {
        let config = SaeConfig {
            k: 3,
            expansion: 4,
            ..SaeConfig::default()
        };
        let sae = Sae::new(&config, 6, Device::Cpu);
        tch::no_grad(|| {
            sae.b_dec
                .shallow_clone()
                .copy_(&Tensor::randn([6], (Kind::Float, Device::Cpu)));
            sae.b_enc
                .shallow_clone()
                .copy_(&(Tensor::randn([24], (Kind::Float, Device::Cpu)) * 0.1));
        });
        let x = Tensor::randn([5, 6], (Kind::Float, Device::Cpu)) * 2.0;
        let upstream = Tensor::randn([5, 24], (Kind::Float, Device::Cpu));
        let params = [&sae.w_enc, &sae.b_enc, &sae.b_dec];
        let plain = sae.pre_activations(&x);
        let training = sae.pre_activations_for_training(&x);
        let diff = (&plain - &training).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "pre-activations differ by {diff}");
        let grads = |pre: &Tensor| {
            Tensor::run_backward(&[(pre * &upstream).sum(Kind::Float)], &params, false, false)
        };
        for (i, (a, b)) in grads(&plain).iter().zip(grads(&training)).enumerate() {
            assert!(
                a.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "parameter {i}"
            );
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "parameter {i}: gradients differ by {diff}");
        }
    }

    #[test]
    fn topk_codes_have_exactly_k_latents_per_row() {
        let config = SaeConfig {
            k: 4,
            expansion: 8,
            ..SaeConfig::default()
        };
        let sae = Sae::new(&config, 10, Device::Cpu);
        let x = Tensor::randn([7, 10], (Kind::Float, Device::Cpu)) * 3.0;
        let (rows, _, _) = sae.encode(&x).triples();
        for r in 0..7 {
            assert_eq!(rows.iter().filter(|&&x| x == r).count(), 4);
        }
    }

    #[test]
    fn the_geometric_median_ignores_a_far_outlier_the_mean_follows() {
        let mut points = vec![0.0f32; 2 * 9];
        for i in 0..9 {
            points[2 * i] = (i % 3) as f32;
            points[2 * i + 1] = (i / 3) as f32;
        }
        points.extend([1000.0, 1000.0]);
        let x = Tensor::from_slice(&points).reshape([10, 2]);
        let median: Vec<f32> = geometric_median(&x).try_into().unwrap();
        assert!(
            (median[0] - 1.0).abs() < 0.2 && (median[1] - 1.0).abs() < 0.2,
            "{median:?}"
        );
    }
}
