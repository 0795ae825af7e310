//! Adam, written out so that its state is ours to checkpoint and restore exactly.

use tch::{Kind, Tensor};

pub(crate) struct Adam {
    pub(crate) m: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    pub(crate) steps: i64,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Adam {
    pub(crate) fn new(params: &[&Tensor]) -> Adam {
        Adam {
            m: params.iter().map(|p| p.zeros_like().detach()).collect(),
            v: params.iter().map(|p| p.zeros_like().detach()).collect(),
            steps: 0,
        }
    }

    /// One update of `params` from their gradients, with bias correction.
    pub(crate) fn update(&mut self, params: &[&Tensor], lr: f64) {
        self.steps += 1;
        let correction1 = 1.0 - BETA1.powi(self.steps as i32);
        let correction2 = 1.0 - BETA2.powi(self.steps as i32);
        tch::no_grad(|| {
            for ((p, m), v) in params.iter().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let _ = m.g_mul_scalar_(BETA1).g_add_(&(&g * (1.0 - BETA1)));
                let _ = v.g_mul_scalar_(BETA2).addcmul_(&(&g * (1.0 - BETA2)), &g);
                let denominator = (&*v / correction2).sqrt() + EPS;
                let step = &*m / &denominator * (lr / correction1);
                let mut p = p.shallow_clone();
                let _ = p.g_sub_(&step.to_kind(Kind::Float));
            }
        });
    }
}
