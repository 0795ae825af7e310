//! First and second moments of read-out activations, in float64: per layer (`sum x`, `X^T X`)
//! and per compared layer pair (`X^T Y`), each split into the rows fitted on and the rows held
//! out (one sample in [`HELD_OUT_ONE_IN`], by a seeded hash of its id), so that the ridge's
//! predictivity is scored on samples it was not fitted on. Every linear measure is a function
//! of these sums; they merge by addition, so shards and runs add up exactly.
//!
//! The sums are taken about a point near the layer's mean (the mean of the first rows it saw),
//! not about zero: read-out rows with a large common offset (a massive activation, rows that
//! all point one way) would otherwise lose their small variances to rounding when centred, and
//! measures that whiten (the CCA family) would amplify that into the third significant digit
//! between two orders of summation. Sums about two points merge exactly after a shift.

use tch::{Device, Kind, Tensor};

use super::sample_hash;

/// One sample in this many is held out of the ridge's fit (and scored by it).
pub const HELD_OUT_ONE_IN: u64 = 5;

/// Whether sample `id` is held out of the ridge's fit, for seed `seed`.
pub fn is_held_out(seed: u64, id: u64) -> bool {
    // Another stream of the hash than the kNN subsample's, so the two choices are independent.
    sample_hash(seed ^ 0x0005_eed4_e1d0_u64, id).is_multiple_of(HELD_OUT_ONE_IN)
}

/// Sums over one part of the rows (fitted on, or held out), `x` the rows less their layer's
/// shift.
#[derive(Debug)]
pub struct Part {
    pub n: u64,
    /// `[d]`: `sum x`.
    pub sum: Tensor,
    /// `[d, d]`: `sum x x^T`.
    pub scatter: Tensor,
}

/// A layer's moments: the rows the ridge fits on, and those it is scored on, both about
/// `shift` (`None` until the layer has rows).
#[derive(Debug)]
pub struct LayerMoments {
    pub fit: Part,
    pub held: Part,
    pub shift: Option<Tensor>,
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
    pub fn new(d: usize, device: Device) -> Part {
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

    /// Adds `other`'s sums, taken about a point `delta` further than this part's.
    fn merge(&mut self, other: &Part, delta: &Tensor) {
        let n = other.n as f64;
        let moved = delta.outer(&other.sum);
        self.scatter += &other.scatter + &moved + moved.tr() + delta.outer(delta) * n;
        self.sum += &other.sum + delta * n;
        self.n += other.n;
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
            shift: None,
        }
    }

    /// `rows` (`[n, d]`, float64) less the layer's shift, which the first rows set.
    pub fn shifted(&mut self, rows: &Tensor) -> Tensor {
        if self.shift.is_none() && rows.size()[0] > 0 {
            self.shift = Some(rows.mean_dim([0i64].as_slice(), false, Kind::Double));
        }
        match &self.shift {
            Some(shift) => rows - shift.unsqueeze(0),
            None => rows.shallow_clone(),
        }
    }

    /// Adds rows already shifted and split: `fit` `[n_f, d]` and `held` `[n_h, d]`.
    pub fn add(&mut self, fit: &Tensor, held: &Tensor) {
        self.fit.add(fit);
        self.held.add(held);
    }

    /// The same sums, shared (tensors are not copied).
    pub fn shallow_clone(&self) -> LayerMoments {
        LayerMoments {
            fit: self.fit.shallow_clone(),
            held: self.held.shallow_clone(),
            shift: self.shift.as_ref().map(Tensor::shallow_clone),
        }
    }

    /// How far `other`'s shift is from this one's (this one takes `other`'s when it has none):
    /// what [`LayerMoments::merge`] and [`CrossMoments::merge`] move `other`'s sums by.
    pub fn delta(&mut self, other: &LayerMoments) -> Tensor {
        if self.shift.is_none() {
            self.shift = other.shift.as_ref().map(Tensor::copy);
        }
        match (&self.shift, &other.shift) {
            (Some(mine), Some(theirs)) => theirs - mine,
            _ => self.fit.sum.zeros_like(),
        }
    }

    /// Adds `other`'s sums (other rows of the same layer), `delta` from [`LayerMoments::delta`].
    pub fn merge(&mut self, other: &LayerMoments, delta: &Tensor) {
        self.fit.merge(&other.fit, delta);
        self.held.merge(&other.held, delta);
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

    /// Adds `other`'s cross sums, taken about points `delta` further on each side; `x`, `y`
    /// are `other`'s layers (their sums before they move).
    pub fn merge(
        &mut self,
        other: &CrossMoments,
        (dx, dy): (&Tensor, &Tensor),
        (x, y): (&LayerMoments, &LayerMoments),
    ) {
        let moved = |cross: &Tensor, px: &Part, py: &Part| {
            cross + dx.outer(&py.sum) + px.sum.outer(dy) + dx.outer(dy) * (px.n as f64)
        };
        self.fit += moved(&other.fit, &x.fit, &y.fit);
        self.held += moved(&other.held, &x.held, &y.held);
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
