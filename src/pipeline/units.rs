//! The manifest of finished work: one small JSON record per unit (an encoder's SAEs, an
//! encoder's codes on a shard, a pair's accumulators), written atomically by whichever worker
//! finished it, in `OUTPUT/units/`. A unit is done when its record exists with the fingerprint
//! the plan expects; a changed fingerprint means its inputs changed and it runs again.
//!
//! One file per unit, rather than one shared file, lets workers of several processes record
//! what they finish without coordinating, and a run killed at any point loses at most the
//! units in progress.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub use crate::digest::{remove_made, MadeFile};

/// What a unit's record says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UnitRecord {
    pub unit: String,
    pub fingerprint: String,
    /// Anything the unit wants to remember (counts, the shards a pair covers).
    #[serde(default)]
    pub detail: serde_json::Value,
    /// The files the unit made, as they were when it finished (absent in records of older
    /// versions, whose files are trusted as they are).
    #[serde(default)]
    pub files: Vec<MadeFile>,
}

/// The records of one output folder.
#[derive(Clone, Debug)]
pub struct Units {
    output: PathBuf,
    dir: PathBuf,
}

impl Units {
    /// The manifest of the study writing to `output`.
    pub fn new(output: &Path) -> Units {
        Units {
            output: output.to_path_buf(),
            dir: crate::run_layout::RunLayout::new(output).units(),
        }
    }

    /// The record of `unit`, if there is one (whatever its fingerprint). A record that cannot
    /// be read is no record: its unit runs again, and a warning says why.
    pub fn get(&self, unit: &str) -> Option<UnitRecord> {
        let path = self.path(unit);
        let text = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&text) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(
                    "the record {} cannot be read ({e}); its unit runs again",
                    path.display()
                );
                None
            }
        }
    }

    /// Whether `unit` finished with this fingerprint and every file it made is still as it
    /// was written. A file lost or damaged since is logged, and the unit is not done.
    pub fn is_done(&self, unit: &str, fingerprint: &str) -> bool {
        let Some(record) = self.get(unit).filter(|r| r.fingerprint == fingerprint) else {
            return false;
        };
        match record.files.iter().find_map(|f| f.problem(&self.output)) {
            None => true,
            Some(problem) => {
                tracing::warn!("unit {unit} is done, but {problem}; it runs again");
                false
            }
        }
    }

    /// Records `unit` as finished, with the files it made (temporary file, then rename).
    pub fn record(
        &self,
        unit: &str,
        fingerprint: &str,
        detail: serde_json::Value,
        files: &[PathBuf],
    ) -> anyhow::Result<()> {
        let path = self.path(unit);
        let dir = path.parent().expect("units live in a folder");
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        let record = UnitRecord {
            unit: unit.to_string(),
            fingerprint: fingerprint.to_string(),
            detail,
            files: files
                .iter()
                .map(|f| MadeFile::of(&self.output, f))
                .collect::<Result<_, _>>()?,
        };
        crate::atomic::write(&path, &serde_json::to_vec_pretty(&record)?)
    }

    /// Forgets `unit` (its inputs changed and what it made is being redone).
    pub fn forget(&self, unit: &str) {
        let _ = std::fs::remove_file(self.path(unit));
    }

    fn path(&self, unit: &str) -> PathBuf {
        self.dir.join(format!("{unit}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_is_done_only_with_the_fingerprint_it_was_recorded_with() {
        let dir = tempfile::tempdir().unwrap();
        let units = Units::new(dir.path());
        assert!(!units.is_done("codes/a/shard-0", "f1"));
        units
            .record("codes/a/shard-0", "f1", serde_json::json!({"rows": 3}), &[])
            .unwrap();
        assert!(units.is_done("codes/a/shard-0", "f1"));
        assert!(!units.is_done("codes/a/shard-0", "f2"));
        assert_eq!(units.get("codes/a/shard-0").unwrap().detail["rows"], 3);
        units.forget("codes/a/shard-0");
        assert!(units.get("codes/a/shard-0").is_none());
    }

    #[test]
    fn a_unit_whose_file_was_lost_truncated_or_changed_is_not_done() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("codes/a/l/shard-0.parquet");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"0123456789").unwrap();
        let units = Units::new(dir.path());
        units
            .record(
                "codes/a/shard-0",
                "f",
                serde_json::json!({}),
                std::slice::from_ref(&file),
            )
            .unwrap();
        assert!(units.is_done("codes/a/shard-0", "f"));
        std::fs::write(&file, b"0123456788").unwrap();
        assert!(
            !units.is_done("codes/a/shard-0", "f"),
            "same size, other bytes"
        );
        std::fs::write(&file, b"01234").unwrap();
        assert!(!units.is_done("codes/a/shard-0", "f"), "truncated");
        std::fs::remove_file(&file).unwrap();
        assert!(!units.is_done("codes/a/shard-0", "f"), "lost");
        std::fs::write(dir.path().join("units/codes/a/shard-0.json"), "[]").unwrap();
        assert!(
            units.get("codes/a/shard-0").is_none(),
            "an unreadable record is no record"
        );
    }
}
