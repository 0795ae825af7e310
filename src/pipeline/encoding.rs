//! What a worker runs on the shards it reads: the study's encoders (loaded once, on first use)
//! and, in the compare pass, their SAEs. Plain code, no timely: the dataflow operators call it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tch::{Device, Tensor};

use super::cache;
use super::plan::Plan;
use super::units::Units;
use crate::dataset::SampleBatch;
use crate::encoder::{prepare, Encoder};
use crate::sae::Sae;

/// Pooled rows of one batch of one encoder: per chosen layer, `[samples x width]` row-major.
#[derive(Clone)]
pub struct PooledRows {
    pub sample_ids: Vec<u64>,
    pub layers: Vec<Vec<f32>>,
    /// Rows left out (unreadable images, rows the reader skipped).
    pub skipped: u64,
}

impl PooledRows {
    /// No rows yet, of `layers` layers.
    pub fn empty(layers: usize) -> PooledRows {
        PooledRows {
            sample_ids: Vec::new(),
            layers: vec![Vec::new(); layers],
            skipped: 0,
        }
    }

    /// Adds `other`'s rows after these.
    pub fn append(&mut self, other: &PooledRows) {
        self.sample_ids.extend(&other.sample_ids);
        for (mine, theirs) in self.layers.iter_mut().zip(&other.layers) {
            mine.extend(theirs);
        }
        self.skipped += other.skipped;
    }
}

/// One worker's encoders and SAEs.
pub struct WorkerModels {
    plan: Arc<Plan>,
    worker: usize,
    encoders: HashMap<usize, Encoder>,
    saes: HashMap<(usize, usize), Sae>,
    /// (encoder, shard) whose activations the cache holds, and those already served this stage.
    cached: HashSet<(usize, usize)>,
    served: HashSet<(usize, usize)>,
    /// The last batch's rows of each encoder with a ceiling twin, which asks for them next.
    last: HashMap<usize, (BatchKey, PooledRows)>,
}

/// Which rows of which encoder: (encoder, shard, first sample id, rows).
type BatchKey = (usize, usize, Option<u64>, usize);

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
    pub fn begin_stage(&mut self) {
        let units = Units::new(&self.plan.output);
        self.served.clear();
        self.cached = (0..self.plan.encoders.len())
            .flat_map(|e| self.plan.dataset.shards().iter().map(move |s| (e, s)))
            .filter(|(e, s)| cache::is_cached(&self.plan, &units, *e, s))
            .map(|(e, s)| (e, s.index))
            .collect();
    }

    /// Whether encoder `e`'s activations of `shard` come from the cache in this stage.
    pub fn is_cached(&self, e: usize, shard: usize) -> bool {
        self.cached.contains(&(e, shard))
    }

    /// Encoder `e`'s pooled rows for `batch`: encoded, or read from the activation cache (the
    /// whole shard at its first batch, `None` for its later batches).
    pub fn pooled_for(
        &mut self,
        e: usize,
        batch: &SampleBatch,
    ) -> anyhow::Result<Option<PooledRows>> {
        // The ceiling's second SAEs see the very rows of their encoder.
        let base = self.plan.encoders[e].twin_of.unwrap_or(e);
        if self.cached.contains(&(base, batch.shard)) {
            if !self.served.insert((e, batch.shard)) {
                return Ok(None);
            }
            let shard = &self.plan.dataset.shards()[batch.shard];
            return cache::read(&self.plan, base, shard).map(Some);
        }
        let key = (
            base,
            batch.shard,
            batch.sample_ids.first().copied(),
            batch.len(),
        );
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
    pub fn device(&self, e: usize) -> Device {
        worker_device(self.plan.encoders[e].device, self.worker)
    }

    /// Encoder `e`'s pooled rows of the chosen layers for `batch`, run in the encoder's batches.
    pub fn pooled(&mut self, e: usize, batch: &SampleBatch) -> anyhow::Result<PooledRows> {
        let planned = &self.plan.encoders[e];
        if !self.encoders.contains_key(&e) {
            let device = self.device(e);
            let encoder = Encoder::load(&planned.package, device)?;
            self.encoders.insert(e, encoder);
        }
        let encoder = self.encoders.get_mut(&e).expect("loaded above");
        let mut rows = PooledRows {
            sample_ids: Vec::new(),
            layers: vec![Vec::new(); planned.layers.len()],
            skipped: batch.skipped.len() as u64,
        };
        let step = planned.batch_size.max(1);
        // Decoding and preprocessing the next chunk on a helper thread, a bounded step ahead,
        // while libtorch runs this one: CPU-bound image decoding overlaps inference.
        let manifest = &encoder.manifest.clone();
        let (prepared_tx, prepared_rx) = crossbeam_channel::bounded(2);
        std::thread::scope(|scope| -> anyhow::Result<()> {
            scope.spawn(move || {
                for start in (0..batch.len()).step_by(step) {
                    let end = (start + step).min(batch.len());
                    let prepared = prepare(manifest, &slice(batch, start, end));
                    // A closed channel means the model side failed; its error is reported.
                    if prepared_tx.send(prepared).is_err() {
                        return;
                    }
                }
            });
            for prepared in prepared_rx {
                let pooled =
                    encoder.encode_prepared(prepared?, &planned.layers, planned.pooling)?;
                rows.skipped += pooled.skipped.len() as u64;
                rows.sample_ids.extend(&pooled.sample_ids);
                for (out, (_, tensor)) in rows.layers.iter_mut().zip(&pooled.layers) {
                    out.extend(Vec::<f32>::try_from(tensor.reshape([-1]))?);
                }
            }
            Ok(())
        })?;
        Ok(rows)
    }

    /// The codes of layer position `l` of encoder `e` for `rows` (`[n x width]`): for each
    /// sample, its features and values.
    pub fn codes(
        &mut self,
        e: usize,
        l: usize,
        rows: &[f32],
        samples: usize,
    ) -> anyhow::Result<Vec<(Vec<u32>, Vec<f32>)>> {
        if !self.saes.contains_key(&(e, l)) {
            let layer = &self.plan.encoders[e].layer_names()[l];
            let dir = self.plan.sae_dir(e, layer);
            let (sae, _) = Sae::load(&dir, self.device(e))?;
            self.saes.insert((e, l), sae);
        }
        let sae = &self.saes[&(e, l)];
        let mut codes = vec![(Vec::new(), Vec::new()); samples];
        if samples == 0 {
            return Ok(codes);
        }
        let x = Tensor::from_slice(rows)
            .reshape([samples as i64, -1])
            .to_device(sae.device());
        let (rows, latents, values) = sae.encode(&x).triples();
        for ((row, latent), value) in rows.into_iter().zip(latents).zip(values) {
            let code = &mut codes[row as usize];
            code.0.push(latent as u32);
            code.1.push(value);
        }
        Ok(codes)
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

/// Rows `start..end` of a batch, as a batch (its skips stay with the first part).
fn slice(batch: &SampleBatch, start: usize, end: usize) -> SampleBatch {
    SampleBatch {
        shard: batch.shard,
        sample_ids: batch.sample_ids[start..end].to_vec(),
        captions: batch.captions[start..end].to_vec(),
        images: if batch.images.is_empty() {
            Vec::new()
        } else {
            batch.images[start..end].to_vec()
        },
        skipped: Vec::new(),
    }
}
