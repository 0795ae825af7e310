//! SAE hyperparameters: one typed struct shared by study files, checkpoints and the CLI (whose
//! `saeshare sae train` flags convert into it).

use serde::{Deserialize, Serialize};

/// The SAE variants, each a module of its own ([`super::variant`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SaeKind {
    /// `TopK(ReLU(pre))`: exactly k active latents per sample (the paper's SAEs).
    Topk,
    /// The top `k * batch` pre-activations of a whole batch while training; at inference a
    /// learned threshold, so k active latents per sample on average.
    BatchTopk,
    /// `ReLU(pre)` with an L1 penalty on the codes.
    Relu,
}

/// How `b_dec` is initialised from the first batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecoderBiasInit {
    Mean,
    GeometricMedian,
}

/// Everything that decides how an SAE trains. `d_in` comes from the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaeConfig {
    /// The SAE variant.
    pub kind: SaeKind,
    /// Active latents per sample (TopK, BatchTopK).
    pub k: usize,
    /// Latents per input dimension: d_sae = expansion x d_in.
    pub expansion: usize,
    /// L1 coefficient (ReLU variant only). The loss is normalised (fraction of variance
    /// unexplained), so this weighs the mean L1 of a code against that fraction.
    pub l1_coefficient: f64,
    /// Peak learning rate of Adam.
    pub lr: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup_steps: usize,
    /// Fraction of the steps, at the end, over which the rate decays linearly to 0.
    pub decay_fraction: f64,
    /// Training steps in all.
    pub steps: usize,
    /// Samples (tokens) per step.
    pub batch_size: usize,
    /// Largest global gradient norm; larger gradients are scaled down.
    pub grad_clip: f64,
    /// Dead latents used by the AuxK loss (0 turns it off).
    pub aux_k: usize,
    /// Weight of the AuxK loss.
    pub aux_coefficient: f64,
    /// A latent silent for this many tokens is dead (AuxK, dead fraction).
    pub dead_after_tokens: u64,
    /// How `b_dec` is initialised from the first batch.
    pub b_dec_init: DecoderBiasInit,
    /// Seed of the weights' initialisation and of the data order.
    pub seed: u64,
}

impl Default for SaeConfig {
    fn default() -> Self {
        SaeConfig {
            kind: SaeKind::Topk,
            k: 32,
            expansion: 8,
            l1_coefficient: 0.1,
            lr: 4e-4,
            warmup_steps: 100,
            decay_fraction: 0.2,
            steps: 2000,
            batch_size: 1024,
            grad_clip: 1.0,
            aux_k: 256,
            aux_coefficient: 1.0 / 32.0,
            dead_after_tokens: 50_000,
            b_dec_init: DecoderBiasInit::GeometricMedian,
            seed: 0,
        }
    }
}

impl SaeConfig {
    /// The learning rate at `step`: linear warm-up, constant, then linear decay to zero.
    pub fn lr_at(&self, step: usize) -> f64 {
        let warm = if self.warmup_steps == 0 {
            1.0
        } else {
            ((step + 1) as f64 / self.warmup_steps as f64).min(1.0)
        };
        let decay_steps = (self.decay_fraction * self.steps as f64).round() as usize;
        let decay_start = self.steps.saturating_sub(decay_steps);
        let decay = if decay_steps == 0 || step < decay_start {
            1.0
        } else {
            (self.steps.saturating_sub(step) as f64 / decay_steps as f64).clamp(0.0, 1.0)
        };
        self.lr * warm * decay
    }

    /// Checks the combination makes sense for inputs of width `d_in`.
    pub fn validate(&self, d_in: usize) -> Result<(), SaeConfigError> {
        self.validate_settings()?;
        let d_sae = self.expansion * d_in;
        if d_in == 0 {
            return Err(SaeConfigError::NoInputWidth);
        }
        if matches!(self.kind, SaeKind::Topk | SaeKind::BatchTopk) && self.k > d_sae {
            return Err(SaeConfigError::KAboveWidth {
                k: self.k,
                d_sae,
                expansion: self.expansion,
                d_in,
            });
        }
        Ok(())
    }

    /// The checks that need no input width: what a study file can be checked for before any
    /// encoder package is read.
    pub fn validate_settings(&self) -> Result<(), SaeConfigError> {
        if self.expansion == 0 {
            return Err(SaeConfigError::NoExpansion);
        }
        if matches!(self.kind, SaeKind::Topk | SaeKind::BatchTopk) && self.k == 0 {
            return Err(SaeConfigError::NoK);
        }
        if self.batch_size == 0 || self.steps == 0 {
            return Err(SaeConfigError::NoSteps);
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(SaeConfigError::LearningRate(self.lr));
        }
        if !(0.0..=1.0).contains(&self.decay_fraction) {
            return Err(SaeConfigError::DecayFraction(self.decay_fraction));
        }
        for (key, value) in [
            ("l1_coefficient", self.l1_coefficient),
            ("grad_clip", self.grad_clip),
            ("aux_coefficient", self.aux_coefficient),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(SaeConfigError::NotNonNegative { key, value });
            }
        }
        Ok(())
    }
}

/// SAE settings that cannot train: what [`SaeConfig::validate`] finds.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SaeConfigError {
    #[error("the SAE needs inputs of width d_in > 0")]
    NoInputWidth,
    #[error(
        "k = {k} must be between 1 and d_sae = {d_sae} (expansion {expansion} x width {d_in})"
    )]
    KAboveWidth {
        k: usize,
        d_sae: usize,
        expansion: usize,
        d_in: usize,
    },
    #[error("expansion must be at least 1")]
    NoExpansion,
    #[error("k must be at least 1")]
    NoK,
    #[error("batch_size and steps must be positive")]
    NoSteps,
    #[error("learning rate {0} must be positive")]
    LearningRate(f64),
    #[error("decay_fraction {0} must be between 0 and 1")]
    DecayFraction(f64),
    #[error("{key} {value} must be a finite number >= 0")]
    NotNonNegative { key: &'static str, value: f64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_warms_up_holds_then_decays_to_zero() {
        let c = SaeConfig {
            lr: 1.0,
            warmup_steps: 10,
            steps: 100,
            decay_fraction: 0.2,
            ..SaeConfig::default()
        };
        assert!((c.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(50) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(90) - 0.5).abs() < 1e-12);
        assert!(c.lr_at(99) > 0.0 && c.lr_at(99) < 0.1);
    }

    #[test]
    fn study_files_may_leave_out_any_key_but_not_misspell_one() {
        let c: SaeConfig = toml::from_str("k = 16\nkind = \"batch-topk\"").unwrap();
        assert_eq!((c.k, c.kind, c.expansion), (16, SaeKind::BatchTopk, 8));
        assert!(toml::from_str::<SaeConfig>("kk = 16").is_err());
    }
}
