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
    /// An accumulator for `a x b` over `samples` samples (when known) and `source_rows` rows
    /// of `a`'s files: a sparse one starts dense when the updates ([`expected_updates`]) would
    /// touch much of the dense array and `accumulator`'s budget allows.
    pub fn new(
        (a, b): (&CodesMeta, &CodesMeta),
        (samples, source_rows): (Option<u64>, u64),
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
            PairAcc::Sparse(CoactivationAccumulator::with_options(
                d_a,
                d_b,
                expected_updates(a, b, samples, source_rows),
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

/// About how many updates the sums of TopK codes `a` against `b` take: `N * k_A * k_B` when the
/// sample count `samples` is known, else `source_rows * k_B` (each source latent meets at most
/// `k_B` target latents; files from other tools need not record `N`); 0 for other codes.
fn expected_updates(a: &CodesMeta, b: &CodesMeta, samples: Option<u64>, source_rows: u64) -> u64 {
    match (a.k, b.k, samples) {
        (Some(k_a), Some(k_b), Some(n)) => n * k_a as u64 * k_b as u64,
        (Some(_), Some(k_b), None) => source_rows * k_b as u64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::{CodesReader, CodesWriter};

    #[test]
    fn updates_come_from_the_sample_count_or_else_the_source_rows() {
        let (a, b) = (
            CodesMeta::topk("a", "l", 100, 4),
            CodesMeta::topk("b", "l", 100, 8),
        );
        assert_eq!(expected_updates(&a, &b, Some(10), 999), 10 * 4 * 8);
        assert_eq!(expected_updates(&a, &b, None, 40), 40 * 8);
        let relu = CodesMeta::dense("a", "l", 100);
        assert_eq!(expected_updates(&relu, &b, Some(10), 40), 0);

        // The rows a reader counts: active latents, and one row per empty sample.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codes.parquet");
        let mut writer = CodesWriter::create(&path, a).unwrap();
        writer.push(0, &[1, 2, 3], &[1.0, 2.0, 3.0]).unwrap();
        writer.push(1, &[], &[]).unwrap();
        writer.push(2, &[7], &[0.5]).unwrap();
        writer.finish().unwrap();
        assert_eq!(CodesReader::open(&path).unwrap().rows(), 5);
    }
}
