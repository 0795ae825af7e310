//! `import-coco`: COCO captions (an annotations JSON such as `captions_train2017.json` and its
//! image folder).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{read_input, ImportReport, ImportSink, ImportTarget};
use crate::dataset::{DatasetError, Result};

/// What a row is. COCO has about five captions per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CocoRows {
    /// One row per image, with its first caption (lowest annotation id). The default: every
    /// encoder sees each image once, so image features are not correlated with themselves
    /// through repeated rows.
    FirstCaption,
    /// One row per (image, caption) pair: each image appears once per caption.
    AllCaptions,
}

/// The inputs of `import-coco`.
#[derive(Clone, Debug)]
pub struct CocoImport {
    pub annotations: PathBuf,
    pub images: PathBuf,
    pub rows: CocoRows,
}

#[derive(Deserialize)]
struct Annotations {
    images: Vec<CocoImage>,
    annotations: Vec<CocoCaption>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoCaption {
    id: u64,
    image_id: u64,
    caption: String,
}

/// Imports images in the order of their COCO id. Extra columns: `coco_image_id`,
/// `coco_caption_id`, `file_name`.
pub fn import_coco(spec: &CocoImport, target: &ImportTarget) -> Result<ImportReport> {
    let text = read_input(&spec.annotations)?;
    let annotations: Annotations =
        serde_json::from_slice(&text).map_err(|e| DatasetError::BadInput {
            file: spec.annotations.clone(),
            line: e.line(),
            problem: format!("not a COCO captions file: {e}"),
        })?;
    if !spec.images.is_dir() {
        return Err(DatasetError::NotFound {
            path: spec.images.clone(),
        });
    }

    let mut captions: BTreeMap<u64, Vec<CocoCaption>> = BTreeMap::new();
    for caption in annotations.annotations {
        captions.entry(caption.image_id).or_default().push(caption);
    }
    let mut images = annotations.images;
    images.sort_by_key(|i| i.id);
    let expected = match spec.rows {
        CocoRows::FirstCaption => images.len(),
        CocoRows::AllCaptions => captions.values().map(Vec::len).sum(),
    };

    let extra = ["coco_image_id", "coco_caption_id", "file_name"].map(String::from);
    let source = format!(
        "import-coco annotations={} images={} rows={:?}",
        spec.annotations.display(),
        spec.images.display(),
        spec.rows
    );
    let mut sink = ImportSink::open(target, source, extra.to_vec(), Some(expected as u64))?;
    for image in &images {
        let origin = format!(
            "{} (image id {})",
            spec.images.join(&image.file_name).display(),
            image.id
        );
        let Some(mut texts) = captions.remove(&image.id) else {
            sink.skip(&origin, "image without a caption");
            continue;
        };
        texts.sort_by_key(|c| c.id);
        if spec.rows == CocoRows::FirstCaption {
            // The first caption that says something; an empty first caption should not cost the
            // image its row.
            let first = texts
                .iter()
                .position(|c| !c.caption.trim().is_empty())
                .unwrap_or(0);
            texts = vec![texts.swap_remove(first)];
        }
        let bytes = match read_input(&spec.images.join(&image.file_name)) {
            Ok(bytes) => bytes,
            Err(DatasetError::NotFound { .. }) => {
                for _ in &texts {
                    sink.skip(&origin, "image file not found");
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        for caption in texts {
            let extra = vec![
                Some(image.id.to_string()),
                Some(caption.id.to_string()),
                Some(image.file_name.clone()),
            ];
            sink.push(&origin, bytes.clone(), &caption.caption, extra)?;
        }
    }
    let orphans: usize = captions.values().map(Vec::len).sum();
    if orphans > 0 {
        tracing::warn!(
            "{}: {orphans} caption(s) refer to image ids not in `images`; not imported",
            spec.annotations.display()
        );
    }
    sink.finish()
}
