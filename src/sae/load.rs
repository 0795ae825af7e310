//! SAEs of any format ([`super::formats`]) made into an [`Sae`] that encodes as its own tool
//! does: SAELens' `topk`, `jumprelu` and `standard` SAEs, sparsify's TopK SAEs, saev's ReLU
//! SAEs, and saeshare's own. Whatever cannot be reproduced exactly is refused, saying what.
//!
//! Input scalings that are affine and fixed (saev's centring and scaling by statistics of its
//! training data) are folded into the weights: `(x - m) / s` then `x - b_dec` is
//! `x - (m + s b_dec)` with `W_enc / s`, and decoding scales by `s` and adds `m` back. Per-row
//! scalings (SAELens' `constant_norm_rescale`, `layer_norm`) are an [`InputNorm`].

use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Device, Kind, Tensor};

use super::config::{SaeConfig, SaeKind};
use super::formats::{describe, error, read_json, FormatError, SaeDescription, SaeFormat};
use super::model::{InputNorm, Sae};
use super::torch_pickle::{self, StoredTensor};

/// An SAE loaded for inference from any format, with what its files say about it.
pub struct LoadedSae {
    pub sae: Sae,
    pub description: SaeDescription,
}

/// One of saev's two input scalings, which its checkpoint does not hold: the file saev read it
/// from (saved by `torch.save`), or off (the SAE was trained with that option false).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaevScaling {
    Off,
    File(PathBuf),
}

impl std::str::FromStr for SaevScaling {
    type Err = std::convert::Infallible;

    /// `false`, or a path.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "false" => SaevScaling::Off,
            path => SaevScaling::File(PathBuf::from(path)),
        })
    }
}

/// What loading needs beyond the SAE's own files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// saev's `scale_mean`: the mean activation subtracted before the SAE.
    pub saev_scale_mean: Option<SaevScaling>,
    /// saev's `scale_norm`: the scalar the centred activation is divided by.
    pub saev_scale_norm: Option<SaevScaling>,
}

impl LoadOptions {
    /// The files these options name (they identify the SAE as much as its own files).
    pub fn files(&self) -> Vec<&Path> {
        [&self.saev_scale_mean, &self.saev_scale_norm]
            .into_iter()
            .filter_map(|s| match s {
                Some(SaevScaling::File(path)) => Some(path.as_path()),
                _ => None,
            })
            .collect()
    }
}

/// Loads the SAE at `path` (format detected) onto `device`.
pub fn load(path: &Path, device: Device, options: &LoadOptions) -> Result<LoadedSae, FormatError> {
    let description = describe(path)?;
    let config = inference_config(&description, options)?;
    let sae = match description.format {
        SaeFormat::Saeshare => {
            Sae::load(path, device)
                .map_err(|e| error(path, e.to_string()))?
                .0
        }
        SaeFormat::SaeLens => load_saelens(path, &description, &config, device)?,
        SaeFormat::Sparsify => load_sparsify(path, &description, &config, device)?,
        SaeFormat::Saev => load_saev(path, &description, &config, options, device)?,
    };
    Ok(LoadedSae { sae, description })
}

/// The settings an SAE described by `d` encodes with (its variant and `k`), or why saeshare
/// cannot encode as its tool does. Reads the small configuration files again, no weights: a
/// study checks every SAE it imports this way before any work starts.
pub fn inference_config(
    d: &SaeDescription,
    options: &LoadOptions,
) -> Result<SaeConfig, FormatError> {
    let kind = match d.format {
        SaeFormat::Saeshare => {
            return super::checkpoint::read_meta(&d.path)
                .map(|meta| meta.config)
                .map_err(|e| error(&d.path, e.to_string()))
        }
        SaeFormat::SaeLens => saelens_kind(d)?,
        SaeFormat::Sparsify => sparsify_kind(d)?,
        SaeFormat::Saev => {
            saev_scalings(d, options)?;
            SaeKind::Relu
        }
    };
    if kind == SaeKind::Topk && d.k.is_none() {
        return Err(error(
            &d.path,
            "a topk SAE without `k` in its configuration",
        ));
    }
    Ok(SaeConfig {
        kind,
        k: d.k.unwrap_or(0),
        expansion: (d.d_sae / d.d_in.max(1)).max(1),
        ..SaeConfig::default()
    })
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

/// The variant of a SAELens SAE, or why it cannot be encoded as SAELens does.
fn saelens_kind(d: &SaeDescription) -> Result<SaeKind, FormatError> {
    let cfg_path = d.path.join("cfg.json");
    let cfg = read_json(&cfg_path)?;
    let kind = match d.architecture.as_str() {
        "topk" => SaeKind::Topk,
        // A per-latent threshold, as saeshare's BatchTopK SAEs encode at inference.
        "jumprelu" => SaeKind::BatchTopk,
        "standard" => SaeKind::Relu,
        other => {
            return Err(error(
                &cfg_path,
                format!(
                    "SAELens architecture {other:?} is not supported; saeshare reads topk, \
                     jumprelu and standard SAEs"
                ),
            ))
        }
    };
    if cfg
        .get("rescale_acts_by_decoder_norm")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Err(error(
            &cfg_path,
            "rescale_acts_by_decoder_norm is true; fold the decoder norms into the encoder \
             (SAELens' fold_W_dec_norm) and save the SAE again",
        ));
    }
    match d.normalisation.as_deref() {
        None | Some("constant_norm_rescale") | Some("layer_norm") => Ok(kind),
        Some(other) => Err(error(
            &cfg_path,
            format!(
                "normalize_activations = {other:?} is not supported: the scale it needs was \
                 estimated on the SAE's training data and is not in the folder; fold it into \
                 the weights (SAELens' fold_activation_norm_scaling_factor) and save the SAE \
                 again, or use an SAE with none, constant_norm_rescale or layer_norm"
            ),
        )),
    }
}

fn load_saelens(
    dir: &Path,
    d: &SaeDescription,
    config: &SaeConfig,
    device: Device,
) -> Result<Sae, FormatError> {
    let cfg = read_json(&dir.join("cfg.json"))?;
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
    let state: Vec<(String, Tensor)> = match config.kind {
        SaeKind::BatchTopk => vec![(
            "threshold".to_string(),
            take(&tensors, "threshold", &weights_path)?,
        )],
        _ => Vec::new(),
    };
    let weights = [w_enc, b_enc, take(&tensors, "W_dec", &weights_path)?, b_dec];
    let mut sae = Sae::from_weights(config, weights, &state, device)
        .map_err(|problem| error(&weights_path, problem))?;
    sae.input_norm = match d.normalisation.as_deref() {
        Some("constant_norm_rescale") => InputNorm::ConstantNormRescale,
        Some("layer_norm") => InputNorm::LayerNorm,
        _ => InputNorm::None,
    };
    check_widths(&sae, d, &weights_path)?;
    Ok(sae)
}

/// A sparsify SAE is a TopK SAE of one layer, or it is refused.
fn sparsify_kind(d: &SaeDescription) -> Result<SaeKind, FormatError> {
    let cfg_path = d.path.join("cfg.json");
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
    Ok(SaeKind::Topk)
}

fn load_sparsify(
    dir: &Path,
    d: &SaeDescription,
    config: &SaeConfig,
    device: Device,
) -> Result<Sae, FormatError> {
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
    let sae = Sae::from_weights(config, weights, &[], device)
        .map_err(|problem| error(&weights_path, problem))?;
    check_widths(&sae, d, &weights_path)?;
    Ok(sae)
}

/// saev's two scalings, each stated: the checkpoint does not say whether its SAE was trained
/// on scaled activations, and by how much.
fn saev_scalings<'a>(
    d: &SaeDescription,
    options: &'a LoadOptions,
) -> Result<(&'a SaevScaling, &'a SaevScaling), FormatError> {
    match (&options.saev_scale_mean, &options.saev_scale_norm) {
        (Some(mean), Some(norm)) => Ok((mean, norm)),
        _ => Err(error(
            &d.path,
            "a saev SAE is trained on activations centred (saev's scale_mean) and scaled \
             (scale_norm) by statistics of its training data, which its checkpoint does not \
             hold: give scale_mean and scale_norm, each as the file saev read it from or false \
             where the SAE was trained with it off",
        )),
    }
}

fn load_saev(
    file: &Path,
    d: &SaeDescription,
    config: &SaeConfig,
    options: &LoadOptions,
    device: Device,
) -> Result<Sae, FormatError> {
    let (mean, norm) = saev_scalings(d, options)?;
    let bytes = std::fs::read(file).map_err(|e| error(file, e.to_string()))?;
    // One JSON line of the configuration, then `torch.save`'s archive.
    let start = bytes.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    let tensors = torch_pickle::read_state_dict(&bytes[start..])
        .map_err(|e| error(file, format!("the state dict does not read: {e}")))?;
    let take = |name: &str| -> Result<Tensor, FormatError> {
        tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| to_tensor(t))
            .ok_or_else(|| error(file, format!("the state dict has no tensor {name}")))
    };
    let [mut w_enc, b_enc, mut w_dec, mut b_dec] = [
        take("W_enc")?,
        take("b_enc")?,
        take("W_dec")?,
        take("b_dec")?,
    ];
    if let SaevScaling::File(path) = norm {
        let s = read_stored_tensor(path)?;
        let scale = match s.values.as_slice() {
            [scale] if scale.is_finite() && *scale > 0.0 => f64::from(*scale),
            _ => {
                return Err(error(
                    path,
                    format!(
                        "saev's scale_norm must be one positive number; this holds {:?}",
                        s.shape
                    ),
                ))
            }
        };
        w_enc /= scale;
        w_dec *= scale;
        b_dec *= scale;
    }
    if let SaevScaling::File(path) = mean {
        let m = read_stored_tensor(path)?;
        if m.values.len() != d.d_in {
            return Err(error(
                path,
                format!(
                    "saev's scale_mean has {} values; the SAE takes inputs of width {}",
                    m.values.len(),
                    d.d_in
                ),
            ));
        }
        b_dec += Tensor::from_slice(&m.values);
    }
    let sae = Sae::from_weights(config, [w_enc, b_enc, w_dec, b_dec], &[], device)
        .map_err(|problem| error(file, problem))?;
    check_widths(&sae, d, file)?;
    Ok(sae)
}

fn to_tensor(stored: &StoredTensor) -> Tensor {
    let shape: Vec<i64> = stored.shape.iter().map(|&n| n as i64).collect();
    Tensor::from_slice(&stored.values).reshape(shape)
}

/// A tensor `torch.save` wrote alone in `path` (saev's scale_mean and scale_norm).
fn read_stored_tensor(path: &Path) -> Result<StoredTensor, FormatError> {
    let bytes = std::fs::read(path).map_err(|e| error(path, e.to_string()))?;
    torch_pickle::read_tensor(&bytes).map_err(|e| error(path, format!("not a saved tensor: {e}")))
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
