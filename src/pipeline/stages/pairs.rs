//! The pair owner's half of the compare pass: a pair's per-shard sums merged, in shard order,
//! into its saved state (`state-N/`, written whole and renamed), then MPPC with the floor
//! baseline and the pair's tables.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

use crate::codes::{CodeBatch, CodesMeta, CodesReader};
use crate::ids::{EncoderLayer, PairId, ShardId};
use crate::metrics::{self, compare_accumulated, tables, CompareOptions};
use crate::pipeline::compare::{codes_meta, pair_files, CompareWork};
use crate::pipeline::plan::{shard_key, Plan};
use crate::pipeline::readouts;
use crate::pipeline::units::Units;
use crate::similarity::{self, SimilaritySums};
use crate::stats::{align, AlignReport, CoactivationAccumulator, MissingSamples, SavedSums};
use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One pair's co-activation sums over one shard, `[source layer][target layer]` as bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairPartial {
    pub pair: PairId,
    pub shard: ShardId,
    pub accumulators: Vec<Vec<u8>>,
    /// The representation moments over the shard ([`crate::similarity::SimilaritySums`]), where
    /// the pair has them.
    pub similarity: Option<Vec<u8>>,
    pub samples: u64,
    pub dropped: u64,
    /// The first sample left out of this shard's sums, and a codes file that lacked it.
    pub first_dropped: Option<(u64, PathBuf)>,
}

/// The partial sums this worker received for the pairs it owns. The representation moments
/// (the large part: `d^2` floats a layer, over every shard) are merged as they come, in shard
/// order, rather than kept until the end.
#[derive(Default)]
pub struct OwnedPairs {
    pub(in crate::pipeline) partials: BTreeMap<PairId, Vec<PairPartial>>,
    pub(in crate::pipeline) moments: BTreeMap<PairId, readouts::MomentsInOrder>,
}

impl OwnedPairs {
    /// Nothing received yet; each pair expects the moments of the shards its sums lack.
    pub(in crate::pipeline) fn new(plan: &Plan, work: &CompareWork) -> OwnedPairs {
        let moments = (plan.pair_ids())
            .filter(|&p| plan.similarity_of(p))
            .map(|p| {
                let expected = plan
                    .shard_ids()
                    .filter(|&s| work.needs_sums(p, s))
                    .collect();
                (p, readouts::MomentsInOrder::new(expected))
            })
            .collect();
        OwnedPairs {
            partials: BTreeMap::new(),
            moments,
        }
    }

    pub(in crate::pipeline) fn receive(&mut self, mut partial: PairPartial) {
        if let (Some(bytes), Some(moments)) = (
            partial.similarity.take(),
            self.moments.get_mut(&partial.pair),
        ) {
            moments.receive(partial.shard, bytes);
        }
        self.partials.entry(partial.pair).or_default().push(partial);
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
    for p in plan.pair_ids().filter(|p| p.index() % peers == worker) {
        let partials = owned.partials.remove(&p).unwrap_or_default();
        if partials.is_empty() && !work.needs_tables(p) {
            continue;
        }
        let moments = match owned.moments.remove(&p) {
            Some(moments) => moments.finish(plan, p)?,
            None => None,
        };
        finish_pair(plan, p, (partials, moments), work.restarts(p))
            .with_context(|| format!("comparing pair {}", plan.pair(p).key))?;
        done += 1;
    }
    Ok(done)
}

/// Merges `partials` into the pair's state (a new one when `restart`: its SAEs were fitted
/// anew, or its saved state is damaged), saves it, and writes the pair's tables.
fn finish_pair(
    plan: &Plan,
    p: PairId,
    (partials, moments): (Vec<PairPartial>, Option<SimilaritySums>),
    restart: bool,
) -> anyhow::Result<()> {
    let dir = plan.pair_dir(p);
    // The newest state, whatever it summed; it is built on only if it summed the same codes.
    let newest = SavedSums::latest(&dir);
    let mut sums = PairSums::resume(plan, p, newest.as_ref(), restart)?;
    let (added, first_dropped) = sums.add(plan, p, partials, moments)?;
    anyhow::ensure!(
        !sums.accumulators.is_empty(),
        "no shard was summed; the dataset has no rows both encoders read"
    );
    if added > 0 {
        // Above every state folder there is, even one whose state.json cannot be read.
        let moments = sums.similarity.as_ref().map(SimilaritySums::to_bytes);
        let extras: Vec<(&str, &[u8])> = (moments.iter())
            .map(|bytes| (SIMILARITY_SUMS, bytes.as_slice()))
            .collect();
        sums.state
            .save_with(&dir, &sums.accumulators, &extras)
            .with_context(|| format!("saving the sums in {}", dir.display()))?;
        if let Some(newest) = &newest {
            // Only the state folder this run replaced, which saeshare itself made.
            newest.remove(&dir);
        }
    }
    tabulate(plan, p, sums, first_dropped)
}

/// The file of a pair's state holding its representation moments.
const SIMILARITY_SUMS: &str = "similarity.sums";

/// A pair's sums being built: its state and `[source layer][target layer]` accumulators.
struct PairSums {
    state: SavedSums,
    accumulators: Vec<Vec<CoactivationAccumulator>>,
    /// The representation moments, where the pair has them.
    similarity: Option<SimilaritySums>,
    /// Whether the sums build on a saved state.
    resumed: bool,
}

impl PairSums {
    /// The sums saved in `newest` when they can be built on (same codes, no restart), else none.
    fn resume(
        plan: &Plan,
        p: PairId,
        newest: Option<&SavedSums>,
        restart: bool,
    ) -> anyhow::Result<PairSums> {
        let fingerprint = plan.pair_fingerprint(p);
        let previous = newest.filter(|s| !restart && s.fingerprint == fingerprint);
        let Some(previous) = previous else {
            return Ok(PairSums {
                state: SavedSums::new(fingerprint),
                accumulators: Vec::new(),
                similarity: None,
                resumed: false,
            });
        };
        let pair = plan.pair(p);
        let dir = plan.pair_dir(p);
        let accumulators =
            previous.load_accumulators(&dir, pair.source_layers.len(), pair.target_layers.len())?;
        let similarity = match previous.extra(&dir, SIMILARITY_SUMS)? {
            Some(bytes) => Some(readouts::sums_from(plan, p, &bytes)?),
            None if plan.similarity_of(p) => anyhow::bail!(
                "pair {}: its saved state has no {SIMILARITY_SUMS}; delete {} to sum it anew",
                pair.key,
                previous.dir(&dir).display()
            ),
            None => None,
        };
        Ok(PairSums {
            state: previous.clone(),
            accumulators,
            similarity,
            resumed: true,
        })
    }

    /// Adds the partial sums of shards not summed yet, in shard order; returns how many, and
    /// the first sample they left out.
    fn add(
        &mut self,
        plan: &Plan,
        p: PairId,
        mut partials: Vec<PairPartial>,
        moments: Option<SimilaritySums>,
    ) -> anyhow::Result<(usize, Option<(u64, PathBuf)>)> {
        let pair = plan.pair(p);
        partials.sort_by_key(|partial| partial.shard);
        // A shard is summed into a pair once, whatever led to it being offered again.
        partials.retain(|partial| {
            let key = shard_key(plan.shard(partial.shard));
            let summed = self.state.shards.contains(&key);
            if summed {
                tracing::warn!(
                    "pair {}: shard {} is summed already; not adding it again",
                    pair.key,
                    key.0
                );
            }
            !summed
        });
        if self.resumed && !partials.is_empty() {
            tracing::info!(
                "pair {}: adding {} new shard(s) to the {} already summed; the old ones are not read",
                pair.key,
                partials.len(),
                self.state.shards.len()
            );
        }
        let l_b = pair.target_layers.len();
        for partial in &partials {
            let sums: Vec<CoactivationAccumulator> = (partial.accumulators.iter())
                .map(|bytes| CoactivationAccumulator::from_bytes(bytes))
                .collect::<Result<_, _>>()?;
            if self.accumulators.is_empty() {
                self.accumulators = sums.chunks(l_b).map(<[_]>::to_vec).collect();
            } else {
                for (a, row) in self.accumulators.iter_mut().enumerate() {
                    for (b, acc) in row.iter_mut().enumerate() {
                        acc.merge(&sums[a * l_b + b])?;
                    }
                }
            }
            let key = shard_key(plan.shard(partial.shard));
            let sha256 = plan.contents.digest(partial.shard).to_string();
            self.state.contents.insert(key.0.clone(), sha256);
            self.state.shards.push(key);
            self.state.samples += partial.samples;
            self.state.dropped += partial.dropped;
        }
        // The moments of the shards added, merged in shard order as they came.
        if let Some(moments) = moments {
            match &mut self.similarity {
                Some(total) => total.merge(&moments),
                None => self.similarity = Some(moments),
            }
        }
        let first_dropped = partials.iter().find_map(|p| p.first_dropped.clone());
        Ok((partials.len(), first_dropped))
    }
}

/// Keeps the pairs' saved sums within the study's disk budget (`[stats] keep_sums_mib`): in the
/// study's order, each pair's sums count against it, and a pair past it drops them (only the
/// files its state lists) and says so in its record, with the shards its tables were made
/// from. Run on one worker, once every pair is finished; returns how many pairs dropped sums.
pub fn keep_sums_within_budget(plan: &Plan) -> anyhow::Result<usize> {
    let budget = plan.study.stats.keep_sums_mib.saturating_mul(1 << 20);
    let units = Units::new(&plan.output);
    let (mut used, mut dropped) = (0u64, 0);
    for p in plan.pair_ids() {
        let dir = plan.pair_dir(p);
        let Some(state) = SavedSums::latest(&dir) else {
            continue;
        };
        let bytes: u64 = state.files.iter().map(|f| f.bytes).sum();
        used = used.saturating_add(bytes);
        // A state of an older version lists no files: it cannot be removed file by file.
        if used <= budget || state.files.is_empty() {
            continue;
        }
        let (unit, fingerprint) = plan.pair_unit(p);
        let Some(mut record) = units.get(&unit).filter(|r| r.fingerprint == fingerprint) else {
            continue;
        };
        state.remove(&dir);
        record.detail["kept"] = false.into();
        record.detail["state"] = serde_json::Value::Null;
        record.detail["summed"] = serde_json::to_value(plan.shard_identities())?;
        let files: Vec<PathBuf> = (record.files.iter())
            .map(|f| plan.output.join(&f.path))
            .collect();
        units.record(&unit, &fingerprint, record.detail, &files)?;
        dropped += 1;
    }
    if dropped > 0 {
        tracing::info!(
            "{dropped} pair(s) dropped their saved sums, past [stats] keep_sums_mib = {} MiB; a \
             run that adds shards sums them again from the codes",
            plan.study.stats.keep_sums_mib
        );
    }
    Ok(dropped)
}

/// MPPC with the floor baseline from the pair's sums; writes and records the pair's tables.
fn tabulate(
    plan: &Plan,
    p: PairId,
    sums: PairSums,
    first_dropped: Option<(u64, PathBuf)>,
) -> anyhow::Result<()> {
    let pair = plan.pair(p);
    let dir = plan.pair_dir(p);
    let state = sums.state;
    let (source, target) = metas(plan, p);
    let floor_permutations = if pair.ceiling_of.is_some() {
        0
    } else {
        plan.study.baselines.floor_permutations
    };
    let bootstrap = if pair.ceiling_of.is_some() {
        0
    } else {
        plan.study.baselines.bootstrap
    };
    let aligned = if floor_permutations > 0 || bootstrap > 0 {
        Some(aligned_codes(plan, p)?)
    } else {
        None
    };
    let options = CompareOptions {
        baselines: floor_permutations,
        bootstrap,
        missing: MissingSamples::Drop,
        ..CompareOptions::default()
    };
    let report = AlignReport {
        samples: state.samples,
        dropped: state.dropped,
        first_dropped,
    };
    let mut comparison = compare_accumulated(
        sums.accumulators,
        report,
        &source,
        &target,
        aligned.as_deref(),
        &options,
    )?;
    if pair.ceiling_of.is_some() {
        // An SAE against its second seed: which features the other seed finds again is a
        // question of each layer and its twin, not of two different layers.
        (comparison.matches).retain(|m| m.source_layer == m.target_layer);
    }
    let geometry = super::decoders::pair_geometry(plan, p, &comparison.matches, options.seed)?;
    let files = [
        dir.join(tables::MPPC_FILE),
        dir.join(tables::WMPPC_FILE),
        dir.join(tables::FEATURES_FILE),
        dir.join(metrics::MATCHES_FILE),
        dir.join(metrics::DECODERS_FILE),
    ];
    tables::write_mppc(&files[0], &comparison.mppc)?;
    tables::write_wmppc(&files[1], &comparison.wmppc)?;
    tables::write_features(&files[2], &comparison.features)?;
    metrics::write_matches(&files[3], &comparison.matches)?;
    metrics::write_decoders(&files[4], &geometry)?;
    let mut files = files.to_vec();
    let file = dir.join(similarity::SIMILARITY_FILE);
    if let Some(moments) = &sums.similarity {
        let (ids, source, target) = readouts::all_rows(plan, p)?;
        let spec = similarity::TableSpec {
            permutations: floor_permutations,
            permutation_seed: options.seed,
            both_directions: plan.similarity_mirror(p).is_some(),
        };
        let rows = similarity::tabulate(
            moments,
            &ids,
            &source,
            &target,
            &plan.study.similarity,
            spec,
            tch::Device::Cpu,
        );
        similarity::write_similarity(&file, &rows)?;
        files.push(file);
    } else if file.is_file() {
        // This pair's own earlier table (the measures since turned off, or now held by its
        // mirror's): left, it would stand for rows no longer computed here.
        std::fs::remove_file(&file).with_context(|| file.display().to_string())?;
    }
    let (unit, fingerprint) = plan.pair_unit(p);
    let detail = serde_json::json!({
        "state": state.generation,
        "shards": state.shards.len(),
        "samples": state.samples,
        "dropped": state.dropped,
    });
    Units::new(&plan.output).record(&unit, &fingerprint, detail, &files)?;
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

/// The codes metadata of a pair's two sides.
fn metas(plan: &Plan, p: PairId) -> (Vec<CodesMeta>, Vec<CodesMeta>) {
    let pair = plan.pair(p);
    let side = |side: &mut dyn Iterator<Item = EncoderLayer>| -> Vec<CodesMeta> {
        side.map(|at| codes_meta(plan, at)).collect()
    };
    (side(&mut pair.source_at()), side(&mut pair.target_at()))
}

/// Every code of the pair's layers on samples all of them hold, shard after shard (sources
/// first): what the floor baseline permutes.
fn aligned_codes(plan: &Plan, p: PairId) -> anyhow::Result<Vec<CodeBatch>> {
    let pair = plan.pair(p);
    let streams = pair.source_layers.len() + pair.target_layers.len();
    let mut kept = vec![CodeBatch::new(); streams];
    for shard in plan.shard_ids() {
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
