//! `import-folder`: a folder of images and a JSONL or CSV file mapping file names to captions.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use super::{read_input, ImportReport, ImportSink, ImportTarget};
use crate::dataset::{DatasetError, Result};

/// The inputs of `import-folder`.
#[derive(Clone, Debug)]
pub struct FolderImport {
    pub images: PathBuf,
    /// `.jsonl` (one JSON object per line) or `.csv` (with a header row).
    pub captions: PathBuf,
    /// The field holding the image file name, relative to `images`.
    pub file_field: String,
    /// The field holding the caption.
    pub caption_field: String,
}

struct Record {
    line: usize,
    fields: Vec<(String, String)>,
}

/// Imports the rows of the mapping file in its order. Every field other than the caption is kept
/// as an extra column (the file name included). Image files that no line names are counted.
pub fn import_folder(spec: &FolderImport, target: &ImportTarget) -> Result<ImportReport> {
    if !spec.images.is_dir() {
        return Err(DatasetError::NotFound {
            path: spec.images.clone(),
        });
    }
    let records = read_records(&spec.captions)?;
    let mut extra: Vec<String> = Vec::new();
    for record in &records {
        for (key, _) in &record.fields {
            if key != &spec.caption_field && !extra.contains(key) {
                extra.push(key.clone());
            }
        }
    }
    if !extra.contains(&spec.file_field) {
        return Err(DatasetError::BadInput {
            file: spec.captions.clone(),
            line: 1,
            problem: format!(
                "no field `{}` naming the image file (choose the field with --file-field)",
                spec.file_field
            ),
        });
    }

    let source = format!(
        "import-folder images={} captions={}",
        spec.images.display(),
        spec.captions.display()
    );
    let mut sink = ImportSink::open(target, source, extra.clone(), Some(records.len() as u64))?;
    let mut named = HashSet::new();
    for record in &records {
        let origin = format!("{}:{}", spec.captions.display(), record.line);
        let get = |key: &str| {
            record
                .fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let Some(file) = get(&spec.file_field).filter(|f| !f.is_empty()) else {
            sink.skip(&origin, "no image file named");
            continue;
        };
        named.insert(file.clone());
        let Some(caption) = get(&spec.caption_field) else {
            sink.skip(&origin, "missing caption");
            continue;
        };
        let path = spec.images.join(&file);
        let image = match read_input(&path) {
            Ok(bytes) => bytes,
            Err(DatasetError::NotFound { .. }) => {
                sink.skip(
                    &format!("{origin} ({})", path.display()),
                    "image file not found",
                );
                continue;
            }
            Err(e) => return Err(e),
        };
        let values = extra.iter().map(|k| get(k)).collect();
        sink.push(
            &format!("{origin} ({})", path.display()),
            image,
            &caption,
            values,
        )?;
    }
    let unnamed = count_unnamed_images(&spec.images, &named)?;
    if unnamed > 0 {
        tracing::warn!(
            "{}: {unnamed} image file(s) have no line in {}; not imported",
            spec.images.display(),
            spec.captions.display()
        );
    }
    sink.finish()
}

fn count_unnamed_images(dir: &Path, named: &HashSet<String>) -> Result<usize> {
    const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "gif", "webp", "bmp"];
    let mut unnamed = 0;
    for entry in std::fs::read_dir(dir).map_err(DatasetError::io(dir))? {
        let path = entry.map_err(DatasetError::io(dir))?.path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if is_image && !named.contains(name) {
            unnamed += 1;
        }
    }
    Ok(unnamed)
}

fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text = String::from_utf8(read_input(path)?).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        DatasetError::BadInput {
            file: path.to_path_buf(),
            line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
            problem: format!(
                "not UTF-8 text (byte {} of the file); save it as UTF-8",
                valid.len() + 1
            ),
        }
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    let records = match ext.to_ascii_lowercase().as_str() {
        "jsonl" | "ndjson" | "json" => read_jsonl(path, &text)?,
        "csv" => read_csv(path, &text)?,
        _ => {
            return Err(DatasetError::BadInput {
                file: path.to_path_buf(),
                line: 1,
                problem: "the captions file must end in .jsonl or .csv".to_string(),
            })
        }
    };
    if records.is_empty() {
        return Err(DatasetError::BadInput {
            file: path.to_path_buf(),
            line: 1,
            problem: "no caption lines in this file".to_string(),
        });
    }
    Ok(records)
}

fn read_jsonl(path: &Path, text: &str) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |problem: String| DatasetError::BadInput {
            file: path.to_path_buf(),
            line: i + 1,
            problem,
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| bad("expected a JSON object per line".to_string()))?;
        let fields = object
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect();
        records.push(Record {
            line: i + 1,
            fields,
        });
    }
    Ok(records)
}

fn read_csv(path: &Path, text: &str) -> Result<Vec<Record>> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let bad = |line: usize, problem: String| DatasetError::BadInput {
        file: path.to_path_buf(),
        line,
        problem,
    };
    let headers = reader
        .headers()
        .map_err(|e| bad(1, e.to_string()))?
        .iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    let unique: BTreeSet<&String> = headers.iter().collect();
    if unique.len() != headers.len() {
        return Err(bad(1, "the header names a column twice".to_string()));
    }
    let mut records = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            bad(line, e.to_string())
        })?;
        let line = row.position().map_or(0, |p| p.line() as usize);
        let fields = headers
            .iter()
            .zip(row.iter())
            .map(|(h, v)| (h.clone(), v.to_string()))
            .collect();
        records.push(Record { line, fields });
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_captions_file_that_is_not_utf8_names_the_line_of_the_first_bad_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("captions.csv");
        std::fs::write(&path, b"file,caption\na.png,fine\nb.png,caf\xe9 latin-1\n").unwrap();
        match read_records(&path) {
            Err(DatasetError::BadInput { line, problem, .. }) => {
                assert_eq!(line, 3, "{problem}");
                assert!(problem.contains("UTF-8"), "{problem}");
            }
            Err(other) => panic!("expected a bad-input error, got {other}"),
            Ok(records) => panic!(
                "read {} records from a file that is not UTF-8",
                records.len()
            ),
        }
    }
}
