//! SAE folders and files from other tools: which format a path holds, and what it says about
//! its SAE, read from its configuration and the shapes in its weights' header (no weights are
//! loaded). `saeshare sae inspect` prints it.
//!
//! | format | what is on disk |
//! |---|---|
//! | saeshare | `sae.json` + `sae.safetensors` (FORMATS.md, "SAE checkpoint") |
//! | SAELens | `cfg.json` (with `architecture`) + `sae_weights.safetensors` |
//! | sparsify | `cfg.json` (with `k`, `expansion_factor` or `num_latents`, `d_in`) + `sae.safetensors` |
//! | saev | one file: a JSON line of its config (`d_vit`, `exp_factor`), then `torch.save`'s state dict |
//!
//! [`super::load`] makes any of them an [`super::Sae`] that encodes as its own tool does.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::checkpoint::read_meta;

/// The SAE formats saeshare recognises (a study names them in lower case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaeFormat {
    Saeshare,
    SaeLens,
    Sparsify,
    Saev,
}

impl fmt::Display for SaeFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SaeFormat::Saeshare => "saeshare",
            SaeFormat::SaeLens => "saelens",
            SaeFormat::Sparsify => "sparsify",
            SaeFormat::Saev => "saev",
        })
    }
}

/// What a path holds, as far as its files say.
#[derive(Clone, Debug, PartialEq)]
pub struct SaeDescription {
    pub path: PathBuf,
    pub format: SaeFormat,
    /// The format's own name of the architecture (`topk`, `jumprelu`, `standard`, `relu`...).
    pub architecture: String,
    pub d_in: usize,
    pub d_sae: usize,
    /// Active latents per sample, where the architecture has a fixed k.
    pub k: Option<usize>,
    /// What the SAE was trained on, as the files name it (encoder and layer, or hook).
    pub source: Option<String>,
    /// The input normalisation the SAE expects, where it is not none.
    pub normalisation: Option<String>,
    /// The weight tensors and their shapes.
    pub tensors: BTreeMap<String, Vec<usize>>,
}

/// Why a path is not an SAE saeshare can read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct FormatError {
    pub path: PathBuf,
    pub problem: String,
}

/// A [`FormatError`] about `path`.
pub(super) fn error(path: &Path, problem: impl Into<String>) -> FormatError {
    FormatError {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// The format of the SAE at `path`, from the files it holds.
pub fn detect(path: &Path) -> Result<SaeFormat, FormatError> {
    if path.is_file() {
        return Ok(SaeFormat::Saev);
    }
    if !path.is_dir() {
        return Err(error(path, "no such file or folder"));
    }
    let has = |name: &str| path.join(name).exists();
    if has("sae.json") {
        return Ok(SaeFormat::Saeshare);
    }
    if has("cfg.json") && has("sae_weights.safetensors") {
        return Ok(SaeFormat::SaeLens);
    }
    if has("cfg.json") && has("sae.safetensors") {
        return Ok(SaeFormat::Sparsify);
    }
    Err(error(
        path,
        "not an SAE folder saeshare knows: expected sae.json (saeshare), cfg.json with \
         sae_weights.safetensors (SAELens) or with sae.safetensors (sparsify), or a saev \
         checkpoint file",
    ))
}

/// Describes the SAE at `path`, in the format detected there.
pub fn describe(path: &Path) -> Result<SaeDescription, FormatError> {
    match detect(path)? {
        SaeFormat::Saeshare => describe_saeshare(path),
        SaeFormat::SaeLens => describe_saelens(path),
        SaeFormat::Sparsify => describe_sparsify(path),
        SaeFormat::Saev => describe_saev(path),
    }
}

fn describe_saeshare(dir: &Path) -> Result<SaeDescription, FormatError> {
    let meta = read_meta(dir).map_err(|e| error(dir, e.to_string()))?;
    let kind = serde_json::to_value(meta.config.kind).expect("serialisable");
    Ok(SaeDescription {
        path: dir.to_path_buf(),
        format: SaeFormat::Saeshare,
        architecture: kind.as_str().unwrap_or_default().to_string(),
        d_in: meta.d_in,
        d_sae: meta.d_sae,
        k: (meta.config.kind != super::SaeKind::Relu).then_some(meta.config.k),
        source: Some(format!(
            "{} layer {}",
            meta.source.encoder, meta.source.layer
        )),
        normalisation: None,
        tensors: safetensors_shapes(&dir.join("sae.safetensors"))?,
    })
}

fn describe_saelens(dir: &Path) -> Result<SaeDescription, FormatError> {
    let cfg_path = dir.join("cfg.json");
    let cfg = read_json(&cfg_path)?;
    let metadata = cfg.get("metadata").cloned().unwrap_or(Value::Null);
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let source = match (
        text(&metadata, "saeshare_encoder"),
        text(&metadata, "saeshare_layer"),
    ) {
        (Some(encoder), Some(layer)) => Some(format!("{encoder} layer {layer}")),
        _ => {
            let model = text(&metadata, "model_name").or_else(|| text(&cfg, "model_name"));
            let hook = text(&metadata, "hook_name").or_else(|| text(&cfg, "hook_name"));
            match (model, hook) {
                (Some(m), Some(h)) => Some(format!("{m} hook {h}")),
                (m, h) => m.or(h),
            }
        }
    };
    let normalisation = text(&cfg, "normalize_activations").filter(|n| n != "none");
    Ok(SaeDescription {
        path: dir.to_path_buf(),
        format: SaeFormat::SaeLens,
        architecture: text(&cfg, "architecture").unwrap_or_else(|| "standard".into()),
        d_in: number(&cfg, "d_in", &cfg_path)?,
        d_sae: number(&cfg, "d_sae", &cfg_path)?,
        k: cfg.get("k").and_then(Value::as_u64).map(|k| k as usize),
        source,
        normalisation,
        tensors: safetensors_shapes(&dir.join("sae_weights.safetensors"))?,
    })
}

fn describe_sparsify(dir: &Path) -> Result<SaeDescription, FormatError> {
    let cfg_path = dir.join("cfg.json");
    let cfg = read_json(&cfg_path)?;
    let d_in = number(&cfg, "d_in", &cfg_path)?;
    let latents = cfg.get("num_latents").and_then(Value::as_u64).unwrap_or(0) as usize;
    let d_sae = if latents > 0 {
        latents
    } else {
        d_in * cfg
            .get("expansion_factor")
            .and_then(Value::as_u64)
            .unwrap_or(32) as usize
    };
    Ok(SaeDescription {
        path: dir.to_path_buf(),
        format: SaeFormat::Sparsify,
        architecture: cfg
            .get("activation")
            .and_then(Value::as_str)
            .unwrap_or("topk")
            .to_string(),
        d_in,
        d_sae,
        k: cfg.get("k").and_then(Value::as_u64).map(|k| k as usize),
        // sparsify names the hook by the folder: `layers.6/cfg.json`.
        source: dir.file_name().map(|n| n.to_string_lossy().into_owned()),
        normalisation: None,
        tensors: safetensors_shapes(&dir.join("sae.safetensors"))?,
    })
}

fn describe_saev(file: &Path) -> Result<SaeDescription, FormatError> {
    let mut first = String::new();
    std::io::BufReader::new(std::fs::File::open(file).map_err(|e| error(file, e.to_string()))?)
        .read_line(&mut first)
        .map_err(|e| error(file, e.to_string()))?;
    let cfg: Value = serde_json::from_str(&first).map_err(|_| {
        error(
            file,
            "not an SAE saeshare knows: a file must be a saev checkpoint (a JSON line of its \
             config, then the state dict)",
        )
    })?;
    let d_in = number(&cfg, "d_vit", file)?;
    let expansion = number(&cfg, "exp_factor", file)?;
    Ok(SaeDescription {
        path: file.to_path_buf(),
        format: SaeFormat::Saev,
        architecture: "relu".into(),
        d_in,
        d_sae: d_in * expansion,
        k: None,
        source: None,
        normalisation: None,
        tensors: BTreeMap::new(),
    })
}

/// The JSON of a configuration file.
pub(super) fn read_json(path: &Path) -> Result<Value, FormatError> {
    let text = std::fs::read(path).map_err(|e| error(path, e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| error(path, format!("not JSON: {e}")))
}

fn number(cfg: &Value, key: &str, path: &Path) -> Result<usize, FormatError> {
    cfg.get(key)
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| error(path, format!("no whole number `{key}`")))
}

/// The tensor names and shapes of a safetensors file, from its header alone.
pub fn safetensors_shapes(path: &Path) -> Result<BTreeMap<String, Vec<usize>>, FormatError> {
    let mut file = std::fs::File::open(path).map_err(|e| error(path, e.to_string()))?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length)
        .map_err(|_| error(path, "too short for a safetensors file"))?;
    let length = u64::from_le_bytes(length);
    // A header is JSON of a few KiB; anything huge is not a safetensors file.
    if length > 100 << 20 {
        return Err(error(
            path,
            "not a safetensors file (header length out of range)",
        ));
    }
    let mut header = vec![0u8; length as usize];
    file.read_exact(&mut header)
        .map_err(|_| error(path, "truncated safetensors header"))?;
    let header: BTreeMap<String, Value> = serde_json::from_slice(&header)
        .map_err(|e| error(path, format!("not a safetensors header: {e}")))?;
    Ok(header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, entry)| {
            let shape = entry
                .get("shape")
                .and_then(Value::as_array)
                .map(|s| {
                    s.iter()
                        .filter_map(Value::as_u64)
                        .map(|n| n as usize)
                        .collect()
                })
                .unwrap_or_default();
            (name, shape)
        })
        .collect())
}

impl fmt::Display for SaeDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.path.display())?;
        writeln!(f, "  format:        {}", self.format)?;
        writeln!(f, "  architecture:  {}", self.architecture)?;
        writeln!(f, "  d_in:          {}", self.d_in)?;
        writeln!(f, "  d_sae:         {}", self.d_sae)?;
        if let Some(k) = self.k {
            writeln!(f, "  k:             {k}")?;
        }
        writeln!(
            f,
            "  source:        {}",
            self.source.as_deref().unwrap_or("not recorded")
        )?;
        writeln!(
            f,
            "  normalisation: {}",
            self.normalisation.as_deref().unwrap_or("none")
        )?;
        for (name, shape) in &self.tensors {
            writeln!(f, "  tensor {name}: {shape:?}")?;
        }
        Ok(())
    }
}
