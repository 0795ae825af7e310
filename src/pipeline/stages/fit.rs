//! The fit pass: shards -> encoder -> pooled rows, exchanged to the worker that owns each
//! (encoder, layer) -> that layer's [`LayerFit`] (mixing buffer, online SAE training). No
//! activation is written to disk (unless the activation cache is on).
//!
//! Rows reach an SAE in dataset order whatever the number of workers: each worker's source
//! stamps its batches with the shard index, and the owner feeds the shard at the frontier as
//! its stretches arrive (every earlier shard is done) and keeps those of later shards until
//! their turn, each fit's stretches in the order they were read. Equal data order and seeds
//! give equal SAEs on 1 worker or many. A stretch is one encoder batch (`batch_size` samples),
//! so what waits is bounded by a shard per worker, and with one worker nothing waits.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use timely::progress::frontier::MutableAntichain;
use timely::worker::Worker;

use crate::dataset::SampleBatch;
use crate::encoder::{EncodedRows, READER_BATCH_ROWS};
use crate::ids::{EncoderId, EncoderLayer, LayerId, ShardId};
use crate::pipeline::cache;
use crate::pipeline::encoding::worker_device;
use crate::pipeline::plan::Plan;
use crate::pipeline::source::shard_source;
use crate::pipeline::stage::{passed, projection_for, Failure, StageContext};
use crate::sae::{LayerFit, SaeSource, StepThreads};

/// Pooled rows of one layer of one encoder for one stretch of a shard: what crosses from the
/// worker that read the shard to the worker that fits the layer's SAE.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerRows {
    pub at: EncoderLayer,
    pub shard: ShardId,
    /// Position of the stretch in its shard.
    pub seq: u32,
    /// `[rows x width]` row-major: pooled rows, or token rows.
    pub values: Vec<f32>,
    /// The sample id of each row.
    pub samples: Vec<u64>,
}

/// Each layer's rows an SAE is fitted on, with the sample of each row: the token rows where
/// they were encoded, else the pooled rows.
pub(in crate::pipeline) fn fit_rows(rows: EncodedRows) -> Vec<(Vec<f32>, Vec<u64>)> {
    if rows.tokens.is_empty() {
        let samples = rows.sample_ids;
        return (rows.layers.into_iter())
            .map(|values| (values, samples.clone()))
            .collect();
    }
    let ids = rows.sample_ids;
    (rows.tokens.into_iter())
        .map(|t| {
            let samples = t.sample.iter().map(|&i| ids[i as usize]).collect();
            (t.values, samples)
        })
        .collect()
}

/// Builds the fit dataflow for encoders `todo` in `worker`. Once the worker has run it to
/// completion, [`finish`] ends the pass of every fit this worker owns and saves the SAEs.
pub fn build(
    worker: &mut Worker,
    context: &StageContext,
    todo: &[EncoderId],
) -> Rc<RefCell<OwnedFits>> {
    let plan = &context.plan;
    let failure = context.failure.clone();
    let owned = Rc::new(RefCell::new(OwnedFits::new(plan.clone(), worker.index())));
    let encoding = FitEncoding {
        context: context.clone(),
        todo: todo.to_vec(),
        stretches: BTreeMap::new(),
        to_cache: BTreeMap::new(),
    };
    let projection = projection_for(todo.iter().map(|&e| plan.encoder(e)));
    let shards = plan.shard_ids().collect();
    let fits = owned.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        let (batches, errors) = shard_source(
            scope,
            plan.dataset.clone(),
            shards,
            projection,
            READER_BATCH_ROWS,
        );
        failure.watch_source(errors);
        batches.encode_for_fit(encoding).fit_saes(fits, failure);
    });
    owned
}

/// The fit pass's operators, as methods on the streams they read.
trait FitStreams<'scope> {
    /// Each batch through every encoder to fit: one [`LayerRows`] per (encoder, layer, stretch).
    fn encode_for_fit(self, encoding: FitEncoding) -> StreamVec<'scope, u64, LayerRows>;
}

trait LayerRowStreams {
    /// Exchanges the rows to the worker owning their layer and trains its SAE on them, shard
    /// by shard in dataset order.
    fn fit_saes(self, fits: Rc<RefCell<OwnedFits>>, failure: Failure);
}

impl<'scope> FitStreams<'scope> for StreamVec<'scope, u64, SampleBatch> {
    fn encode_for_fit(self, mut encoding: FitEncoding) -> StreamVec<'scope, u64, LayerRows> {
        self.unary_frontier(Pipeline, "EncodeForFit", move |_, _| {
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let Some(&shard) = cap.least() else {
                        return;
                    };
                    let mut session = output.session(&cap);
                    for batch in data.drain(..) {
                        encoding.encode(shard_id(shard), &batch, &mut |rows| session.give(rows));
                    }
                });
                encoding.write_cache_before(frontier);
            }
        })
    }
}

impl LayerRowStreams for StreamVec<'_, u64, LayerRows> {
    fn fit_saes(self, fits: Rc<RefCell<OwnedFits>>, failure: Failure) {
        self.sink(
            Exchange::new(|rows: &LayerRows| rows.at.route()),
            "FitSaes",
            move |(input, frontier)| {
                let mut fits = fits.borrow_mut();
                input.for_each(|cap, data| {
                    if let Some(&shard) = cap.least() {
                        fits.receive(shard, data);
                    }
                });
                if let Err(error) = fits.feed_before(frontier) {
                    failure.set(error);
                }
            },
        );
    }
}

/// The state of the operator that encodes for the fit: which encoders, the stretch counters of
/// each shard, and (with the activation cache) each shard's rows until the shard is complete.
struct FitEncoding {
    context: StageContext,
    todo: Vec<EncoderId>,
    /// The next stretch of each (shard, encoder) this worker reads: numbered per encoder, so
    /// that each fit sees its stretches of a shard as 0, 1, 2, ...
    stretches: BTreeMap<(u64, EncoderId), u32>,
    to_cache: BTreeMap<u64, HashMap<EncoderId, EncodedRows>>,
}

impl FitEncoding {
    /// Encodes `batch` with every encoder to fit and hands each layer's rows to `give`, slice
    /// by slice. An encoder and its ceiling twin are fed the same rows, encoded once.
    fn encode(&mut self, shard: ShardId, batch: &SampleBatch, give: &mut impl FnMut(LayerRows)) {
        for (base, members) in self.groups() {
            if self.context.failure.failed() {
                return;
            }
            let result = self.encode_group(base, &members, shard, batch, give);
            if let Err(error) = result {
                self.context.failure.set(error);
            }
        }
    }

    /// The encoders to fit, grouped by the encoder whose rows they are fitted on; those whose
    /// every SAE is imported are not run.
    fn groups(&self) -> BTreeMap<EncoderId, Vec<EncoderId>> {
        let mut groups: BTreeMap<EncoderId, Vec<EncoderId>> = BTreeMap::new();
        let plan = &self.context.plan;
        for &e in self.todo.iter().filter(|&&e| plan.encoder(e).fits_any()) {
            let base = plan.encoder(e).twin_of.unwrap_or(e);
            groups.entry(base).or_default().push(e);
        }
        groups
    }

    fn encode_group(
        &mut self,
        base: EncoderId,
        members: &[EncoderId],
        shard: ShardId,
        batch: &SampleBatch,
        give: &mut impl FnMut(LayerRows),
    ) -> anyhow::Result<()> {
        let context = self.context.clone();
        let tokens = context.plan.encoder(base).token_selection().copied();
        let caches = members.contains(&base) && self.caches(base, shard);
        let mut handle = |mut rows: EncodedRows| {
            context.count(members, &rows);
            if caches {
                // The cache keeps the pooled rows only: token rows are never stored.
                let tokens = std::mem::take(&mut rows.tokens);
                self.to_cache
                    .entry(u64::from(shard.0))
                    .or_default()
                    .entry(base)
                    .or_insert_with(|| EncodedRows::empty(rows.layers.len()))
                    .append(&rows);
                rows.tokens = tokens;
            }
            let next = self
                .stretches
                .entry((u64::from(shard.0), base))
                .or_insert(0);
            let seq = *next;
            *next += 1;
            for (layer, (values, samples)) in LayerId::all(rows.layers.len()).zip(fit_rows(rows)) {
                // An encoder and its twin import the same layers.
                if context.plan.encoder(base).imported(layer).is_some() {
                    continue;
                }
                let (last, others) = members.split_last().expect("a group has members");
                for &encoder in others {
                    give(LayerRows {
                        at: EncoderLayer { encoder, layer },
                        shard,
                        seq,
                        values: values.clone(),
                        samples: samples.clone(),
                    });
                }
                give(LayerRows {
                    at: EncoderLayer {
                        encoder: *last,
                        layer,
                    },
                    shard,
                    seq,
                    values,
                    samples,
                });
            }
            Ok(())
        };
        match tokens {
            Some(selection) => {
                let mut models = context.models.borrow_mut();
                models.encode_slices(base, batch, Some(&selection), &mut handle)
            }
            None => {
                let pooled = context.models.borrow_mut().pooled_for(base, batch)?;
                pooled.map_or(Ok(()), handle)
            }
        }
    }

    /// Whether encoder `e`'s rows of `shard` go to the activation cache.
    fn caches(&self, e: EncoderId, shard: ShardId) -> bool {
        let plan = &self.context.plan;
        plan.study.activation_cache
            && plan.encoder(e).twin_of.is_none()
            && !self.context.models.borrow().is_cached(e, shard)
    }

    /// Writes the cached rows of the shards the frontier has passed: they are complete.
    fn write_cache_before(&mut self, frontier: &MutableAntichain<u64>) {
        for shard in passed(&self.to_cache, frontier) {
            let encoders = self.to_cache.remove(&shard).expect("listed");
            let StageContext { plan, failure, .. } = &self.context;
            if failure.failed() {
                continue;
            }
            for (e, rows) in encoders {
                if let Err(error) = cache::write(plan, e, shard_id(shard), &rows) {
                    failure.set(error);
                }
            }
        }
    }
}

/// The SAEs this worker fits, by (encoder, layer), with what arrived before its turn.
pub struct OwnedFits {
    plan: Arc<Plan>,
    pub fits: BTreeMap<EncoderLayer, LayerFit>,
    pending: BTreeMap<u64, Vec<LayerRows>>,
    /// The shard at the frontier, and the next stretch each fit takes of it.
    current: Option<(u64, BTreeMap<EncoderLayer, u32>)>,
    /// This worker's index, which picks its GPU.
    worker: usize,
    /// Where the SAEs take their steps while this worker encodes on; started with the first
    /// fit, absent when the study asks for steps on the worker's thread.
    step_threads: Option<StepThreads>,
}

impl OwnedFits {
    fn new(plan: Arc<Plan>, worker: usize) -> OwnedFits {
        OwnedFits {
            plan,
            fits: BTreeMap::new(),
            pending: BTreeMap::new(),
            current: None,
            worker,
            step_threads: None,
        }
    }

    /// Keeps rows of `shard` until their turn.
    fn receive(&mut self, shard: u64, rows: &mut Vec<LayerRows>) {
        self.pending.entry(shard).or_default().append(rows);
    }

    /// Feeds the shards the frontier has passed, in order (every worker is done with them),
    /// then what has come of the shard at the frontier: every earlier shard is fed, so its
    /// stretches go in as they arrive, in order, and a shard's token rows never wait in memory
    /// whole.
    fn feed_before(&mut self, frontier: &MutableAntichain<u64>) -> anyhow::Result<()> {
        for shard in passed(&self.pending, frontier) {
            let rows = self.pending.remove(&shard).expect("listed");
            self.feed(shard, rows, false)?;
        }
        if let Some(&shard) = frontier.frontier().first() {
            if let Some(rows) = self.pending.remove(&shard) {
                self.feed(shard, rows, true)?;
            }
        }
        Ok(())
    }

    /// Feeds one shard's rows to their fits, stretch by stretch. While the shard is still
    /// `arriving`, a fit takes only its next stretches in order, and the rest waits.
    fn feed(&mut self, shard: u64, mut rows: Vec<LayerRows>, arriving: bool) -> anyhow::Result<()> {
        rows.sort_by_key(|r| (r.at, r.seq));
        if self.current.as_ref().is_none_or(|(s, _)| *s != shard) {
            self.current = Some((shard, BTreeMap::new()));
        }
        let (plan, worker) = (&self.plan, self.worker);
        let (_, next) = self.current.as_mut().expect("set above");
        let mut waiting = Vec::new();
        for r in rows {
            let expected = next.entry(r.at).or_insert(0);
            if arriving && r.seq != *expected {
                waiting.push(r);
                continue;
            }
            *expected = r.seq + 1;
            if !self.fits.contains_key(&r.at) {
                let device = worker_device(plan.encoder(r.at.encoder).device, worker);
                let wanted = plan.study.fit.sae_threads_for(device);
                let threads = step_threads(&mut self.step_threads, wanted)?;
                let fit = new_fit(plan, r.at, worker);
                let fit = match threads {
                    Some(threads) => fit.on_threads(threads),
                    None => fit,
                };
                self.fits.insert(r.at, fit);
            }
            let fit = self.fits.get_mut(&r.at).expect("inserted above");
            fit.push(&r.values, &r.samples)?;
        }
        if !waiting.is_empty() {
            self.pending.insert(shard, waiting);
        }
        Ok(())
    }
}

/// The worker's step threads, started on first use; none when `threads` is 0.
fn step_threads(
    started: &mut Option<StepThreads>,
    threads: usize,
) -> anyhow::Result<Option<&StepThreads>> {
    if threads == 0 {
        return Ok(None);
    }
    if started.is_none() {
        let spawned = StepThreads::start(threads)
            .map_err(|e| anyhow::anyhow!("starting {threads} SAE step thread(s): {e}"))?;
        *started = Some(spawned);
    }
    Ok(started.as_ref())
}

/// The shard of a timestamp: the sources stamp batches with their shard's position.
fn shard_id(time: u64) -> ShardId {
    ShardId::new(time as usize)
}

fn new_fit(plan: &Plan, at: EncoderLayer, worker: usize) -> LayerFit {
    let encoder = plan.encoder(at.encoder);
    let width = encoder.layer_width(at.layer);
    // One pass draws each row at most once, and leaves up to half a mixing buffer undrawn: a
    // dataset larger than that needs no replay, and keeping its rows would make memory grow
    // with the dataset.
    let buffer_rows = plan.study.fit.buffer_rows_for(width);
    let needed = encoder.sae.steps * encoder.sae.batch_size + buffer_rows / 2;
    let budget_bytes = if plan.dataset.rows() as usize >= needed {
        0
    } else {
        plan.study.fit.replay_memory_mib * 1024 * 1024
    };
    LayerFit::new(
        &encoder.sae,
        width,
        SaeSource {
            encoder: encoder.name.clone(),
            layer: encoder.layer_name(at.layer).to_string(),
        },
        worker_device(encoder.device, worker),
        buffer_rows,
        budget_bytes / (width * 4),
    )
    .with_max_passes(plan.study.fit.max_passes)
}

/// Feeds what is left, ends every owned fit's pass and saves its SAE.
pub fn finish(owned: &Rc<RefCell<OwnedFits>>, plan: &Plan) -> anyhow::Result<usize> {
    let mut owned = owned.borrow_mut();
    let pending = std::mem::take(&mut owned.pending);
    for (shard, rows) in pending {
        owned.feed(shard, rows, false)?;
    }
    let mut saved = 0;
    for (at, fit) in std::mem::take(&mut owned.fits) {
        let encoder = plan.encoder(at.encoder);
        let layer = encoder.layer_name(at.layer);
        let rows = fit.rows();
        let trainer = fit.finish().map_err(|error| {
            anyhow::anyhow!("fitting the SAE of {} layer {layer}: {error}", encoder.name)
        })?;
        let dir = plan.sae_dir(at.encoder, at.layer);
        trainer.save_with(&dir, plan.study.fit.keep_optimizer)?;
        tracing::info!(
            "fitted the SAE of {} layer {layer}: {} steps on {rows} rows a pass, {:.1}% of its \
             latents never fired, {:.1}% dead; saved in {}",
            encoder.name,
            trainer.steps_done(),
            100.0 * trainer.never_fired(),
            100.0 * trainer.dead_fraction(),
            dir.display()
        );
        let dead_after = encoder.sae.dead_after_tokens;
        if trainer.tokens_seen() < dead_after {
            tracing::warn!(
                "{} layer {layer}: dead_after_tokens ({dead_after}) is longer than the fit ({} \
                 rows), so no latent could count as dead; {:.1}% never fired (lower [sae] \
                 dead_after_tokens for AuxK to revive them)",
                encoder.name,
                trainer.tokens_seen(),
                100.0 * trainer.never_fired()
            );
        }
        saved += 1;
    }
    Ok(saved)
}
