//! One co-activation accumulator of a layer pair, sparse (TopK codes) or dense (blocked
//! matmuls through libtorch), behind one face for `compare` and the baselines.

use crate::codes::{CodeBatch, CodesMeta};
use crate::stats::{AccumulatorOptions, CoactivationAccumulator, DenseAccumulator, StatsError};

use super::{Backend, CompareOptions, MetricsError};

/// One accumulator, sparse or dense; the dense one keeps the options its finished sums get
/// (MPPC's threads).
pub(crate) enum PairAcc {
    Sparse(CoactivationAccumulator),
    Dense(Box<DenseAccumulator>, AccumulatorOptions),
}

impl PairAcc {
    /// An accumulator for `a x b`; `samples`, when known, lets a sparse one start dense when
    /// it would become dense anyway and `accumulator`'s budget allows.
    pub fn new(
        a: &CodesMeta,
        b: &CodesMeta,
        samples: Option<u64>,
        options: &CompareOptions,
        accumulator: AccumulatorOptions,
    ) -> Self {
        let dense = match options.backend {
            Backend::Sparse => false,
            Backend::Dense => true,
            Backend::Auto => a.k.is_none() || b.k.is_none(),
        };
        let (d_a, d_b) = (a.d_sae as usize, b.d_sae as usize);
        if dense {
            let sums = DenseAccumulator::new(d_a, d_b, options.device);
            PairAcc::Dense(Box::new(sums), accumulator)
        } else {
            let updates = match (samples, a.k, b.k) {
                (Some(n), Some(k_a), Some(k_b)) => n * k_a as u64 * k_b as u64,
                _ => 0,
            };
            PairAcc::Sparse(CoactivationAccumulator::with_options(
                d_a,
                d_b,
                updates,
                accumulator,
            ))
        }
    }

    pub fn add(&mut self, a: &CodeBatch, b: &CodeBatch) -> Result<(), StatsError> {
        match self {
            PairAcc::Sparse(acc) => acc.add_batch(a, b),
            PairAcc::Dense(acc, _) => acc.add_batch(a, b)?,
        }
        Ok(())
    }

    pub fn finish(self) -> Result<CoactivationAccumulator, MetricsError> {
        match self {
            PairAcc::Sparse(acc) => Ok(acc),
            PairAcc::Dense(acc, accumulator) => {
                let mut sums = acc.finish()?;
                sums.set_options(accumulator);
                Ok(sums)
            }
        }
    }
}
