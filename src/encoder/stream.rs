//! The one loop that runs dataset batches through an encoder, for `saeshare encode` and for the
//! pipeline's workers alike.
//!
//! Reading, decoding and preprocessing run on a helper thread, one bounded step ahead of the
//! model: the CPU prepares the next batch while libtorch runs this one.

use super::{prepare, Encoder, Pooling, TokenRows, TokenSelection};
use crate::dataset::SampleBatch;

/// The rows of one batch of one encoder: per chosen layer, the pooled rows (`[samples x
/// width]` row-major) and, when asked for, the token rows.
#[derive(Clone, Debug, Default)]
pub struct EncodedRows {
    pub sample_ids: Vec<u64>,
    pub layers: Vec<Vec<f32>>,
    /// Per chosen layer when token rows were asked for; empty otherwise.
    pub tokens: Vec<TokenRows>,
    /// Rows left out (unreadable images, rows the reader skipped).
    pub skipped: u64,
}

impl EncodedRows {
    /// No rows yet, of `layers` layers.
    pub fn empty(layers: usize) -> EncodedRows {
        EncodedRows {
            sample_ids: Vec::new(),
            layers: vec![Vec::new(); layers],
            tokens: Vec::new(),
            skipped: 0,
        }
    }

    /// Adds `other`'s rows after these.
    pub fn append(&mut self, other: &EncodedRows) {
        let offset = self.sample_ids.len() as u32;
        self.sample_ids.extend(&other.sample_ids);
        for (mine, theirs) in self.layers.iter_mut().zip(&other.layers) {
            mine.extend(theirs);
        }
        if self.tokens.is_empty() {
            self.tokens = vec![TokenRows::default(); other.tokens.len()];
        }
        for (mine, theirs) in self.tokens.iter_mut().zip(&other.tokens) {
            mine.append(theirs, offset);
        }
        self.skipped += other.skipped;
    }

    /// Samples encoded plus rows left out: the dataset rows these stand for.
    pub fn rows(&self) -> u64 {
        self.sample_ids.len() as u64 + self.skipped
    }
}

impl Encoder {
    /// Runs `batches` through the encoder and hands `sink` the pooled rows of `layers` (indices
    /// into the manifest's layers) for each batch, in order, with their token rows when
    /// `tokens` says which. A batch's rows left out (by the reader, or images that do not
    /// decode) are counted in its [`EncodedRows::skipped`]. Stops at the first error, of the
    /// batches or of `sink`.
    pub fn encode_batches<I>(
        &mut self,
        batches: I,
        layers: &[usize],
        pooling: Pooling,
        tokens: Option<&TokenSelection>,
        mut sink: impl FnMut(EncodedRows) -> anyhow::Result<()>,
    ) -> anyhow::Result<()>
    where
        I: Iterator<Item = anyhow::Result<SampleBatch>> + Send,
    {
        let manifest = &self.manifest.clone();
        let (prepared_tx, prepared_rx) = crossbeam_channel::bounded(2);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for batch in batches {
                    let item = batch.and_then(|batch| {
                        let read_skips = batch.skipped.len() as u64;
                        Ok((prepare(manifest, &batch)?, read_skips))
                    });
                    let failed = item.is_err();
                    // A closed channel means the model side failed; its error is reported.
                    if prepared_tx.send(item).is_err() || failed {
                        return;
                    }
                }
            });
            for item in prepared_rx {
                let (prepared, read_skips) = item?;
                let pooled = self.encode_prepared(prepared, layers, pooling, tokens)?;
                let mut rows = EncodedRows {
                    skipped: read_skips + pooled.skipped.len() as u64,
                    sample_ids: pooled.sample_ids,
                    layers: Vec::with_capacity(pooled.layers.len()),
                    tokens: pooled.tokens,
                };
                for (_, tensor) in &pooled.layers {
                    rows.layers
                        .push(Vec::<f32>::try_from(tensor.reshape([-1]))?);
                }
                sink(rows)?;
            }
            Ok(())
        })
    }
}
