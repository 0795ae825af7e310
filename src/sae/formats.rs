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
//! [`load`] makes any of them an [`Sae`] that encodes as its own tool does (saev's state dict,
//! a Python pickle, is not read yet: `load` says so).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Device, Kind, Tensor};

use super::checkpoint::read_meta;
use super::config::{SaeConfig, SaeKind};
use super::model::{InputNorm, Sae};

/// The SAE formats saeshare recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

fn error(path: &Path, problem: impl Into<String>) -> FormatError {
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

fn read_json(path: &Path) -> Result<Value, FormatError> {
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

/// An SAE loaded for inference from any format, with what its files say about it.
pub struct LoadedSae {
    pub sae: Sae,
    pub description: SaeDescription,
}

/// Loads the SAE at `path` (format detected) onto `device`, to encode as its own tool does:
/// SAELens' `topk`, `jumprelu` and `standard` SAEs (with `apply_b_dec_to_input` either way and
/// `normalize_activations` none, `constant_norm_rescale` or `layer_norm`), sparsify's TopK SAEs,
/// and saeshare's own. Anything else is an error saying what is not supported.
pub fn load(path: &Path, device: Device) -> Result<LoadedSae, FormatError> {
    let description = describe(path)?;
    let sae = match description.format {
        SaeFormat::Saeshare => {
            Sae::load(path, device)
                .map_err(|e| error(path, e.to_string()))?
                .0
        }
        SaeFormat::SaeLens => load_saelens(path, &description, device)?,
        SaeFormat::Sparsify => load_sparsify(path, &description, device)?,
        SaeFormat::Saev => {
            return Err(error(
                path,
                "a saev checkpoint: its state dict is a Python pickle, which saeshare does not                  read yet; save its four tensors (W_enc, b_enc, W_dec, b_dec) with                  safetensors in an SAELens folder (architecture standard) and use that",
            ))
        }
    };
    Ok(LoadedSae { sae, description })
}

fn inference_config(kind: SaeKind, k: Option<usize>, d_in: usize, d_sae: usize) -> SaeConfig {
    SaeConfig {
        kind,
        k: k.unwrap_or(0),
        expansion: (d_sae / d_in.max(1)).max(1),
        ..SaeConfig::default()
    }
}

fn read_weights(path: &Path) -> Result<Vec<(String, Tensor)>, FormatError> {
    Tensor::read_safetensors(path).map_err(|e| error(path, format!("weights do not read: {e}")))
}

fn take(tensors: &[(String, Tensor)], name: &str, path: &Path) -> Result<Tensor, FormatError> {
    tensors
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.to_kind(Kind::Float))
        .ok_or_else(|| error(path, format!("no tensor named {name}")))
}

fn load_saelens(dir: &Path, d: &SaeDescription, device: Device) -> Result<Sae, FormatError> {
    let cfg_path = dir.join("cfg.json");
    let cfg = read_json(&cfg_path)?;
    let kind = match d.architecture.as_str() {
        "topk" => SaeKind::Topk,
        "jumprelu" => SaeKind::BatchTopk,
        "standard" => SaeKind::Relu,
        other => {
            return Err(error(
                &cfg_path,
                format!(
                    "SAELens architecture {other:?} is not supported; saeshare reads topk,                      jumprelu and standard SAEs"
                ),
            ))
        }
    };
    if kind == SaeKind::Topk && d.k.is_none() {
        return Err(error(&cfg_path, "a topk SAE without `k`"));
    }
    if cfg
        .get("rescale_acts_by_decoder_norm")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Err(error(
            &cfg_path,
            "rescale_acts_by_decoder_norm is true; fold the decoder norms into the encoder              (SAELens' fold_W_dec_norm) and save the SAE again",
        ));
    }
    let input_norm = match d.normalisation.as_deref() {
        None => InputNorm::None,
        Some("constant_norm_rescale") => InputNorm::ConstantNormRescale,
        Some("layer_norm") => InputNorm::LayerNorm,
        Some(other) => {
            return Err(error(
                &cfg_path,
                format!(
                    "normalize_activations = {other:?} is not supported: the scale it needs was                      estimated on the SAE's training data and is not in the folder; fold it                      into the weights (SAELens' fold_activation_norm_scaling_factor) and save                      the SAE again, or use an SAE with none, constant_norm_rescale or layer_norm"
                ),
            ))
        }
    };
    let weights_path = dir.join("sae_weights.safetensors");
    let tensors = read_weights(&weights_path)?;
    let w_enc = take(&tensors, "W_enc", &weights_path)?;
    let mut b_enc = take(&tensors, "b_enc", &weights_path)?;
    let b_dec = take(&tensors, "b_dec", &weights_path)?;
    // saeshare always encodes `x - b_dec`; an SAE that does not takes `b_dec W_enc` into its
    // encoder bias instead, which is the same function.
    if cfg.get("apply_b_dec_to_input").and_then(Value::as_bool) == Some(false) {
        b_enc += b_dec.unsqueeze(0).mm(&w_enc).squeeze_dim(0);
    }
    let state: Vec<(String, Tensor)> = match kind {
        SaeKind::BatchTopk => vec![(
            "threshold".to_string(),
            take(&tensors, "threshold", &weights_path)?,
        )],
        _ => Vec::new(),
    };
    let config = inference_config(kind, d.k, d.d_in, d.d_sae);
    let weights = [w_enc, b_enc, take(&tensors, "W_dec", &weights_path)?, b_dec];
    let mut sae = Sae::from_weights(&config, weights, &state, device)
        .map_err(|problem| error(&weights_path, problem))?;
    sae.input_norm = input_norm;
    check_widths(&sae, d, &weights_path)?;
    Ok(sae)
}

fn load_sparsify(dir: &Path, d: &SaeDescription, device: Device) -> Result<Sae, FormatError> {
    let cfg_path = dir.join("cfg.json");
    let cfg = read_json(&cfg_path)?;
    if d.architecture != "topk" {
        return Err(error(
            &cfg_path,
            format!(
                "sparsify activation {:?} is not supported; saeshare reads TopK sparse coders",
                d.architecture
            ),
        ));
    }
    for key in ["skip_connection", "transcode"] {
        if cfg.get(key).and_then(Value::as_bool) == Some(true) {
            return Err(error(
                &cfg_path,
                format!(
                    "{key} is true: a transcoder or skip connection is not an SAE of one layer"
                ),
            ));
        }
    }
    let weights_path = dir.join("sae.safetensors");
    let tensors = read_weights(&weights_path)?;
    // sparsify's encoder is an nn.Linear: weight d_sae x d_in.
    let w_enc = take(&tensors, "encoder.weight", &weights_path)?
        .transpose(0, 1)
        .contiguous();
    let weights = [
        w_enc,
        take(&tensors, "encoder.bias", &weights_path)?,
        take(&tensors, "W_dec", &weights_path)?,
        take(&tensors, "b_dec", &weights_path)?,
    ];
    let config = inference_config(SaeKind::Topk, d.k, d.d_in, d.d_sae);
    let sae = Sae::from_weights(&config, weights, &[], device)
        .map_err(|problem| error(&weights_path, problem))?;
    check_widths(&sae, d, &weights_path)?;
    Ok(sae)
}

/// The weights' widths must be those the configuration states.
fn check_widths(sae: &Sae, d: &SaeDescription, path: &Path) -> Result<(), FormatError> {
    if (sae.d_in as usize, sae.d_sae as usize) != (d.d_in, d.d_sae) {
        return Err(error(
            path,
            format!(
                "the weights are {} x {}, but the configuration says d_in {} and d_sae {}",
                sae.d_in, sae.d_sae, d.d_in, d.d_sae
            ),
        ));
    }
    Ok(())
}
