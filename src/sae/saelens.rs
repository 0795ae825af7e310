//! Every saeshare SAE folder is also an SAELens folder: `SAE.load_from_disk(dir)` of SAELens
//! (version 6) opens it, and its `encode` gives the codes `saeshare sae encode` gives.
//!
//! SAELens reads `cfg.json` and `sae_weights.safetensors`. saeshare's weights file already holds
//! SAELens' tensors under SAELens' names and orientation (`W_enc` d_in x d_sae, `W_dec` d_sae x
//! d_in, `b_enc`, `b_dec`; BatchTopK's per-latent `threshold`, which is SAELens' JumpReLU
//! inference form), so `sae_weights.safetensors` is a relative symbolic link to
//! `sae.safetensors` and no weights are duplicated. `cfg.json` is written beside `sae.json`
//! each time a checkpoint is saved.
//!
//! | saeshare kind | SAELens `architecture` | encode |
//! |---|---|---|
//! | `topk` | `topk` (`k`) | `TopK(ReLU(pre))`, `pre = (x - b_dec) W_enc + b_enc` |
//! | `batch-topk` | `jumprelu` (`threshold`) | `ReLU(pre) * (pre > threshold)` |
//! | `relu` | `standard` | `ReLU(pre)` |

use std::path::Path;

use serde_json::{json, Value};

use super::checkpoint::CheckpointMeta;
use super::config::SaeKind;
use crate::atomic::AtomicFile;

/// SAELens' config file.
pub const SAELENS_CONFIG: &str = "cfg.json";
/// SAELens' weights file: in a saeshare folder, a link to `sae.safetensors`.
pub const SAELENS_WEIGHTS: &str = "sae_weights.safetensors";
/// The SAELens config format written (its `metadata.sae_lens_version`): 6.0 and later read the
/// architecture from `architecture` and the hyperparameters at the top level.
const SAELENS_FORMAT: &str = "6.0.0";

/// SAELens' name of a saeshare SAE kind.
pub fn architecture(kind: SaeKind) -> &'static str {
    match kind {
        SaeKind::Topk => "topk",
        SaeKind::BatchTopk => "jumprelu",
        SaeKind::Relu => "standard",
    }
}

/// The `cfg.json` SAELens reads for the SAE a checkpoint describes.
pub fn config(meta: &CheckpointMeta) -> Value {
    let mut cfg = json!({
        "architecture": architecture(meta.config.kind),
        "d_in": meta.d_in,
        "d_sae": meta.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": true,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT,
            "model_name": meta.source.encoder,
            "hook_name": meta.source.layer,
            "saeshare_encoder": meta.source.encoder,
            "saeshare_layer": meta.source.layer,
            "saeshare_kind": meta.config.kind,
            "saeshare_steps": meta.steps,
            "saeshare_tokens_seen": meta.tokens_seen,
            "saeshare_format_version": meta.format_version,
        },
    });
    if meta.config.kind == SaeKind::Topk {
        cfg["k"] = json!(meta.config.k);
        cfg["rescale_acts_by_decoder_norm"] = json!(false);
    }
    cfg
}

/// Writes `cfg.json` (whole or not at all) and, where missing, the weights link.
pub fn write_view(dir: &Path, meta: &CheckpointMeta, weights_file: &str) -> std::io::Result<()> {
    let path = dir.join(SAELENS_CONFIG);
    let file = AtomicFile::create(&path)?;
    let text = serde_json::to_vec_pretty(&config(meta)).expect("serialisable");
    std::fs::write(file.temp_path(), text)?;
    file.commit()?;
    link_weights(dir, weights_file)
}

/// `sae_weights.safetensors -> sae.safetensors`, relative, so the folder can move. A link that
/// is already right is left alone; anything else at that name is not saeshare's and is an error.
fn link_weights(dir: &Path, weights_file: &str) -> std::io::Result<()> {
    let link = dir.join(SAELENS_WEIGHTS);
    match std::fs::read_link(&link) {
        Ok(target) if target == Path::new(weights_file) => return Ok(()),
        Ok(target) => {
            return Err(std::io::Error::other(format!(
                "{} links to {}, not {weights_file}; move it away",
                link.display(),
                target.display()
            )))
        }
        Err(_) if link.symlink_metadata().is_ok() => {
            return Err(std::io::Error::other(format!(
                "{} exists and is not saeshare's link to {weights_file}; move it away",
                link.display()
            )))
        }
        Err(_) => {}
    }
    make_link(weights_file, &link)
}

#[cfg(unix)]
fn make_link(target: &str, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn make_link(target: &str, link: &Path) -> std::io::Result<()> {
    std::fs::copy(crate::atomic::folder_of(link).join(target), link).map(|_| ())
}
