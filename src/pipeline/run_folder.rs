//! Who may write to a run folder: the marker that says saeshare made it, and the lock that
//! lets one run at a time write to it.
//!
//! - The marker, `saeshare-run.json`, is written when saeshare creates the folder or finds it
//!   empty. A non-empty folder without it is someone else's (a user's files, a dataset) and is
//!   refused, so no file of theirs is overwritten or deleted. Folders made by saeshare before
//!   the marker existed (they hold `units/`) are adopted.
//! - The lock, `saeshare.lock`, is an advisory file lock held for the whole run by every
//!   process of it. The processes of one multi-process run agree on a run id (from the study
//!   file and the hostfile) and share the lock; any other run is refused at once, with who
//!   holds it. The kernel drops the lock of a killed process, so a killed run's lock is taken
//!   over by the next run, never waited for.
//!
//! Claiming is serialised by a second, short-lived lock (`saeshare.lock.claim`), so that
//! checking the lock and taking it is one step for concurrent starters.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The file that says saeshare made a folder.
pub const MARKER_FILE: &str = "saeshare-run.json";
/// The file every process of a run holds a lock on.
pub const LOCK_FILE: &str = "saeshare.lock";
const CLAIM_FILE: &str = "saeshare.lock.claim";

/// What the marker says.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    /// Always "saeshare run folder": the file says what it is to someone who opens it.
    what: String,
    created_by: String,
    created_unix: u64,
}

/// Who holds a run folder, as its lock file says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Holder {
    run_id: String,
    pid: u32,
    host: String,
    started_unix: u64,
    command: String,
}

/// A run folder this process may write to, for as long as the value lives.
#[derive(Debug)]
pub struct RunFolder {
    /// Holds the shared lock; dropping it releases it.
    _lock: File,
}

/// What a folder is, for `study check` and for [`RunFolder::claim`].
#[derive(Debug, Clone, PartialEq)]
pub enum FolderState {
    /// It does not exist, or is empty: a run will make it its own.
    New,
    /// saeshare made it (or an older saeshare: `adopted`).
    Run { adopted: bool },
}

impl RunFolder {
    /// What `output` is, and whether a run may write to it: an error naming what to do for a
    /// folder that is someone else's or that would put the run inside its own dataset.
    pub fn inspect(output: &Path, dataset: &Path) -> anyhow::Result<FolderState> {
        let (out, data) = (absolute(output)?, absolute(dataset)?);
        anyhow::ensure!(
            !out.starts_with(&data),
            "the output folder {} is {} the dataset folder {}: a run writes many files there; \
             name another `output` in the study file",
            output.display(),
            if out == data { "the same as" } else { "inside" },
            dataset.display()
        );
        if out.join(MARKER_FILE).is_file() {
            return Ok(FolderState::Run { adopted: false });
        }
        let entries: Vec<String> = match std::fs::read_dir(&out) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FolderState::New),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the output folder {}", out.display()))
            }
        };
        anyhow::ensure!(
            out.is_dir(),
            "the output {} is a file, not a folder; name a folder as `output`",
            output.display()
        );
        // The lock files, and the marker while a concurrent claimer is writing it.
        let marker_being_written = |name: &str| {
            name.strip_prefix(&format!(".{MARKER_FILE}."))
                .is_some_and(|rest| rest.ends_with(".tmp"))
        };
        let ours =
            |name: &str| [LOCK_FILE, CLAIM_FILE].contains(&name) || marker_being_written(name);
        if entries.iter().all(|e| ours(e)) {
            return Ok(FolderState::New);
        }
        if crate::run_layout::RunLayout::new(&out).units().is_dir() {
            return Ok(FolderState::Run { adopted: true });
        }
        let mut shown: Vec<&str> = entries.iter().map(String::as_str).take(5).collect();
        if entries.len() > 5 {
            shown.push("...");
        }
        anyhow::bail!(
            "the output folder {} holds files saeshare did not make ({}) and no {MARKER_FILE}; a \
             run would overwrite or delete them. Name a new or empty folder as `output` in the \
             study file, or move those files away",
            output.display(),
            shown.join(", ")
        )
    }

    /// Makes `output` this run's: checks it is new, empty or a run folder ([`Self::inspect`]),
    /// writes the marker where missing, and takes the lock for `run_id`. Fails at once, naming
    /// the holder, when another run holds it.
    pub fn claim(
        output: &Path,
        dataset: &Path,
        run_id: &str,
        command: &str,
    ) -> anyhow::Result<RunFolder> {
        // Refuse someone else's folder before writing anything into it.
        Self::inspect(output, dataset)?;
        std::fs::create_dir_all(output)
            .with_context(|| format!("creating the output folder {}", output.display()))?;
        let claim = open(&output.join(CLAIM_FILE))?;
        claim
            .lock()
            .with_context(|| format!("locking {}", output.join(CLAIM_FILE).display()))?;
        // Again under the claim lock: the processes of one run start together, and a peer may
        // have marked the folder since.
        let state = Self::inspect(output, dataset)?;
        let mut lock = open(&output.join(LOCK_FILE))?;
        let me = Holder {
            run_id: run_id.to_string(),
            pid: std::process::id(),
            host: hostname(),
            started_unix: now(),
            command: command.to_string(),
        };
        match lock.try_lock() {
            Ok(()) => {
                if let Some(previous) = read_holder(&mut lock) {
                    // The normal end of every earlier run: worth a line only when debugging.
                    tracing::debug!(
                        "taking over {}: its last holder (pid {} on {}) has ended",
                        output.join(LOCK_FILE).display(),
                        previous.pid,
                        previous.host
                    );
                }
                write_holder(&mut lock, &me)
                    .with_context(|| output.join(LOCK_FILE).display().to_string())?;
                // Converting is not atomic, but every claimer waits on the claim lock we hold.
                lock.unlock()?;
                lock.lock_shared()?;
            }
            Err(TryLockError::WouldBlock) => {
                let holder = read_holder(&mut lock);
                match holder {
                    Some(h) if h.run_id == run_id => lock.lock_shared()?,
                    other => anyhow::bail!("{}", busy_message(output, other.as_ref())),
                }
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| output.join(LOCK_FILE).display().to_string())
            }
        }
        if state != (FolderState::Run { adopted: false }) {
            write_marker(output)?;
            if state == (FolderState::Run { adopted: true }) {
                tracing::info!(
                    "{}: a run folder of an earlier saeshare; marked it as a run folder",
                    output.display()
                );
            }
        }
        drop(claim);
        Ok(RunFolder { _lock: lock })
    }
}

fn busy_message(output: &Path, holder: Option<&Holder>) -> String {
    let who = holder.map_or_else(
        || "another saeshare run".to_string(),
        |h| {
            format!(
                "saeshare process {} on {} (started {} s ago: {})",
                h.pid,
                h.host,
                now().saturating_sub(h.started_unix),
                h.command
            )
        },
    );
    format!(
        "{} is in use by {who}; one run at a time writes to a run folder. Wait for it to end (or \
         stop it), then run again: the second run does only what is left",
        output.display()
    )
}

fn open(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_holder(file: &mut File, holder: &Holder) -> std::io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(&serde_json::to_vec_pretty(holder).expect("plain data"))?;
    file.sync_data()
}

fn write_marker(output: &Path) -> anyhow::Result<()> {
    let marker = Marker {
        what: "saeshare run folder".to_string(),
        created_by: format!("saeshare {}", env!("CARGO_PKG_VERSION")),
        created_unix: now(),
    };
    crate::atomic::write(
        &output.join(MARKER_FILE),
        &serde_json::to_vec_pretty(&marker)?,
    )
}

/// `path` made absolute with symbolic links resolved, for the part of it that exists.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    let path = std::path::absolute(path).with_context(|| path.display().to_string())?;
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return Ok(rest.iter().rev().fold(real, |p, c| p.join(c)));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return Ok(path),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this machine".to_string())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_is_refused_and_a_process_of_the_same_run_shares_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (out, data) = (dir.path().join("out"), dir.path().join("data"));
        let first = RunFolder::claim(&out, &data, "run-a", "first").unwrap();
        let error = RunFolder::claim(&out, &data, "run-b", "second").unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("in use by saeshare process") && message.contains("first"),
            "{message}"
        );
        let peer = RunFolder::claim(&out, &data, "run-a", "peer").unwrap();
        drop(first);
        assert!(RunFolder::claim(&out, &data, "run-b", "second").is_err());
        drop(peer);
        // Every holder gone (as when the processes are killed): the next run takes over.
        RunFolder::claim(&out, &data, "run-b", "second").unwrap();
    }

    #[test]
    fn the_processes_of_one_run_claiming_a_new_folder_together_all_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        for round in 0..40 {
            let out = dir.path().join(format!("out-{round}"));
            let claims: Vec<_> = std::thread::scope(|scope| {
                let starters: Vec<_> = (0..4)
                    .map(|_| scope.spawn(|| RunFolder::claim(&out, &data, "run-a", "peer")))
                    .collect();
                starters.into_iter().map(|s| s.join().unwrap()).collect()
            });
            for claim in &claims {
                assert!(
                    claim.is_ok(),
                    "round {round}: {:?}",
                    claim.as_ref().unwrap_err()
                );
            }
            assert!(out.join(MARKER_FILE).is_file());
        }
    }

    #[test]
    fn a_folder_of_someone_elses_files_or_inside_the_dataset_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        std::fs::create_dir_all(theirs.join("saes/bert")).unwrap();
        std::fs::write(theirs.join("saes/bert/mine.txt"), "mine").unwrap();
        let error = RunFolder::claim(&theirs, &dir.path().join("data"), "r", "c").unwrap_err();
        assert!(error.to_string().contains("saes"), "{error}");
        assert!(!theirs.join(MARKER_FILE).exists());

        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        for out in [data.clone(), data.join("out")] {
            let error = RunFolder::claim(&out, &data, "r", "c").unwrap_err();
            assert!(error.to_string().contains("dataset folder"), "{error}");
        }
        // A new folder becomes a run folder, and stays one.
        let new = dir.path().join("new");
        drop(RunFolder::claim(&new, &data, "r", "c").unwrap());
        std::fs::write(new.join("wmppc.parquet"), "").unwrap();
        assert_eq!(
            RunFolder::inspect(&new, &data).unwrap(),
            FolderState::Run { adopted: false }
        );
    }
}
