//! The fit pass: shards -> encoder -> pooled rows, exchanged to the worker that owns each
//! (encoder, layer) -> that layer's [`LayerFit`] (mixing buffer, online SAE training). No
//! activation is written to disk (unless the activation cache is on).
//!
//! Rows reach an SAE in dataset order whatever the number of workers: each worker's source
//! stamps its batches with the shard index, the owner keeps what arrives per shard, and feeds a
//! shard only once the frontier has passed it, stretches in the order they were read. Equal
//! data order and seeds give equal SAEs on 1 worker or many.

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

use super::cache;
use super::encoding::worker_device;
use super::plan::Plan;
use super::source::shard_source;
use super::stage::{passed, projection_for, Failure, StageContext};
use crate::dataset::SampleBatch;
use crate::encoder::PooledRows;
use crate::ids::{EncoderId, EncoderLayer, LayerId, ShardId};
use crate::sae::{LayerFit, SaeSource};

/// Pooled rows of one layer of one encoder for one stretch of a shard: what crosses from the
/// worker that read the shard to the worker that fits the layer's SAE.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerRows {
    pub at: EncoderLayer,
    pub shard: ShardId,
    /// Position of the stretch in its shard.
    pub seq: u32,
    pub values: Vec<f32>,
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
        let (batches, errors) = shard_source(scope, plan.dataset.clone(), shards, projection, 1024);
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
    /// The next stretch of each shard this worker reads.
    stretches: BTreeMap<u64, u32>,
    to_cache: BTreeMap<u64, HashMap<EncoderId, PooledRows>>,
}

impl FitEncoding {
    /// Encodes `batch` with every encoder to fit and hands each layer's rows to `give`.
    fn encode(&mut self, shard: ShardId, batch: &SampleBatch, give: &mut impl FnMut(LayerRows)) {
        let next = self.stretches.entry(u64::from(shard.0)).or_insert(0);
        let seq = *next;
        *next += 1;
        if self.context.failure.failed() {
            return;
        }
        for &e in &self.todo {
            let pooled = match self.context.pooled(e, batch) {
                Ok(Some(pooled)) => pooled,
                Ok(None) => continue,
                Err(error) => {
                    self.context.failure.set(error);
                    return;
                }
            };
            if self.caches(e, shard) {
                let layers = pooled.layers.len();
                self.to_cache
                    .entry(u64::from(shard.0))
                    .or_default()
                    .entry(e)
                    .or_insert_with(|| PooledRows::empty(layers))
                    .append(&pooled);
            }
            for (layer, values) in LayerId::all(pooled.layers.len()).zip(pooled.layers) {
                give(LayerRows {
                    at: EncoderLayer { encoder: e, layer },
                    shard,
                    seq,
                    values,
                });
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
    /// This worker's index, which picks its GPU.
    worker: usize,
}

impl OwnedFits {
    fn new(plan: Arc<Plan>, worker: usize) -> OwnedFits {
        OwnedFits {
            plan,
            fits: BTreeMap::new(),
            pending: BTreeMap::new(),
            worker,
        }
    }

    /// Keeps rows of `shard` until the shard is complete.
    fn receive(&mut self, shard: u64, rows: &mut Vec<LayerRows>) {
        self.pending.entry(shard).or_default().append(rows);
    }

    /// Feeds the shards the frontier has passed, in order: every worker is done with them.
    fn feed_before(&mut self, frontier: &MutableAntichain<u64>) -> anyhow::Result<()> {
        for shard in passed(&self.pending, frontier) {
            let rows = self.pending.remove(&shard).expect("listed");
            self.feed(rows)?;
        }
        Ok(())
    }

    /// Feeds one shard's rows to their fits, stretch by stretch.
    fn feed(&mut self, mut rows: Vec<LayerRows>) -> anyhow::Result<()> {
        rows.sort_by_key(|r| (r.at, r.seq));
        let (plan, worker) = (&self.plan, self.worker);
        for r in rows {
            let fit = (self.fits.entry(r.at)).or_insert_with(|| new_fit(plan, r.at, worker));
            fit.push(&r.values)?;
        }
        Ok(())
    }
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
    let needed = encoder.sae.steps * encoder.sae.batch_size + plan.study.fit.buffer_rows / 2;
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
        plan.study.fit.buffer_rows,
        budget_bytes / (width * 4),
    )
}

/// Feeds what is left, ends every owned fit's pass and saves its SAE.
pub fn finish(owned: &Rc<RefCell<OwnedFits>>, plan: &Plan) -> anyhow::Result<usize> {
    let mut owned = owned.borrow_mut();
    let pending = std::mem::take(&mut owned.pending);
    for (_, rows) in pending {
        owned.feed(rows)?;
    }
    let mut saved = 0;
    for (&at, fit) in owned.fits.iter_mut() {
        let encoder = plan.encoder(at.encoder);
        let layer = encoder.layer_name(at.layer);
        fit.finish().map_err(|error| {
            anyhow::anyhow!("fitting the SAE of {} layer {layer}: {error}", encoder.name)
        })?;
        let dir = plan.sae_dir(at.encoder, at.layer);
        fit.trainer().save(&dir)?;
        tracing::info!(
            "fitted the SAE of {} layer {layer}: {} steps on {} rows a pass; saved in {}",
            encoder.name,
            fit.trainer().steps_done(),
            fit.rows(),
            dir.display()
        );
        saved += 1;
    }
    Ok(saved)
}
