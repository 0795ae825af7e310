//! The compare pass: shards -> encoder -> SAE codes -> codes store (one file per encoder, layer
//! and shard) -> per-shard co-activation accumulators of every compared pair, exchanged to the
//! worker that owns the pair -> merged, in shard order, into the pair's saved state -> MPPC and
//! the pair's tables (the pair owner's half is [`crate::pipeline::pairs`]).
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
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use timely::worker::Worker;

use crate::codes::{CodesMeta, CodesWriter};
use crate::dataset::{SampleBatch, ShardInfo};
use crate::encoder::{EncodedRows, READER_BATCH_ROWS};
use crate::ids::{EncoderId, EncoderLayer, LayerId, PairId, ShardId};
use crate::metrics::{accumulate_files, CompareOptions};
use crate::pipeline::pairs::{OwnedPairs, PairPartial};
use crate::pipeline::plan::{shard_key, Plan};
use crate::pipeline::readouts;
use crate::pipeline::source::shard_source;
use crate::pipeline::stage::{passed, projection_for, Failure, StageContext};
use crate::pipeline::units::Units;
use crate::sae;
use crate::stats::SavedSums;
use crate::stats::{AccumulatorOptions, MissingSamples};

/// What the compare pass has to do, from the manifest: which encoders need codes for which
/// shards, which pairs' states lack which shards, which pairs' tables are out of date, and
/// which pairs' saved sums cannot be built on (their SAEs are fitted anew, or a file of their
/// state was lost or damaged), so that every shard is summed anew.
#[derive(Clone, Debug)]
pub struct CompareWork {
    /// `[encoder][shard]`.
    codes: Vec<Vec<bool>>,
    /// `[pair][shard]`.
    pairs: Vec<Vec<bool>>,
    tables: Vec<bool>,
    restart: Vec<bool>,
}

impl CompareWork {
    /// Reads the manifest and the pairs' states.
    pub fn of(plan: &Plan, units: &Units) -> CompareWork {
        let codes = (plan.encoder_ids())
            .map(|e| {
                (plan.shard_ids())
                    .map(|s| {
                        let (unit, fingerprint) = plan.codes_unit(e, s);
                        !plan.is_done_on_shard(units, &unit, &fingerprint, s)
                    })
                    .collect()
            })
            .collect();
        let mut work = CompareWork {
            codes,
            pairs: Vec::new(),
            tables: Vec::new(),
            restart: Vec::new(),
        };
        for p in plan.pair_ids() {
            work.add_pair(plan, units, p);
        }
        work
    }

    /// Reads pair `p`'s saved state and record.
    fn add_pair(&mut self, plan: &Plan, units: &Units, p: PairId) {
        let dir = plan.pair_dir(p);
        let mut state =
            SavedSums::latest(&dir).filter(|s| s.fingerprint == plan.pair_fingerprint(p));
        let problem = state.as_ref().and_then(|s| s.problem(&dir));
        if let Some(problem) = &problem {
            tracing::warn!(
                "pair {}: its saved sums cannot be trusted ({problem}); every shard is summed anew",
                plan.pair(p).key
            );
            state = None;
        }
        let changed = state.as_ref().and_then(|s| changed_shards(plan, s));
        if let Some(changed) = &changed {
            tracing::warn!(
                "pair {}: {changed} since its sums were saved; every shard is summed anew from \
                 the codes",
                plan.pair(p).key
            );
            state = None;
        }
        self.restart.push(problem.is_some() || changed.is_some());
        let (unit, fingerprint) = plan.pair_unit(p);
        let shards = plan.dataset.shards();
        if state.is_none() && tables_without_sums_are_current(plan, units, &unit, &fingerprint) {
            self.pairs.push(vec![false; shards.len()]);
            self.tables.push(false);
            return;
        }
        let covered =
            |s: &ShardInfo| (state.as_ref()).is_some_and(|st| st.shards.contains(&shard_key(s)));
        self.pairs
            .push(shards.iter().map(|s| !covered(s)).collect());
        let generation = state.as_ref().map(|s| s.generation);
        self.tables.push(
            !shards.iter().all(covered)
                || !units.is_done(&unit, &fingerprint)
                || (units.get(&unit)).is_none_or(|r| r.detail["state"].as_u64() != generation),
        );
    }

    /// Marks what an SAE set fitted anew for encoder `e` invalidates: its codes, and the sums and
    /// tables of every pair it is in.
    pub fn refit(&mut self, plan: &Plan, e: EncoderId) {
        self.codes[e.index()].iter_mut().for_each(|b| *b = true);
        for p in plan.pair_ids().filter(|&p| plan.pair(p).involves(e)) {
            self.pairs[p.index()].iter_mut().for_each(|b| *b = true);
            self.tables[p.index()] = true;
            self.restart[p.index()] = true;
        }
    }

    /// Whether encoder `e` needs codes for shard `s`.
    pub fn needs_codes(&self, e: EncoderId, s: ShardId) -> bool {
        self.codes[e.index()][s.index()]
    }

    /// Whether pair `p`'s state lacks shard `s`.
    pub fn needs_sums(&self, p: PairId, s: ShardId) -> bool {
        self.pairs[p.index()][s.index()]
    }

    /// Whether pair `p`'s tables are out of date.
    pub fn needs_tables(&self, p: PairId) -> bool {
        self.tables[p.index()]
    }

    /// Whether pair `p`'s saved sums are to be dropped and every shard summed anew.
    pub fn restarts(&self, p: PairId) -> bool {
        self.restart[p.index()]
    }

    /// How many encoders need codes for shard `s`.
    pub fn encoders_needing(&self, s: ShardId) -> usize {
        self.codes.iter().filter(|row| row[s.index()]).count()
    }

    /// The shards some encoder or pair needs.
    pub fn shards(&self) -> Vec<ShardId> {
        let n = self.codes.first().map_or(0, Vec::len);
        ShardId::all(n)
            .filter(|s| (self.codes.iter().chain(&self.pairs)).any(|row| row[s.index()]))
            .collect()
    }

    /// Codes units and pairs to run.
    pub fn counts(&self) -> (usize, usize) {
        let codes = self.codes.iter().flatten().filter(|&&b| b).count();
        let pairs = self.tables.iter().filter(|&&b| b).count();
        (codes, pairs)
    }
}

/// Whether a pair that dropped its saved sums (past the disk budget) has tables made from the
/// dataset as it is now: then it has nothing to do; otherwise every shard is summed again.
fn tables_without_sums_are_current(
    plan: &Plan,
    units: &Units,
    unit: &str,
    fingerprint: &str,
) -> bool {
    if !units.is_done(unit, fingerprint) {
        return false;
    }
    let Some(record) = units.get(unit) else {
        return false;
    };
    if record.detail.get("kept") != Some(&serde_json::Value::Bool(false)) {
        return false;
    }
    let summed: Option<Vec<crate::pipeline::plan::ShardIdentity>> =
        serde_json::from_value(record.detail["summed"].clone()).ok();
    summed.is_some_and(|summed| summed == plan.shard_identities())
}

/// What summed in `state` is no longer in the dataset as it was summed (a shard rewritten under
/// its name, or left out of the study), said for the log; `None` when every summed shard is.
/// Such sums cannot be built on: a shard's old sums cannot be taken out of a total.
fn changed_shards(plan: &Plan, state: &SavedSums) -> Option<String> {
    let now: HashMap<String, (ShardId, (String, u64, u64))> = (plan.shard_ids())
        .map(|s| {
            let key = shard_key(plan.shard(s));
            (key.0.clone(), (s, key))
        })
        .collect();
    let changes: Vec<String> = (state.shards.iter())
        .filter_map(|summed| {
            let name = &summed.0;
            let Some((s, key)) = now.get(name) else {
                return Some(format!("the shard {name} is no longer in the dataset"));
            };
            if key != summed {
                return Some(format!(
                    "the shard {name} changed ({} rows and {} bytes, {} and {} when summed)",
                    key.1, key.2, summed.1, summed.2
                ));
            }
            let sha = state.contents.get(name)?;
            (sha != plan.contents.digest(*s))
                .then(|| format!("the shard {name} changed (its SHA-256 differs)"))
        })
        .collect();
    crate::pipeline::plan::first_of_changes(changes)
}

/// One sample's code.
type Code = (u64, Vec<u32>, Vec<f32>);

/// A shard's codes by layer, and the read-out rows they were read from by encoder (where the
/// study keeps them), as the worker that read the shard made them.
#[derive(Clone, Default)]
struct ShardCodes {
    codes: HashMap<EncoderLayer, Vec<Code>>,
    readouts: HashMap<EncoderId, EncodedRows>,
}

/// Builds the compare dataflow in `worker`. Once the worker has run it to completion,
/// [`crate::pipeline::pairs::finish`] merges and tabulates the pairs this worker owns.
pub fn build(
    worker: &mut Worker,
    context: &StageContext,
    work: &Arc<CompareWork>,
) -> Rc<RefCell<OwnedPairs>> {
    let (plan, failure) = (&context.plan, context.failure.clone());
    let owned = Rc::new(RefCell::new(OwnedPairs::new(plan, work)));
    let projection = projection_for(
        (plan.encoder_ids())
            .filter(|&e| work.shards().iter().any(|&s| work.needs_codes(e, s)))
            .map(|e| plan.encoder(e)),
    );
    let encoding = CompareEncoding {
        context: context.clone(),
        work: work.clone(),
        stash: BTreeMap::new(),
    };
    let sink = owned.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        let (batches, errors) = shard_source(
            scope,
            plan.dataset.clone(),
            work.shards(),
            projection,
            READER_BATCH_ROWS,
        );
        failure.watch_source(errors);
        batches
            .encode_to_codes(encoding)
            .sum_pairs(plan.clone(), work.clone(), failure)
            .gather_pairs(sink);
    });
    owned
}

/// The compare pass's operators, as methods on the streams they read.
trait BatchStreams<'scope> {
    /// Each batch through every encoder needing codes for its shard and through its SAEs; the
    /// codes of a shard leave, as one record, once the frontier has passed the shard.
    fn encode_to_codes(
        self,
        encoding: CompareEncoding,
    ) -> StreamVec<'scope, u64, (ShardId, ShardCodes)>;
}

trait ShardCodeStreams<'scope> {
    /// Writes each shard's codes and sums every pair on them, on a helper thread while the
    /// worker encodes the next shard: one [`PairPartial`] per pair and shard.
    fn sum_pairs(
        self,
        plan: Arc<Plan>,
        work: Arc<CompareWork>,
        failure: Failure,
    ) -> StreamVec<'scope, u64, PairPartial>;
}

trait PartialStreams {
    /// Exchanges the partial sums to the worker owning their pair, which keeps them.
    fn gather_pairs(self, owned: Rc<RefCell<OwnedPairs>>);
}

impl<'scope> BatchStreams<'scope> for StreamVec<'scope, u64, SampleBatch> {
    fn encode_to_codes(
        self,
        mut encoding: CompareEncoding,
    ) -> StreamVec<'scope, u64, (ShardId, ShardCodes)> {
        let mut caps = BTreeMap::new();
        self.unary_frontier(Pipeline, "EncodeToCodes", move |_, _| {
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let (Some(&shard), Some(retained)) = (cap.least(), cap.retain_least(0)) else {
                        return;
                    };
                    caps.entry(shard).or_insert(retained);
                    for batch in data.drain(..) {
                        encoding.encode(&batch);
                    }
                });
                for shard in passed(&caps, frontier) {
                    let cap = caps.remove(&shard).expect("listed");
                    if let Some(codes) = encoding.take(shard) {
                        output
                            .session(&cap)
                            .give((ShardId::new(shard as usize), codes));
                    }
                }
            }
        })
    }
}

impl<'scope> ShardCodeStreams<'scope> for StreamVec<'scope, u64, (ShardId, ShardCodes)> {
    fn sum_pairs(
        self,
        plan: Arc<Plan>,
        work: Arc<CompareWork>,
        failure: Failure,
    ) -> StreamVec<'scope, u64, PairPartial> {
        // A bounded channel of one shard holds the encoder back when the sums fall behind.
        let (jobs, job_queue) = crossbeam_channel::bounded::<(ShardId, ShardCodes)>(1);
        let (results, done) = crossbeam_channel::unbounded::<ShardResult>();
        let mut in_flight = BTreeMap::new();
        let scope = self.scope();
        self.unary_frontier(Pipeline, "SumPairs", move |_, info| {
            let wake = scope.worker().sync_activator_for(info.address.to_vec());
            std::thread::spawn(move || {
                for (shard, codes) in job_queue {
                    let result = finish_shard(&plan, &work, shard, codes);
                    if results.send((shard, result)).is_err() || wake.activate().is_err() {
                        return;
                    }
                }
            });
            move |(input, _frontier), output| {
                input.for_each(|cap, data| {
                    let Some(retained) = cap.retain_least(0) else {
                        return;
                    };
                    for (shard, codes) in data.drain(..) {
                        // The capability stays held until the shard's sums are out.
                        in_flight.insert(shard, retained.clone());
                        if jobs.send((shard, codes)).is_err() {
                            failure.set(anyhow::anyhow!("the shard accumulator thread stopped"));
                        }
                    }
                });
                while let Ok((shard, result)) = done.try_recv() {
                    let cap = in_flight.remove(&shard).expect("sent above");
                    match result {
                        Ok(partials) => output.session(&cap).give_iterator(partials.into_iter()),
                        Err(error) => failure.set(error),
                    }
                }
                if failure.failed() {
                    in_flight.clear();
                }
            }
        })
    }
}

impl PartialStreams for StreamVec<'_, u64, PairPartial> {
    fn gather_pairs(self, owned: Rc<RefCell<OwnedPairs>>) {
        self.sink(
            Exchange::new(|p: &PairPartial| u64::from(p.pair.0)),
            "GatherPairs",
            move |(input, _frontier)| {
                let mut owned = owned.borrow_mut();
                input.for_each(|_, data| {
                    for partial in data.drain(..) {
                        owned.receive(partial);
                    }
                });
            },
        );
    }
}

type ShardResult = (ShardId, anyhow::Result<Vec<PairPartial>>);

/// The state of the operator that encodes to codes: the codes of each shard being read.
struct CompareEncoding {
    context: StageContext,
    work: Arc<CompareWork>,
    stash: BTreeMap<ShardId, ShardCodes>,
}

impl CompareEncoding {
    /// Encodes a batch with every encoder that needs codes for its shard.
    fn encode(&mut self, batch: &SampleBatch) {
        let shard = ShardId::new(batch.shard);
        let codes = self.stash.entry(shard).or_default();
        if self.context.failure.failed() {
            return;
        }
        if let Err(error) = encode_batch(&self.context, &self.work, batch, codes) {
            self.context.failure.set(error);
        }
    }

    /// The codes of a complete shard, unless the stage failed.
    fn take(&mut self, shard: u64) -> Option<ShardCodes> {
        let codes = self
            .stash
            .remove(&ShardId::new(shard as usize))
            .unwrap_or_default();
        (!self.context.failure.failed()).then_some(codes)
    }
}

/// Encodes a batch with every encoder that needs codes for its shard, adding to `codes`.
fn encode_batch(
    context: &StageContext,
    work: &CompareWork,
    batch: &SampleBatch,
    codes: &mut ShardCodes,
) -> anyhow::Result<()> {
    let shard = ShardId::new(batch.shard);
    let plan = &context.plan;
    for e in plan.encoder_ids().filter(|&e| work.needs_codes(e, shard)) {
        let Some(pooled) = context.pooled(e, batch)? else {
            continue;
        };
        let mut models = context.models.borrow_mut();
        let n = pooled.sample_ids.len();
        for (layer, rows) in LayerId::all(pooled.layers.len()).zip(&pooled.layers) {
            let at = EncoderLayer { encoder: e, layer };
            let layer_codes = models.codes(at, rows, n)?;
            let out = codes.codes.entry(at).or_default();
            for (id, (features, values)) in pooled.sample_ids.iter().zip(layer_codes) {
                out.push((*id, features, values));
            }
        }
        if plan.keeps_readouts(e) {
            let layers = pooled.layers.len();
            let kept = codes
                .readouts
                .entry(e)
                .or_insert_with(|| EncodedRows::empty(layers));
            kept.append(&pooled);
        }
    }
    Ok(())
}

/// Writes a finished shard's codes, records them, and sums every pair that needs the shard.
fn finish_shard(
    plan: &Plan,
    work: &CompareWork,
    shard: ShardId,
    mut codes: ShardCodes,
) -> anyhow::Result<Vec<PairPartial>> {
    let units = Units::new(&plan.output);
    for e in plan.encoder_ids().filter(|&e| work.needs_codes(e, shard)) {
        let mut samples = 0;
        let mut files = Vec::new();
        for layer in plan.encoder(e).layer_ids() {
            let at = EncoderLayer { encoder: e, layer };
            let mut layer_codes = codes.codes.remove(&at).unwrap_or_default();
            layer_codes.sort_by_key(|c| c.0);
            files.push(write_codes(plan, at, shard, &layer_codes)?);
            samples = layer_codes.len();
        }
        if plan.keeps_readouts(e) {
            let rows = codes.readouts.remove(&e).unwrap_or_default();
            files.push(readouts::write(plan, e, shard, &rows)?);
        }
        let (unit, fingerprint) = plan.codes_unit(e, shard);
        let detail = plan.shard_detail(shard, serde_json::json!({ "samples": samples }));
        units.record(&unit, &fingerprint, detail, &files)?;
    }
    let info = plan.shard(shard);
    let mut readouts = readouts::ShardReadouts::new(plan, shard);
    let mut partials = Vec::new();
    for p in plan.pair_ids().filter(|&p| work.needs_sums(p, shard)) {
        let (sources, targets) = pair_files(plan, p, shard);
        let options = CompareOptions {
            missing: MissingSamples::Drop,
            accumulator: AccumulatorOptions {
                memory_mib: plan.study.stats.memory_mib,
                threads: plan.study.stats.threads,
            },
            ..CompareOptions::default()
        };
        let (accumulators, report) = accumulate_files(&sources, &targets, &options)
            .with_context(|| format!("pair {} on {}", plan.pair(p).key, info.path.display()))?;
        let similarity = if plan.similarity_of(p) {
            Some(readouts.partial_sums(p).with_context(|| {
                format!(
                    "pair {}: representation moments on {}",
                    plan.pair(p).key,
                    info.path.display()
                )
            })?)
        } else {
            None
        };
        partials.push(PairPartial {
            pair: p,
            shard,
            accumulators: accumulators
                .iter()
                .flatten()
                .map(|a| a.to_bytes())
                .collect(),
            similarity,
            samples: report.samples,
            dropped: report.dropped,
            first_dropped: report.first_dropped,
        });
    }
    Ok(partials)
}

/// Writes one layer's codes of a shard, replacing a stale file (its unit is not recorded with
/// this fingerprint).
fn write_codes(
    plan: &Plan,
    at: EncoderLayer,
    shard: ShardId,
    codes: &[Code],
) -> anyhow::Result<PathBuf> {
    let path = plan.codes_file(at.encoder, at.layer, shard);
    std::fs::create_dir_all(path.parent().expect("in a folder"))
        .with_context(|| path.display().to_string())?;
    if path.exists() {
        std::fs::remove_file(&path).with_context(|| path.display().to_string())?;
    }
    let mut writer = CodesWriter::create(&path, codes_meta(plan, at))?
        .with_dense_values(plan.study.codes.dense_values);
    for (id, features, values) in codes {
        writer.push(*id, features, values)?;
    }
    writer.finish()?;
    Ok(path)
}

/// The codes metadata of one layer of an encoder, naming the SAE that makes them.
pub(in crate::pipeline) fn codes_meta(plan: &Plan, at: EncoderLayer) -> CodesMeta {
    let encoder = plan.encoder(at.encoder);
    let layer = encoder.layer_name(at.layer);
    if let Some(imported) = encoder.imported(at.layer) {
        let d_sae = imported.description.d_sae;
        return sae::codes_meta(
            &imported.config,
            &encoder.name,
            layer,
            d_sae,
            encoder.read_out,
        )
        .with_sae(imported.label());
    }
    let d_sae = encoder.layer_width(at.layer) * encoder.sae.expansion;
    sae::codes_meta(&encoder.sae, &encoder.name, layer, d_sae, encoder.read_out)
        .with_sae(plan.sae_dir(at.encoder, at.layer).display().to_string())
}

/// The codes files of a pair's source and target layers on one shard.
pub(in crate::pipeline) fn pair_files(
    plan: &Plan,
    p: PairId,
    shard: ShardId,
) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let pair = plan.pair(p);
    let files = |side: &mut dyn Iterator<Item = EncoderLayer>| -> Vec<PathBuf> {
        side.map(|at| plan.codes_file(at.encoder, at.layer, shard))
            .collect()
    };
    (files(&mut pair.source_at()), files(&mut pair.target_at()))
}
