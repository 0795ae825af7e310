//! The pair owner's half of the compare pass: a pair's per-shard sums merged, in shard order,
//! into its saved state (`state-N/`, written whole and renamed), then MPPC with the floor
//! baseline and the pair's tables.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::compare::{codes_meta, pair_files, CompareWork, OwnedPairs, PairPartial};
use super::plan::{shard_key, Plan};
use super::units::{remove_made, MadeFile, Units};
use crate::codes::{CodeBatch, CodesMeta, CodesReader};
use crate::metrics::{compare_accumulated, tables, CompareOptions};
use crate::stats::{align, AlignReport, CoactivationAccumulator, MissingSamples};

/// A pair's accumulated sums as saved: `state-N/` folders, the newest complete one current.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairState {
    pub fingerprint: String,
    pub generation: u64,
    /// The shards summed, as [`shard_key`] names them.
    pub shards: Vec<(String, u64, u64)>,
    pub samples: u64,
    pub dropped: u64,
    /// The accumulator files of this state, relative to its folder, as written (absent in
    /// states of older versions).
    #[serde(default)]
    pub files: Vec<MadeFile>,
}

impl PairState {
    /// The newest saved state of the pair in `dir`.
    pub fn latest(dir: &Path) -> Option<PairState> {
        let newest = newest_generation(dir)?;
        let path = dir.join(format!("state-{newest}")).join("state.json");
        let text = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&text) {
            Ok(state) => Some(state),
            Err(e) => {
                tracing::warn!(
                    "{} cannot be read ({e}); the pair is summed anew",
                    path.display()
                );
                None
            }
        }
    }

    /// Why this state's accumulators cannot be built on, if they cannot: a file lost,
    /// truncated or changed since it was written.
    pub fn problem(&self, pair_dir: &Path) -> Option<String> {
        let dir = self.dir(pair_dir);
        self.files.iter().find_map(|f| f.problem(&dir))
    }

    fn dir(&self, pair_dir: &Path) -> PathBuf {
        pair_dir.join(format!("state-{}", self.generation))
    }
}

/// The highest N of the `state-N/` folders in a pair's folder, readable or not.
fn newest_generation(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("state-")?.parse::<u64>().ok()
        })
        .max()
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
        finish_pair(plan, p, partials, work.restart[p])
            .with_context(|| format!("comparing pair {}", plan.pairs[p].key))?;
        done += 1;
    }
    Ok(done)
}

/// Merges `partials` into the pair's state (a new one when `restart`: its SAEs were fitted
/// anew, or its saved state is damaged), saves it, and writes the pair's tables.
fn finish_pair(
    plan: &Plan,
    p: usize,
    mut partials: Vec<PairPartial>,
    restart: bool,
) -> anyhow::Result<()> {
    let pair = &plan.pairs[p];
    let dir = plan.pair_dir(p);
    let (l_a, l_b) = (pair.source_layers.len(), pair.target_layers.len());
    // The newest state, whatever it summed; it is built on only if it summed the same codes.
    let newest = PairState::latest(&dir);
    let fingerprint = plan.pair_fingerprint(p);
    let previous = newest
        .clone()
        .filter(|s| !restart && s.fingerprint == fingerprint);
    let mut state = previous.clone().unwrap_or(PairState {
        fingerprint,
        generation: 0,
        shards: Vec::new(),
        samples: 0,
        dropped: 0,
        files: Vec::new(),
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
    // A shard is summed into a pair once, whatever led to it being offered again.
    partials.retain(|partial| {
        let key = shard_key(&plan.dataset.shards()[partial.shard as usize]);
        let summed = state.shards.contains(&key);
        if summed {
            tracing::warn!(
                "pair {}: shard {} is summed already; not adding it again",
                pair.key,
                key.0
            );
        }
        !summed
    });
    let first_dropped = partials.iter().find_map(|p| p.first_dropped.clone());
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
        // Above every state folder there is, even one whose state.json cannot be read.
        state.generation = newest_generation(&dir).map_or(0, |g| g + 1);
        save_state(&dir, &state, &accumulators)?;
        if let Some(newest) = &newest {
            // Only the state folder this run replaced, which saeshare itself made.
            remove_state(&dir, newest);
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
        first_dropped,
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
        &[
            dir.join(tables::MPPC_FILE),
            dir.join(tables::WMPPC_FILE),
            dir.join(tables::FEATURES_FILE),
        ],
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

/// Deletes a replaced `state-N/` folder: its accumulator files, its `state.json`, then the
/// folder if that left it empty. Nothing else in it is touched.
fn remove_state(pair_dir: &Path, state: &PairState) {
    let dir = state.dir(pair_dir);
    remove_made(&dir, Path::new(""), &state.files);
    let json = dir.join("state.json");
    if let Err(e) = std::fs::remove_file(&json) {
        tracing::warn!("could not delete the replaced {}: {e}", json.display());
    }
    let _ = std::fs::remove_dir(&dir);
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
    let mut state = state.clone();
    state.files.clear();
    for (a, row) in accumulators.iter().enumerate() {
        for (b, acc) in row.iter().enumerate() {
            let file = accumulator_file(temp.path(), a, b);
            acc.save(&file)?;
            state.files.push(MadeFile::of(temp.path(), &file)?);
        }
    }
    std::fs::write(
        temp.path().join("state.json"),
        serde_json::to_vec_pretty(&state)?,
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
