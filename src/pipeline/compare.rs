//! The compare pass: shards -> encoder -> SAE codes -> codes store (one file per encoder, layer
//! and shard) -> per-shard co-activation accumulators of every compared pair, exchanged to the
//! worker that owns the pair -> merged, in shard order, into the pair's saved state -> MPPC and
//! the pair's tables (the pair owner's half is [`super::pairs`]).
//!
//! The codes of different encoders meet where the shard is read: one worker encodes a whole
//! shard with every encoder, so a pair's accumulators for that shard need no exchange of codes,
//! only of the (small) partial sums. Codes already in the store are read back, not recomputed,
//! and fresh codes are read back from the file just written, so a resumed or incremental run
//! sums exactly what an uninterrupted one does.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::worker::Worker;

use super::encoding::WorkerModels;
use super::pairs::PairState;
use super::plan::{shard_key, Plan};
use super::source::shard_source;
use super::stage::{Failure, StageCounters};
use super::units::Units;
use crate::codes::{CodesMeta, CodesWriter};
use crate::dataset::{Projection, ShardInfo};
use crate::metrics::{accumulate_files, CompareOptions};
use crate::sae::SaeKind;
use crate::stats::MissingSamples;

/// What the compare pass has to do, from the manifest: `codes[e][s]` encoder `e` needs codes
/// for shard `s`; `pairs[p][s]` pair `p`'s state lacks shard `s`; `tables[p]` pair `p`'s tables
/// are out of date; `restart[p]` pair `p`'s saved sums cannot be built on (its SAEs are fitted
/// anew, or a file of its state was lost or damaged), so every shard is summed anew.
#[derive(Clone, Debug)]
pub struct CompareWork {
    pub codes: Vec<Vec<bool>>,
    pub pairs: Vec<Vec<bool>>,
    pub tables: Vec<bool>,
    pub restart: Vec<bool>,
}

impl CompareWork {
    /// Reads the manifest and the pairs' states.
    pub fn of(plan: &Plan, units: &Units) -> CompareWork {
        let shards = plan.dataset.shards();
        let codes = (0..plan.encoders.len())
            .map(|e| {
                shards
                    .iter()
                    .map(|s| {
                        let (unit, fingerprint) = plan.codes_unit(e, s);
                        !units.is_done(&unit, &fingerprint)
                    })
                    .collect()
            })
            .collect();
        let mut pairs = Vec::new();
        let mut tables = Vec::new();
        let mut restart = Vec::new();
        for p in 0..plan.pairs.len() {
            let dir = plan.pair_dir(p);
            let mut state =
                PairState::latest(&dir).filter(|s| s.fingerprint == plan.pair_fingerprint(p));
            let problem = state.as_ref().and_then(|s| s.problem(&dir));
            if let Some(problem) = &problem {
                tracing::warn!(
                    "pair {}: its saved sums cannot be trusted ({problem}); every shard is summed anew",
                    plan.pairs[p].key
                );
                state = None;
            }
            restart.push(problem.is_some());
            let covered = |s: &ShardInfo| {
                state
                    .as_ref()
                    .is_some_and(|st| st.shards.contains(&shard_key(s)))
            };
            pairs.push(shards.iter().map(|s| !covered(s)).collect::<Vec<bool>>());
            let (unit, fingerprint) = plan.pair_unit(p);
            let covers_all = shards.iter().all(covered);
            tables.push(
                !covers_all
                    || !units.is_done(&unit, &fingerprint)
                    || units.get(&unit).is_none_or(|r| {
                        r.detail["state"].as_u64() != state.as_ref().map(|s| s.generation)
                    }),
            );
        }
        CompareWork {
            codes,
            pairs,
            tables,
            restart,
        }
    }

    /// Marks what an SAE set fitted anew for encoder `e` invalidates: its codes, and the sums and
    /// tables of every pair it is in.
    pub fn refit(&mut self, plan: &Plan, e: usize) {
        self.codes[e].iter_mut().for_each(|b| *b = true);
        for (p, pair) in plan.pairs.iter().enumerate() {
            if pair.source == e || pair.target == e {
                self.pairs[p].iter_mut().for_each(|b| *b = true);
                self.tables[p] = true;
                self.restart[p] = true;
            }
        }
    }

    /// The shards some encoder or pair needs.
    pub fn shards(&self) -> Vec<usize> {
        let n = self.codes.first().map_or(0, Vec::len);
        (0..n)
            .filter(|&s| self.codes.iter().chain(&self.pairs).any(|row| row[s]))
            .collect()
    }

    /// Codes units and pairs to run.
    pub fn counts(&self) -> (usize, usize) {
        let codes = self.codes.iter().flatten().filter(|&&b| b).count();
        let pairs = self.tables.iter().filter(|&&b| b).count();
        (codes, pairs)
    }
}

/// One pair's co-activation sums over one shard, `[source layer][target layer]` as bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairPartial {
    pub pair: u32,
    pub shard: u32,
    pub accumulators: Vec<Vec<u8>>,
    pub samples: u64,
    pub dropped: u64,
    /// The first sample left out of this shard's sums, and a codes file that lacked it.
    pub first_dropped: Option<(u64, PathBuf)>,
}

/// The partial sums this worker received for the pairs it owns.
#[derive(Default)]
pub struct OwnedPairs {
    pub(super) partials: BTreeMap<u32, Vec<PairPartial>>,
}

/// One sample's code.
type Code = (u64, Vec<u32>, Vec<f32>);

/// A finished shard's codes, for the helper thread, and what it made of them.
type ShardJob = (u64, HashMap<(usize, usize), Vec<Code>>);
type ShardResult = (u64, anyhow::Result<Vec<PairPartial>>);

/// Builds the compare dataflow in `worker`. Once the worker has run it to completion,
/// [`finish`] merges and tabulates the pairs this worker owns.
pub fn build(
    worker: &mut Worker,
    plan: &Arc<Plan>,
    work: &Arc<CompareWork>,
    models: Rc<RefCell<WorkerModels>>,
    counters: Rc<RefCell<StageCounters>>,
    failure: Failure,
) -> Rc<RefCell<OwnedPairs>> {
    let owned = Rc::new(RefCell::new(OwnedPairs::default()));
    let images = (0..plan.encoders.len())
        .any(|e| plan.encoders[e].is_image() && work.codes[e].iter().any(|&b| b));
    let projection = if images {
        Projection::ALL
    } else {
        Projection::TEXT
    };
    let sink = owned.clone();
    let plan = plan.clone();
    let work = work.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        let (batches, errors) =
            shard_source(scope, plan.dataset.clone(), work.shards(), projection, 1024);
        failure.watch_source(errors);
        let mut stash: BTreeMap<u64, HashMap<(usize, usize), Vec<Code>>> = BTreeMap::new();
        let mut caps = BTreeMap::new();
        // Writing a finished shard's codes and summing its pairs run on a helper thread while
        // this worker encodes the next shard; a bounded channel of one shard holds the encoder
        // back when the sums fall behind.
        let (jobs, job_queue) = crossbeam_channel::bounded::<ShardJob>(1);
        let (results, done) = crossbeam_channel::unbounded::<ShardResult>();
        let mut in_flight = BTreeMap::new();
        let helper_plan = plan.clone();
        let helper_work = work.clone();
        batches
            .unary_frontier(Pipeline, "ShardCodes", move |_, info| {
                let wake = scope.worker().sync_activator_for(info.address.to_vec());
                std::thread::spawn(move || {
                    for (shard, codes) in job_queue {
                        let result =
                            finish_shard(&helper_plan, &helper_work, shard as usize, codes);
                        if results.send((shard, result)).is_err() || wake.activate().is_err() {
                            return;
                        }
                    }
                });
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        let (Some(&shard), Some(retained)) = (cap.least(), cap.retain_least(0))
                        else {
                            return;
                        };
                        caps.entry(shard).or_insert(retained);
                        let codes = stash.entry(shard).or_default();
                        for batch in data.drain(..) {
                            if failure.failed() {
                                continue;
                            }
                            let result =
                                encode_batch(&plan, &work, &models, &counters, &batch, codes);
                            if let Err(error) = result {
                                failure.set(error);
                            }
                        }
                    });
                    let ready: Vec<u64> = caps
                        .keys()
                        .copied()
                        .filter(|shard| !frontier.less_equal(shard))
                        .collect();
                    for shard in ready {
                        let cap = caps.remove(&shard).expect("listed above");
                        let codes = stash.remove(&shard).unwrap_or_default();
                        if failure.failed() {
                            continue;
                        }
                        // The capability stays held until the shard's sums are out.
                        in_flight.insert(shard, cap);
                        if jobs.send((shard, codes)).is_err() {
                            failure.set(anyhow::anyhow!("the shard accumulator thread stopped"));
                        }
                    }
                    while let Ok((shard, result)) = done.try_recv() {
                        let cap = in_flight.remove(&shard).expect("sent above");
                        match result {
                            Ok(partials) => {
                                output.session(&cap).give_iterator(partials.into_iter())
                            }
                            Err(error) => failure.set(error),
                        }
                    }
                    if failure.failed() {
                        in_flight.clear();
                    }
                }
            })
            .sink(
                Exchange::new(|p: &PairPartial| u64::from(p.pair)),
                "PairMerge",
                move |(input, _frontier)| {
                    let mut owned = sink.borrow_mut();
                    input.for_each(|_, data| {
                        for partial in data.drain(..) {
                            owned
                                .partials
                                .entry(partial.pair)
                                .or_default()
                                .push(partial);
                        }
                    });
                },
            );
    });
    owned
}

/// Encodes a batch with every encoder that needs codes for its shard, adding to `codes`.
fn encode_batch(
    plan: &Plan,
    work: &CompareWork,
    models: &RefCell<WorkerModels>,
    counters: &RefCell<StageCounters>,
    batch: &crate::dataset::SampleBatch,
    codes: &mut HashMap<(usize, usize), Vec<Code>>,
) -> anyhow::Result<()> {
    for e in 0..plan.encoders.len() {
        if !work.codes[e][batch.shard] {
            continue;
        }
        let mut models = models.borrow_mut();
        let Some(pooled) = models.pooled_for(e, batch)? else {
            continue;
        };
        counters
            .borrow_mut()
            .add(e, pooled.sample_ids.len(), pooled.skipped);
        let n = pooled.sample_ids.len();
        for (l, rows) in pooled.layers.iter().enumerate() {
            let layer_codes = models.codes(e, l, rows, n)?;
            let out = codes.entry((e, l)).or_default();
            for (id, (features, values)) in pooled.sample_ids.iter().zip(layer_codes) {
                out.push((*id, features, values));
            }
        }
    }
    Ok(())
}

/// Writes a finished shard's codes, records them, and sums every pair that needs the shard.
fn finish_shard(
    plan: &Plan,
    work: &CompareWork,
    shard: usize,
    mut codes: HashMap<(usize, usize), Vec<Code>>,
) -> anyhow::Result<Vec<PairPartial>> {
    let info = &plan.dataset.shards()[shard];
    let units = Units::new(&plan.output);
    for (e, encoder) in plan.encoders.iter().enumerate() {
        if !work.codes[e][shard] {
            continue;
        }
        let mut samples = 0;
        let mut files = Vec::new();
        for (l, layer) in encoder.layer_names().iter().enumerate() {
            let mut layer_codes = codes.remove(&(e, l)).unwrap_or_default();
            layer_codes.sort_by_key(|c| c.0);
            let path = plan.codes_file(e, layer, info);
            std::fs::create_dir_all(path.parent().expect("in a folder"))
                .with_context(|| path.display().to_string())?;
            // A file here is stale: its unit is not recorded with this fingerprint.
            if path.exists() {
                std::fs::remove_file(&path).with_context(|| path.display().to_string())?;
            }
            let mut writer = CodesWriter::create(&path, codes_meta(plan, e, layer))?;
            for (id, features, values) in &layer_codes {
                writer.push(*id, features, values)?;
            }
            writer.finish()?;
            samples = layer_codes.len();
            files.push(path);
        }
        let (unit, fingerprint) = plan.codes_unit(e, info);
        units.record(
            &unit,
            &fingerprint,
            serde_json::json!({ "samples": samples }),
            &files,
        )?;
    }
    let mut partials = Vec::new();
    for (p, pair) in plan.pairs.iter().enumerate() {
        if !work.pairs[p][shard] {
            continue;
        }
        let (sources, targets) = pair_files(plan, p, info);
        let options = CompareOptions {
            missing: MissingSamples::Drop,
            ..CompareOptions::default()
        };
        let (accumulators, report) = accumulate_files(&sources, &targets, &options)
            .with_context(|| format!("pair {} on {}", pair.key, info.path.display()))?;
        partials.push(PairPartial {
            pair: p as u32,
            shard: shard as u32,
            accumulators: accumulators
                .iter()
                .flatten()
                .map(|a| a.to_bytes())
                .collect(),
            samples: report.samples,
            dropped: report.dropped,
            first_dropped: report.first_dropped,
        });
    }
    Ok(partials)
}

pub(super) fn codes_meta(plan: &Plan, e: usize, layer: &str) -> CodesMeta {
    let encoder = &plan.encoders[e];
    let width = encoder
        .manifest
        .layers
        .iter()
        .find(|l| l.name == layer)
        .expect("a chosen layer")
        .width;
    let d_sae = (width * encoder.sae.expansion) as u32;
    let meta = match encoder.sae.kind {
        SaeKind::Topk => CodesMeta::topk(&encoder.name, layer, d_sae, encoder.sae.k as u32),
        SaeKind::BatchTopk | SaeKind::Relu => CodesMeta::dense(&encoder.name, layer, d_sae),
    };
    meta.with_sae(plan.sae_dir(e, layer).display().to_string())
}

/// The codes files of a pair's source and target layers on one shard.
pub(super) fn pair_files(plan: &Plan, p: usize, shard: &ShardInfo) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let pair = &plan.pairs[p];
    let files = |e: usize, layers: &[usize]| -> Vec<PathBuf> {
        let names = plan.encoders[e].layer_names();
        layers
            .iter()
            .map(|&l| plan.codes_file(e, &names[l], shard))
            .collect()
    };
    (
        files(pair.source, &pair.source_layers),
        files(pair.target, &pair.target_layers),
    )
}
