//! Writing a file or a folder so that a reader, or a run killed half-way, sees the old one or the
//! new one, never a part: everything goes into a temporary beside the target, which is renamed
//! over the target once complete.
//!
//! - [`AtomicFile`]: a temporary file `.<name>.XXXXXX.tmp` in the target's folder, written
//!   through [`std::io::Write`] (or by path); [`commit`](AtomicFile::commit) syncs it and renames
//!   it over the target; dropped uncommitted, it is removed.
//! - [`write()`]: a whole file from bytes, through an [`AtomicFile`].
//! - [`AtomicDir`]: a temporary folder `.<name>.partial-XXXXXX` beside the target folder;
//!   [`commit`](AtomicDir::commit) renames it into place (replacing nothing but an empty folder),
//!   [`replace`](AtomicDir::replace) swaps it with an earlier folder; dropped uncommitted, it is
//!   removed with what it holds.
//!
//! The folder of the target must exist. Errors are plain [`std::io::Error`]s: each caller names
//! the file in its own error type.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The folder `path` is in: its parent, or `.` for a bare name.
pub fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The name of `path` as temporary names start with it; `fallback` when it has none (`/`, `..`).
fn name_of(path: &Path, fallback: &str) -> String {
    path.file_name().map_or_else(
        || fallback.to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// A file that appears at its path whole, or not at all.
///
/// ```no_run
/// use std::io::Write;
/// let mut file = saeshare::atomic::AtomicFile::create("out/table.json".as_ref())?;
/// file.write_all(b"{}")?;
/// file.commit()?; // out/table.json now holds `{}`
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct AtomicFile {
    temp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl AtomicFile {
    /// Starts writing `path`: creates the temporary file in its folder, which must exist. Nothing
    /// changes at `path` until [`commit`](Self::commit).
    pub fn create(path: &Path) -> std::io::Result<AtomicFile> {
        // tempfile makes its files 0600; a result is made as any other file, 0666 less the
        // umask, so that others read a run's tables where the umask lets them.
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name_of(path, "saeshare")))
            .suffix(".tmp")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(folder_of(path))?;
        Ok(AtomicFile {
            temp,
            path: path.to_path_buf(),
        })
    }

    /// The file that [`commit`](Self::commit) will write.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file, for writers that take a path rather than a [`Write`].
    pub fn temp_path(&self) -> &Path {
        self.temp.path()
    }

    /// The temporary file, open for writing.
    pub fn file(&self) -> &File {
        self.temp.as_file()
    }

    /// Syncs the temporary file and renames it over [`path`](Self::path), replacing what is
    /// there.
    pub fn commit(self) -> std::io::Result<()> {
        self.temp.as_file().sync_all()?;
        self.temp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Like [`commit`](Self::commit), but never replaces a file: if [`path`](Self::path) exists
    /// the error is of kind [`std::io::ErrorKind::AlreadyExists`].
    pub fn commit_new(self) -> std::io::Result<()> {
        self.temp.as_file().sync_all()?;
        self.temp
            .persist_noclobber(&self.path)
            .map_err(|e| e.error)?;
        Ok(())
    }
}

/// A file written whole and synced, its descriptor closed, waiting to be renamed into place
/// ([`AtomicFile::into_pending`]): many can wait at once without holding a descriptor each.
/// Dropped without [`commit_new`](Self::commit_new), its temporary file is removed.
#[derive(Debug)]
pub struct PendingFile {
    temp: tempfile::TempPath,
    path: PathBuf,
}

impl PendingFile {
    /// The file it will be.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames it into place; never replaces a file (an error of kind `AlreadyExists`).
    pub fn commit_new(self) -> std::io::Result<()> {
        self.temp.persist_noclobber(&self.path).map_err(|e| e.error)
    }
}

impl AtomicFile {
    /// Syncs the temporary file and closes it, to be renamed into place later.
    pub fn into_pending(self) -> std::io::Result<PendingFile> {
        self.temp.as_file().sync_all()?;
        Ok(PendingFile {
            temp: self.temp.into_temp_path(),
            path: self.path,
        })
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.temp.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.temp.write_vectored(bufs)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.temp.flush()
    }
}

/// Writes `bytes` to `path` atomically; the folder must exist.
pub fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = AtomicFile::create(path)
        .with_context(|| format!("creating a temporary file in {}", folder_of(path).display()))?;
    file.write_all(bytes)
        .and_then(|()| file.commit())
        .with_context(|| format!("writing {}", path.display()))
}

/// A folder that appears at its path whole, or not at all.
#[derive(Debug)]
pub struct AtomicDir {
    temp: tempfile::TempDir,
    target: PathBuf,
}

/// Why [`AtomicDir::replace`] failed, and where that leaves the folders. Each shows as its I/O
/// error alone, for the caller to say what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    /// No temporary folder could be made beside the target to move it aside; nothing changed.
    #[error(transparent)]
    AsideFolder(std::io::Error),
    /// The target could not be moved aside; nothing changed.
    #[error(transparent)]
    MoveAside(std::io::Error),
    /// The new folder could not be moved into place; the earlier one is back in place.
    #[error(transparent)]
    MoveIn(std::io::Error),
    /// The new folder could not be moved into place, nor the earlier one put back: it is kept at
    /// `old`.
    #[error("{error}")]
    PutBack {
        /// Where the earlier folder is.
        old: PathBuf,
        /// Why it could not be put back.
        error: std::io::Error,
    },
}

impl ReplaceError {
    /// The I/O error, whatever the step.
    pub fn into_io(self) -> std::io::Error {
        match self {
            ReplaceError::AsideFolder(e) | ReplaceError::MoveAside(e) | ReplaceError::MoveIn(e) => {
                e
            }
            ReplaceError::PutBack { error, .. } => error,
        }
    }
}

impl AtomicDir {
    /// Starts the folder `target`: creates the temporary folder beside it; the folder `target`
    /// is in must exist. Nothing changes at `target` until [`commit`](Self::commit) or
    /// [`replace`](Self::replace).
    pub fn create(target: &Path) -> std::io::Result<AtomicDir> {
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{}.partial-", name_of(target, "saeshare")))
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .tempdir_in(folder_of(target))?;
        Ok(AtomicDir {
            temp,
            target: target.to_path_buf(),
        })
    }

    /// Where to write what the folder holds.
    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    /// The folder that [`commit`](Self::commit) will make.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Renames the folder into place. The target must not exist, or be an empty folder (removed
    /// first; `rename` cannot replace a folder on every platform).
    pub fn commit(self) -> std::io::Result<()> {
        if self.target.is_dir() {
            std::fs::remove_dir(&self.target)?;
        }
        std::fs::rename(self.temp.path(), &self.target)?;
        // The temporary folder now is the target: not to be removed.
        let _ = self.temp.keep();
        Ok(())
    }

    /// Renames the folder into place, replacing the target folder, whatever it holds, only once
    /// the new one is in place: the earlier folder is moved aside first (and put back if the
    /// new one cannot take its place), then removed.
    pub fn replace(self) -> Result<(), ReplaceError> {
        if !self.target.exists() {
            std::fs::rename(self.temp.path(), &self.target).map_err(ReplaceError::MoveIn)?;
            let _ = self.temp.keep();
            return Ok(());
        }
        let name = name_of(&self.target, "saeshare");
        let aside = tempfile::Builder::new()
            .prefix(&format!(".{name}.old-"))
            .tempdir_in(folder_of(&self.target))
            .map_err(ReplaceError::AsideFolder)?;
        let old = aside.path().join(&name);
        std::fs::rename(&self.target, &old).map_err(ReplaceError::MoveAside)?;
        if let Err(error) = std::fs::rename(self.temp.path(), &self.target) {
            return match std::fs::rename(&old, &self.target) {
                Ok(()) => Err(ReplaceError::MoveIn(error)),
                Err(error) => {
                    let _ = aside.keep();
                    Err(ReplaceError::PutBack { old, error })
                }
            };
        }
        let _ = self.temp.keep();
        // `aside`, dropped, removes the earlier folder.
        Ok(())
    }
}

/// Whether `name` is one of the temporaries this module makes: `.<name>.XXXXXX.tmp` files and
/// `.<name>.partial-XXXXXX` folders.
fn is_temporary_name(name: &str, is_dir: bool) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    if is_dir {
        rest.rsplit_once(".partial-")
            .is_some_and(|(target, random)| !target.is_empty() && random.len() >= 6)
    } else {
        rest.strip_suffix(".tmp")
            .and_then(|stem| stem.rsplit_once('.'))
            .is_some_and(|(target, random)| !target.is_empty() && random.len() >= 6)
    }
}

/// Removes the temporary files of this module that would have become `file` (beside it),
/// last modified before `before`: [`remove_stale_temporaries`] for one file.
pub fn remove_stale_temporaries_of(file: &Path, before: std::time::SystemTime) -> usize {
    let (Some(folder), Some(name)) = (file.parent(), file.file_name()) else {
        return 0;
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(folder) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        let ours = entry_name.starts_with(&prefix) && is_temporary_name(&entry_name, false);
        let file = entry.file_type().is_ok_and(|t| t.is_file());
        if ours && file && modified_before(&entry, before) {
            removed += usize::from(remove_left_over(&entry.path(), false));
        }
    }
    removed
}

fn modified_before(entry: &std::fs::DirEntry, before: std::time::SystemTime) -> bool {
    (entry.metadata().ok())
        .and_then(|m| m.modified().ok())
        .is_some_and(|t| t < before)
}

/// Removes what a killed process left at `path`; whether it is gone.
fn remove_left_over(path: &Path, is_dir: bool) -> bool {
    let gone = if is_dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match gone {
        Ok(()) => {
            tracing::info!(
                "removed {}: left by a process that was killed",
                path.display()
            );
            true
        }
        Err(e) => {
            tracing::warn!(
                "{} is left by a killed process, and cannot be removed: {e}",
                path.display()
            );
            false
        }
    }
}

/// Removes the temporaries of this module under `dir` (at any depth) last modified before
/// `before`: what a process killed while writing left behind (a kill skips the drop that
/// removes them). Only a caller that holds `dir` alone (a run folder under its lock) may call
/// it, with `before` earlier than anything its own processes started writing. Returns how many
/// it removed; what cannot be read or removed is left, with a warning.
pub fn remove_stale_temporaries(dir: &Path, before: std::time::SystemTime) -> usize {
    let mut removed = 0;
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if kind.is_symlink() {
                continue;
            }
            if is_temporary_name(&name, kind.is_dir()) && modified_before(&entry, before) {
                removed += usize::from(remove_left_over(&path, kind.is_dir()));
            } else if kind.is_dir() {
                folders.push(path);
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_temporaries_of_this_module_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("codes/a");
        std::fs::create_dir_all(&deep).unwrap();
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let age = |path: &Path| {
            let file = File::options()
                .write(path.is_file())
                .read(true)
                .open(path)
                .unwrap();
            file.set_modified(hour_ago).unwrap();
        };
        let old = deep.join(".x.parquet.AbC123.tmp");
        std::fs::write(&old, b"old").unwrap();
        age(&old);
        let old_dir = dir.path().join(".state-2.partial-QwErTy");
        std::fs::create_dir_all(old_dir.join("inner")).unwrap();
        age(&old_dir);
        // Files of the user's that look alike but are not this module's, however old.
        let theirs = [".hidden", "notes.tmp", ".tmp", "..tmp", ".x.tmp"];
        for name in theirs {
            std::fs::write(deep.join(name), b"theirs").unwrap();
            age(&deep.join(name));
        }
        // What is being written now is kept.
        let before = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
        let current = started(&deep.join("x.parquet"), b"new");
        // Beside a file: only that file's temporaries.
        let top = dir.path().join(".wmppc.parquet.XyZ123.tmp");
        let other = dir.path().join(".emoji.partial-AbCdEf");
        std::fs::write(&top, b"old").unwrap();
        std::fs::create_dir(&other).unwrap();
        age(&top);
        age(&other);
        assert_eq!(
            remove_stale_temporaries_of(&dir.path().join("wmppc.parquet"), before),
            1
        );
        assert!(!top.exists() && other.exists());
        std::fs::remove_dir(&other).unwrap();
        assert_eq!(remove_stale_temporaries(dir.path(), before), 2);
        assert!(!old.exists() && !old_dir.exists());
        assert!(current.temp_path().exists());
        for name in theirs {
            assert!(deep.join(name).exists(), "{name}");
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A file of `path` holding `bytes`, not yet committed.
    fn started(path: &Path, bytes: &[u8]) -> AtomicFile {
        let mut file = AtomicFile::create(path).unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    #[test]
    fn a_file_appears_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        let file = started(&path, b"new");
        assert!(!path.exists());
        assert!(names(dir.path())[0].starts_with(".a.json."));
        file.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["a.json"]);

        write(&path, b"newer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"newer");
        assert_eq!(names(dir.path()), ["a.json"]);
    }

    #[test]
    fn a_dropped_file_leaves_nothing_and_commit_new_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        drop(started(&path, b"lost"));
        assert!(names(dir.path()).is_empty());

        std::fs::write(&path, b"old").unwrap();
        let err = started(&path, b"new").commit_new().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["a"]);
    }

    #[test]
    fn a_bare_name_is_in_the_current_folder() {
        assert_eq!(folder_of(Path::new("a.parquet")), Path::new("."));
        assert_eq!(folder_of(Path::new("x/a.parquet")), Path::new("x"));
    }

    #[test]
    fn a_folder_appears_whole_and_replaces_only_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        let staged = AtomicDir::create(&target).unwrap();
        std::fs::write(staged.path().join("f"), b"1").unwrap();
        assert!(!target.exists());
        staged.commit().unwrap();
        assert_eq!(names(&target), ["f"]);
        assert_eq!(names(dir.path()), ["out"]);

        let staged = AtomicDir::create(&target).unwrap();
        assert!(staged.commit().is_err(), "out is not empty");
        assert_eq!(names(dir.path()), ["out"], "the dropped folder is removed");

        std::fs::remove_file(target.join("f")).unwrap();
        let staged = AtomicDir::create(&target).unwrap();
        std::fs::write(staged.path().join("g"), b"2").unwrap();
        staged.commit().unwrap();
        assert_eq!(names(&target), ["g"]);
    }

    #[test]
    fn replace_swaps_a_folder_whole() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("report");
        for (file, expected) in [("a", ["a"]), ("b", ["b"])] {
            let staged = AtomicDir::create(&target).unwrap();
            std::fs::write(staged.path().join(file), b"").unwrap();
            staged.replace().unwrap();
            assert_eq!(names(&target), expected);
            assert_eq!(names(dir.path()), ["report"]);
        }
    }
}
