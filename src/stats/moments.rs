//! Per-feature moments of one code stream: what every correlation needs besides cross sums.

use crate::codes::SparseCode;

use super::StatsError;

/// Count, sum and sum of squares of every feature over the samples seen, in f64 so that sums of
/// millions of f32 values stay exact to well below the 1e-5 the metrics promise.
#[derive(Clone, Debug, PartialEq)]
pub struct Moments {
    samples: u64,
    count: Vec<u64>,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
}

impl Moments {
    /// Moments of `d` features over no sample.
    pub fn new(d: usize) -> Self {
        Moments {
            samples: 0,
            count: vec![0; d],
            sum: vec![0.0; d],
            sum_sq: vec![0.0; d],
        }
    }

    /// Builds moments from their parts (loading, dense backends); the vectors must have one
    /// entry per feature.
    pub(crate) fn from_parts(
        samples: u64,
        count: Vec<u64>,
        sum: Vec<f64>,
        sum_sq: Vec<f64>,
    ) -> Self {
        assert!(count.len() == sum.len() && sum.len() == sum_sq.len());
        Moments {
            samples,
            count,
            sum,
            sum_sq,
        }
    }

    /// Number of features.
    pub fn d(&self) -> usize {
        self.count.len()
    }

    /// Number of samples seen, `N`.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Samples on which each feature is active (non-zero).
    pub fn counts(&self) -> &[u64] {
        &self.count
    }

    /// `sum_n f_i(n)` of each feature.
    pub fn sums(&self) -> &[f64] {
        &self.sum
    }

    /// `sum_n f_i(n)^2` of each feature.
    pub fn sums_sq(&self) -> &[f64] {
        &self.sum_sq
    }

    /// Adds one sample's code.
    pub fn add(&mut self, code: &SparseCode<'_>) {
        self.samples += 1;
        for (&f, &v) in code.features.iter().zip(code.values) {
            let (f, v) = (f as usize, v as f64);
            // A zero is not an activation, whoever built the code.
            self.count[f] += u64::from(v != 0.0);
            self.sum[f] += v;
            self.sum_sq[f] += v * v;
        }
    }

    /// Adds the moments of other samples (another shard, another worker).
    pub fn merge(&mut self, other: &Moments) -> Result<(), StatsError> {
        if other.d() != self.d() {
            return Err(StatsError::ShapeMismatch(format!(
                "moments of {} features cannot be merged with moments of {}",
                other.d(),
                self.d()
            )));
        }
        self.samples += other.samples;
        for i in 0..self.d() {
            self.count[i] += other.count[i];
            self.sum[i] += other.sum[i];
            self.sum_sq[i] += other.sum_sq[i];
        }
        Ok(())
    }

    /// `sqrt(N * Sxx_i - Sx_i^2)` (N times the standard deviation), or 0 for a feature that
    /// never fires or is constant: such features have no correlation (docs/DESIGN.md, section 1).
    pub fn spread(&self, i: usize) -> f64 {
        let n = self.samples as f64;
        let second = n * self.sum_sq[i];
        let var = second - self.sum[i] * self.sum[i];
        // A constant feature leaves rounding noise in `var`, up to ~N * 1e-16 of `second` with
        // naive sums; 1e-9 of `second` (variance / mean square) is above that noise for any
        // realistic N and below the variance of a feature that differs on one sample in 1e9.
        if self.count[i] == 0 || var <= 1e-9 * second {
            0.0
        } else {
            var.sqrt()
        }
    }

    /// The weight `S_i = sum_n f_i(n)`, or 0 for a dead or constant feature (docs/DESIGN.md, section 1).
    pub fn weight(&self, i: usize) -> f64 {
        if self.spread(i) == 0.0 {
            0.0
        } else {
            self.sum[i]
        }
    }
}
