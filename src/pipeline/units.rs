//! The manifest of finished work: one small JSON record per unit (an encoder's SAEs, an
//! encoder's codes on a shard, a pair's accumulators), written atomically by whichever worker
//! finished it, in `OUTPUT/units/`. A unit is done when its record exists with the fingerprint
//! the plan expects; a changed fingerprint means its inputs changed and it runs again.
//!
//! One file per unit, rather than one shared file, lets workers of several processes record
//! what they finish without coordinating, and a run killed at any point loses at most the
//! units in progress.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What a unit's record says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UnitRecord {
    pub unit: String,
    pub fingerprint: String,
    /// Anything the unit wants to remember (counts, the shards a pair covers).
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// The records of one output folder.
#[derive(Clone, Debug)]
pub struct Units {
    dir: PathBuf,
}

impl Units {
    /// The manifest of the study writing to `output`.
    pub fn new(output: &Path) -> Units {
        Units {
            dir: output.join("units"),
        }
    }

    /// The record of `unit`, if there is one (whatever its fingerprint).
    pub fn get(&self, unit: &str) -> Option<UnitRecord> {
        let text = std::fs::read(self.path(unit)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Whether `unit` finished with this fingerprint.
    pub fn is_done(&self, unit: &str, fingerprint: &str) -> bool {
        self.get(unit).is_some_and(|r| r.fingerprint == fingerprint)
    }

    /// Records `unit` as finished (temporary file, then rename).
    pub fn record(
        &self,
        unit: &str,
        fingerprint: &str,
        detail: serde_json::Value,
    ) -> anyhow::Result<()> {
        let path = self.path(unit);
        let dir = path.parent().expect("units live in a folder");
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        let record = UnitRecord {
            unit: unit.to_string(),
            fingerprint: fingerprint.to_string(),
            detail,
        };
        let mut temp =
            tempfile::NamedTempFile::new_in(dir).with_context(|| dir.display().to_string())?;
        temp.write_all(&serde_json::to_vec_pretty(&record)?)?;
        temp.persist(&path)
            .with_context(|| path.display().to_string())?;
        Ok(())
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
            .record("codes/a/shard-0", "f1", serde_json::json!({"rows": 3}))
            .unwrap();
        assert!(units.is_done("codes/a/shard-0", "f1"));
        assert!(!units.is_done("codes/a/shard-0", "f2"));
        assert_eq!(units.get("codes/a/shard-0").unwrap().detail["rows"], 3);
        units.forget("codes/a/shard-0");
        assert!(units.get("codes/a/shard-0").is_none());
    }
}
