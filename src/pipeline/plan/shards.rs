//! A shard as the work made from it remembers it, and the dataset's shards as a plan takes
//! them (empty ones left out).

use super::shard_contents::shard_file_name;
use crate::dataset::{Dataset, ShardInfo};

/// What identifies a shard cheaply: its file name, rows and bytes (its content is
/// [`ShardContents`](super::shard_contents::ShardContents)'s).
pub fn shard_key(shard: &ShardInfo) -> (String, u64, u64) {
    (shard_file_name(shard), shard.rows, shard.bytes)
}

/// `changes` said in one line for the log: the first, and how many others; `None` for none.
pub(in crate::pipeline) fn first_of_changes(changes: Vec<String>) -> Option<String> {
    let others = changes.len().saturating_sub(1);
    let first = changes.into_iter().next()?;
    Some(match others {
        0 => first,
        n => format!("{first}, and {n} other shard(s) changed"),
    })
}

/// The key in a unit's detail that holds the SHA-256 of the shard it was made from.
pub(super) const SHARD_SHA256: &str = "shard_sha256";

/// A shard as the work made from it remembers it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardIdentity {
    pub key: (String, u64, u64),
    pub sha256: String,
}

/// The dataset without its shards of no rows, each said in the log (they hold no sample to
/// encode, fit or compare); a dataset of nothing but empty shards is an error.
pub(super) fn without_empty_shards(dataset: Dataset) -> anyhow::Result<Dataset> {
    let shards = dataset.shards();
    let kept: Vec<usize> = (0..shards.len()).filter(|&i| shards[i].rows > 0).collect();
    if kept.len() == shards.len() {
        return Ok(dataset);
    }
    anyhow::ensure!(
        !kept.is_empty(),
        "the dataset {} has no rows: each of its {} shard(s) is empty; import rows into it \
         (`saeshare dataset import-... --append`) or name another dataset",
        dataset.dir().display(),
        shards.len()
    );
    for shard in shards.iter().filter(|s| s.rows == 0) {
        tracing::warn!(
            "{}: an empty shard (0 rows); left out",
            shard.path.display()
        );
    }
    // `select` numbers the kept shards again from 0, as the plan numbers them.
    Ok(dataset.select(&kept)?)
}
