//! Digests: short ones that name what a unit of work depends on ([`fingerprint`]), and the size
//! and SHA-256 by which a file saeshare made is told from one lost or changed since
//! ([`MadeFile`]), with the one way such files are deleted ([`remove_made`]).

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::file_error::FileError;

/// A short hex digest (96 bits of SHA-256) of anything serialisable: its JSON form.
pub fn fingerprint(value: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(value).expect("plain data serialises");
    let digest = Sha256::digest(&bytes);
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// A short hex digest (96 bits of SHA-256) of the bytes of `files`, one after the other: what
/// identifies files saeshare reads and did not make (an encoder package, an imported SAE).
pub fn files_digest(files: &[impl AsRef<Path>]) -> Result<String, FileError> {
    let mut hasher = Sha256::new();
    for file in files {
        let path = file.as_ref();
        let mut reader = std::fs::File::open(path).map_err(FileError::io(path))?;
        std::io::copy(&mut reader, &mut hasher).map_err(FileError::io(path))?;
    }
    Ok(hasher.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A file saeshare made (a unit's, a saved state's), as its record remembers it: where
/// (relative to the folder the record is about: the output folder, a state folder), its size and its SHA-256, which is what tells a file that is still the one written from one
/// that was lost, truncated or damaged since.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MadeFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

impl MadeFile {
    /// Describes `path`, a file under `output`, as it is now.
    pub fn of(output: &Path, path: &Path) -> Result<MadeFile, FileError> {
        let relative = path.strip_prefix(output).map_err(|_| FileError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("not inside the folder {}", output.display()),
            ),
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
            Err(e) => Some(e.to_string()),
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
fn digest(path: &Path) -> Result<(u64, String), FileError> {
    let mut file = std::fs::File::open(path).map_err(FileError::io(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(FileError::io(path))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
