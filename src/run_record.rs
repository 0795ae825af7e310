//! `OUTPUT/study.json`: what a run folder holds, written before any work starts so that a report
//! (or another tool) can read a run folder, finished or not, without the study file. The
//! pipeline makes it (`StudyRecord::of`, in `pipeline/plan/record.rs`); the report reads it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The file name in the output folder.
pub const STUDY_RECORD_FILE: &str = crate::run_layout::STUDY_RECORD_FILE;
/// The version of [`StudyRecord`]'s layout.
pub const STUDY_RECORD_VERSION: u32 = 1;

/// A resolved study, as far as readers of its outputs need it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StudyRecord {
    pub format_version: u32,
    pub name: String,
    /// The study file, as given to `saeshare run`.
    pub study_file: PathBuf,
    pub dataset: DatasetRecord,
    /// In the study's order; the ceiling's second SAEs (`<encoder>.ceiling`) last.
    pub encoders: Vec<EncoderRecord>,
    pub pairs: Vec<PairRecord>,
    pub sharedness: Vec<QueryRecord>,
}

/// The dataset the study read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatasetRecord {
    /// Absolute where the study's path could be resolved.
    pub path: PathBuf,
    /// The shard files the study reads, in order.
    pub shards: Vec<String>,
    pub rows: u64,
}

/// One encoder of the study.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EncoderRecord {
    pub name: String,
    /// `image` or `text`.
    pub modality: String,
    /// The chosen layers, in the package's order (the last one is the "last layer").
    pub layers: Vec<String>,
    pub package: PathBuf,
    /// For the ceiling's second SAEs: the encoder they repeat.
    pub ceiling_of: Option<String>,
    /// What the SAEs are fitted on: `pooled` (one row a sample) or `tokens`. Records written
    /// before this field say nothing: pooled.
    #[serde(default = "pooled")]
    pub fit_on: String,
    /// With tokens: the positions drawn per sample; every token when absent.
    #[serde(default)]
    pub tokens_per_sample: Option<usize>,
    /// Where each sample's features are read: the pooling (`cls` is token 0).
    #[serde(default)]
    pub read_at: Option<crate::encoder::Pooling>,
    /// Which values of the SAE are the features.
    #[serde(default)]
    pub read_out: crate::sae::ReadOut,
    /// The SAEs the study imports instead of fitting, by layer: `PATH (format architecture)`.
    #[serde(default)]
    pub imported: std::collections::BTreeMap<String, String>,
    /// Why the ceiling baseline has no second SAEs of this encoder, when it has none.
    #[serde(default)]
    pub no_ceiling: Option<String>,
}

fn pooled() -> String {
    "pooled".to_string()
}

/// One compared pair.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairRecord {
    /// The folder name under `pairs/`.
    pub key: String,
    pub source: String,
    pub target: String,
    pub source_layers: Vec<String>,
    pub target_layers: Vec<String>,
    pub ceiling: bool,
}

/// One sharedness query.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueryRecord {
    pub name: String,
    pub model: String,
    pub shared_with: Vec<String>,
    pub not_shared_with: Vec<String>,
    pub top: usize,
}

impl StudyRecord {
    /// Writes `dir/study.json` atomically.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::atomic::write(
            &dir.join(STUDY_RECORD_FILE),
            &serde_json::to_vec_pretty(self)?,
        )
    }

    /// Reads `dir/study.json`; `None` when the folder has none (outputs of `saeshare compare`).
    pub fn read(dir: &Path) -> anyhow::Result<Option<StudyRecord>> {
        let path = dir.join(STUDY_RECORD_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let record: StudyRecord = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{}: not a study record; `saeshare run STUDY.toml` rewrites it",
                path.display()
            )
        })?;
        anyhow::ensure!(
            record.format_version <= STUDY_RECORD_VERSION,
            "{}: format_version {} is newer than this saeshare reads ({STUDY_RECORD_VERSION}); update saeshare",
            path.display(),
            record.format_version
        );
        Ok(Some(record))
    }

    /// The encoders the study names (not the ceiling's second SAEs).
    pub fn named_encoders(&self) -> impl Iterator<Item = &EncoderRecord> {
        self.encoders.iter().filter(|e| e.ceiling_of.is_none())
    }

    /// The encoder called `name`.
    pub fn encoder(&self, name: &str) -> Option<&EncoderRecord> {
        self.encoders.iter().find(|e| e.name == name)
    }
}
