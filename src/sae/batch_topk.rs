//! BatchTopK SAEs (Bussmann et al. 2024): while training, the `k x rows` largest activations of
//! the whole batch, so busy samples get more latents and quiet ones fewer; at inference a
//! threshold, the running mean of the smallest activation kept while training.
//!
//! At inference this is a JumpReLU: a latent fires when its pre-activation is above its
//! threshold. The threshold is kept per latent (`d_sae` equal values here), which is how SAELens
//! stores a BatchTopK SAE for inference, so one weights file serves both tools, and an imported
//! JumpReLU SAE (its own threshold per latent) runs through the same code.

use tch::{Device, Kind, Tensor};

use super::code::Code;
use super::variant::{StateError, Variant};

pub struct BatchTopK {
    k: i64,
    /// Per latent (`d_sae`): the running estimate of the smallest kept activation, the same for
    /// every latent while training; NaN until the first batch.
    threshold: Tensor,
}

/// Weight of a new batch in the running threshold.
const THRESHOLD_MOMENTUM: f64 = 0.01;

impl BatchTopK {
    pub fn new(k: usize, d_sae: usize, device: Device) -> BatchTopK {
        BatchTopK {
            k: k as i64,
            threshold: Tensor::full([d_sae as i64], f64::NAN, (Kind::Float, device)),
        }
    }
}

impl Variant for BatchTopK {
    fn encode_train(&mut self, pre: &Tensor) -> Code {
        let (rows, d_sae) = pre.size2().expect("rows x d_sae");
        let keep = (self.k * rows).min(rows * d_sae);
        let (values, flat) = pre.reshape([-1]).topk(keep, 0, true, false);
        // Row-major order, as Code::Sparse wants it.
        let (flat, order) = flat.sort(0, false);
        let values = values.index_select(0, &order);
        tch::no_grad(|| {
            let positive = values.masked_select(&values.gt(0.0));
            if positive.numel() > 0 {
                let smallest = positive.min();
                if self.threshold.isnan().any().int64_value(&[]) == 1 {
                    let _ = self.threshold.fill_tensor_(&smallest);
                } else {
                    let _ = self.threshold.lerp_(&smallest, THRESHOLD_MOMENTUM);
                }
            }
        });
        let row = flat.divide_scalar_mode(d_sae, "floor");
        Code::from_row_major(rows, &row, flat.remainder(d_sae), values)
    }

    fn encode(&self, pre: &Tensor) -> Code {
        // Strictly above, as SAELens' JumpReLU.
        let threshold = self.threshold.nan_to_num(0.0, None, None);
        Code::from_dense_nonzeros(&(pre * pre.gt_tensor(&threshold)))
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        vec![("threshold".to_string(), self.threshold.shallow_clone())]
    }

    fn load_state(&mut self, tensors: &[(String, Tensor)]) -> Result<(), StateError> {
        let (_, threshold) =
            tensors
                .iter()
                .find(|(name, _)| name == "threshold")
                .ok_or(StateError::Missing {
                    variant: "BatchTopK",
                    tensor: "threshold",
                })?;
        let d_sae = self.threshold.size()[0];
        let threshold = threshold
            .to_device(self.threshold.device())
            .to_kind(Kind::Float);
        // Checkpoints before the threshold was kept per latent hold one value.
        self.threshold = match threshold.size().as_slice() {
            [n] if *n == d_sae => threshold,
            [1] | [] => threshold.reshape([1]).expand([d_sae], false).contiguous(),
            found => {
                return Err(StateError::Shape {
                    variant: "BatchTopK",
                    tensor: "threshold",
                    found: found.to_vec(),
                    expected: format!("[{d_sae}] (one per latent) or [1]"),
                })
            }
        };
        Ok(())
    }
}
