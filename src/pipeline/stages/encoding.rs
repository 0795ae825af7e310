//! What a worker runs on the shards it reads: the study's encoders (loaded once, on first use)
//! and, in the compare pass, their SAEs. Plain code, no timely: the dataflow operators call it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tch::Device;

use crate::dataset::SampleBatch;
use crate::encoder::{EncodedRows, Encoder, StageTimes, TokenSelection};
use crate::ids::{EncoderId, EncoderLayer, ShardId};
use crate::pipeline::cache;
use crate::pipeline::plan::Plan;
use crate::pipeline::units::Units;
use crate::sae::{Sae, SampleCode};

/// One worker's encoders and SAEs.
pub struct WorkerModels {
    plan: Arc<Plan>,
    worker: usize,
    encoders: HashMap<EncoderId, Encoder>,
    saes: HashMap<EncoderLayer, Sae>,
    /// (encoder, shard) whose activations the cache holds, and those already served this stage.
    cached: HashSet<(EncoderId, ShardId)>,
    served: HashSet<(EncoderId, ShardId)>,
    /// The last batch's rows of each encoder with a ceiling twin, which asks for them next.
    last: HashMap<EncoderId, (BatchKey, EncodedRows)>,
}

/// Which rows of which encoder: (encoder, shard, first sample id, rows).
type BatchKey = (EncoderId, ShardId, Option<u64>, usize);

impl WorkerModels {
    /// Nothing loaded yet; `worker` (this process's worker index) picks the GPU when an
    /// encoder asks for `cuda` and there are several.
    pub fn new(plan: Arc<Plan>, worker: usize) -> WorkerModels {
        WorkerModels {
            plan,
            worker,
            encoders: HashMap::new(),
            saes: HashMap::new(),
            cached: HashSet::new(),
            served: HashSet::new(),
            last: HashMap::new(),
        }
    }

    /// Looks at the activation cache again: a stage starts, after another may have filled it.
    /// Drops the loaded encoders (and their rows) other than `keep`'s: a fit pass holds only
    /// its own encoders' weights.
    pub fn keep_only(&mut self, keep: &[EncoderId]) {
        self.encoders.retain(|e, _| keep.contains(e));
        self.last.retain(|e, _| keep.contains(e));
    }

    pub fn begin_stage(&mut self) {
        let units = Units::new(&self.plan.output);
        self.served.clear();
        let plan = &self.plan;
        self.cached = (plan.encoder_ids())
            .flat_map(|e| plan.shard_ids().map(move |s| (e, s)))
            .filter(|&(e, s)| cache::is_cached(plan, &units, e, s))
            .collect();
    }

    /// Whether encoder `e`'s activations of `shard` come from the cache in this stage.
    pub fn is_cached(&self, e: EncoderId, shard: ShardId) -> bool {
        self.cached.contains(&(e, shard))
    }

    /// Encoder `e`'s pooled rows for `batch`: encoded, or read from the activation cache (the
    /// whole shard at its first batch, `None` for its later batches).
    pub fn pooled_for(
        &mut self,
        e: EncoderId,
        batch: &SampleBatch,
    ) -> anyhow::Result<Option<EncodedRows>> {
        // The ceiling's second SAEs see the very rows of their encoder.
        let base = self.plan.encoder(e).twin_of.unwrap_or(e);
        let shard = ShardId::new(batch.shard);
        if self.cached.contains(&(base, shard)) {
            if !self.served.insert((e, shard)) {
                return Ok(None);
            }
            return cache::read(&self.plan, base, shard).map(Some);
        }
        let key = (base, shard, batch.sample_ids.first().copied(), batch.len());
        if let Some((memo_key, rows)) = self.last.get(&base) {
            if *memo_key == key {
                return Ok(Some(rows.clone()));
            }
        }
        let rows = self.pooled(base, batch)?;
        if self.plan.encoders.iter().any(|t| t.twin_of == Some(base)) {
            self.last.insert(base, (key, rows.clone()));
        }
        Ok(Some(rows))
    }

    /// The device encoder `e` runs on in this worker: one GPU per worker where there are several.
    pub fn device(&self, e: EncoderId) -> Device {
        worker_device(self.plan.encoder(e).device, self.worker)
    }

    /// The seconds of each stage of encoder `e`'s encoding since the last call (zero when it is
    /// not loaded), and a fresh count.
    pub fn take_stage_times(&mut self, e: EncoderId) -> StageTimes {
        (self.encoders.get_mut(&e)).map_or_else(StageTimes::default, Encoder::take_stage_times)
    }

    /// Encoder `e`'s pooled rows of the chosen layers for `batch`, run in the encoder's batches.
    pub fn pooled(&mut self, e: EncoderId, batch: &SampleBatch) -> anyhow::Result<EncodedRows> {
        let mut rows = EncodedRows::empty(self.plan.encoder(e).layers.len());
        self.encode_slices(e, batch, None, |slice| {
            rows.append(&slice);
            Ok(())
        })?;
        Ok(rows)
    }

    /// Runs `batch` through encoder `e` in the encoder's batch size and hands `sink` the rows
    /// as they come (a model batch's, or a window's of captions grouped by length): pooled rows,
    /// and token rows where `tokens` asks, so that a batch's token rows are never all in memory
    /// at once. The batch's reader skips are counted in the first rows.
    pub fn encode_slices(
        &mut self,
        e: EncoderId,
        batch: &SampleBatch,
        tokens: Option<&TokenSelection>,
        sink: impl FnMut(EncodedRows) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let planned = self.plan.encoder(e);
        if !self.encoders.contains_key(&e) {
            let encoder = planned.load(self.device(e))?;
            self.encoders.insert(e, encoder);
        }
        let encoder = self.encoders.get_mut(&e).expect("loaded above");
        let batches = std::iter::once(Ok(batch.clone()));
        let (layers, pooling) = (&planned.layers, planned.pooling);
        encoder.encode_batches(batches, planned.batch_size, layers, pooling, tokens, sink)
    }

    /// The codes of layer `at` for `rows` (`[samples x width]`): for each sample, its features
    /// and values.
    pub fn codes(
        &mut self,
        at: EncoderLayer,
        rows: &[f32],
        samples: usize,
    ) -> anyhow::Result<Vec<SampleCode>> {
        if !self.saes.contains_key(&at) {
            let device = self.device(at.encoder);
            let sae = super::decoders::load_sae(&self.plan, at, device)?;
            self.saes.insert(at, sae);
        }
        let read_out = self.plan.encoder(at.encoder).read_out;
        Ok(self.saes[&at].sample_codes(rows, samples, read_out))
    }
}

/// The device a study's `device` means for worker `worker`: `cuda` (device 0) spreads the
/// workers over every GPU, one each in turn; a numbered device or the CPU stays as it is.
pub fn worker_device(device: Device, worker: usize) -> Device {
    match device {
        Device::Cuda(0) => {
            let count = tch::Cuda::device_count().max(1) as usize;
            Device::Cuda(worker % count)
        }
        other => other,
    }
}
