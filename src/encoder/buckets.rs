//! Captions grouped by length before the model sees them: a batch is padded to its longest
//! caption, so batches of like length compute far less padding (emoji captions run 5 to 54
//! tokens: batches of 64 in dataset order are 62% padding on top of the tokens; batches of 32
//! distinct captions sorted within windows of 256 samples 17.7%, of 512 samples 10.1%, of 1,024
//! 5.9%, since each emoji caption is two samples). A larger window holds more rows before they
//! go on: 512 is half a reader batch.
//!
//! A window is [`BUCKET_WINDOW`] consecutive samples of a reader batch, cut from its start, so
//! that every reader of the same shard (any worker, `saeshare encode`) forms the same windows and
//! so the same batches: the activations do not depend on who encoded them. The rows come back in
//! the window's order.

use super::distinct::model_batches;
use super::stream::EncodedRows;
use super::tokens::TokenRows;
use crate::dataset::SampleBatch;

/// Rows a reader hands the encoders at a time, in `saeshare encode` and in a study alike.
pub const READER_BATCH_ROWS: usize = 1024;

/// Samples sorted together: a divisor of [`READER_BATCH_ROWS`], so that the windows are the
/// same whoever reads the shard.
pub const BUCKET_WINDOW: usize = 512;

/// The model batches of one window, and how to put their rows back in the window's order.
pub struct Window {
    pub batches: Vec<SampleBatch>,
    /// The window's sample ids in dataset order, when the batches hold them in another.
    pub restore: Option<Vec<u64>>,
}

/// Cuts a reader batch into windows of `window` samples, each sorted by `lengths` (ties by
/// caption, so that identical captions are neighbours), or, without lengths, into windows of one
/// model batch in dataset order. Model batches hold `batch_size` distinct inputs, neighbours that
/// are `same` counting once.
pub fn windows(
    batch: &SampleBatch,
    batch_size: usize,
    window: usize,
    lengths: Option<&[usize]>,
    same: impl Fn(usize, usize) -> bool,
) -> Vec<Window> {
    let mut out = Vec::new();
    match lengths {
        Some(lengths) => {
            let window = window.max(batch_size).max(1);
            for start in (0..batch.len()).step_by(window) {
                let end = (start + window).min(batch.len());
                let mut order: Vec<usize> = (start..end).collect();
                order.sort_by(|&a, &b| {
                    (lengths[a].cmp(&lengths[b]))
                        .then_with(|| batch.captions[a].cmp(&batch.captions[b]))
                });
                let batches = (model_batches(&order, batch_size, &same).into_iter())
                    .map(|rows| pick(batch, rows))
                    .collect();
                let restore = Some(batch.sample_ids[start..end].to_vec());
                out.push(Window { batches, restore });
            }
        }
        None => {
            let order: Vec<usize> = (0..batch.len()).collect();
            for rows in model_batches(&order, batch_size, &same) {
                out.push(Window {
                    batches: vec![pick(batch, rows)],
                    restore: None,
                });
            }
        }
    }
    if batch.is_empty() && !batch.skipped.is_empty() {
        out.push(Window {
            batches: vec![pick(batch, &[])],
            restore: None,
        });
    }
    // The reader's skips are counted once, with the first model batch.
    if let Some(first) = out.first_mut().and_then(|w| w.batches.first_mut()) {
        first.skipped = batch.skipped.clone();
    }
    out
}

/// Rows `rows` of `batch`, in that order, without its skips.
fn pick(batch: &SampleBatch, rows: &[usize]) -> SampleBatch {
    SampleBatch {
        shard: batch.shard,
        sample_ids: rows.iter().map(|&i| batch.sample_ids[i]).collect(),
        captions: rows.iter().map(|&i| batch.captions[i].clone()).collect(),
        images: if batch.images.is_empty() {
            Vec::new()
        } else {
            rows.iter().map(|&i| batch.images[i].clone()).collect()
        },
        skipped: Vec::new(),
    }
}

/// The rows of a window's model batches in the order of `order` (sample ids): pooled rows
/// moved sample by sample, each sample's token rows moved together, positions kept.
pub fn restore_order(encoded: EncodedRows, order: &[u64]) -> EncodedRows {
    let index: std::collections::HashMap<u64, usize> = (encoded.sample_ids.iter())
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    // A sample the model side left out (none for text) is left out here too.
    let picked: Vec<usize> = order
        .iter()
        .filter_map(|id| index.get(id).copied())
        .collect();
    let layers = (encoded.layers.iter())
        .map(|values| {
            let width = values.len() / encoded.sample_ids.len().max(1);
            let mut out = Vec::with_capacity(values.len());
            for &i in &picked {
                out.extend_from_slice(&values[i * width..(i + 1) * width]);
            }
            out
        })
        .collect();
    let tokens = (encoded.tokens.iter())
        .map(|rows| reorder_tokens(rows, &picked, encoded.sample_ids.len()))
        .collect();
    EncodedRows {
        sample_ids: picked.iter().map(|&i| encoded.sample_ids[i]).collect(),
        layers,
        tokens,
        skipped: encoded.skipped,
        inputs: encoded.inputs,
    }
}

/// Token rows regrouped so that sample `picked[k]`'s rows come k-th, numbered k.
fn reorder_tokens(rows: &TokenRows, picked: &[usize], samples: usize) -> TokenRows {
    let width = rows.values.len() / rows.rows().max(1);
    // Each sample's rows are contiguous (a batch's token rows go sample by sample).
    let mut ranges = vec![(0usize, 0usize); samples];
    for (r, &s) in rows.sample.iter().enumerate() {
        let range = &mut ranges[s as usize];
        if range.1 == 0 {
            range.0 = r;
        }
        range.1 = r + 1;
    }
    let mut out = TokenRows::default();
    for (k, &i) in picked.iter().enumerate() {
        let (start, end) = ranges[i];
        out.values
            .extend_from_slice(&rows.values[start * width..end * width]);
        out.sample
            .extend(std::iter::repeat_n(k as u32, end - start));
        out.position.extend_from_slice(&rows.position[start..end]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> SampleBatch {
        SampleBatch {
            shard: 0,
            sample_ids: (100..100 + n as u64).collect(),
            captions: (0..n).map(|i| format!("c{i}")).collect(),
            images: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// What a model would give for `batch`: pooled row = [id, -id]; token rows: `id % 3`
    /// of them, valued id * 10 + position.
    fn encoded(batch: &SampleBatch) -> EncodedRows {
        let mut tokens = TokenRows::default();
        for (s, &id) in batch.sample_ids.iter().enumerate() {
            for p in 0..(id % 3) as u32 {
                tokens.values.extend([(id * 10 + p as u64) as f32, 0.5]);
                tokens.sample.push(s as u32);
                tokens.position.push(p);
            }
        }
        EncodedRows {
            sample_ids: batch.sample_ids.clone(),
            layers: vec![batch
                .sample_ids
                .iter()
                .flat_map(|&i| [i as f32, -(i as f32)])
                .collect()],
            tokens: vec![tokens],
            skipped: 0,
            inputs: batch.len() as u64,
        }
    }

    #[test]
    fn sorted_batches_come_back_in_dataset_order_with_their_tokens() {
        let whole = batch(20);
        let lengths: Vec<usize> = (0..20).map(|i| (i * 7) % 5).collect();
        let windows = windows(&whole, 3, 8, Some(&lengths), |_, _| false);
        assert_eq!(windows.len(), 3);
        let mut all = EncodedRows::empty(1);
        for w in windows {
            let first = &w.batches[0];
            // Sorted: the first batch of a window holds its shortest captions.
            assert!(first
                .sample_ids
                .windows(2)
                .all(|p| { lengths[(p[0] - 100) as usize] <= lengths[(p[1] - 100) as usize] }));
            let mut rows = EncodedRows::empty(1);
            for b in &w.batches {
                rows.append(&encoded(b));
            }
            all.append(&restore_order(rows, w.restore.as_ref().unwrap()));
        }
        let expected = encoded(&whole);
        assert_eq!(all.sample_ids, expected.sample_ids);
        assert_eq!(all.layers, expected.layers);
        assert_eq!(all.tokens[0].values, expected.tokens[0].values);
        assert_eq!(all.tokens[0].sample, expected.tokens[0].sample);
        assert_eq!(all.tokens[0].position, expected.tokens[0].position);
    }

    #[test]
    fn without_lengths_batches_keep_dataset_order_and_the_skips_go_first() {
        let mut whole = batch(7);
        whole.skipped.push(crate::dataset::SkippedRow {
            file: "f".into(),
            row: 3,
            sample_id: 9,
            reason: "bad".into(),
        });
        let windows = windows(&whole, 3, 3, None, |_, _| false);
        let ids: Vec<Vec<u64>> = (windows.iter())
            .flat_map(|w| w.batches.iter().map(|b| b.sample_ids.clone()))
            .collect();
        assert_eq!(ids, [vec![100, 101, 102], vec![103, 104, 105], vec![106]]);
        assert!(windows.iter().all(|w| w.restore.is_none()));
        assert_eq!(windows[0].batches[0].skipped.len(), 1);
        assert!(windows[1].batches[0].skipped.is_empty());
    }
}
