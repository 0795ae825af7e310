//! The fit pass: shards -> encoder -> pooled rows, exchanged to the worker that owns each
//! (encoder, layer) -> that layer's [`LayerFit`] (mixing buffer, online SAE training). No
//! activation is written to disk.
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
use timely::worker::Worker;

use super::cache;
use super::encoding::{worker_device, PooledRows, WorkerModels};
use super::plan::Plan;
use super::source::shard_source;
use super::stage::{Failure, StageCounters};
use crate::dataset::Projection;
use crate::sae::{LayerFit, SaeSource};

/// Pooled rows of one layer of one encoder for one stretch of a shard: what crosses from the
/// worker that read the shard to the worker that fits the layer's SAE.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerRows {
    pub encoder: u32,
    pub layer: u32,
    pub shard: u32,
    /// Position of the stretch in its shard.
    pub seq: u32,
    pub values: Vec<f32>,
}

/// The SAEs this worker fits, by (encoder, layer position), with what arrived before its turn.
#[derive(Default)]
pub struct OwnedFits {
    pub fits: BTreeMap<(u32, u32), LayerFit>,
    pending: BTreeMap<u64, Vec<LayerRows>>,
    /// This worker's index, which picks its GPU.
    worker: usize,
}

/// The worker that fits an (encoder, layer)'s SAE, as a number timely reduces modulo peers.
fn owner(encoder: u32, layer: u32) -> u64 {
    u64::from(encoder) * 7919 + u64::from(layer)
}

/// Builds the fit dataflow for encoders `todo` in `worker`. Once the worker has run it to
/// completion, [`finish`] ends the pass of every fit this worker owns and saves the SAEs.
pub fn build(
    worker: &mut Worker,
    plan: &Arc<Plan>,
    todo: &[usize],
    models: Rc<RefCell<WorkerModels>>,
    counters: Rc<RefCell<StageCounters>>,
    failure: Failure,
) -> Rc<RefCell<OwnedFits>> {
    let owned = Rc::new(RefCell::new(OwnedFits {
        worker: worker.index(),
        ..OwnedFits::default()
    }));
    let plan = plan.clone();
    let todo = todo.to_vec();
    let images = todo.iter().any(|&e| plan.encoders[e].is_image());
    let projection = if images {
        Projection::ALL
    } else {
        Projection::TEXT
    };
    let shards: Vec<usize> = (0..plan.dataset.shards().len()).collect();
    let sink_owned = owned.clone();
    let sink_failure = failure.clone();
    let sink_plan = plan.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        let (batches, errors) = shard_source(scope, plan.dataset.clone(), shards, projection, 1024);
        failure.watch_source(errors);
        let encode_failure = failure.clone();
        let mut seq: BTreeMap<u64, u32> = BTreeMap::new();
        // With the activation cache on: each shard's rows per encoder, written once the
        // frontier has passed the shard.
        let mut to_cache: BTreeMap<u64, HashMap<usize, PooledRows>> = BTreeMap::new();
        let cache_plan = plan.clone();
        batches
            .unary_frontier(Pipeline, "Encode", move |_, _| {
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        let mut session = output.session(&cap);
                        let Some(&shard) = cap.least() else {
                            return;
                        };
                        for batch in data.drain(..) {
                            let next = seq.entry(shard).or_insert(0);
                            let stretch = *next;
                            *next += 1;
                            if encode_failure.failed() {
                                continue;
                            }
                            for &e in &todo {
                                let pooled = models.borrow_mut().pooled_for(e, &batch);
                                let pooled = match pooled {
                                    Ok(Some(p)) => p,
                                    Ok(None) => continue,
                                    Err(error) => {
                                        encode_failure.set(error);
                                        break;
                                    }
                                };
                                counters.borrow_mut().add(
                                    e,
                                    pooled.sample_ids.len(),
                                    pooled.skipped,
                                );
                                let caching = cache_plan.study.activation_cache
                                    && cache_plan.encoders[e].twin_of.is_none()
                                    && !models.borrow().is_cached(e, shard as usize);
                                if caching {
                                    let rows =
                                        to_cache.entry(shard).or_default().entry(e).or_insert_with(
                                            || PooledRows::empty(pooled.layers.len()),
                                        );
                                    rows.append(&pooled);
                                }
                                for (l, values) in pooled.layers.into_iter().enumerate() {
                                    session.give(LayerRows {
                                        encoder: e as u32,
                                        layer: l as u32,
                                        shard: shard as u32,
                                        seq: stretch,
                                        values,
                                    });
                                }
                            }
                        }
                    });
                    let ready: Vec<u64> = to_cache
                        .keys()
                        .copied()
                        .filter(|shard| !frontier.less_equal(shard))
                        .collect();
                    for shard in ready {
                        let encoders = to_cache.remove(&shard).expect("listed above");
                        if encode_failure.failed() {
                            continue;
                        }
                        let info = &cache_plan.dataset.shards()[shard as usize];
                        for (e, rows) in encoders {
                            if let Err(error) = cache::write(&cache_plan, e, info, &rows) {
                                encode_failure.set(error);
                            }
                        }
                    }
                }
            })
            .sink(
                Exchange::new(|rows: &LayerRows| owner(rows.encoder, rows.layer)),
                "FitSae",
                move |(input, frontier)| {
                    let mut owned = sink_owned.borrow_mut();
                    input.for_each(|cap, data| {
                        let Some(&shard) = cap.least() else {
                            return;
                        };
                        owned.pending.entry(shard).or_default().append(data);
                    });
                    // Shards the frontier has passed are complete: feed them in order.
                    let ready: Vec<u64> = owned
                        .pending
                        .keys()
                        .copied()
                        .filter(|&shard| !frontier.less_equal(&shard))
                        .collect();
                    for shard in ready {
                        let rows = owned.pending.remove(&shard).expect("listed above");
                        if let Err(error) = feed(&mut owned, &sink_plan, rows) {
                            sink_failure.set(error);
                        }
                    }
                },
            );
    });
    owned
}

/// Feeds one shard's rows to their fits, stretch by stretch.
fn feed(owned: &mut OwnedFits, plan: &Plan, mut rows: Vec<LayerRows>) -> anyhow::Result<()> {
    let worker = owned.worker;
    rows.sort_by_key(|r| (r.encoder, r.layer, r.seq));
    for r in rows {
        let fit = owned
            .fits
            .entry((r.encoder, r.layer))
            .or_insert_with(|| new_fit(plan, r.encoder as usize, r.layer as usize, worker));
        fit.push(&r.values)?;
    }
    Ok(())
}

fn new_fit(plan: &Plan, e: usize, l: usize, worker: usize) -> LayerFit {
    let encoder = &plan.encoders[e];
    let layer = &encoder.manifest.layers[encoder.layers[l]];
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
        layer.width,
        SaeSource {
            encoder: encoder.name.clone(),
            layer: layer.name.clone(),
        },
        worker_device(encoder.device, worker),
        plan.study.fit.buffer_rows,
        budget_bytes / (layer.width * 4),
    )
}

/// Feeds what is left, ends every owned fit's pass and saves its SAE.
pub fn finish(owned: &Rc<RefCell<OwnedFits>>, plan: &Plan) -> anyhow::Result<usize> {
    let mut owned = owned.borrow_mut();
    let pending = std::mem::take(&mut owned.pending);
    for (_, rows) in pending {
        feed(&mut owned, plan, rows)?;
    }
    let mut saved = 0;
    for (&(e, l), fit) in owned.fits.iter_mut() {
        let encoder = &plan.encoders[e as usize];
        let layer = &encoder.layer_names()[l as usize];
        fit.finish().map_err(|error| {
            anyhow::anyhow!("fitting the SAE of {} layer {layer}: {error}", encoder.name)
        })?;
        let dir = plan.sae_dir(e as usize, layer);
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
