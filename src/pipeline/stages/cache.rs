//! The optional activation cache (`activation_cache = true`): the fit pass keeps each encoder's
//! pooled activations of each shard in `OUTPUT/activations/<encoder>/<shard file>` (the
//! "Activations" format), recorded as a unit, and every later pass reads them instead of running
//! the encoder again. It trades disk (N x the layers' widths x 4 bytes) for one encoder pass
//! instead of two; off, nothing of the activations touches the disk.

use std::path::PathBuf;

use crate::activations::{ActivationWriter, ActivationsMeta, LayerReader, LayerWidth};
use crate::digest::fingerprint;
use crate::encoder::EncodedRows;
use crate::ids::{EncoderId, ShardId};
use crate::pipeline::plan::{shard_key, Plan};
use crate::pipeline::units::Units;

fn file(plan: &Plan, e: EncoderId, shard: ShardId) -> PathBuf {
    plan.layout()
        .activations_file(&plan.encoder(e).name, &shard_key(plan.shard(shard)).0)
}

/// The unit name and fingerprint of an encoder's cached activations on a shard.
fn unit(plan: &Plan, e: EncoderId, shard: ShardId) -> (String, String) {
    let key = shard_key(plan.shard(shard));
    let encoder = plan.encoder(e);
    (
        format!("activations/{}/{}", encoder.name, key.0),
        fingerprint(&("activations", &encoder.sae_fingerprint, key)),
    )
}

/// Whether encoder `e`'s activations of `shard` are in the cache.
pub fn is_cached(plan: &Plan, units: &Units, e: EncoderId, shard: ShardId) -> bool {
    plan.study.activation_cache && {
        let (unit, fingerprint) = unit(plan, e, shard);
        plan.is_done_on_shard(units, &unit, &fingerprint, shard)
    }
}

/// Writes encoder `e`'s activations of `shard` and records them.
pub fn write(plan: &Plan, e: EncoderId, shard: ShardId, rows: &EncodedRows) -> anyhow::Result<()> {
    let path = file(plan, e, shard);
    write_rows(plan, e, &path, rows, 0..rows.sample_ids.len())?;
    let (unit, fingerprint) = unit(plan, e, shard);
    let detail = serde_json::json!({ "samples": rows.sample_ids.len(), "skipped": rows.skipped });
    let detail = plan.shard_detail(shard, detail);
    Units::new(&plan.output).record(&unit, &fingerprint, detail, &[path])
}

/// Writes encoder `e`'s pooled `rows` to an activation file at `path`, the rows in `order`.
pub fn write_rows(
    plan: &Plan,
    e: EncoderId,
    path: &std::path::Path,
    rows: &EncodedRows,
    order: impl Iterator<Item = usize>,
) -> anyhow::Result<()> {
    let encoder = plan.encoder(e);
    let names = encoder.layer_names();
    let widths: Vec<usize> = encoder
        .layers
        .iter()
        .map(|&l| encoder.manifest.layers[l].width)
        .collect();
    let meta = ActivationsMeta {
        encoder: encoder.name.clone(),
        pooling: format!("{:?}", encoder.pooling).to_lowercase(),
        layers: names
            .iter()
            .zip(&widths)
            .map(|(name, &width)| LayerWidth {
                name: name.clone(),
                width,
            })
            .collect(),
        input_size: encoder.manifest.input_size_at(encoder.image_size),
        precision: encoder.precision,
    };
    std::fs::create_dir_all(path.parent().expect("in a folder"))?;
    let mut writer = ActivationWriter::create(path, meta)?;
    for i in order {
        for (l, values) in rows.layers.iter().enumerate() {
            let id = rows.sample_ids[i];
            writer.push(id, &names[l], &values[i * widths[l]..(i + 1) * widths[l]])?;
        }
    }
    writer.finish()?;
    Ok(())
}

/// Reads encoder `e`'s cached activations of `shard`, rows in the order they were encoded.
pub fn read(plan: &Plan, e: EncoderId, shard: ShardId) -> anyhow::Result<EncodedRows> {
    let path = file(plan, e, shard);
    let mut rows = EncodedRows::default();
    for (l, name) in plan.encoder(e).layer_names().iter().enumerate() {
        let mut values = Vec::new();
        for batch in LayerReader::open(&path, name, 4096)? {
            let batch = batch?;
            if l == 0 {
                rows.sample_ids.extend(&batch.sample_ids);
            }
            values.extend(batch.values);
        }
        rows.layers.push(values);
    }
    Ok(rows)
}
