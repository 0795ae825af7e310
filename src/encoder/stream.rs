//! The one loop that runs dataset batches through an encoder, for `saeshare encode` and for the
//! pipeline's workers alike.
//!
//! Reading, decoding and preprocessing run on a helper thread, one bounded step ahead of the
//! model: the CPU prepares the next batch while libtorch runs this one, on one lane or, on a
//! CPU, on several side by side ([`super::lanes`]).

use super::buckets::{restore_order, windows, Sorting, Window};
use super::preparers::Preparers;
use super::stage_times::Laps;
use super::text::{BatchTokens, TextTokenizer};
use super::{
    prepare, Encoder, Manifest, Modality, Pooling, Prepared, PreparedCounts, StageTimes, Tally,
    TokenRows, TokenSelection,
};
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
    /// Distinct inputs the model ran on: fewer than the samples where inputs repeat.
    pub inputs: u64,
}

impl EncodedRows {
    /// No rows yet, of `layers` layers.
    pub fn empty(layers: usize) -> EncodedRows {
        EncodedRows {
            sample_ids: Vec::new(),
            layers: vec![Vec::new(); layers],
            tokens: Vec::new(),
            skipped: 0,
            inputs: 0,
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
        self.inputs += other.inputs;
    }

    /// Samples encoded plus rows left out: the dataset rows these stand for.
    pub fn rows(&self) -> u64 {
        self.sample_ids.len() as u64 + self.skipped
    }
}

impl Encoder {
    /// Runs reader `batches` through the encoder in model batches of `batch_size` and hands
    /// `sink` the pooled rows of `layers` (indices into the manifest's layers), in dataset order,
    /// with their token rows when `tokens` says which. Captions are grouped by length within
    /// windows sized by the token rows of `layers` ([`super::buckets`]; unless the package pads
    /// to a fixed length); `sink` gets a window's rows at once, or a model batch's for images.
    /// A batch's rows left out (by the reader, or images that do not decode) are counted in its
    /// [`EncodedRows::skipped`]. On a CPU the windows run on the encoder's [lanes](super::lanes).
    /// Stops at the first error, of the batches or of `sink`.
    pub fn encode_batches<I>(
        &mut self,
        batches: I,
        batch_size: usize,
        layers: &[usize],
        pooling: Pooling,
        tokens: Option<&TokenSelection>,
        sink: impl FnMut(EncodedRows) -> anyhow::Result<()>,
    ) -> anyhow::Result<()>
    where
        I: Iterator<Item = anyhow::Result<SampleBatch>> + Send,
    {
        let helper = self.helper(batch_size, layers);
        let lanes = self.lanes();
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(2);
        let (mut cutting, mut preparing) = (0.0, 0.0);
        let encoder = &*self;
        let outcome = std::thread::scope(|scope| {
            scope.spawn(move || {
                crate::allocator::use_thread_heap();
                for batch in batches {
                    match batch.and_then(|b| helper.send_windows(&b, &jobs_tx)) {
                        Ok(true) => {}
                        // The model side failed; its error is reported.
                        Ok(false) => return,
                        Err(error) => {
                            let _ = jobs_tx.send(Err(error));
                            return;
                        }
                    }
                }
            });
            let jobs = jobs_rx.into_iter().map(|job: anyhow::Result<WindowJob>| {
                let job = job?;
                cutting += job.cutting;
                preparing += job.preparing;
                Ok(job)
            });
            let work = |job: WindowJob, tally: &mut Tally| {
                let mut rows = EncodedRows::empty(layers.len());
                for prepared in job.parts {
                    rows.append(&encoder.encode_rows(prepared, layers, pooling, tokens, tally)?);
                }
                Ok(match &job.restore {
                    Some(order) => restore_order(rows, order),
                    None => rows,
                })
            };
            lanes.run(jobs, work, sink)
        });
        let lane_tallies = outcome?;
        let mut times = StageTimes {
            cutting,
            preparing,
            ..StageTimes::default()
        };
        // Each lane's stages, averaged: per lane they add up to about the wall time.
        let per_lane = 1.0 / lane_tallies.len() as f64;
        for (tally, idle) in &lane_tallies {
            times.waiting += idle * per_lane;
            times.inputs += tally.times.inputs * per_lane;
            times.forward += tally.times.forward * per_lane;
            times.outputs += tally.times.outputs * per_lane;
            self.tally.truncated_captions += tally.truncated_captions;
        }
        self.tally.times.add(&times);
        Ok(())
    }

    /// The helper thread's work alone on `batch`, as [`encode_batches`](Self::encode_batches)
    /// does it for `layers` (tokenizing, cutting into windows, preparing each model batch of
    /// `batch_size` on its preparing threads), without the model: the distinct inputs prepared.
    /// What the model side can be fed at most, and for captions how much of it is padding.
    pub fn prepare_only(
        &self,
        batch: &SampleBatch,
        batch_size: usize,
        layers: &[usize],
    ) -> anyhow::Result<PreparedCounts> {
        let helper = self.helper(batch_size, layers);
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    crate::allocator::use_thread_heap();
                    helper.send_windows(batch, &jobs_tx)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("preparing inputs panicked"))?
        })?;
        let mut counts = PreparedCounts::default();
        for job in jobs_rx {
            job?.parts.iter().for_each(|part| counts.add(part));
        }
        Ok(counts)
    }

    /// What the helper thread needs: captions are tokenized there, with the encoder's tokenizer,
    /// and sorted into windows sized by the token rows of `layers`.
    fn helper(&self, batch_size: usize, layers: &[usize]) -> Helper {
        let widths = layers.iter().map(|&l| self.manifest.layers[l].width);
        Helper {
            manifest: self.manifest.clone(),
            tokenizer: self.tokenizer.clone(),
            batch_size,
            bytes_per_token: widths.sum::<usize>() * std::mem::size_of::<f32>(),
            preparers: self.preparers.clone(),
        }
    }

    /// One prepared model batch's rows.
    fn encode_rows(
        &self,
        prepared: Prepared,
        layers: &[usize],
        pooling: Pooling,
        tokens: Option<&TokenSelection>,
        tally: &mut Tally,
    ) -> anyhow::Result<EncodedRows> {
        let read_skips = prepared.read_skips;
        let pooled = self.encode_prepared(prepared, layers, pooling, tokens, tally)?;
        let mut rows = EncodedRows {
            skipped: read_skips + pooled.skipped.len() as u64,
            inputs: pooled.inputs as u64,
            sample_ids: pooled.sample_ids,
            layers: Vec::with_capacity(pooled.layers.len()),
            tokens: pooled.tokens,
        };
        for (_, tensor) in &pooled.layers {
            rows.layers
                .push(Vec::<f32>::try_from(tensor.reshape([-1]))?);
        }
        Ok(rows)
    }
}

/// A window's model batches, prepared, and the order its rows go back in.
struct WindowJob {
    parts: Vec<Prepared>,
    restore: Option<Vec<u64>>,
    /// The helper thread's seconds for it.
    cutting: f64,
    preparing: f64,
}

/// What the helper thread needs to turn reader batches into prepared model batches.
struct Helper {
    manifest: Manifest,
    tokenizer: Option<std::sync::Arc<TextTokenizer>>,
    batch_size: usize,
    /// A token's rows over the chosen layers, to size the windows.
    bytes_per_token: usize,
    preparers: Preparers,
}

type Jobs = crossbeam_channel::Sender<anyhow::Result<WindowJob>>;

impl Helper {
    /// Cuts a reader batch into windows: captions sorted by length when `measure` holds their
    /// tokens. A model batch holds `batch_size` distinct inputs of the encoder's modality.
    fn cut(&self, measure: Option<&BatchTokens>, batch: &SampleBatch) -> Vec<Window> {
        let lengths = measure.map(|t| t.lengths(&batch.captions));
        let sorting = lengths.as_deref().map(|lengths| Sorting {
            lengths,
            bytes_per_token: self.bytes_per_token,
        });
        let same = |a: usize, b: usize| match self.manifest.modality {
            Modality::Text => batch.captions[a] == batch.captions[b],
            Modality::Image => match (batch.images.get(a), batch.images.get(b)) {
                (Some(x), Some(y)) => x.0 == y.0,
                _ => false,
            },
        };
        windows(batch, self.batch_size, sorting, same)
    }

    /// Tokenizes a reader batch's captions (text), cuts it into windows and sends each window
    /// once prepared, so the model starts on the first while the next is prepared, however large
    /// the reader's batch. `Ok(false)` when the model side has hung up.
    fn send_windows(&self, batch: &SampleBatch, jobs: &Jobs) -> anyhow::Result<bool> {
        let mut laps = Laps::start();
        let tokens = (self.tokenizer.as_ref())
            .map(|t| t.tokenize(&batch.captions, &self.preparers))
            .transpose()?;
        let measure = tokens.as_ref().filter(|_| self.manifest.pads_to_longest());
        let windows = self.cut(measure, batch);
        // The batch's tokenizing and cutting are counted with its first window.
        let mut cutting = laps.lap();
        for w in windows {
            let mut job = prepare_window(&self.manifest, w, &self.preparers, tokens.as_ref())?;
            job.cutting = std::mem::take(&mut cutting);
            job.preparing = laps.lap();
            if jobs.send(Ok(job)).is_err() {
                return Ok(false);
            }
            // Blocked on a full channel: the model side's pace, not preparing.
            laps.lap();
        }
        Ok(true)
    }
}

/// A window's model batches, prepared on `preparers` (text: from the reader batch's `tokens`).
fn prepare_window(
    manifest: &Manifest,
    w: Window,
    preparers: &Preparers,
    tokens: Option<&BatchTokens>,
) -> anyhow::Result<WindowJob> {
    let parts = (w.batches.iter())
        .map(|b| prepare(manifest, b, preparers, tokens))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(WindowJob {
        parts,
        restore: w.restore,
        cutting: 0.0,
        preparing: 0.0,
    })
}
