//! Co-activation sums kept on disk, so that a later run adds new inputs without reading the old
//! ones again: the pipeline's pair states (`pairs/<pair>/state-N/`) and `compare --state DIR`.
//!
//! A folder holds `state-N/` folders, the highest N current. Each holds one accumulator file per
//! (source layer, target layer), `acc-<a>-<b>.coact` ([`CoactivationAccumulator::save`]), and
//! `state.json`: what was compared (`fingerprint`), `generation` N, what was summed (`shards`:
//! name, rows, bytes), `samples`, `dropped`, and the accumulator files as written (`files`: path
//! in the folder, size, SHA-256). A state is written whole into a temporary folder and renamed
//! into place; a run killed at any point leaves the previous state whole. The state it replaced
//! is removed afterwards ([`SavedSums::remove`]): only the files it lists.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{CoactivationAccumulator, StatsError};
use crate::atomic::AtomicDir;
use crate::digest::{remove_made, MadeFile};
use crate::file_error::FileError;

/// The file in a `state-N/` folder that describes it.
pub const STATE_FILE: &str = "state.json";

/// One side of compared sums: the encoder and its `(layer, d_sae)` in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumsSide {
    pub encoder: String,
    pub layers: Vec<(String, u32)>,
}

/// What sums compare, in words a message can give: both sides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumsSides {
    pub source: SumsSide,
    pub target: SumsSide,
}

impl SumsSides {
    /// The fingerprint of sums of these sides: [`crate::digest::fingerprint`] of both sides'
    /// `(encoder, [(layer, d_sae)])`.
    pub fn fingerprint(&self) -> String {
        let side = |s: &SumsSide| (s.encoder.clone(), s.layers.clone());
        crate::digest::fingerprint(&(side(&self.source), side(&self.target)))
    }
}

/// Accumulated co-activation sums as saved: one `state-N/` folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedSums {
    /// What was compared: sums are built on only by a run with the same fingerprint.
    pub fingerprint: String,
    /// N of `state-N/`.
    pub generation: u64,
    /// What was summed, `(name, rows, bytes)`: the pipeline's shards (as its plan names them),
    /// `compare --state`'s codes files (canonical path, samples or 0, bytes). Nothing is summed
    /// twice.
    pub shards: Vec<(String, u64, u64)>,
    /// The SHA-256 of each summed shard's file, by name (the pipeline's; absent in states of
    /// older versions and in `compare --state`'s): a shard rewritten under its name, with as
    /// many rows and bytes, is told from the one summed.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub contents: std::collections::BTreeMap<String, String>,
    /// Samples summed.
    pub samples: u64,
    /// Samples left out (in one stream but not another).
    pub dropped: u64,
    /// The accumulator files of this state, relative to its folder, as written (absent in
    /// states of older versions).
    #[serde(default)]
    pub files: Vec<MadeFile>,
    /// What the sums compare, for messages (`compare --state`; absent in the pipeline's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sides: Option<SumsSides>,
}

impl SavedSums {
    /// Sums of nothing yet, comparing what `fingerprint` names.
    pub fn new(fingerprint: String) -> SavedSums {
        SavedSums {
            fingerprint,
            generation: 0,
            shards: Vec::new(),
            contents: Default::default(),
            samples: 0,
            dropped: 0,
            files: Vec::new(),
            sides: None,
        }
    }

    /// The newest state saved in `dir`, if one is there and readable; one that cannot be read
    /// is logged and taken for none.
    pub fn latest(dir: &Path) -> Option<SavedSums> {
        match SavedSums::read(dir) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!("{e}; the sums start anew");
                None
            }
        }
    }

    /// The newest state saved in `dir`: `None` when there is no `state-N/` folder, an error when
    /// the newest one's `state.json` cannot be read.
    pub fn read(dir: &Path) -> Result<Option<SavedSums>, StatsError> {
        let Some(newest) = newest_generation(dir) else {
            return Ok(None);
        };
        let path = state_dir(dir, newest).join(STATE_FILE);
        let text = std::fs::read(&path).map_err(FileError::io(&path))?;
        let state = serde_json::from_slice(&text)
            .map_err(|e| FileError::wrong_schema(&path, format!("not a saved state: {e}")))?;
        Ok(Some(state))
    }

    /// Why this state's accumulators cannot be built on, if they cannot: a file lost,
    /// truncated or changed since it was written.
    pub fn problem(&self, dir: &Path) -> Option<String> {
        let state_dir = self.dir(dir);
        self.files.iter().find_map(|f| f.problem(&state_dir))
    }

    /// This state's folder in `dir`.
    pub fn dir(&self, dir: &Path) -> PathBuf {
        state_dir(dir, self.generation)
    }

    /// Whether the input `name` is summed already.
    pub fn has(&self, name: &str) -> bool {
        self.shards.iter().any(|s| s.0 == name)
    }

    /// The saved accumulators, `[source layer][target layer]`, `sources` by `targets`.
    pub fn load_accumulators(
        &self,
        dir: &Path,
        sources: usize,
        targets: usize,
    ) -> Result<Vec<Vec<CoactivationAccumulator>>, StatsError> {
        let state_dir = self.dir(dir);
        (0..sources)
            .map(|a| {
                (0..targets)
                    .map(|b| CoactivationAccumulator::load(&accumulator_file(&state_dir, a, b)))
                    .collect()
            })
            .collect()
    }

    /// Saves `accumulators` (`[source layer][target layer]`) with this description as a new
    /// state in `dir`, above every `state-N/` folder there (even one whose `state.json` cannot
    /// be read), written whole and renamed into place. Sets this description's `generation`
    /// and `files` to the saved state's.
    pub fn save(
        &mut self,
        dir: &Path,
        accumulators: &[Vec<CoactivationAccumulator>],
    ) -> Result<(), StatsError> {
        self.save_with(dir, accumulators, &[])
    }

    /// [`SavedSums::save`], with other sums of the same inputs as named files beside the
    /// accumulators (listed, checked and removed with them; read with [`SavedSums::extra`]).
    pub fn save_with(
        &mut self,
        dir: &Path,
        accumulators: &[Vec<CoactivationAccumulator>],
        extras: &[(&str, &[u8])],
    ) -> Result<(), StatsError> {
        std::fs::create_dir_all(dir).map_err(FileError::io(dir))?;
        self.generation = newest_generation(dir).map_or(0, |g| g + 1);
        let target = self.dir(dir);
        let temp = AtomicDir::create(&target).map_err(FileError::io(dir))?;
        self.files.clear();
        for (a, row) in accumulators.iter().enumerate() {
            for (b, acc) in row.iter().enumerate() {
                let file = accumulator_file(temp.path(), a, b);
                acc.save(&file)?;
                self.files.push(MadeFile::of(temp.path(), &file)?);
            }
        }
        for (name, bytes) in extras {
            let file = temp.path().join(name);
            std::fs::write(&file, bytes).map_err(FileError::io(&file))?;
            self.files.push(MadeFile::of(temp.path(), &file)?);
        }
        let json = temp.path().join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(self).expect("plain data serialises");
        std::fs::write(&json, bytes).map_err(FileError::io(&json))?;
        temp.commit().map_err(FileError::io(&target))?;
        Ok(())
    }

    /// The file `name` saved beside the accumulators by [`SavedSums::save_with`], if this state
    /// lists it.
    pub fn extra(&self, dir: &Path, name: &str) -> Result<Option<Vec<u8>>, StatsError> {
        if !self.files.iter().any(|f| f.path == name) {
            return Ok(None);
        }
        let path = self.dir(dir).join(name);
        Ok(Some(std::fs::read(&path).map_err(FileError::io(&path))?))
    }

    /// Deletes this (replaced) state from `dir`: its accumulator files, its `state.json`, then
    /// its folder if that left it empty. Nothing else in it is touched; a failure is logged.
    pub fn remove(&self, dir: &Path) {
        let state_dir = self.dir(dir);
        remove_made(&state_dir, Path::new(""), &self.files);
        let json = state_dir.join(STATE_FILE);
        if let Err(e) = std::fs::remove_file(&json) {
            tracing::warn!("could not delete the replaced {}: {e}", json.display());
        }
        let _ = std::fs::remove_dir(&state_dir);
    }
}

fn state_dir(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("state-{generation}"))
}

fn accumulator_file(state_dir: &Path, a: usize, b: usize) -> PathBuf {
    state_dir.join(format!("acc-{a}-{b}.coact"))
}

/// The highest N of the `state-N/` folders in `dir`, readable or not.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::SparseCode;

    fn accumulators(samples: u64) -> Vec<Vec<CoactivationAccumulator>> {
        let mut acc = CoactivationAccumulator::new(3, 2);
        for s in 0..samples {
            let code = |features, values| SparseCode {
                sample_id: s,
                features,
                values,
            };
            acc.add(
                &code(&[s as u32 % 3], &[1.0]),
                &code(&[s as u32 % 2], &[2.0]),
            );
        }
        vec![vec![acc.clone(), acc]]
    }

    #[test]
    fn a_save_goes_above_every_state_folder_and_the_replaced_one_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        assert!(SavedSums::read(dir).unwrap().is_none());
        let mut first = SavedSums::new("f".into());
        first.shards.push(("a".into(), 4, 10));
        first.save(dir, &accumulators(4)).unwrap();
        assert_eq!(first.generation, 0);
        let read = SavedSums::latest(dir).unwrap();
        assert_eq!((read.generation, read.files.len()), (0, 2));
        assert!(read.problem(dir).is_none());
        assert!(read.has("a") && !read.has("b"));
        let loaded = read.load_accumulators(dir, 1, 2).unwrap();
        assert_eq!(loaded[0][1].samples(), 4);

        // An unreadable state-5 is above: the next save goes to state-6.
        std::fs::create_dir(dir.join("state-5")).unwrap();
        assert!(SavedSums::read(dir).is_err());
        assert!(SavedSums::latest(dir).is_none());
        let mut second = read.clone();
        second.save(dir, &accumulators(6)).unwrap();
        assert_eq!(second.generation, 6);
        read.remove(dir);
        assert!(!dir.join("state-0").exists());
        assert_eq!(SavedSums::latest(dir).unwrap().generation, 6);

        // A changed accumulator file is a problem.
        std::fs::write(dir.join("state-6/acc-0-1.coact"), b"x").unwrap();
        assert!(second.problem(dir).unwrap().contains("acc-0-1.coact"));
    }

    #[test]
    fn the_sides_are_written_only_when_given() {
        let plain = serde_json::to_string(&SavedSums::new("f".into())).unwrap();
        assert!(!plain.contains("sides"), "{plain}");
        let side = |e: &str| SumsSide {
            encoder: e.into(),
            layers: vec![("l0".into(), 8)],
        };
        let sides = SumsSides {
            source: side("A"),
            target: side("B"),
        };
        let mut state = SavedSums::new(sides.fingerprint());
        state.sides = Some(sides.clone());
        let text = serde_json::to_string(&state).unwrap();
        let back: SavedSums = serde_json::from_str(&text).unwrap();
        assert_eq!(back.sides, Some(sides));
    }
}
