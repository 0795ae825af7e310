//! SAEs trained elsewhere that a study names per encoder layer instead of fitting one:
//! `saes = { "11" = "path/to/sae" }`, or a table with the format, a second SAE for the ceiling
//! and saev's input scalings. Such a layer skips the fit; its codes, pairs and floor are made
//! as for a fitted one. Everything about an import is checked when the plan is made (the
//! format, that saeshare encodes as its tool does, the widths), before any work starts.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::encoder::Manifest;
use crate::pipeline::plan::resolve_path;
use crate::sae::formats::{self, SaeDescription, SaeFormat};
use crate::sae::{inference_config, LoadOptions, SaeConfig, SaevScaling};

/// An imported SAE as the study writes it: a path, or a table.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportSpec {
    /// The SAE's folder (saeshare, SAELens, sparsify) or file (saev).
    pub path: PathBuf,
    /// The format the study expects; detected from the files either way.
    pub format: Option<SaeFormat>,
    /// A second SAE of the same layer (another seed or run), for the ceiling baseline.
    pub ceiling: Option<PathBuf>,
    /// saev's `scale_mean` and `scale_norm`.
    pub scale_mean: Option<SaevScaling>,
    pub scale_norm: Option<SaevScaling>,
}

/// The table form of [`ImportSpec`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportTable {
    path: PathBuf,
    #[serde(default)]
    format: Option<SaeFormat>,
    #[serde(default)]
    ceiling: Option<PathBuf>,
    #[serde(default)]
    scale_mean: Option<ScalingText>,
    #[serde(default)]
    scale_norm: Option<ScalingText>,
}

/// saev's scalings as a study writes them: `false`, or a path.
struct ScalingText(SaevScaling);

impl<'de> Deserialize<'de> for ScalingText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalingVisitor;
        impl Visitor<'_> for ScalingVisitor {
            type Value = ScalingText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("false, or the path of the file saev read it from")
            }
            fn visit_bool<E: de::Error>(self, on: bool) -> Result<ScalingText, E> {
                if on {
                    // saev's `true` computes it from the training data and keeps it nowhere.
                    return Err(E::custom(
                        "true: saev computed this scaling (scale_mean or scale_norm) from its \
                         training data and did not save it; give the file it was saved to, or \
                         false",
                    ));
                }
                Ok(ScalingText(SaevScaling::Off))
            }
            fn visit_str<E: de::Error>(self, path: &str) -> Result<ScalingText, E> {
                Ok(ScalingText(SaevScaling::File(PathBuf::from(path))))
            }
        }
        deserializer.deserialize_any(ScalingVisitor)
    }
}

impl<'de> Deserialize<'de> for ImportSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = ImportSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the SAE's path, or a table with `path`")
            }
            fn visit_str<E: de::Error>(self, path: &str) -> Result<ImportSpec, E> {
                Ok(ImportSpec {
                    path: PathBuf::from(path),
                    format: None,
                    ceiling: None,
                    scale_mean: None,
                    scale_norm: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ImportSpec, A::Error> {
                let table = ImportTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ImportSpec {
                    path: table.path,
                    format: table.format,
                    ceiling: table.ceiling,
                    scale_mean: table.scale_mean.map(|s| s.0),
                    scale_norm: table.scale_norm.map(|s| s.0),
                })
            }
        }
        deserializer.deserialize_any(SpecVisitor)
    }
}

/// An imported SAE, resolved and checked.
#[derive(Clone, Debug)]
pub struct ImportedSae {
    pub description: SaeDescription,
    pub options: LoadOptions,
    /// How it encodes (its variant and k), for the codes' metadata.
    pub config: SaeConfig,
    /// A digest of its files: codes made with it are stale when they change.
    pub digest: String,
    /// The second SAE for the ceiling, where the study gives one.
    pub ceiling: Option<Box<ImportedSae>>,
}

impl ImportedSae {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.description.path
    }

    /// `PATH (saelens topk)`: what the codes' metadata and the logs call it.
    pub fn label(&self) -> String {
        format!(
            "{} ({} {})",
            self.path().display(),
            self.description.format,
            self.description.architecture
        )
    }
}

/// Resolves encoder `name`'s imports against its chosen `layers` (indices into `manifest`):
/// one entry per chosen layer, `None` where saeshare fits the SAE. `root` resolves relative
/// paths; `output` is the run folder, which no import may lie in; `file` names the study in
/// errors.
pub(in crate::pipeline) fn resolve(
    imports: &std::collections::BTreeMap<String, ImportSpec>,
    name: &str,
    manifest: &Manifest,
    layers: &[usize],
    root: &Path,
    output: &Path,
    file: &Path,
) -> anyhow::Result<Vec<Option<ImportedSae>>> {
    let mut resolved: Vec<Option<ImportedSae>> = vec![None; layers.len()];
    for (layer, spec) in imports {
        let at = format!("{}: [encoders.{name}.saes] layer {layer:?}", file.display());
        let Some(position) = layers
            .iter()
            .position(|&l| manifest.layers[l].name == *layer)
        else {
            let chosen: Vec<&str> = (layers.iter())
                .map(|&l| manifest.layers[l].name.as_str())
                .collect();
            anyhow::bail!(
                "{at}: not one of the encoder's chosen layers ({}); add it to `layers` or \
                 correct the name",
                chosen.join(", ")
            );
        };
        let width = manifest.layers[layers[position]].width;
        let options = LoadOptions {
            saev_scale_mean: spec.scale_mean.clone().map(|s| resolve_scaling(root, s)),
            saev_scale_norm: spec.scale_norm.clone().map(|s| resolve_scaling(root, s)),
        };
        let mut sae = resolve_one(&spec.path, spec.format, &options, width, root, output)
            .map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        if let Some(ceiling) = &spec.ceiling {
            let second = resolve_one(ceiling, spec.format, &options, width, root, output)
                .map_err(|e| anyhow::anyhow!("{at}, ceiling: {e}"))?;
            sae.ceiling = Some(Box::new(second));
        }
        resolved[position] = Some(sae);
    }
    Ok(resolved)
}

fn resolve_scaling(root: &Path, scaling: SaevScaling) -> SaevScaling {
    match scaling {
        SaevScaling::File(path) => SaevScaling::File(resolve_path(root, &path)),
        off => off,
    }
}

/// One SAE at `path` for a layer of `width`: its format, that saeshare encodes it as its tool
/// does, its width and the digest of its files.
fn resolve_one(
    path: &Path,
    stated: Option<SaeFormat>,
    options: &LoadOptions,
    width: usize,
    root: &Path,
    output: &Path,
) -> anyhow::Result<ImportedSae> {
    let path = resolve_path(root, path);
    // Canonical where the path exists, so that `a/../b` and links name the folder they reach.
    let absolute = |p: &Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    // The run folder's files are replaced as the study changes: an SAE kept there could be
    // deleted by the run that reads it.
    anyhow::ensure!(
        !absolute(&path).starts_with(absolute(output)),
        "{} is inside the study's output folder {}, whose files saeshare replaces; copy the \
         SAE out of it and name the copy",
        path.display(),
        output.display()
    );
    let description = formats::describe(&path)?;
    if let Some(stated) = stated {
        anyhow::ensure!(
            stated == description.format,
            "{} holds a {} SAE, and the study says format = \"{stated}\"",
            path.display(),
            description.format
        );
    }
    anyhow::ensure!(
        description.d_in == width,
        "the SAE in {} takes inputs of width {} (d_in), and the layer is {width} wide",
        path.display(),
        description.d_in
    );
    let config = inference_config(&description, options)?;
    check_weights(&path, &description, options)?;
    let digest = crate::digest::files_digest(&sae_files(&description, options))?;
    Ok(ImportedSae {
        description,
        options: options.clone(),
        config,
        digest,
        ceiling: None,
    })
}

/// Loads the SAE as the compare pass will and checks what it holds: that its tensors agree
/// with its configuration and that every weight is finite. Done when the plan is made, so that
/// an import that cannot encode fails every worker at the start, naming the SAE, rather than
/// after every other encoder was fitted (its weights are read for the digest anyway).
fn check_weights(
    path: &Path,
    description: &SaeDescription,
    options: &LoadOptions,
) -> anyhow::Result<()> {
    let loaded = crate::sae::load(path, tch::Device::Cpu, options)?;
    let sae = &loaded.sae;
    anyhow::ensure!(
        (sae.d_in, sae.d_sae) == (description.d_in as i64, description.d_sae as i64),
        "the SAE in {}: its configuration says d_in {} and d_sae {}, and its weights are {} x \
         {}; correct the configuration or name the SAE's own files",
        path.display(),
        description.d_in,
        description.d_sae,
        sae.d_in,
        sae.d_sae
    );
    for (name, tensor) in ["W_enc", "b_enc", "W_dec", "b_dec"]
        .iter()
        .zip(sae.parameters())
    {
        let bad = tensor
            .isfinite()
            .logical_not()
            .sum(tch::Kind::Int64)
            .int64_value(&[]);
        anyhow::ensure!(
            bad == 0,
            "the SAE in {} has {bad} NaN or infinite value(s) in {name}: it cannot encode; \
             train it again, or name another SAE",
            path.display()
        );
    }
    Ok(())
}

/// The files an SAE is made of, in its format.
fn sae_files(description: &SaeDescription, options: &LoadOptions) -> Vec<PathBuf> {
    let path = &description.path;
    let mut files = match description.format {
        SaeFormat::Saeshare => vec![path.join("sae.json"), path.join("sae.safetensors")],
        SaeFormat::SaeLens => vec![path.join("cfg.json"), path.join("sae_weights.safetensors")],
        SaeFormat::Sparsify => vec![path.join("cfg.json"), path.join("sae.safetensors")],
        SaeFormat::Saev => vec![path.clone()],
    };
    files.extend(options.files().into_iter().map(Path::to_path_buf));
    files
}
