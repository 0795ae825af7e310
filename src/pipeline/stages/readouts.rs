//! The read-out store and the representation measures of the compare pass. The compare pass
//! writes each encoder's rows at the read-out position (one per sample and layer: the rows its
//! codes are read from) beside the codes, `readouts/<encoder>/<shard>`, sorted by sample id;
//! a pair's moments over a shard are summed from the two encoders' files and merged into the
//! pair's state with its co-activation sums; its floors and kNN subsample read the files again
//! when its tables are made. Adding an encoder or shards reads what is stored: no encoder runs
//! again for the measures.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;

use crate::encoder::EncodedRows;
use crate::ids::{EncoderId, LayerId, PairId, ShardId};
use crate::pipeline::cache::write_rows;
use crate::pipeline::plan::Plan;
use crate::similarity::{self, align_sides, read_side, Aligned, SideRows, SimilaritySums};

/// Writes encoder `e`'s read-out rows of `shard`, in sample id order, replacing a stale file.
pub fn write(
    plan: &Plan,
    e: EncoderId,
    shard: ShardId,
    rows: &EncodedRows,
) -> anyhow::Result<PathBuf> {
    let path = plan.readouts_file(e, shard);
    if path.exists() {
        std::fs::remove_file(&path).with_context(|| path.display().to_string())?;
    }
    let mut order: Vec<usize> = (0..rows.sample_ids.len()).collect();
    order.sort_by_key(|&i| rows.sample_ids[i]);
    write_rows(plan, e, &path, rows, order.into_iter())
        .with_context(|| format!("writing the read-out rows {}", path.display()))?;
    Ok(path)
}

/// Each encoder's read-out rows of one shard, read once for every pair that sums them.
pub struct ShardReadouts<'a> {
    plan: &'a Plan,
    shard: ShardId,
    read: HashMap<EncoderId, (Vec<u64>, SideRows)>,
}

impl<'a> ShardReadouts<'a> {
    pub fn new(plan: &'a Plan, shard: ShardId) -> ShardReadouts<'a> {
        ShardReadouts {
            plan,
            shard,
            read: HashMap::new(),
        }
    }

    /// Encoder `e`'s rows of `layers`.
    fn side(&mut self, e: EncoderId, layers: &[LayerId]) -> anyhow::Result<(Vec<u64>, SideRows)> {
        let encoder = self.plan.encoder(e);
        if !self.read.contains_key(&e) {
            let file = self.plan.readouts_file(e, self.shard);
            self.read
                .insert(e, read_side(&file, &[], Some(&encoder.name))?);
        }
        let (ids, all) = &self.read[&e];
        let chosen = (layers.iter())
            .map(|&l| {
                let name = encoder.layer_name(l);
                let found = all.layers.iter().find(|r| r.name == name);
                found.cloned().ok_or_else(|| {
                    let file = self.plan.readouts_file(e, self.shard);
                    anyhow::anyhow!("{}: no layer {name:?}", file.display())
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let side = SideRows {
            encoder: all.encoder.clone(),
            layers: chosen,
        };
        Ok((ids.clone(), side))
    }

    /// Pair `p`'s rows, its layers only, on the samples both encoders hold.
    fn pair_rows(&mut self, p: PairId) -> anyhow::Result<Aligned> {
        let pair = self.plan.pair(p);
        Ok(align_sides(
            self.side(pair.source, &pair.source_layers)?,
            self.side(pair.target, &pair.target_layers)?,
        ))
    }

    /// Pair `p`'s moments over the shard, as bytes for the pair's owner.
    pub fn partial_sums(&mut self, p: PairId) -> anyhow::Result<Vec<u8>> {
        let rows = self.pair_rows(p)?;
        let sums = similarity::sum_sides(
            &rows.ids,
            &rows.source,
            &rows.target,
            self.plan.study.similarity.seed,
            tch::Device::Cpu,
        );
        Ok(sums.to_bytes())
    }
}

/// Every shard's read-out rows of pair `p`, aligned shard by shard (sample ids ascending within
/// a shard, shards in order): what the floors permute and the subsample is drawn from.
pub fn all_rows(plan: &Plan, p: PairId) -> anyhow::Result<(Vec<u64>, SideRows, SideRows)> {
    let (mut ids, mut source, mut target) = (Vec::new(), SideRows::default(), SideRows::default());
    for shard in plan.shard_ids() {
        let rows = ShardReadouts::new(plan, shard).pair_rows(p)?;
        ids.extend(rows.ids);
        source.extend(rows.source);
        target.extend(rows.target);
    }
    Ok((ids, source, target))
}

/// Reads a pair's merged sums from bytes, saying which pair on failure.
pub fn sums_from(plan: &Plan, p: PairId, bytes: &[u8]) -> anyhow::Result<SimilaritySums> {
    SimilaritySums::from_bytes(bytes, tch::Device::Cpu)
        .map_err(|e| anyhow::anyhow!("pair {}: similarity sums: {e}", plan.pair(p).key))
}

/// A pair's moments over the shards a run sums, merged in shard order as the shards' partial
/// sums arrive (whatever order the workers send them in), so that a run holds one pair's
/// total and the shards that came early, not every shard's sums.
pub struct MomentsInOrder {
    /// The shards still to merge, in order.
    expected: std::collections::VecDeque<ShardId>,
    /// Shards that came before one they follow.
    early: std::collections::BTreeMap<ShardId, Vec<u8>>,
    total: Option<Result<SimilaritySums, String>>,
}

impl MomentsInOrder {
    pub fn new(expected: Vec<ShardId>) -> MomentsInOrder {
        MomentsInOrder {
            expected: expected.into(),
            early: Default::default(),
            total: None,
        }
    }

    /// Takes shard `shard`'s moments; a shard not expected (summed already) is passed over.
    pub fn receive(&mut self, shard: ShardId, bytes: Vec<u8>) {
        if !self.expected.contains(&shard) {
            return;
        }
        self.early.insert(shard, bytes);
        while let Some(bytes) = self.expected.front().and_then(|s| self.early.remove(s)) {
            self.expected.pop_front();
            let part = SimilaritySums::from_bytes(&bytes, tch::Device::Cpu);
            self.total = Some(match (self.total.take(), part) {
                (Some(Ok(mut total)), Ok(part)) => {
                    total.merge(&part);
                    Ok(total)
                }
                (None, part) => part,
                (Some(Err(e)), _) | (_, Err(e)) => Err(e),
            });
        }
    }

    /// The moments over every shard received; an error if one did not come or was damaged.
    pub fn finish(self, plan: &Plan, p: PairId) -> anyhow::Result<Option<SimilaritySums>> {
        let key = &plan.pair(p).key;
        if let Some(missing) = self.expected.front() {
            anyhow::bail!(
                "pair {key}: the representation moments of {} never came",
                plan.shard(*missing).path.display()
            );
        }
        self.total
            .transpose()
            .map_err(|e| anyhow::anyhow!("pair {key}: similarity sums: {e}"))
    }
}
