//! Online SAE training: batches are pushed in (from a mixing buffer), one Adam step each.
//!
//! The loss is the normalised reconstruction error (the fraction of variance unexplained, so one
//! learning rate suits encoders whose activations differ in scale by orders of magnitude), plus
//! the AuxK loss of Gao et al. (dead latents reconstruct the residual) and the variant's penalty.
//! After each step the decoder's rows are put back to unit norm, having first removed from their
//! gradient the part along the rows, which the normalisation would undo anyway.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::adam::Adam;
use super::buffer::RowBatch;
use super::code::Code;
use super::config::SaeConfig;
use super::model::Sae;

/// Where the activations an SAE learns from come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaeSource {
    pub encoder: String,
    pub layer: String,
}

/// Training metrics at one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingMetrics {
    pub step: usize,
    pub tokens: u64,
    pub loss: f64,
    /// Mean squared error per input dimension.
    pub mse: f64,
    /// Fraction of variance unexplained: sum of squared errors over the batch's total variance.
    pub fvu: f64,
    /// Active latents per sample.
    pub l0: f64,
    /// Latents silent for the last `dead_after_tokens` tokens. While fewer tokens than that
    /// have been seen no latent can count as dead, so this stays 0: read `never_fired` then.
    pub dead_fraction: f64,
    /// Latents that have not fired once since the fit started (absent in metrics of older
    /// versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub never_fired: Option<f64>,
    pub lr: f64,
    /// How mixed the batches were: distinct samples per batch, averaged over the steps so far
    /// (a batch of token rows from few samples learns their quirks). Absent when the rows
    /// carried no sample ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_per_batch: Option<f64>,
}

/// Why a step cannot run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("the batch has width {found} but the SAE was made for {expected}")]
    Width { expected: i64, found: i64 },
    #[error("batch row {row} holds NaN or infinite values; activations must be finite")]
    NotFinite { row: i64 },
    #[error("the loss became {0} at step {1}; lower the learning rate (--lr)")]
    Diverged(f64, usize),
    #[error("libtorch failed during a step: {0}")]
    Torch(String),
}

/// One SAE and everything its training carries from step to step.
pub struct SaeTrainer {
    pub sae: Sae,
    pub source: SaeSource,
    pub(crate) adam: Adam,
    pub(crate) step: usize,
    pub(crate) tokens_seen: u64,
    /// Tokens since each latent last fired (int64, d_sae).
    pub(crate) since_fired: Tensor,
    pub(crate) bias_initialised: bool,
    pub(crate) history: Vec<TrainingMetrics>,
    /// Distinct samples summed over the batches that carried sample ids, and those batches.
    pub(crate) mixing: Mixing,
    log_every: usize,
}

/// The sums behind [`TrainingMetrics::samples_per_batch`], kept in checkpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Mixing {
    pub batches: u64,
    pub distinct_samples: u64,
}

impl SaeTrainer {
    pub fn new(config: &SaeConfig, d_in: usize, device: Device, source: SaeSource) -> SaeTrainer {
        let sae = Sae::new(config, d_in, device);
        let adam = Adam::new(&sae.parameters());
        let since_fired = Tensor::zeros([sae.d_sae], (Kind::Int64, device));
        SaeTrainer {
            sae,
            source,
            adam,
            step: 0,
            tokens_seen: 0,
            since_fired,
            bias_initialised: false,
            history: Vec::new(),
            mixing: Mixing::default(),
            log_every: 50,
        }
    }

    /// Records (and logs) the metrics every `every` steps; the first and last are always kept.
    pub fn log_every(mut self, every: usize) -> Self {
        self.log_every = every.max(1);
        self
    }

    pub fn steps_done(&self) -> usize {
        self.step
    }

    pub fn tokens_seen(&self) -> u64 {
        self.tokens_seen
    }

    /// The metrics recorded so far.
    pub fn history(&self) -> &[TrainingMetrics] {
        &self.history
    }

    pub fn is_done(&self) -> bool {
        self.step >= self.sae.config.steps
    }

    /// Mean distinct samples per batch over the batches that carried sample ids.
    pub fn samples_per_batch(&self) -> Option<f64> {
        (self.mixing.batches > 0)
            .then(|| self.mixing.distinct_samples as f64 / self.mixing.batches as f64)
    }

    /// One training step on a batch drawn from a mixing buffer, recording how mixed it was.
    pub fn train_batch(&mut self, batch: &RowBatch) -> Result<TrainingMetrics, TrainError> {
        let x = Tensor::from_slice(&batch.values).reshape([batch.samples.len() as i64, -1]);
        let distinct = batch.distinct_samples() as u64;
        let before = self.mixing;
        self.mixing.batches += 1;
        self.mixing.distinct_samples += distinct;
        let result = self.train_step(&x);
        if result.is_err() {
            self.mixing = before;
        }
        result
    }

    /// One training step on `x` (`rows x d_in`, on any device).
    pub fn train_step(&mut self, x: &Tensor) -> Result<TrainingMetrics, TrainError> {
        let x = x.to_device(self.sae.device()).to_kind(Kind::Float);
        let (rows, width) = x.size2().expect("a batch is rows x d_in");
        if width != self.sae.d_in {
            return Err(TrainError::Width {
                expected: self.sae.d_in,
                found: width,
            });
        }
        let finite = x.isfinite().all_dim(1, false);
        if finite.all().int64_value(&[]) == 0 {
            let row = finite.logical_not().nonzero().int64_value(&[0, 0]);
            return Err(TrainError::NotFinite { row });
        }
        if !self.bias_initialised {
            self.sae.init_decoder_bias(&x);
            self.bias_initialised = true;
        }
        let config = self.sae.config.clone();
        let lr = config.lr_at(self.step);

        let pre = self.sae.pre_activations_for_training(&x);
        let code = self.sae.variant.encode_train(&pre);
        let x_hat = self.sae.decode(&code);
        let error = &x - &x_hat;
        let total_variance = tch::no_grad(|| {
            (&x - x.mean_dim([0i64].as_slice(), true, Kind::Float))
                .square()
                .sum(Kind::Float)
                .clamp_min(1e-12)
        });
        let fvu = error.square().sum(Kind::Float) / &total_variance;
        let mut loss = fvu.shallow_clone();
        if let Some(penalty) = self.sae.variant.penalty(&code, rows) {
            loss += penalty;
        }
        if let Some(aux) = self.aux_loss(&pre, &error) {
            loss += aux * config.aux_coefficient;
        }
        let loss_value = loss.double_value(&[]);
        if !loss_value.is_finite() {
            return Err(TrainError::Diverged(loss_value, self.step));
        }
        // The gradients as new tensors, not accumulated into `.grad`: no pass to zero them
        // before, none to add them after (on the CPU a 1,280-wide SAE's step is bound by its
        // passes over the two `d_in x d_sae` matrices, not by its products).
        let params = self.sae.parameters();
        let mut grads = Tensor::f_run_backward(&[&loss], &params, false, false)
            .map_err(|e| TrainError::Torch(e.to_string()))?;
        if let [_, _, w_dec_grad, _] = grads.as_mut_slice() {
            project_decoder_gradient(w_dec_grad, &self.sae.w_dec);
        }
        clip_gradients(&mut grads, config.grad_clip);
        self.adam.update(&params, &grads, lr);
        self.sae.normalise_decoder();

        let fired = code.fired();
        tch::no_grad(|| {
            let _ = self.since_fired.g_add_scalar_(rows);
            let _ = self.since_fired.index_fill_(0, &fired, 0);
        });
        self.step += 1;
        self.tokens_seen += rows as u64;

        let metrics = TrainingMetrics {
            step: self.step,
            tokens: self.tokens_seen,
            loss: loss_value,
            mse: tch::no_grad(|| error.square().mean(Kind::Float).double_value(&[])),
            fvu: fvu.double_value(&[]),
            l0: code.mean_l0(rows),
            dead_fraction: self.dead_fraction(),
            never_fired: Some(self.never_fired()),
            lr,
            samples_per_batch: self.samples_per_batch(),
        };
        if self.step == 1 || self.step.is_multiple_of(self.log_every) || self.is_done() {
            tracing::info!(
                encoder = %self.source.encoder,
                layer = %self.source.layer,
                step = metrics.step,
                fvu = format_args!("{:.4}", metrics.fvu),
                l0 = format_args!("{:.1}", metrics.l0),
                dead = format_args!("{:.3}", metrics.dead_fraction),
                never_fired = format_args!("{:.3}", metrics.never_fired.unwrap_or(0.0)),
                "sae step"
            );
            self.history.push(metrics.clone());
        }
        Ok(metrics)
    }

    /// Fraction of latents that have not fired since the fit started: a latent that never
    /// fired has been silent for every token seen.
    pub fn never_fired(&self) -> f64 {
        tch::no_grad(|| {
            self.since_fired
                .ge(self.tokens_seen as i64)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[])
        })
    }

    /// Fraction of latents silent for at least `dead_after_tokens` tokens.
    pub fn dead_fraction(&self) -> f64 {
        tch::no_grad(|| {
            self.since_fired
                .ge(self.sae.config.dead_after_tokens as i64)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[])
        })
    }

    /// The AuxK loss: the top `aux_k` dead latents reconstruct what the live ones missed.
    fn aux_loss(&self, pre: &Tensor, error: &Tensor) -> Option<Tensor> {
        let config = &self.sae.config;
        if config.aux_k == 0 {
            return None;
        }
        let dead = self.since_fired.ge(config.dead_after_tokens as i64);
        let dead_count = dead.sum(Kind::Int64).int64_value(&[]);
        if dead_count == 0 {
            return None;
        }
        let k_aux = (config.aux_k as i64).min(dead_count);
        let dead_pre = pre * dead.to_kind(Kind::Float);
        let (values, indices) = dead_pre.topk(k_aux, -1, true, false);
        let residual_hat = self
            .sae
            .decode_without_bias(&Code::from_topk(values, indices));
        let target = error.detach();
        let variance = (&target - target.mean_dim([0i64].as_slice(), true, Kind::Float))
            .square()
            .sum(Kind::Float)
            .clamp_min(1e-12);
        Some((residual_hat - target).square().sum(Kind::Float) / variance)
    }
}

/// Removes from each decoder row's gradient its component along the row: the step then moves a
/// unit-norm row along the sphere, as the renormalisation after it assumes.
fn project_decoder_gradient(grad: &mut Tensor, w_dec: &Tensor) {
    if !grad.defined() {
        return;
    }
    tch::no_grad(|| {
        // Row by row dot products as a batched product: no temporary of the matrix's size.
        let along = grad.unsqueeze(1).bmm(&w_dec.unsqueeze(2)).squeeze_dim(2);
        let _ = grad.addcmul_(&along.neg(), w_dec);
    });
}

/// Scales all gradients down together when their global norm exceeds `max_norm`.
fn clip_gradients(grads: &mut [Tensor], max_norm: f64) {
    if max_norm <= 0.0 {
        return;
    }
    tch::no_grad(|| {
        let total: f64 = (grads.iter())
            .filter(|g| g.defined())
            .map(|g| g.norm().double_value(&[]).powi(2))
            .sum::<f64>()
            .sqrt();
        if total > max_norm {
            for g in grads.iter_mut().filter(|g| g.defined()) {
                let _ = g.g_mul_scalar_(max_norm / (total + 1e-12));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before `dead_after_tokens` tokens no latent can count as dead; the latents that did not
    /// fire once are counted apart. With k = 1 and 4 rows, at most 4 of 16 latents fire.
    #[test]
    fn latents_that_never_fired_are_counted_while_none_can_be_dead_yet() {
        let config = SaeConfig {
            k: 1,
            expansion: 8,
            batch_size: 4,
            steps: 2,
            aux_k: 0,
            dead_after_tokens: 1_000_000,
            ..SaeConfig::default()
        };
        let source = SaeSource {
            encoder: "e".into(),
            layer: "l".into(),
        };
        let mut trainer = SaeTrainer::new(&config, 2, Device::Cpu, source);
        let batch = RowBatch {
            values: vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.5, 0.3, -0.7],
            samples: (0..4).collect(),
        };
        let metrics = trainer.train_batch(&batch).unwrap();
        assert_eq!(metrics.dead_fraction, 0.0);
        let never = metrics.never_fired.unwrap();
        assert!((0.75..=1.0).contains(&never), "{never}");
        assert_eq!(never, trainer.never_fired());
    }
}
