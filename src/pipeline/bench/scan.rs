//! `saeshare dataset scan`: the dataset streamed through a timely dataflow, as a study reads it,
//! counting rows and (optionally) decoding images. It measures read throughput and checks that
//! a multi-process layout reads every row once.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use timely::dataflow::operators::Inspect;

use crate::dataset::{Dataset, Projection, SampleBatch};
use crate::ids::ShardId;
use crate::pipeline::{shard_source, WorkerArgs};

/// What the workers of this process read.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ScanSummary {
    pub process: usize,
    pub workers: usize,
    pub shards: usize,
    pub rows: u64,
    pub skipped_rows: u64,
    /// Images that do not decode (only counted with `decode`).
    pub unreadable_images: u64,
    /// Sum and sum of squares of the sample ids read (wrapping): with the row count, a cheap
    /// fingerprint of which rows were read, comparable across layouts.
    pub id_sum: u64,
    pub id_square_sum: u64,
    pub seconds: f64,
}

impl ScanSummary {
    /// Counts one batch: rows, skips, the ids' sums, and images that do not decode (the
    /// batch holds images only when the scan decodes them).
    fn count(&mut self, batch: &SampleBatch) {
        self.rows += batch.len() as u64;
        self.skipped_rows += batch.skipped.len() as u64;
        for id in &batch.sample_ids {
            self.id_sum = self.id_sum.wrapping_add(*id);
            self.id_square_sum = self.id_square_sum.wrapping_add(id.wrapping_mul(*id));
        }
        for (id, image) in batch.sample_ids.iter().zip(&batch.images) {
            if let Err(reason) = image.decode() {
                tracing::warn!(
                    sample_id = id,
                    "shard {}: unreadable image: {reason}",
                    batch.shard
                );
                self.unreadable_images += 1;
            }
        }
    }

    /// Adds another worker's counts.
    fn add(&mut self, other: &ScanSummary) {
        self.shards += other.shards;
        self.rows += other.rows;
        self.skipped_rows += other.skipped_rows;
        self.unreadable_images += other.unreadable_images;
        self.id_sum = self.id_sum.wrapping_add(other.id_sum);
        self.id_square_sum = self.id_square_sum.wrapping_add(other.id_square_sum);
    }
}

/// Streams the dataset through `workers` and sums what this process's workers saw.
pub fn scan(
    dir: &Path,
    workers: &WorkerArgs,
    decode: bool,
    batch_rows: usize,
) -> anyhow::Result<ScanSummary> {
    let dataset = Arc::new(Dataset::open(dir)?);
    let projection = if decode {
        Projection::ALL
    } else {
        Projection::TEXT
    };
    let total = Arc::new(Mutex::new(ScanSummary {
        process: workers.process,
        workers: workers.workers,
        ..ScanSummary::default()
    }));
    let sink = total.clone();
    let start = Instant::now();
    let results = workers.connect(dir)?.execute(move |worker| {
        let mine = ScanSummary {
            shards: dataset
                .shards_for_worker(worker.index(), worker.peers())
                .count(),
            ..ScanSummary::default()
        };
        let mine = Arc::new(Mutex::new(mine));
        let counts = mine.clone();
        let errors = worker.dataflow::<u64, _, _>(|scope| {
            let (batches, errors) = shard_source(
                scope,
                dataset.clone(),
                ShardId::all(dataset.shards().len()).collect(),
                projection,
                batch_rows,
            );
            batches.inspect(move |batch| counts.lock().expect("not poisoned").count(batch));
            errors
        });
        while worker.step() {}
        if let Some(error) = errors.take() {
            return Err(anyhow::Error::from(error));
        }
        let mine = mine.lock().expect("not poisoned").clone();
        sink.lock().expect("not poisoned").add(&mine);
        Ok(())
    })?;
    for result in results.join() {
        result.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))??;
    }
    let mut total = total.lock().expect("not poisoned").clone();
    total.seconds = start.elapsed().as_secs_f64();
    Ok(total)
}
