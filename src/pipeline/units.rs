//! The manifest of finished work: one small JSON record per unit (an encoder's SAEs, an
//! encoder's codes on a shard, a pair's accumulators), written atomically by whichever worker
//! finished it, in `OUTPUT/units/`. A unit is done when its record exists with the fingerprint
//! the plan expects; a changed fingerprint means its inputs changed and it runs again.
//!
//! One file per unit, rather than one shared file, lets workers of several processes record
//! what they finish without coordinating, and a run killed at any point loses at most the
//! units in progress.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// A file a unit made, as its record remembers it: where (relative to the output folder), its
/// size and its SHA-256, which is what tells a file that is still the one written from one
/// that was lost, truncated or damaged since.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MadeFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

impl MadeFile {
    /// Describes `path`, a file under `output`, as it is now.
    pub fn of(output: &Path, path: &Path) -> anyhow::Result<MadeFile> {
        let relative = path.strip_prefix(output).with_context(|| {
            format!(
                "{} is not inside the output folder {}",
                path.display(),
                output.display()
            )
        })?;
        let (bytes, sha256) = digest(path)?;
        Ok(MadeFile {
            path: relative.to_string_lossy().into_owned(),
            bytes,
            sha256,
        })
    }

    /// Why the file is no longer the one recorded, if it is not.
    pub fn problem(&self, output: &Path) -> Option<String> {
        let path = output.join(&self.path);
        let size = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Some(format!("{} is not a file", path.display())),
            Err(e) => return Some(format!("{}: {e}", path.display())),
        };
        if size != self.bytes {
            return Some(format!(
                "{} has {size} bytes, {} when it was written",
                path.display(),
                self.bytes
            ));
        }
        match digest(&path) {
            Ok((_, sha)) if sha == self.sha256 => None,
            Ok(_) => Some(format!(
                "{} changed since it was written (its SHA-256 differs)",
                path.display()
            )),
            Err(e) => Some(format!("{e:#}")),
        }
    }
}

/// Deletes the recorded `files` (paths relative to `root`) that lie inside `root/inside`, and the
/// folders this leaves empty; a recorded path that leaves that folder is logged and kept. What
/// saeshare deletes is only ever what one of its records says it made.
pub fn remove_made(root: &Path, inside: &Path, files: &[MadeFile]) {
    for file in files {
        let relative = Path::new(&file.path);
        let path = root.join(relative);
        let plain = relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || !relative.starts_with(inside) {
            tracing::warn!(
                "a record names {}, outside {}; not deleting it",
                path.display(),
                root.join(inside).display()
            );
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("could not delete {}: {e}", path.display()),
        }
        // Only succeeds on an empty folder: a user's file in it keeps it.
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(root.join(inside)) && *d != root) {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

/// Size and SHA-256 (hex) of a file.
fn digest(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| path.display().to_string())?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((bytes, hex))
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
                .collect::<anyhow::Result<_>>()?,
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

    #[test]
    fn only_recorded_files_inside_the_units_folder_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "saes/a/1/sae.json",
            "saes/a/2/sae.json",
            "saes/a/2/mine.txt",
            "keep.txt",
        ] {
            std::fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
            std::fs::write(root.join(f), f).unwrap();
        }
        let made = |path: &str| MadeFile {
            path: path.to_string(),
            bytes: 0,
            sha256: String::new(),
        };
        let files = [
            made("saes/a/1/sae.json"),
            made("saes/a/2/sae.json"),
            made("saes/a/../../keep.txt"),
            made("keep.txt"),
        ];
        remove_made(root, Path::new("saes/a"), &files);
        assert!(!root.join("saes/a/1").exists(), "emptied folders go");
        assert!(
            root.join("saes/a/2/mine.txt").is_file(),
            "a user's file stays"
        );
        assert!(!root.join("saes/a/2/sae.json").exists());
        assert!(
            root.join("keep.txt").is_file(),
            "nothing outside saes/a is deleted"
        );
    }
}
