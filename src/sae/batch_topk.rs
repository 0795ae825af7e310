//! BatchTopK SAEs (Bussmann et al. 2024): while training, the `k x rows` largest activations of
//! the whole batch, so busy samples get more latents and quiet ones fewer; at inference a
//! threshold, the running mean of the smallest activation kept while training.

use tch::{Device, Kind, Tensor};

use super::code::Code;
use super::variant::{StateError, Variant};

pub struct BatchTopK {
    k: i64,
    /// Running estimate of the smallest kept activation; NaN until the first batch.
    threshold: Tensor,
}

/// Weight of a new batch in the running threshold.
const THRESHOLD_MOMENTUM: f64 = 0.01;

impl BatchTopK {
    pub fn new(k: usize, device: Device) -> BatchTopK {
        BatchTopK {
            k: k as i64,
            threshold: Tensor::full([1], f64::NAN, (Kind::Float, device)),
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
                let smallest = positive.min().reshape([1]);
                if self.threshold.isnan().any().int64_value(&[]) == 1 {
                    self.threshold.copy_(&smallest);
                } else {
                    let _ = self.threshold.lerp_(&smallest, THRESHOLD_MOMENTUM);
                }
            }
        });
        let row = flat.divide_scalar_mode(d_sae, "floor");
        Code::from_row_major(rows, &row, flat.remainder(d_sae), values)
    }

    fn encode(&self, pre: &Tensor) -> Code {
        let threshold = self.threshold.nan_to_num(0.0, None, None);
        Code::from_dense_nonzeros(&(pre * pre.ge_tensor(&threshold)))
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
        self.threshold = threshold
            .to_device(self.threshold.device())
            .to_kind(Kind::Float);
        Ok(())
    }
}
