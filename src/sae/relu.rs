//! ReLU SAEs with an L1 penalty (Bricken et al. 2023): dense codes, sparsity from the penalty.
//! Decoder rows are kept at unit norm, so the L1 of the codes is the usual norm-weighted L1.

use tch::{Kind, Tensor};

use super::code::Code;
use super::variant::Variant;

pub struct ReluL1 {
    coefficient: f64,
}

impl ReluL1 {
    pub fn new(coefficient: f64) -> ReluL1 {
        ReluL1 { coefficient }
    }
}

impl Variant for ReluL1 {
    fn encode_train(&mut self, pre: &Tensor) -> Code {
        self.encode(pre)
    }

    fn encode(&self, pre: &Tensor) -> Code {
        Code::Dense(pre.shallow_clone())
    }

    fn penalty(&self, code: &Code, rows: i64) -> Option<Tensor> {
        let l1 = match code {
            Code::Dense(z) => z.abs().sum(Kind::Float),
            Code::Sparse { values, .. } => values.abs().sum(Kind::Float),
        };
        Some(l1 * (self.coefficient / rows.max(1) as f64))
    }
}
