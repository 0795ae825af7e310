//! `compare --state DIR`: the co-activation accumulators of a comparison kept on disk, so a
//! later run adds new shards of the same layers without reading the old ones again.
//!
//! `DIR/state.json` names the compared layers, the input files merged so far and a generation
//! `g`; the accumulators are `DIR/g<g>-<source layer index>-<target layer index>.coact`. A save
//! writes generation `g + 1` beside the old one, then replaces `state.json` (atomically), then
//! deletes generation `g`: a run killed at any point leaves a `state.json` whose files exist.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::codes::CodesMeta;
use crate::stats::CoactivationAccumulator;

use super::MetricsError;
use crate::atomic::AtomicFile;
use crate::file_error::FileError;

const MANIFEST: &str = "state.json";
const VERSION: u32 = 1;

/// One side of the comparison as the state records it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct SideState {
    encoder: String,
    /// `(layer, d_sae)` in the order of the `--source` / `--target` files.
    layers: Vec<(String, u32)>,
}

impl SideState {
    fn of(metas: &[CodesMeta]) -> Self {
        SideState {
            encoder: metas[0].encoder.clone(),
            layers: metas.iter().map(|m| (m.layer.clone(), m.d_sae)).collect(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    generation: u64,
    source: SideState,
    target: SideState,
    /// Every codes file merged so far (absolute paths): giving one again would count its
    /// samples twice.
    inputs: Vec<PathBuf>,
}

fn pair_file(dir: &Path, generation: u64, a: usize, b: usize) -> PathBuf {
    dir.join(format!("g{generation}-{a}-{b}.coact"))
}

/// A state folder checked against a run before the run reads its files.
pub(crate) struct State {
    dir: PathBuf,
    old: Option<Manifest>,
    new: Manifest,
}

/// Opens the state in `dir` for a run comparing `source` with `target` layers from the files
/// `inputs`: refuses other layers, and files already added.
pub(crate) fn open(
    dir: &Path,
    source: &[CodesMeta],
    target: &[CodesMeta],
    inputs: &[PathBuf],
) -> Result<State, MetricsError> {
    let manifest_path = dir.join(MANIFEST);
    let inputs: Vec<PathBuf> = inputs
        .iter()
        .map(|p| p.canonicalize().map_err(FileError::io(p)))
        .collect::<Result<_, _>>()?;
    let mut manifest = Manifest {
        version: VERSION,
        generation: 0,
        source: SideState::of(source),
        target: SideState::of(target),
        inputs: Vec::new(),
    };
    let old = match std::fs::read(&manifest_path) {
        Ok(bytes) => Some(read_manifest(&manifest_path, &bytes, &manifest)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(FileError::io(&manifest_path)(e).into()),
    };
    if let Some(old) = &old {
        if let Some(again) = inputs.iter().find(|p| old.inputs.contains(p)) {
            return Err(MetricsError::BadInput(format!(
                "{}: {} was already added to this state; its samples would count twice",
                manifest_path.display(),
                again.display()
            )));
        }
        manifest.generation = old.generation + 1;
        manifest.inputs = old.inputs.clone();
    }
    manifest.inputs.extend(inputs);
    Ok(State {
        dir: dir.to_path_buf(),
        old,
        new: manifest,
    })
}

/// Adds the saved accumulators (if any) to this run's `accumulators`, `[source layer][target
/// layer]`, saves the sums and returns them.
pub(crate) fn merge_and_save(
    state: State,
    mut accumulators: Vec<Vec<CoactivationAccumulator>>,
) -> Result<Vec<Vec<CoactivationAccumulator>>, MetricsError> {
    let State {
        dir,
        old,
        new: manifest,
    } = state;
    let dir = dir.as_path();
    std::fs::create_dir_all(dir).map_err(FileError::io(dir))?;
    if let Some(old) = &old {
        for (a, row) in accumulators.iter_mut().enumerate() {
            for (b, acc) in row.iter_mut().enumerate() {
                let mut saved =
                    CoactivationAccumulator::load(&pair_file(dir, old.generation, a, b))?;
                saved.merge(acc)?;
                *acc = saved;
            }
        }
    }

    for (a, row) in accumulators.iter().enumerate() {
        for (b, acc) in row.iter().enumerate() {
            acc.save(&pair_file(dir, manifest.generation, a, b))?;
        }
    }
    write_manifest(&dir.join(MANIFEST), &manifest)?;
    if let Some(old) = old {
        for (a, row) in accumulators.iter().enumerate() {
            for b in 0..row.len() {
                let path = pair_file(dir, old.generation, a, b);
                // A file left behind wastes space but breaks nothing: the manifest moved on.
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(
                        "could not delete the old state file {}: {e}",
                        path.display()
                    );
                }
            }
        }
    }
    Ok(accumulators)
}

/// Reads `state.json`, checking that it holds the comparison `expected` describes.
fn read_manifest(path: &Path, bytes: &[u8], expected: &Manifest) -> Result<Manifest, MetricsError> {
    let wrong = |problem: String| MetricsError::from(FileError::wrong_schema(path, problem));
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|e| wrong(format!("not a compare state: {e}")))?;
    if manifest.version != VERSION {
        return Err(wrong(format!(
            "state version {} (this saeshare reads {VERSION})",
            manifest.version
        )));
    }
    for (flag, saved, now) in [
        ("--source", &manifest.source, &expected.source),
        ("--target", &manifest.target, &expected.target),
    ] {
        if saved != now {
            return Err(MetricsError::BadInput(format!(
                "{}: the state holds {flag} {} layers {:?} (name, features), this run gives {} layers {:?}; give the same layers in the same order, or another --state",
                path.display(),
                saved.encoder,
                saved.layers,
                now.encoder,
                now.layers
            )));
        }
    }
    Ok(manifest)
}

fn write_manifest(path: &Path, manifest: &Manifest) -> Result<(), MetricsError> {
    let dir = path.parent().expect("inside the state folder");
    let mut file = AtomicFile::create(path).map_err(FileError::io(dir))?;
    serde_json::to_writer_pretty(&mut file, manifest).map_err(|e| FileError::io(path)(e.into()))?;
    file.commit().map_err(FileError::io(path))?;
    Ok(())
}
