//! The dense backend: co-activation sums of dense codes (ReLU SAEs without TopK) by blocked
//! matrix products through libtorch, on the CPU or a GPU.
//!
//! Sparse updates cost `k_A * k_B` per sample, which for dense codes is `d_A * d_B`: a matmul
//! over a block of samples does the same sums at BLAS speed (or the GPU's).
//!
//! The product runs in float32, the kind matrix units are fast at (twice float64 on a CPU's
//! vector units, and far more on a GPU), on the block's values centred on their block means;
//! the means' part of the sums is added back in float64, and the block's sums are added to
//! float64 totals. Centring keeps float32's rounding relative to the spread of the values, not
//! to their mean, which is what a correlation subtracts: the sums agree with a float64
//! computation to about 1e-7 of `sqrt(sum x^2 sum y^2)` per block. Moments (count, sum, sum of
//! squares) are taken in float64 from the float32 values, like the sparse backend's.

use tch::{Device, Kind, Tensor};

use crate::codes::CodeBatch;

use super::coactivation::Cross;
use super::{CoactivationAccumulator, Moments, StatsError};

/// Accumulates moments and `X^T Y` over blocks of aligned samples on a libtorch device.
pub struct DenseAccumulator {
    d_a: usize,
    d_b: usize,
    device: Device,
    samples: u64,
    source: [Tensor; 3],
    target: [Tensor; 3],
    cross: Tensor,
}

impl DenseAccumulator {
    /// An empty accumulator of `d_a x d_b` features on `device`.
    pub fn new(d_a: usize, d_b: usize, device: Device) -> Self {
        let zeros = |d: usize| {
            [
                Tensor::zeros([d as i64], (Kind::Double, device)),
                Tensor::zeros([d as i64], (Kind::Double, device)),
                Tensor::zeros([d as i64], (Kind::Double, device)),
            ]
        };
        DenseAccumulator {
            d_a,
            d_b,
            device,
            samples: 0,
            source: zeros(d_a),
            target: zeros(d_b),
            cross: Tensor::zeros([d_a as i64, d_b as i64], (Kind::Double, device)),
        }
    }

    /// Adds a block of aligned samples given as dense matrices `x: (n, d_a)` and `y: (n, d_b)`
    /// of any floating kind; row `r` of both is one sample.
    pub fn add_dense(&mut self, x: &Tensor, y: &Tensor) -> Result<(), StatsError> {
        let (sx, sy) = (x.size(), y.size());
        if sx.len() != 2 || sy.len() != 2 || sx[0] != sy[0] {
            return Err(StatsError::ShapeMismatch(format!(
                "dense blocks must be (n, d_a) and (n, d_b), got {sx:?} and {sy:?}"
            )));
        }
        if sx[1] as usize != self.d_a || sy[1] as usize != self.d_b {
            return Err(StatsError::ShapeMismatch(format!(
                "blocks of {}x{} features given to an accumulator of {}x{}",
                sx[1], sy[1], self.d_a, self.d_b
            )));
        }
        let n = sx[0];
        if n == 0 {
            return Ok(());
        }
        let x = x.f_to_device(self.device)?.f_to_kind(Kind::Float)?;
        let y = y.f_to_device(self.device)?.f_to_kind(Kind::Float)?;
        add_moments(&mut self.source, &x)?;
        add_moments(&mut self.target, &y)?;
        let (xc, x_mean, x_rest) = centre(&x)?;
        let (yc, y_mean, y_rest) = centre(&y)?;
        // sum x y^T = sum (xc + m_x)(yc + m_y)^T
        //           = xc^T yc + m_x (sum yc)^T + (sum xc) m_y^T + n m_x m_y^T,
        // with m the float32 means subtracted and sum xc what is left of each column after.
        let product = xc.f_tr()?.f_mm(&yc)?.f_to_kind(Kind::Double)?;
        let _ = self.cross.f_add_(&product)?;
        let y_side = y_rest.f_add(&y_mean.f_mul_scalar(n as f64)?)?;
        let _ = self.cross.f_add_(&x_mean.f_outer(&y_side)?)?;
        let _ = self.cross.f_add_(&x_rest.f_outer(&y_mean)?)?;
        self.samples += n as u64;
        Ok(())
    }

    /// Adds aligned code batches, densified into blocks.
    pub fn add_batch(&mut self, a: &CodeBatch, b: &CodeBatch) -> Result<(), StatsError> {
        assert_eq!(a.len(), b.len(), "aligned batches have the same length");
        if a.is_empty() {
            return Ok(());
        }
        let x = densify(a, self.d_a);
        let y = densify(b, self.d_b);
        self.add_dense(&x, &y)
    }

    /// The accumulated sums, as an accumulator that merges with sparse ones.
    pub fn finish(self) -> Result<CoactivationAccumulator, StatsError> {
        let moments = |t: &[Tensor; 3]| -> Result<Moments, StatsError> {
            let count: Vec<f64> = Vec::try_from(&t[0])?;
            Ok(Moments::from_parts(
                self.samples,
                count.into_iter().map(|c| c as u64).collect(),
                Vec::try_from(&t[1])?,
                Vec::try_from(&t[2])?,
            ))
        };
        let cross: Vec<f64> = Vec::try_from(&self.cross.f_flatten(0, -1)?)?;
        Ok(CoactivationAccumulator {
            source: moments(&self.source)?,
            target: moments(&self.target)?,
            cross: Cross::Dense(cross),
            options: Default::default(),
        })
    }
}

fn add_moments(m: &mut [Tensor; 3], x: &Tensor) -> Result<(), StatsError> {
    let wide = x.f_to_kind(Kind::Double)?;
    let _ = m[0].f_add_(&x.f_ne(0.0)?.f_sum_dim_intlist(0, false, Kind::Double)?)?;
    let _ = m[1].f_add_(&wide.f_sum_dim_intlist(0, false, Kind::Double)?)?;
    let _ = m[2].f_add_(&wide.f_square()?.f_sum_dim_intlist(0, false, Kind::Double)?)?;
    Ok(())
}

/// A float32 block centred on its column means: the centred block, the means subtracted (as
/// float64 of the float32 values used), and the column sums of the centred block (float64),
/// which rounding leaves slightly off zero.
fn centre(x: &Tensor) -> Result<(Tensor, Tensor, Tensor), StatsError> {
    let mean = x.f_mean_dim(Some([0i64].as_slice()), false, Kind::Float)?;
    let centred = x.f_sub(&mean)?;
    let rest = centred.f_sum_dim_intlist(0, false, Kind::Double)?;
    Ok((centred, mean.f_to_kind(Kind::Double)?, rest))
}

/// A batch as an `(n, d)` f32 matrix on the CPU (codes are f32; sums are widened later).
fn densify(batch: &CodeBatch, d: usize) -> Tensor {
    let mut dense = vec![0f32; batch.len() * d];
    for (row, code) in batch.iter().enumerate() {
        for (&f, &v) in code.features.iter().zip(code.values) {
            dense[row * d + f as usize] = v;
        }
    }
    Tensor::from_slice(&dense).view([batch.len() as i64, d as i64])
}
