//! TopK SAEs (Gao et al. 2024): the k largest of `ReLU(pre)` per sample, the rest zero.

use tch::Tensor;

use super::code::Code;
use super::variant::Variant;

pub struct TopK {
    k: i64,
}

impl TopK {
    pub fn new(k: usize) -> TopK {
        TopK { k: k as i64 }
    }
}

impl Variant for TopK {
    fn encode_train(&mut self, pre: &Tensor) -> Code {
        self.encode(pre)
    }

    fn encode(&self, pre: &Tensor) -> Code {
        let (values, indices) = pre.topk(self.k, -1, true, false);
        Code::from_topk(values, indices)
    }
}
