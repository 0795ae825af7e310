//! The registry of SAE variants. A variant is the activation function between the encoder's
//! pre-activations and the decoder, plus whatever it adds to the loss; adding a variant means
//! one module implementing [`Variant`] and one line in [`variant_for`].

use tch::Tensor;

use super::code::Code;
use super::config::{SaeConfig, SaeKind};
use super::{batch_topk, relu, topk};

/// An SAE variant's activation function and loss terms.
pub trait Variant: Send {
    /// Codes while training, from `ReLU(pre)` (`rows x d_sae`); may decide across the batch.
    fn encode_train(&mut self, pre: &Tensor) -> Code;
    /// Codes at inference: each row on its own, so a sample's code does not depend on its batch.
    fn encode(&self, pre: &Tensor) -> Code;
    /// A penalty added to the loss, if the variant has one (the L1 of ReLU SAEs).
    fn penalty(&self, _code: &Code, _rows: i64) -> Option<Tensor> {
        None
    }
    /// Tensors of the variant's own state, saved with the weights (e.g. a learned threshold).
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// Restores what [`state`](Self::state) saved.
    fn load_state(&mut self, _tensors: &[(String, Tensor)]) -> Result<(), StateError> {
        Ok(())
    }
}

/// A variant's saved state that cannot be restored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// A tensor the variant saves is not among the checkpoint's.
    #[error("a {variant} checkpoint needs its `{tensor}` tensor")]
    Missing {
        variant: &'static str,
        tensor: &'static str,
    },
    /// A tensor of the variant has a shape it cannot take.
    #[error("the {variant} tensor `{tensor}` has shape {found:?}; expected {expected}")]
    Shape {
        variant: &'static str,
        tensor: &'static str,
        found: Vec<i64>,
        expected: String,
    },
}

/// The variant a configuration names, for an SAE of `d_sae` latents.
pub fn variant_for(config: &SaeConfig, d_sae: usize, device: tch::Device) -> Box<dyn Variant> {
    match config.kind {
        SaeKind::Topk => Box::new(topk::TopK::new(config.k)),
        SaeKind::BatchTopk => Box::new(batch_topk::BatchTopK::new(config.k, d_sae, device)),
        SaeKind::Relu => Box::new(relu::ReluL1::new(config.l1_coefficient)),
    }
}
