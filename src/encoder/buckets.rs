//! Captions grouped by length before the model sees them: a batch is padded to its longest
//! caption, so batches of like length compute far less padding (emoji captions run 5 to 54
//! tokens: batches of 64 in dataset order are 48% padding on top of the tokens; batches of 32
//! distinct captions sorted within windows of 256 samples 17.7%, of 512 samples 10.1%, of 1,024
//! 5.9%, since each emoji caption is two samples).
//!
//! A larger window holds more rows before they go on, so a window is as large as a whole reader
//! batch when the token rows of its chosen layers fit [`WINDOW_BYTES`], and is halved until they
//! do (down to a model batch): a 1,024-row read of emoji captions takes 154-374 MB over
//! all-MiniLM-L6-v2's seven layers, so some reads are halved, while all-mpnet-base-v2's one
//! layer keeps them whole; BERT-large's 25 layers get 64 to 128 samples a window. The bound counts every
//! token of the chosen layers, whether or not the call asks for token rows, so that a pass of
//! pooled rows and a pass of token rows form the same windows, hence the same batches.
//!
//! Windows are cut from the start of a reader batch and split at halves, by the reader batch's
//! own captions, so that every reader of the same shard (any worker, `saeshare encode`) forms the
//! same windows: the activations do not depend on who encoded them. The rows come back in the
//! window's order.

use std::ops::Range;

use super::distinct::model_batches;
use super::stream::EncodedRows;
use super::tokens::TokenRows;
use crate::dataset::SampleBatch;

/// Rows a reader hands the encoders at a time, in `saeshare encode` and in a study alike.
pub const READER_BATCH_ROWS: usize = 1024;

/// Bytes the token rows of one window may take (every token of every chosen layer, as float32):
/// a window is held whole until its rows go back in dataset order.
pub const WINDOW_BYTES: usize = 256 << 20;

/// How captions are sorted into windows: each sample's token count, and the bytes one token's
/// rows take over the chosen layers.
#[derive(Clone, Copy, Debug)]
pub struct Sorting<'a> {
    pub lengths: &'a [usize],
    pub bytes_per_token: usize,
}

/// The model batches of one window, and how to put their rows back in the window's order.
pub struct Window {
    pub batches: Vec<SampleBatch>,
    /// The window's sample ids in dataset order, when the batches hold them in another.
    pub restore: Option<Vec<u64>>,
}

/// Cuts a reader batch into windows that `sorting` sizes ([`window_spans`]), each sorted by
/// length (ties by caption, so that identical captions are neighbours), or, without sorting,
/// into windows of one model batch in dataset order. Model batches hold `batch_size` distinct
/// inputs, neighbours that are `same` counting once.
pub fn windows(
    batch: &SampleBatch,
    batch_size: usize,
    sorting: Option<Sorting<'_>>,
    same: impl Fn(usize, usize) -> bool,
) -> Vec<Window> {
    let mut out = Vec::new();
    match sorting {
        Some(sorting) => {
            let lengths = sorting.lengths;
            for Range { start, end } in window_spans(sorting, batch_size) {
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

/// The windows of a reader batch: the whole of it, halved (the first half the larger) until each
/// part's token rows fit [`WINDOW_BYTES`] or a half would hold fewer than `smallest` samples.
pub fn window_spans(sorting: Sorting<'_>, smallest: usize) -> Vec<Range<usize>> {
    fn split(
        sorting: Sorting<'_>,
        span: Range<usize>,
        smallest: usize,
        out: &mut Vec<Range<usize>>,
    ) {
        let tokens: usize = sorting.lengths[span.clone()].iter().sum();
        let half = span.len().div_ceil(2);
        if tokens.saturating_mul(sorting.bytes_per_token) <= WINDOW_BYTES
            || span.len() - half < smallest.max(1)
        {
            out.push(span);
        } else {
            split(sorting, span.start..span.start + half, smallest, out);
            split(sorting, span.start + half..span.end, smallest, out);
        }
    }
    let mut out = Vec::new();
    let n = sorting.lengths.len();
    // A reader batch is at most READER_BATCH_ROWS; a longer one is cut as reader batches are.
    for start in (0..n).step_by(READER_BATCH_ROWS) {
        split(
            sorting,
            start..(start + READER_BATCH_ROWS).min(n),
            smallest,
            &mut out,
        );
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
        let lengths: Vec<usize> = (0..20).map(|i| (i * 7) % 5 + 1).collect();
        // At most 20 tokens a window: 15 in each five samples, so windows of 5.
        let sorting = Sorting {
            lengths: &lengths,
            bytes_per_token: WINDOW_BYTES / 20,
        };
        let windows = windows(&whole, 3, Some(sorting), |_, _| false);
        assert_eq!(windows.len(), 4);
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
        let windows = windows(&whole, 3, None, |_, _| false);
        let ids: Vec<Vec<u64>> = (windows.iter())
            .flat_map(|w| w.batches.iter().map(|b| b.sample_ids.clone()))
            .collect();
        assert_eq!(ids, [vec![100, 101, 102], vec![103, 104, 105], vec![106]]);
        assert!(windows.iter().all(|w| w.restore.is_none()));
        assert_eq!(windows[0].batches[0].skipped.len(), 1);
        assert!(windows[1].batches[0].skipped.is_empty());
    }

    /// Where the rows are heavy the windows are smaller, each fits the budget unless it is
    /// down to a model batch, and together they cover the batch in order.
    #[test]
    fn windows_halve_where_their_token_rows_would_not_fit() {
        let mut lengths = vec![10; READER_BATCH_ROWS];
        // The last quarter's captions are five times longer.
        lengths[768..].fill(50);
        let sorting = Sorting {
            lengths: &lengths,
            bytes_per_token: WINDOW_BYTES / (256 * 10),
        };
        let spans = window_spans(sorting, 32);
        let sizes: Vec<usize> = spans.iter().map(|s| s.len()).collect();
        // 256 short captions fit, 256 long ones do not: 51 of them would, so 32 a window.
        assert_eq!(sizes[..3], [256, 256, 256]);
        assert!(sizes[3..].iter().all(|&n| n == 32), "{sizes:?}");
        assert_eq!(spans.first().map(|s| s.start), Some(0));
        assert!(spans.windows(2).all(|p| p[0].end == p[1].start));
        assert_eq!(spans.last().map(|s| s.end), Some(READER_BATCH_ROWS));
        for span in &spans {
            let bytes: usize =
                lengths[span.clone()].iter().sum::<usize>() * sorting.bytes_per_token;
            assert!(bytes <= WINDOW_BYTES || span.len() == 32, "{span:?}");
        }
        // Light rows: the whole reader batch is one window.
        let light = Sorting {
            lengths: &lengths,
            bytes_per_token: 4,
        };
        let spans = window_spans(light, 32);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0], 0..READER_BATCH_ROWS);
        // A window never goes below a model batch, however heavy its rows.
        let heavy = Sorting {
            lengths: &lengths[..100],
            bytes_per_token: WINDOW_BYTES,
        };
        let sizes: Vec<usize> = window_spans(heavy, 32).iter().map(|s| s.len()).collect();
        assert_eq!(sizes, [50, 50]);
    }
}
