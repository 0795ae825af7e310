//! What a study chooses of an encoder package, checked against the package: the layers, the
//! position its codes are read at, the SAE settings and the SAEs it imports.

use std::path::Path;

use super::imports::{self, ImportedSae};
use super::plan::Plan;
use super::study::{Position, Study};
use crate::encoder::{Manifest, OutputKind, Pooling};
use crate::names::check_name;
use crate::sae::SaeConfig;

/// What a study chooses of an encoder package: its layers, pooling, SAE settings and the SAEs
/// it imports.
pub(super) struct EncoderChoice {
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
pub(super) fn choose(
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
/// token layer, else the encoder's `pooling` or the package's default.
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
        Position::Token0 => {
            anyhow::ensure!(
                manifest.outputs == OutputKind::Tokens,
                "{}: [encoders.{name}]: position = \"token0\" needs tokens, and {} gives CNN \
                 feature maps (read them with the package's pooling)",
                path.display(),
                manifest.name
            );
            anyhow::ensure!(
                spec.pooling.is_none_or(|p| p == Pooling::Cls),
                "{}: [encoders.{name}]: position = \"token0\" and pooling = {:?} both say \
                 where to read the codes; keep one",
                path.display(),
                chosen
            );
            Ok(Pooling::Cls)
        }
    }
}
