//! Identical inputs run through the model once. Paired datasets repeat themselves: COCO gives
//! each image five captions (five rows, one image), the emoji give each caption two images (one
//! per style). An encoder's output is a function of its input alone, so a batch's duplicates are
//! forwarded once and each sample reads its rows from its input's: the activations are the same,
//! and the SAEs still see every sample's own token draw.

use std::collections::HashMap;
use std::hash::Hash;

/// The distinct inputs of a batch: `first[d]` is the sample that stands for input `d`, and
/// `input_of[s]` the input that sample `s` reads. Inputs are numbered in order of first sight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistinctInputs {
    pub first: Vec<usize>,
    pub input_of: Vec<usize>,
}

impl DistinctInputs {
    /// Numbers `keys` (one per sample) by equality.
    pub fn of<K: Hash + Eq>(keys: impl IntoIterator<Item = K>) -> DistinctInputs {
        let mut seen = HashMap::new();
        let mut first = Vec::new();
        let input_of = (keys.into_iter().enumerate())
            .map(|(sample, key)| {
                *seen.entry(key).or_insert_with(|| {
                    first.push(sample);
                    first.len() - 1
                })
            })
            .collect();
        DistinctInputs { first, input_of }
    }
}

/// `order` cut into model batches of at most `batch_size` distinct inputs, where neighbours that
/// are `same` count as one: a batch ends before the input that would be its `batch_size + 1`-th.
/// Neighbours are what the cut can see; [`DistinctInputs`] then finds every duplicate of a batch.
pub fn model_batches(
    order: &[usize],
    batch_size: usize,
    same: impl Fn(usize, usize) -> bool,
) -> Vec<&[usize]> {
    let batch_size = batch_size.max(1);
    let mut batches = Vec::new();
    let (mut start, mut distinct) = (0, 0);
    for i in 0..order.len() {
        if i > start && same(order[i - 1], order[i]) {
            continue;
        }
        if distinct == batch_size {
            batches.push(&order[start..i]);
            (start, distinct) = (i, 0);
        }
        distinct += 1;
    }
    if start < order.len() {
        batches.push(&order[start..]);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn duplicates_share_the_input_first_seen() {
        let d = DistinctInputs::of(["a", "b", "a", "c", "b"]);
        assert_eq!(d.first, [0, 1, 3]);
        assert_eq!(d.input_of, [0, 1, 0, 2, 1]);
        assert_eq!(DistinctInputs::of([3, 2, 1]).first, [0, 1, 2]);
    }

    proptest! {
        /// Every row lands in exactly one batch, in order; a batch has at most `batch_size`
        /// runs of equal neighbours, and only the last has fewer.
        #[test]
        fn batches_cover_the_rows_and_count_runs_of_equal_neighbours(
            keys in proptest::collection::vec(0u8..4, 0..60),
            batch_size in 1usize..7,
        ) {
            let order: Vec<usize> = (0..keys.len()).collect();
            let same = |a: usize, b: usize| keys[a] == keys[b];
            let batches = model_batches(&order, batch_size, same);
            let joined: Vec<usize> = batches.iter().flat_map(|b| b.iter().copied()).collect();
            prop_assert_eq!(&joined, &order);
            let runs = |b: &[usize]| 1 + b.windows(2).filter(|w| !same(w[0], w[1])).count();
            for (i, b) in batches.iter().enumerate() {
                prop_assert!(!b.is_empty());
                prop_assert!(runs(b) <= batch_size);
                if i + 1 < batches.len() {
                    prop_assert_eq!(runs(b), batch_size);
                }
            }
        }
    }
}
