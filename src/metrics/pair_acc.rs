//! One co-activation accumulator of a layer pair, sparse (TopK codes) or dense (blocked
//! matmuls through libtorch), behind one face for `compare` and the baselines.

use crate::codes::{CodeBatch, CodesMeta};
use crate::stats::{CoactivationAccumulator, DenseAccumulator, StatsError};

use super::{Backend, CompareOptions, MetricsError};

/// One accumulator, sparse or dense.
pub(crate) enum PairAcc {
    Sparse(CoactivationAccumulator),
    Dense(Box<DenseAccumulator>),
}

impl PairAcc {
    /// An accumulator for `a x b`; `samples`, when known, lets a sparse one start dense when
    /// it would become dense anyway.
    pub fn new(
        a: &CodesMeta,
        b: &CodesMeta,
        samples: Option<u64>,
        options: &CompareOptions,
    ) -> Self {
        let dense = match options.backend {
            Backend::Sparse => false,
            Backend::Dense => true,
            Backend::Auto => a.k.is_none() || b.k.is_none(),
        };
        let (d_a, d_b) = (a.d_sae as usize, b.d_sae as usize);
        if dense {
            PairAcc::Dense(Box::new(DenseAccumulator::new(d_a, d_b, options.device)))
        } else {
            let updates = match (samples, a.k, b.k) {
                (Some(n), Some(k_a), Some(k_b)) => n * k_a as u64 * k_b as u64,
                _ => 0,
            };
            PairAcc::Sparse(CoactivationAccumulator::with_expected_updates(
                d_a, d_b, updates,
            ))
        }
    }

    pub fn add(&mut self, a: &CodeBatch, b: &CodeBatch) -> Result<(), StatsError> {
        match self {
            PairAcc::Sparse(acc) => acc.add_batch(a, b),
            PairAcc::Dense(acc) => acc.add_batch(a, b)?,
        }
        Ok(())
    }

    pub fn finish(self) -> Result<CoactivationAccumulator, MetricsError> {
        match self {
            PairAcc::Sparse(acc) => Ok(acc),
            PairAcc::Dense(acc) => Ok(acc.finish()?),
        }
    }
}
