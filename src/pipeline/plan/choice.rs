//! What a study chooses of an encoder package, checked against the package: the layers, the
//! position its codes are read at, the SAE settings and the SAEs it imports.

use std::path::Path;

use crate::encoder::{Manifest, OutputKind, Pooling};
use crate::names::check_name;
use crate::pipeline::imports::{self, ImportedSae};
use crate::pipeline::plan::Plan;
use crate::pipeline::study::{Position, Study};
use crate::sae::SaeConfig;

/// What a study chooses of an encoder package: its layers, pooling, SAE settings and the SAEs
/// it imports.
pub(in crate::pipeline) struct EncoderChoice {
    pub manifest: Manifest,
    /// Indices into the manifest's layers.
    pub layers: Vec<usize>,
    pub pooling: Pooling,
    pub sae: SaeConfig,
    pub imported: Vec<Option<ImportedSae>>,
}

/// Reads encoder `name`'s package and checks the study's choices against it: the layers exist
/// and their names can name folders, the SAE fits each layer's width, the imported SAEs load
/// and take the width of their layer.
pub(in crate::pipeline) fn choose(
    study: &Study,
    name: &str,
    package: &Path,
    path: &Path,
) -> anyhow::Result<EncoderChoice> {
    let spec = &study.encoders[name];
    let manifest = Manifest::read(package)?;
    let manifest = match spec.image_size {
        None => manifest,
        Some(side) => (manifest.at_image_size(side))
            .map_err(|e| anyhow::anyhow!("{}: [encoders.{name}]: {e}", path.display()))?,
    };
    let layers = manifest
        .select_layers(&spec.layers)
        .map_err(|e| anyhow::anyhow!("{}: [encoders.{name}]: {e}", path.display()))?;
    let pooling = read_position(study, name, &manifest, path)?;
    let sae = study
        .sae_for(name)
        .map_err(|e| anyhow::anyhow!("{}: [encoders.{name}.sae]: {e}", path.display()))?;
    for &l in &layers {
        let layer = &manifest.layers[l];
        check_name(&layer.name).map_err(|e| {
            anyhow::anyhow!(
                "{}: layer {e}; the package cannot be used until its layers are renamed",
                package.join("encoder.json").display()
            )
        })?;
        sae.validate(layer.width).map_err(|e| {
            anyhow::anyhow!(
                "{}: [encoders.{name}] layer {}: {e}",
                path.display(),
                layer.name
            )
        })?;
    }
    let root = path.parent().unwrap_or(Path::new("."));
    let (output, _) = Plan::folders(study, path);
    let imported = imports::resolve(&spec.saes, name, &manifest, &layers, root, &output, path)?;
    Ok(EncoderChoice {
        manifest,
        layers,
        pooling,
        sae,
        imported,
    })
}

/// The pooling encoder `name`'s codes are read with: `position = "token0"` is token 0 of a
/// token layer, else the encoder's `pooling` or the package's default. A CNN has no token 0:
/// the study-wide `[codes] position = "token0"` (the reference's read-out for its
/// transformers) leaves a CNN's global average, the pooling its classifier reads; the key on
/// the CNN's own table is an error.
fn read_position(
    study: &Study,
    name: &str,
    manifest: &Manifest,
    path: &Path,
) -> anyhow::Result<Pooling> {
    let spec = &study.encoders[name];
    let chosen = spec.pooling.unwrap_or(manifest.default_pooling);
    match spec.position.unwrap_or(study.codes.position) {
        Position::Pooled => Ok(chosen),
        Position::Token0 if manifest.outputs != OutputKind::Tokens => {
            anyhow::ensure!(
                spec.position.is_none(),
                "{}: position = \"token0\" needs tokens, and {} gives CNN feature maps (leave \
                 `position` out: the CNN is read with its pooling, {:?})",
                study.encoder_at(path, name),
                manifest.name,
                chosen
            );
            tracing::info!(
                "{name}: a CNN has no token 0; [codes] position = \"token0\" reads it with its \
                 pooling ({chosen:?})"
            );
            Ok(chosen)
        }
        Position::Token0 => {
            anyhow::ensure!(
                spec.pooling.is_none_or(|p| p == Pooling::Cls),
                "{}: position = \"token0\" and pooling = {:?} both say where to read the \
                 codes; keep one",
                study.encoder_at(path, name),
                chosen
            );
            Ok(Pooling::Cls)
        }
    }
}
