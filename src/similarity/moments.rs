//! First and second moments of read-out activations, in float64: per layer (`sum x`, `X^T X`)
//! and per compared layer pair (`X^T Y`), each split into the rows fitted on and the rows held
//! out (one sample in [`HELD_OUT_ONE_IN`], by a seeded hash of its id), so that the ridge's
//! predictivity is scored on samples it was not fitted on. Every linear measure is a function
//! of these sums; they merge by addition, so shards and runs add up exactly.

use tch::{Device, Kind, Tensor};

use super::sample_hash;

/// One sample in this many is held out of the ridge's fit (and scored by it).
pub const HELD_OUT_ONE_IN: u64 = 5;

/// Whether sample `id` is held out of the ridge's fit, for seed `seed`.
pub fn is_held_out(seed: u64, id: u64) -> bool {
    // Another stream of the hash than the kNN subsample's, so the two choices are independent.
    sample_hash(seed ^ 0x0005_eed4_e1d0_u64, id).is_multiple_of(HELD_OUT_ONE_IN)
}

/// Sums over one part of the rows (fitted on, or held out).
#[derive(Debug)]
pub struct Part {
    pub n: u64,
    /// `[d]`.
    pub sum: Tensor,
    /// `[d, d]`: `sum x x^T`, uncentred.
    pub scatter: Tensor,
}

/// A layer's moments: the rows the ridge fits on, and those it is scored on.
#[derive(Debug)]
pub struct LayerMoments {
    pub fit: Part,
    pub held: Part,
}

/// A layer pair's cross sums `sum x y^T` (`[d_x, d_y]`), in the same two parts.
#[derive(Debug)]
pub struct CrossMoments {
    pub fit: Tensor,
    pub held: Tensor,
}

fn zeros(shape: &[i64], device: Device) -> Tensor {
    Tensor::zeros(shape, (Kind::Double, device))
}

impl Part {
    /// No rows of width `d`.
    pub fn empty(d: usize, device: Device) -> Part {
        Part::new(d, device)
    }

    fn new(d: usize, device: Device) -> Part {
        Part {
            n: 0,
            sum: zeros(&[d as i64], device),
            scatter: zeros(&[d as i64, d as i64], device),
        }
    }

    /// Adds rows `[n, d]`, float64.
    pub fn add(&mut self, rows: &Tensor) {
        self.n += rows.size()[0] as u64;
        self.sum += rows.sum_dim_intlist(0, false, Kind::Double);
        self.scatter += rows.tr().mm(rows);
    }

    fn merge(&mut self, other: &Part) {
        self.n += other.n;
        self.sum += &other.sum;
        self.scatter += &other.scatter;
    }

    /// The two parts together.
    pub fn plus(&self, other: &Part) -> Part {
        Part {
            n: self.n + other.n,
            sum: &self.sum + &other.sum,
            scatter: &self.scatter + &other.scatter,
        }
    }

    /// These rows without `other`'s (a subset of them).
    pub fn minus(&self, other: &Part) -> Part {
        Part {
            n: self.n - other.n,
            sum: &self.sum - &other.sum,
            scatter: &self.scatter - &other.scatter,
        }
    }

    fn shallow_clone(&self) -> Part {
        Part {
            n: self.n,
            sum: self.sum.shallow_clone(),
            scatter: self.scatter.shallow_clone(),
        }
    }

    pub fn mean(&self) -> Tensor {
        &self.sum / (self.n.max(1) as f64)
    }

    /// `sum (x - m)(x - m)^T` about the part's own mean.
    pub fn centred(&self) -> Tensor {
        self.about(&self.mean())
    }

    /// `sum (x - c)(x - c)^T` about the point `c`.
    pub fn about(&self, c: &Tensor) -> Tensor {
        let n = self.n as f64;
        let cs = c.outer(&self.sum);
        &self.scatter - &cs - cs.tr() + c.outer(c) * n
    }
}

impl LayerMoments {
    pub fn new(d: usize, device: Device) -> LayerMoments {
        LayerMoments {
            fit: Part::new(d, device),
            held: Part::new(d, device),
        }
    }

    /// Adds rows already split: `fit` `[n_f, d]` and `held` `[n_h, d]`, float64.
    pub fn add(&mut self, fit: &Tensor, held: &Tensor) {
        self.fit.add(fit);
        self.held.add(held);
    }

    /// The same sums, shared (tensors are not copied).
    pub fn shallow_clone(&self) -> LayerMoments {
        LayerMoments {
            fit: self.fit.shallow_clone(),
            held: self.held.shallow_clone(),
        }
    }

    pub fn merge(&mut self, other: &LayerMoments) {
        self.fit.merge(&other.fit);
        self.held.merge(&other.held);
    }

    /// Every row.
    pub fn total(&self) -> Part {
        self.fit.plus(&self.held)
    }

    pub fn width(&self) -> usize {
        self.fit.sum.size()[0] as usize
    }
}

impl CrossMoments {
    pub fn new(d_x: usize, d_y: usize, device: Device) -> CrossMoments {
        let shape = [d_x as i64, d_y as i64];
        CrossMoments {
            fit: zeros(&shape, device),
            held: zeros(&shape, device),
        }
    }

    /// Adds `x^T y` of rows already split, as [`LayerMoments::add`].
    pub fn add(
        &mut self,
        (x_fit, x_held): (&Tensor, &Tensor),
        (y_fit, y_held): (&Tensor, &Tensor),
    ) {
        self.fit += x_fit.tr().mm(y_fit);
        self.held += x_held.tr().mm(y_held);
    }

    pub fn merge(&mut self, other: &CrossMoments) {
        self.fit += &other.fit;
        self.held += &other.held;
    }

    /// `sum (x - a)(y - b)^T` over the rows of `part` (`fit` or `held`), whose sums are
    /// `sum_x`, `sum_y` and count `n`.
    pub fn about(
        cross: &Tensor,
        (sum_x, sum_y, n): (&Tensor, &Tensor, u64),
        a: &Tensor,
        b: &Tensor,
    ) -> Tensor {
        cross - a.outer(sum_y) - sum_x.outer(b) + a.outer(b) * (n as f64)
    }
}
