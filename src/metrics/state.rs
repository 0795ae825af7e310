//! `compare --state DIR`: the co-activation accumulators of a comparison kept on disk, so a
//! later run adds new shards of the same layers without reading the old ones again.
//!
//! `DIR` holds [`SavedSums`] (`state-N/` folders, as the pipeline keeps a pair's sums): the
//! fingerprint and the description of the compared layers, every codes file added so far
//! (`shards`: canonical path, samples, bytes) and one accumulator file per layer pair. A run
//! with other layers, or with a file already added, is refused before reading anything.
//!
//! States of earlier versions (`DIR/state.json` with a `version`, accumulators
//! `DIR/g<g>-<a>-<b>.coact`) are read as they are; the next save writes a `state-N/` folder and
//! then deletes the old `state.json` and the accumulator files it read.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::codes::{CodesMeta, CodesReader};
use crate::stats::{AlignReport, CoactivationAccumulator, SavedSums, SumsSide, SumsSides};

use super::MetricsError;
use crate::file_error::FileError;

/// The `state.json` of the earlier layout, in `DIR` itself.
const LEGACY_MANIFEST: &str = "state.json";
const LEGACY_VERSION: u32 = 1;

fn side(metas: &[CodesMeta]) -> SumsSide {
    SumsSide {
        encoder: metas[0].encoder.clone(),
        layers: metas.iter().map(|m| (m.layer.clone(), m.d_sae)).collect(),
    }
}

/// A state of the earlier layout: `DIR/state.json` and `DIR/g<g>-<a>-<b>.coact`.
#[derive(Debug, Deserialize)]
struct Legacy {
    version: u32,
    generation: u64,
    source: SumsSide,
    target: SumsSide,
    /// Every codes file merged (canonical paths).
    inputs: Vec<PathBuf>,
}

impl Legacy {
    fn file(&self, dir: &Path, a: usize, b: usize) -> PathBuf {
        dir.join(format!("g{}-{a}-{b}.coact", self.generation))
    }

    /// The state of the earlier layout in `dir`, if there is one.
    fn read(dir: &Path) -> Result<Option<Legacy>, MetricsError> {
        let path = dir.join(LEGACY_MANIFEST);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FileError::io(&path)(e).into()),
        };
        let wrong = |problem: String| MetricsError::from(FileError::wrong_schema(&path, problem));
        let legacy: Legacy = serde_json::from_slice(&bytes)
            .map_err(|e| wrong(format!("not a compare state: {e}")))?;
        if legacy.version != LEGACY_VERSION {
            return Err(wrong(format!(
                "state version {} (this saeshare reads {LEGACY_VERSION})",
                legacy.version
            )));
        }
        Ok(Some(legacy))
    }

    fn sides(&self) -> SumsSides {
        SumsSides {
            source: self.source.clone(),
            target: self.target.clone(),
        }
    }

    /// Deletes the files of this state: its accumulators, then its `state.json`.
    fn remove(&self, dir: &Path, sources: usize, targets: usize) {
        let files = (0..sources).flat_map(|a| (0..targets).map(move |b| (a, b)));
        let files = files.map(|(a, b)| self.file(dir, a, b));
        for path in files.chain([dir.join(LEGACY_MANIFEST)]) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    "could not delete the old state file {}: {e}",
                    path.display()
                ),
            }
        }
    }
}

/// A state folder checked against a run before the run reads its files.
pub(crate) struct State {
    dir: PathBuf,
    /// The state this run adds to, if any.
    previous: Option<SavedSums>,
    /// A state of the earlier layout: added to when there is no `previous`, deleted after the
    /// save either way (with a `previous`, it was migrated by a run that stopped before
    /// deleting it).
    legacy: Option<Legacy>,
    /// The state to save: the previous one's inputs and this run's.
    new: SavedSums,
}

/// Opens the state in `dir` for a run comparing `source` with `target` layers from the files
/// `inputs`: refuses other layers, files already added, and saved sums that cannot be read.
pub(crate) fn open(
    dir: &Path,
    source: &[CodesMeta],
    target: &[CodesMeta],
    inputs: &[PathBuf],
) -> Result<State, MetricsError> {
    let sides = SumsSides {
        source: side(source),
        target: side(target),
    };
    let mut new = SavedSums::new(sides.fingerprint());
    new.sides = Some(sides);
    let previous = SavedSums::read(dir)?;
    let mut legacy = Legacy::read(dir)?;
    if let Some(previous) = &previous {
        check_sides(&previous.dir(dir), previous, &new)?;
        if let Some(problem) = previous.problem(dir) {
            return Err(MetricsError::BadInput(format!(
                "{}: the saved sums cannot be added to: {problem}",
                previous.dir(dir).display()
            )));
        }
        // An earlier layout's state is a leftover of the migration only if the new state
        // summed all it did; otherwise it is not this state's to delete.
        legacy = legacy.filter(|l| {
            let leftover = l.inputs.iter().all(|p| previous.has(&p.to_string_lossy()));
            if !leftover {
                tracing::warn!(
                    "{} is a compare state of an earlier version that {} did not add up; it is left as it is",
                    dir.join(LEGACY_MANIFEST).display(),
                    previous.dir(dir).display()
                );
            }
            leftover
        });
        new.shards = previous.shards.clone();
        new.samples = previous.samples;
        new.dropped = previous.dropped;
    } else if let Some(old) = &legacy {
        let mut described = SavedSums::new(old.sides().fingerprint());
        described.sides = Some(old.sides());
        check_sides(&dir.join(LEGACY_MANIFEST), &described, &new)?;
        for input in &old.inputs {
            let bytes = std::fs::metadata(input).map_or(0, |m| m.len());
            new.shards
                .push((input.to_string_lossy().into_owned(), 0, bytes));
        }
    }
    let added = new.shards.len();
    for input in inputs {
        let path = input.canonicalize().map_err(FileError::io(input))?;
        let name = path.to_string_lossy().into_owned();
        if new.shards[..added].iter().any(|s| s.0 == name) {
            return Err(MetricsError::BadInput(format!(
                "{}: {} was already added to this state; its samples would count twice",
                dir.display(),
                path.display()
            )));
        }
        if new.has(&name) {
            // Given twice in this run (a layer compared with itself): listed once.
            continue;
        }
        let samples = CodesReader::open(&path)?.samples().unwrap_or(0);
        new.shards.push((name, samples, size(&path)));
    }
    Ok(State {
        dir: dir.to_path_buf(),
        previous,
        legacy,
        new,
    })
}

/// Adds the saved accumulators (if any) to this run's `accumulators`, `[source layer][target
/// layer]`, saves the sums and returns them.
pub(crate) fn merge_and_save(
    state: State,
    mut accumulators: Vec<Vec<CoactivationAccumulator>>,
    report: &AlignReport,
) -> Result<Vec<Vec<CoactivationAccumulator>>, MetricsError> {
    let State {
        dir,
        previous,
        legacy,
        mut new,
    } = state;
    let dir = dir.as_path();
    let (sources, targets) = (accumulators.len(), accumulators[0].len());
    let saved = match (&previous, &legacy) {
        (Some(previous), _) => Some(previous.load_accumulators(dir, sources, targets)?),
        (None, Some(old)) => Some(
            (0..sources)
                .map(|a| {
                    (0..targets)
                        .map(|b| CoactivationAccumulator::load(&old.file(dir, a, b)))
                        .collect()
                })
                .collect::<Result<Vec<Vec<_>>, _>>()?,
        ),
        (None, None) => None,
    };
    if let Some(saved) = saved {
        for (row, saved_row) in accumulators.iter_mut().zip(saved) {
            for (acc, mut saved) in row.iter_mut().zip(saved_row) {
                saved.merge(acc)?;
                // This run's threads for MPPC, not the defaults a loaded accumulator gets.
                saved.set_options(acc.options());
                *acc = saved;
            }
        }
    }
    // Every sample summed, this run's and earlier runs' (which the earlier layout did not count
    // apart from the sums).
    new.samples = accumulators[0][0].samples();
    new.dropped += report.dropped;
    new.save(dir, &accumulators)?;
    if let Some(previous) = &previous {
        previous.remove(dir);
    }
    if let Some(old) = &legacy {
        old.remove(dir, sources, targets);
    }
    Ok(accumulators)
}

/// Refuses a run whose layers are not those of the saved sums `saved` (in `path`).
fn check_sides(path: &Path, saved: &SavedSums, now: &SavedSums) -> Result<(), MetricsError> {
    if saved.fingerprint == now.fingerprint {
        return Ok(());
    }
    let now = now.sides.as_ref().expect("a compare state names its sides");
    let Some(was) = &saved.sides else {
        return Err(MetricsError::BadInput(format!(
            "{}: the state holds sums of other inputs (fingerprint {}), not of the --source {} layers {:?} and --target {} layers {:?} this run gives; give the same layers in the same order, or another --state",
            path.display(),
            saved.fingerprint,
            now.source.encoder,
            now.source.layers,
            now.target.encoder,
            now.target.layers
        )));
    };
    for (flag, was, now) in [
        ("--source", &was.source, &now.source),
        ("--target", &was.target, &now.target),
    ] {
        if was != now {
            return Err(MetricsError::BadInput(format!(
                "{}: the state holds {flag} {} layers {:?} (name, features), this run gives {} layers {:?}; give the same layers in the same order, or another --state",
                path.display(),
                was.encoder,
                was.layers,
                now.encoder,
                now.layers
            )));
        }
    }
    Err(MetricsError::BadInput(format!(
        "{}: the state's fingerprint {} is not the one of its layers, which are this run's; give the same layers in the same order, or another --state",
        path.display(),
        saved.fingerprint,
    )))
}

/// The bytes of a codes file, or of the files in a folder of them.
fn size(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}
