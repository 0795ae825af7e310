//! SAE checkpoints (FORMATS.md, "SAE checkpoint"): a folder with
//! - `sae.safetensors`: `W_enc` (d_in x d_sae), `b_enc` (d_sae), `W_dec` (d_sae x d_in, unit-norm
//!   rows), `b_dec` (d_in), float32, plus the variant's own state (BatchTopK: `threshold`);
//! - `optimizer.safetensors`: Adam's moments `adam.m.<name>`, `adam.v.<name>` and the latents'
//!   `tokens_since_fired` (int64), what a resumed run needs to continue exactly;
//! - `sae.json`: [`CheckpointMeta`]: variant and hyperparameters, widths, source encoder and
//!   layer, steps, tokens seen, and the training metrics recorded so far;
//! - `cfg.json` and `sae_weights.safetensors` (a link to `sae.safetensors`): the same SAE as
//!   SAELens reads it ([`super::saelens`]).
//!
//! Each file is written to a temporary name and renamed; `sae.json` goes last and names the
//! step, so a folder whose JSON says step N holds the tensors of step N.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::config::SaeConfig;
use super::model::{Sae, B_DEC, B_ENC, W_DEC, W_ENC};
use super::saelens;
use super::trainer::{Mixing, SaeSource, SaeTrainer, TrainingMetrics};
use super::variant::StateError;
use crate::atomic::AtomicFile;

pub const CHECKPOINT_VERSION: u32 = 1;
/// The files [`SaeTrainer::save`] writes in a checkpoint folder, and nothing else but the link
/// [`saelens::SAELENS_WEIGHTS`] to the weights.
pub const CHECKPOINT_FILES: [&str; 4] = [META, WEIGHTS, OPTIMIZER, saelens::SAELENS_CONFIG];
const WEIGHTS: &str = "sae.safetensors";
/// The optimizer's state, what continuing the training needs and inference does not: a
/// study's fit keeps it only where the study asks (`[fit] keep_optimizer`).
pub const OPTIMIZER: &str = "optimizer.safetensors";
const META: &str = "sae.json";

/// The JSON half of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format_version: u32,
    pub config: SaeConfig,
    pub d_in: usize,
    pub d_sae: usize,
    pub source: SaeSource,
    pub steps: usize,
    pub tokens_seen: u64,
    pub adam_steps: i64,
    pub bias_initialised: bool,
    pub metrics: Vec<TrainingMetrics>,
    /// How mixed the training batches were (zero in checkpoints written before it was recorded).
    #[serde(default)]
    pub mixing: Mixing,
}

/// Errors reading or writing a checkpoint, naming the folder or file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
    /// The variant's own tensors (BatchTopK's threshold) do not restore it.
    #[error("{path}: {problem}")]
    State { path: PathBuf, problem: StateError },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Torch {
        path: PathBuf,
        #[source]
        source: tch::TchError,
    },
}

type Result<T> = std::result::Result<T, CheckpointError>;

const NAMES: [&str; 4] = [W_ENC, B_ENC, W_DEC, B_DEC];

impl SaeTrainer {
    /// Writes the SAE and its training state into `dir` (created if missing).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_with(dir, true)
    }

    /// Writes the SAE into `dir`, with the optimizer's state only when `optimizer` (without it
    /// the SAE is read as any other, and cannot be trained further).
    pub fn save_with(&self, dir: &Path, optimizer: bool) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut weights: Vec<(String, Tensor)> = NAMES
            .iter()
            .zip(self.sae.parameters())
            .map(|(n, t)| (n.to_string(), t.detach().to_device(Device::Cpu)))
            .collect();
        weights.extend(
            self.sae
                .variant
                .state()
                .into_iter()
                .map(|(n, t)| (n, t.to_device(Device::Cpu))),
        );
        write_tensors(&dir.join(WEIGHTS), &weights)?;
        if optimizer {
            self.save_optimizer(dir)?;
        }
        self.save_meta(dir)
    }

    fn save_optimizer(&self, dir: &Path) -> Result<()> {
        let mut optimizer: Vec<(String, Tensor)> = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            optimizer.push((
                format!("adam.m.{name}"),
                self.adam.m[i].to_device(Device::Cpu),
            ));
            optimizer.push((
                format!("adam.v.{name}"),
                self.adam.v[i].to_device(Device::Cpu),
            ));
        }
        optimizer.push((
            "tokens_since_fired".to_string(),
            self.since_fired.to_device(Device::Cpu),
        ));
        write_tensors(&dir.join(OPTIMIZER), &optimizer)
    }

    fn save_meta(&self, dir: &Path) -> Result<()> {
        let meta = CheckpointMeta {
            format_version: CHECKPOINT_VERSION,
            config: self.sae.config.clone(),
            d_in: self.sae.d_in as usize,
            d_sae: self.sae.d_sae as usize,
            source: self.source.clone(),
            steps: self.step,
            tokens_seen: self.tokens_seen,
            adam_steps: self.adam.steps,
            bias_initialised: self.bias_initialised,
            metrics: self.history.clone(),
            mixing: self.mixing,
        };
        saelens::write_view(dir, &meta, WEIGHTS).map_err(|source| CheckpointError::Io {
            path: dir.join(saelens::SAELENS_CONFIG),
            source,
        })?;
        let json = serde_json::to_vec_pretty(&meta).expect("serialisable");
        write_atomically(&dir.join(META), |path| {
            std::fs::write(path, &json).map_err(|source| CheckpointError::Io {
                path: path.to_path_buf(),
                source,
            })
        })
    }

    /// Restores a trainer from a checkpoint folder, onto `device`, to continue training.
    pub fn load(dir: &Path, device: Device) -> Result<SaeTrainer> {
        let meta = read_meta(dir)?;
        let sae = load_sae(dir, &meta, device)?;
        if !dir.join(OPTIMIZER).is_file() {
            return Err(CheckpointError::Bad {
                path: dir.to_path_buf(),
                message: format!(
                    "no {OPTIMIZER}: the SAE was saved for inference only (a study keeps the \
                     optimizer's state with [fit] keep_optimizer = true); it can be read, not \
                     trained further"
                ),
            });
        }
        let optimizer = read_tensors(&dir.join(OPTIMIZER))?;
        let get = |name: &str| find(&optimizer, name, &dir.join(OPTIMIZER), device);
        let mut trainer = SaeTrainer::new(&meta.config, meta.d_in, device, meta.source.clone());
        trainer.sae = sae;
        for (i, name) in NAMES.iter().enumerate() {
            trainer.adam.m[i] = get(&format!("adam.m.{name}"))?;
            trainer.adam.v[i] = get(&format!("adam.v.{name}"))?;
        }
        trainer.adam.steps = meta.adam_steps;
        trainer.since_fired = get("tokens_since_fired")?.to_kind(Kind::Int64);
        trainer.step = meta.steps;
        trainer.tokens_seen = meta.tokens_seen;
        trainer.bias_initialised = meta.bias_initialised;
        trainer.history = meta.metrics;
        trainer.mixing = meta.mixing;
        Ok(trainer)
    }
}

impl Sae {
    /// Loads a trained SAE for inference, with what its checkpoint says about it.
    pub fn load(dir: &Path, device: Device) -> Result<(Sae, CheckpointMeta)> {
        let meta = read_meta(dir)?;
        let sae = load_sae(dir, &meta, device)?;
        Ok((sae, meta))
    }
}

/// Reads `sae.json` of a checkpoint folder.
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta> {
    let path = dir.join(META);
    let text = std::fs::read(&path).map_err(|source| CheckpointError::Io {
        path: path.clone(),
        source,
    })?;
    let meta: CheckpointMeta = serde_json::from_slice(&text).map_err(|e| CheckpointError::Bad {
        path: path.clone(),
        message: format!("not an SAE checkpoint: {e}"),
    })?;
    if meta.format_version > CHECKPOINT_VERSION {
        return Err(CheckpointError::Bad {
            path,
            message: format!(
                "checkpoint version {} is newer than this saeshare reads ({CHECKPOINT_VERSION})",
                meta.format_version
            ),
        });
    }
    Ok(meta)
}

fn load_sae(dir: &Path, meta: &CheckpointMeta, device: Device) -> Result<Sae> {
    let path = dir.join(WEIGHTS);
    let tensors = read_tensors(&path)?;
    let mut sae = Sae::new(&meta.config, meta.d_in, device);
    let shapes = [
        vec![meta.d_in as i64, meta.d_sae as i64],
        vec![meta.d_sae as i64],
        vec![meta.d_sae as i64, meta.d_in as i64],
        vec![meta.d_in as i64],
    ];
    for (name, shape) in NAMES.iter().zip(shapes) {
        let tensor = find(&tensors, name, &path, device)?.to_kind(Kind::Float);
        if tensor.size() != shape {
            return Err(CheckpointError::Bad {
                path,
                message: format!("{name} has shape {:?}, expected {shape:?}", tensor.size()),
            });
        }
        let target = match *name {
            W_ENC => &sae.w_enc,
            B_ENC => &sae.b_enc,
            W_DEC => &sae.w_dec,
            _ => &sae.b_dec,
        };
        tch::no_grad(|| target.shallow_clone().copy_(&tensor));
    }
    let state: Vec<(String, Tensor)> = tensors
        .into_iter()
        .filter(|(n, _)| !NAMES.contains(&n.as_str()))
        .collect();
    sae.variant
        .load_state(&state)
        .map_err(|problem| CheckpointError::State { path, problem })?;
    Ok(sae)
}

fn find(tensors: &[(String, Tensor)], name: &str, path: &Path, device: Device) -> Result<Tensor> {
    tensors
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.to_device(device))
        .ok_or_else(|| CheckpointError::Bad {
            path: path.to_path_buf(),
            message: format!("no tensor named {name}"),
        })
}

fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Tensor::read_safetensors(path).map_err(|source| CheckpointError::Torch {
        path: path.to_path_buf(),
        source,
    })
}

fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    write_atomically(path, |temp| {
        Tensor::write_safetensors(tensors, temp).map_err(|source| CheckpointError::Torch {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// Writes `path` whole or not at all: `write` writes the temporary file whose path it is given.
fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = AtomicFile::create(path).map_err(io)?;
    write(file.temp_path())?;
    file.commit().map_err(io)
}
