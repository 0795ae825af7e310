//! The compare pass: shards -> encoder -> SAE codes -> codes store (one file per encoder, layer
//! and shard) -> per-shard co-activation accumulators of every compared pair, exchanged to the
//! worker that owns the pair -> merged, in shard order, into the pair's saved state -> MPPC and
//! the pair's tables.
//!
//! The codes of different encoders meet where the shard is read: one worker encodes a whole
//! shard with every encoder, so a pair's accumulators for that shard need no exchange of codes,
//! only of the (small) partial sums. Codes already in the store are read back, not recomputed,
//! and fresh codes are read back from the file just written, so a resumed or incremental run
//! sums exactly what an uninterrupted one does.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::worker::Worker;

use super::encoding::WorkerModels;
use super::plan::{shard_key, Plan};
use super::source::shard_source;
use super::stage::{Failure, StageCounters};
use super::units::Units;
use crate::codes::{CodeBatch, CodesMeta, CodesReader, CodesWriter};
use crate::dataset::{Projection, ShardInfo};
use crate::metrics::{accumulate_files, compare_accumulated, tables, CompareOptions};
use crate::sae::SaeKind;
use crate::stats::{align, AlignReport, CoactivationAccumulator, MissingSamples};

/// What the compare pass has to do, from the manifest: `codes[e][s]` encoder `e` needs codes
/// for shard `s`; `pairs[p][s]` pair `p`'s state lacks shard `s`; `tables[p]` pair `p`'s tables
/// are out of date.
#[derive(Clone, Debug)]
pub struct CompareWork {
    pub codes: Vec<Vec<bool>>,
    pub pairs: Vec<Vec<bool>>,
    pub tables: Vec<bool>,
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
        for p in 0..plan.pairs.len() {
            let state = PairState::latest(&plan.pair_dir(p))
                .filter(|s| s.fingerprint == plan.pairs[p].fingerprint);
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
}

/// The partial sums this worker received for the pairs it owns.
#[derive(Default)]
pub struct OwnedPairs {
    partials: BTreeMap<u32, Vec<PairPartial>>,
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
        }
        let (unit, fingerprint) = plan.codes_unit(e, info);
        units.record(
            &unit,
            &fingerprint,
            serde_json::json!({ "samples": samples }),
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
        });
    }
    Ok(partials)
}

fn codes_meta(plan: &Plan, e: usize, layer: &str) -> CodesMeta {
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
fn pair_files(plan: &Plan, p: usize, shard: &ShardInfo) -> (Vec<PathBuf>, Vec<PathBuf>) {
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

/// A pair's accumulated sums as saved: `state-N/` folders, the newest complete one current.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairState {
    pub fingerprint: String,
    pub generation: u64,
    /// The shards summed, as [`shard_key`] names them.
    pub shards: Vec<(String, u64, u64)>,
    pub samples: u64,
    pub dropped: u64,
}

impl PairState {
    /// The newest saved state of the pair in `dir`.
    pub fn latest(dir: &Path) -> Option<PairState> {
        let entries = std::fs::read_dir(dir).ok()?;
        let newest = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("state-")?.parse::<u64>().ok()
            })
            .max()?;
        let text = std::fs::read(dir.join(format!("state-{newest}")).join("state.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn dir(&self, pair_dir: &Path) -> PathBuf {
        pair_dir.join(format!("state-{}", self.generation))
    }
}

/// Merges, saves and tabulates every pair this worker owns that has work.
pub fn finish(
    owned: &Rc<RefCell<OwnedPairs>>,
    plan: &Plan,
    work: &CompareWork,
    worker: usize,
    peers: usize,
) -> anyhow::Result<usize> {
    let mut owned = owned.borrow_mut();
    let mut done = 0;
    for p in (0..plan.pairs.len()).filter(|p| p % peers == worker) {
        let partials = owned.partials.remove(&(p as u32)).unwrap_or_default();
        if partials.is_empty() && !work.tables[p] {
            continue;
        }
        finish_pair(plan, p, partials)
            .with_context(|| format!("comparing pair {}", plan.pairs[p].key))?;
        done += 1;
    }
    Ok(done)
}

fn finish_pair(plan: &Plan, p: usize, mut partials: Vec<PairPartial>) -> anyhow::Result<()> {
    let pair = &plan.pairs[p];
    let dir = plan.pair_dir(p);
    let (l_a, l_b) = (pair.source_layers.len(), pair.target_layers.len());
    // The newest state, whatever it summed; it is built on only if it summed the same codes.
    let newest = PairState::latest(&dir);
    let previous = newest.clone().filter(|s| s.fingerprint == pair.fingerprint);
    let mut state = previous.clone().unwrap_or(PairState {
        fingerprint: pair.fingerprint.clone(),
        generation: 0,
        shards: Vec::new(),
        samples: 0,
        dropped: 0,
    });
    let mut accumulators: Vec<Vec<CoactivationAccumulator>> = match &previous {
        Some(previous) => (0..l_a)
            .map(|a| {
                (0..l_b)
                    .map(|b| {
                        CoactivationAccumulator::load(&accumulator_file(&previous.dir(&dir), a, b))
                    })
                    .collect::<Result<_, _>>()
            })
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    partials.sort_by_key(|partial| partial.shard);
    if let Some(previous) = &previous {
        if !partials.is_empty() {
            tracing::info!(
                "pair {}: adding {} new shard(s) to the {} already summed; the old ones are not read",
                pair.key,
                partials.len(),
                previous.shards.len()
            );
        }
    }
    for partial in &partials {
        let info = &plan.dataset.shards()[partial.shard as usize];
        let sums: Vec<CoactivationAccumulator> = partial
            .accumulators
            .iter()
            .map(|bytes| CoactivationAccumulator::from_bytes(bytes))
            .collect::<Result<_, _>>()?;
        if accumulators.is_empty() {
            accumulators = sums.chunks(l_b).map(<[_]>::to_vec).collect();
        } else {
            for (a, row) in accumulators.iter_mut().enumerate() {
                for (b, acc) in row.iter_mut().enumerate() {
                    acc.merge(&sums[a * l_b + b])?;
                }
            }
        }
        state.shards.push(shard_key(info));
        state.samples += partial.samples;
        state.dropped += partial.dropped;
    }
    anyhow::ensure!(
        !accumulators.is_empty(),
        "no shard was summed; the dataset has no rows both encoders read"
    );
    if !partials.is_empty() {
        state.generation = newest.as_ref().map_or(0, |s| s.generation + 1);
        save_state(&dir, &state, &accumulators)?;
        if let Some(newest) = &newest {
            let _ = std::fs::remove_dir_all(newest.dir(&dir));
        }
    }

    let (source, target) = metas(plan, p);
    let floor_permutations = if pair.ceiling_of.is_some() {
        0
    } else {
        plan.study.baselines.floor_permutations
    };
    let aligned = if floor_permutations > 0 {
        Some(aligned_codes(plan, p)?)
    } else {
        None
    };
    let options = CompareOptions {
        baselines: floor_permutations,
        missing: MissingSamples::Drop,
        ..CompareOptions::default()
    };
    let report = AlignReport {
        samples: state.samples,
        dropped: state.dropped,
        first_dropped: None,
    };
    let comparison = compare_accumulated(
        accumulators,
        report,
        &source,
        &target,
        aligned.as_deref(),
        &options,
    )?;
    tables::write_mppc(&dir.join(tables::MPPC_FILE), &comparison.mppc)?;
    tables::write_wmppc(&dir.join(tables::WMPPC_FILE), &comparison.wmppc)?;
    tables::write_features(&dir.join(tables::FEATURES_FILE), &comparison.features)?;
    let (unit, fingerprint) = plan.pair_unit(p);
    Units::new(&plan.output).record(
        &unit,
        &fingerprint,
        serde_json::json!({
            "state": state.generation,
            "shards": state.shards.len(),
            "samples": state.samples,
            "dropped": state.dropped,
        }),
    )?;
    tracing::info!(
        "pair {}: {} shards, {} samples ({} dropped); tables in {}",
        pair.key,
        state.shards.len(),
        state.samples,
        state.dropped,
        dir.display()
    );
    Ok(())
}

fn accumulator_file(state_dir: &Path, a: usize, b: usize) -> PathBuf {
    state_dir.join(format!("acc-{a}-{b}.coact"))
}

/// Writes `state-N/` whole: a temporary folder renamed into place.
fn save_state(
    dir: &Path,
    state: &PairState,
    accumulators: &[Vec<CoactivationAccumulator>],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let temp = tempfile::Builder::new()
        .prefix(".state-")
        .tempdir_in(dir)
        .with_context(|| dir.display().to_string())?;
    for (a, row) in accumulators.iter().enumerate() {
        for (b, acc) in row.iter().enumerate() {
            acc.save(&accumulator_file(temp.path(), a, b))?;
        }
    }
    std::fs::write(
        temp.path().join("state.json"),
        serde_json::to_vec_pretty(state)?,
    )?;
    let target = state.dir(dir);
    std::fs::rename(temp.keep(), &target).with_context(|| target.display().to_string())?;
    Ok(())
}

/// The codes metadata of a pair's two sides.
fn metas(plan: &Plan, p: usize) -> (Vec<CodesMeta>, Vec<CodesMeta>) {
    let pair = &plan.pairs[p];
    let side = |e: usize, layers: &[usize]| -> Vec<CodesMeta> {
        let names = plan.encoders[e].layer_names();
        layers
            .iter()
            .map(|&l| codes_meta(plan, e, &names[l]))
            .collect()
    };
    (
        side(pair.source, &pair.source_layers),
        side(pair.target, &pair.target_layers),
    )
}

/// Every code of the pair's layers on samples all of them hold, shard after shard (sources
/// first): what the floor baseline permutes.
fn aligned_codes(plan: &Plan, p: usize) -> anyhow::Result<Vec<CodeBatch>> {
    let pair = &plan.pairs[p];
    let streams = pair.source_layers.len() + pair.target_layers.len();
    let mut kept = vec![CodeBatch::new(); streams];
    for shard in plan.dataset.shards() {
        let (sources, targets) = pair_files(plan, p, shard);
        let readers = sources
            .iter()
            .chain(&targets)
            .map(|f| CodesReader::open(f))
            .collect::<Result<Vec<_>, _>>()?;
        align(readers, MissingSamples::Drop, |codes| {
            for (s, code) in codes.iter().enumerate() {
                kept[s].push(*code);
            }
            Ok(())
        })?;
    }
    Ok(kept)
}
