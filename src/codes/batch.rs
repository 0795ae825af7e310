//! Sparse code batches in compressed-row form: the unit every statistic consumes.

/// The code of one sample: its active features (strictly increasing) and their values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SparseCode<'a> {
    /// The dataset row.
    pub sample_id: u64,
    /// Active feature indices, strictly increasing.
    pub features: &'a [u32],
    /// Their values, same length as `features`.
    pub values: &'a [f32],
}

/// Codes of consecutive samples, stored as one flat array of (feature, value) pairs with offsets
/// (compressed sparse rows), so a batch is three allocations whatever its size.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CodeBatch {
    sample_ids: Vec<u64>,
    offsets: Vec<usize>,
    features: Vec<u32>,
    values: Vec<f32>,
}

impl CodeBatch {
    /// An empty batch.
    pub fn new() -> Self {
        CodeBatch {
            offsets: vec![0],
            ..CodeBatch::default()
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.sample_ids.len()
    }

    /// Whether the batch holds no sample.
    pub fn is_empty(&self) -> bool {
        self.sample_ids.is_empty()
    }

    /// Total number of active latents.
    pub fn nnz(&self) -> usize {
        self.features.len()
    }

    /// The sample ids, in order.
    pub fn sample_ids(&self) -> &[u64] {
        &self.sample_ids
    }

    /// Sample number `index` of the batch.
    pub fn get(&self, index: usize) -> SparseCode<'_> {
        let (start, end) = (self.offsets[index], self.offsets[index + 1]);
        SparseCode {
            sample_id: self.sample_ids[index],
            features: &self.features[start..end],
            values: &self.values[start..end],
        }
    }

    /// Asks the CPU to start loading sample `index`'s features and values into its caches, for
    /// a loop that will read them a few steps later; does nothing where the CPU has no such
    /// hint, or when `index` is out of range.
    #[inline]
    pub fn prefetch(&self, index: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(&start) = self.offsets.get(index) {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let features = self.features.as_ptr().wrapping_add(start);
            let values = self.values.as_ptr().wrapping_add(start);
            // SAFETY: a prefetch is a hint; it reads nothing the program sees and never
            // faults, whatever the address.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(features.cast());
                _mm_prefetch::<_MM_HINT_T0>(values.cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = index;
    }

    /// The samples in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = SparseCode<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Appends a sample. Features must be strictly increasing (the reader and writer ensure it;
    /// statistics rely on it only for determinism, not correctness).
    pub fn push(&mut self, code: SparseCode<'_>) {
        debug_assert_eq!(code.features.len(), code.values.len());
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.sample_ids.push(code.sample_id);
        self.features.extend_from_slice(code.features);
        self.values.extend_from_slice(code.values);
        self.offsets.push(self.features.len());
    }

    /// The codes of dense rows, row `s` the sample `sample_ids[s]`: each row's nonzero entries.
    pub fn from_dense(rows: &[Vec<f32>], sample_ids: &[u64]) -> CodeBatch {
        let mut out = CodeBatch::new();
        for (row, &sample_id) in rows.iter().zip(sample_ids) {
            let (features, values): (Vec<u32>, Vec<f32>) = (row.iter().enumerate())
                .filter(|(_, &v)| v != 0.0)
                .map(|(i, &v)| (i as u32, v))
                .unzip();
            out.push(SparseCode {
                sample_id,
                features: &features,
                values: &values,
            });
        }
        out
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.sample_ids.clear();
        self.features.clear();
        self.values.clear();
        self.offsets.clear();
        self.offsets.push(0);
    }

    /// Starts a new sample whose pairs the reader adds one by one.
    pub(crate) fn begin(&mut self, sample_id: u64) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.sample_ids.push(sample_id);
        self.offsets.push(self.features.len());
    }

    /// Adds a pair to the sample begun last.
    pub(crate) fn push_pair(&mut self, feature: u32, value: f32) {
        self.features.push(feature);
        self.values.push(value);
        *self.offsets.last_mut().expect("a sample was begun") = self.features.len();
    }

    /// Sorts the last sample's pairs by feature; returns a feature found twice, if any.
    pub(crate) fn finish_last(&mut self) -> Option<u32> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        let (start, end) = (self.offsets[n - 1], self.offsets[n]);
        let features = &mut self.features[start..end];
        if !features.windows(2).all(|w| w[0] < w[1]) {
            let mut pairs: Vec<(u32, f32)> = features
                .iter()
                .copied()
                .zip(self.values[start..end].iter().copied())
                .collect();
            pairs.sort_unstable_by_key(|p| p.0);
            for (k, (f, v)) in pairs.into_iter().enumerate() {
                self.features[start + k] = f;
                self.values[start + k] = v;
            }
        }
        self.features[start..end]
            .windows(2)
            .find(|w| w[0] == w[1])
            .map(|w| w[0])
    }
}
