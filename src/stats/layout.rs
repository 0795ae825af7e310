//! Where an accumulator keeps its cross sums, and how many threads fill them: a dense
//! `d_A x d_B` array of f64 when it fits the memory budget and the samples would touch a good
//! part of it anyway, one hash table per source feature otherwise.

/// The memory budget of co-activation sums when none is given: a dense array of up to
/// 16,384 x 16,384 pairs.
pub const DEFAULT_MEMORY_MIB: usize = 2048;

/// Below this many pairs an accumulator never turns dense: small problems stay cheap to
/// serialize.
pub(crate) const MIN_DENSE_PAIRS: usize = 1 << 16;

/// How an accumulator holds and fills its cross sums. Neither setting changes a sum: both
/// layouts and any thread count give the same f64 sums, bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccumulatorOptions {
    /// MiB the cross sums may take as a dense `d_A x d_B` array of f64; above it they stay
    /// sparse, as large as the pairs that fired together (exact sums cannot be bounded below
    /// that).
    pub memory_mib: usize,
    /// Threads filling the cross sums of a batch, each owning a range of source features
    /// (at least 1).
    pub threads: usize,
}

impl Default for AccumulatorOptions {
    /// [`DEFAULT_MEMORY_MIB`] and one thread: a library caller (a timely worker, a test) gets
    /// no threads it did not ask for.
    fn default() -> Self {
        AccumulatorOptions {
            memory_mib: DEFAULT_MEMORY_MIB,
            threads: 1,
        }
    }
}

/// How cross sums are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One hash table per source feature, holding the pairs that fired together.
    Sparse,
    /// Every pair, row-major `d_A x d_B` f64.
    Dense,
}

impl AccumulatorOptions {
    /// These options on `threads` threads.
    pub fn with_threads(self, threads: usize) -> Self {
        AccumulatorOptions { threads, ..self }
    }

    /// The share of the budget of one of `parts` accumulators filled together (the layer
    /// pairs of one pass).
    pub fn shared_by(self, parts: usize) -> Self {
        AccumulatorOptions {
            memory_mib: self.memory_mib / parts.max(1),
            ..self
        }
    }

    /// Every core this process may use, as the command line's default thread count.
    pub fn available_threads() -> usize {
        std::thread::available_parallelism().map_or(1, usize::from)
    }

    /// Whether a dense `d_a x d_b` array of f64 fits the memory budget.
    pub fn dense_fits(&self, d_a: usize, d_b: usize) -> bool {
        let bytes = (d_a as u128) * (d_b as u128) * 8;
        bytes <= (self.memory_mib as u128) << 20
    }

    /// The layout an accumulator of `d_a x d_b` features starts with, expecting `pair_updates`
    /// updates (`N * k_A * k_B` for TopK codes; 0 when unknown). Dense when the array fits
    /// the budget and the updates would touch a good part of it anyway: then its fixed cost
    /// (zeroing `8 * d_A * d_B` bytes, MPPC over every pair) is below what hashing the updates
    /// would cost. u updates over c pairs touch ~c(1 - e^(-u/c)) distinct pairs, 39% at
    /// u = c/2, where a table entry (~24 bytes with its spare room) costs more than the whole
    /// dense array (8 per pair).
    pub fn layout_for(&self, d_a: usize, d_b: usize, pair_updates: u64) -> Layout {
        let cells = (d_a as u64).saturating_mul(d_b as u64);
        if cells > MIN_DENSE_PAIRS as u64 && pair_updates >= cells / 2 && self.dense_fits(d_a, d_b)
        {
            Layout::Dense
        } else {
            Layout::Sparse
        }
    }

    /// Whether sparse sums holding `pairs` pairs should turn dense: their tables take more
    /// memory than the dense array would (an entry costs ~3 dense cells with its control byte
    /// and spare room), and the array fits the budget.
    pub(crate) fn densify_at(&self, d_a: usize, d_b: usize, pairs: usize) -> bool {
        pairs > MIN_DENSE_PAIRS
            && (pairs as u128) * 3 > (d_a as u128) * (d_b as u128)
            && self.dense_fits(d_a, d_b)
    }
}
