//! What each shard of a study's dataset holds, by its bytes: the SHA-256 of its file.
//!
//! A shard's name, rows and size (`plan::shard_key`) tell shards apart cheaply, but a shard
//! rewritten under the same name with as many rows (other captions, other images) can keep
//! them, or keep its size by chance. Work made from a shard (its codes, its cached
//! activations, a pair's sums, the SAEs fitted on it) records the shard's digest, and work
//! whose shard no longer has it is redone. Hashing every shard on every run would read the
//! whole dataset, so the digests are kept in the run folder (`shard-contents.json`) with each
//! file's size and modification time, and a shard is hashed again only when one of them
//! changed: the rule git's index follows for the files of a work tree.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::UNIX_EPOCH;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dataset::{Dataset, ShardInfo};
use crate::ids::ShardId;

/// What the cache file holds: per shard file name, what it was when hashed.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ContentsFile {
    /// Always "saeshare shard contents".
    what: String,
    shards: BTreeMap<String, HashedShard>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct HashedShard {
    bytes: u64,
    modified_ns: u128,
    /// When it was hashed: an entry hashed within [`RACY`] of the file's modification can
    /// miss a rewrite in the same tick of a coarse clock, and is hashed again.
    #[serde(default)]
    hashed_ns: u128,
    sha256: String,
}

/// How close to a file's modification a hash is not trusted to have seen its final bytes (git
/// calls such index entries racy).
const RACY: u128 = 2_000_000_000;

/// The SHA-256 of every shard of a dataset, in the dataset's order.
#[derive(Clone, Debug)]
pub struct ShardContents {
    hashed: Vec<(String, HashedShard)>,
    /// Shards hashed anew (not found in the cache as they are).
    pub hashed_now: usize,
}

impl ShardContents {
    /// Every shard's digest: from the cache file `cache` where the shard's size and
    /// modification time are as cached, else read and hashed (in parallel).
    pub fn of(dataset: &Dataset, cache: &Path) -> anyhow::Result<ShardContents> {
        let cached = read_cache(cache);
        let hashed: Vec<anyhow::Result<(String, HashedShard, bool)>> = dataset
            .shards()
            .par_iter()
            .map(|shard| {
                let name = shard_file_name(shard);
                let (bytes, modified_ns) = stat(&shard.path)?;
                if let Some(known) = cached.shards.get(&name) {
                    let settled = known.hashed_ns > known.modified_ns + RACY;
                    if known.bytes == bytes && known.modified_ns == modified_ns && settled {
                        return Ok((name, known.clone(), false));
                    }
                }
                let hashed_ns = now_ns();
                let sha256 = hash(&shard.path)?;
                let entry = HashedShard {
                    bytes,
                    modified_ns,
                    hashed_ns,
                    sha256,
                };
                Ok((name, entry, true))
            })
            .collect();
        let mut contents = ShardContents {
            hashed: Vec::with_capacity(hashed.len()),
            hashed_now: 0,
        };
        for result in hashed {
            let (name, entry, now) = result?;
            contents.hashed_now += usize::from(now);
            contents.hashed.push((name, entry));
        }
        Ok(contents)
    }

    /// The SHA-256 (hex) of shard `s`'s file.
    pub fn digest(&self, s: ShardId) -> &str {
        &self.hashed[s.index()].1.sha256
    }

    /// Writes the digests to `cache` (whole, through a temporary file), keeping the entries of
    /// shards this dataset does not have (a study on part of a dataset shares the folder).
    pub fn save(&self, cache: &Path) -> anyhow::Result<()> {
        let mut file = read_cache(cache);
        file.what = "saeshare shard contents".to_string();
        for (name, entry) in &self.hashed {
            file.shards.insert(name.clone(), entry.clone());
        }
        crate::atomic::write(cache, &serde_json::to_vec_pretty(&file)?)
    }
}

/// A shard's file name, as the run folder's records name it.
pub fn shard_file_name(shard: &ShardInfo) -> String {
    shard
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("shard-{}", shard.index))
}

fn read_cache(cache: &Path) -> ContentsFile {
    match std::fs::read(cache) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(
                "{} cannot be read ({e}); every shard is hashed again",
                cache.display()
            );
            ContentsFile::default()
        }),
        Err(_) => ContentsFile::default(),
    }
}

fn stat(path: &Path) -> anyhow::Result<(u64, u128)> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("reading the shard {}: {e}", path.display()))?;
    let modified = (meta.modified().ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok((meta.len(), modified))
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn hash(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("reading the shard {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .map_err(|e| anyhow::anyhow!("reading the shard {}: {e}", path.display()))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{DatasetWriter, NewRow, WriterOptions};

    /// Shards of `per_shard` rows of one tiny image each.
    fn write_shards(dir: &Path, rows: usize, per_shard: usize) {
        let options = WriterOptions::new(per_shard, "test");
        let mut writer = DatasetWriter::create(dir, options).unwrap();
        for i in 0..rows {
            let caption = format!("caption {i}");
            writer
                .push(NewRow {
                    image: vec![1, 2, 3],
                    caption,
                    extra: Vec::new(),
                })
                .unwrap();
        }
        writer.finish().unwrap();
    }

    #[test]
    fn a_shard_rewritten_with_the_same_rows_and_size_gets_another_digest() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        write_shards(&data, 3, 2);
        let cache = dir.path().join("contents.json");
        let dataset = Dataset::open(&data).unwrap();
        // Written an hour ago: a hash now is not racy with the writes.
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for shard in dataset.shards() {
            let file = std::fs::File::options()
                .write(true)
                .open(&shard.path)
                .unwrap();
            file.set_modified(hour_ago).unwrap();
        }
        let first = ShardContents::of(&dataset, &cache).unwrap();
        assert_eq!(first.hashed_now, 2);
        first.save(&cache).unwrap();
        let again = ShardContents::of(&dataset, &cache).unwrap();
        assert_eq!(
            again.hashed_now, 0,
            "the cache answers for unchanged shards"
        );
        assert_eq!(again.digest(ShardId::new(0)), first.digest(ShardId::new(0)));

        // The same bytes but one, same size: only a digest tells it.
        let path = dataset.shards()[0].path.clone();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let changed = ShardContents::of(&dataset, &cache).unwrap();
        changed.save(&cache).unwrap();
        assert_eq!(changed.hashed_now, 1);
        assert_ne!(
            changed.digest(ShardId::new(0)),
            first.digest(ShardId::new(0))
        );
        assert_eq!(
            changed.digest(ShardId::new(1)),
            first.digest(ShardId::new(1))
        );
    }
}
