//! A study resolved against the disk: packages read, layers chosen, pairs listed, every unit of
//! work named with the fingerprint of what it depends on. All workers of all processes compute
//! the same plan from the same files, so they agree on the work without talking.

pub mod calibrate;
pub(in crate::pipeline) mod ceiling;
pub(in crate::pipeline) mod choice;
pub mod cost;
pub mod fit_passes;
mod fit_rows;
pub(in crate::pipeline) mod imports;
mod pair_list;
pub(in crate::pipeline) mod prepare;
pub(in crate::pipeline) mod record;
pub(in crate::pipeline) mod shard_contents;
mod shards;
mod similarity;
pub mod stand_ins;
pub(in crate::pipeline) mod study;
pub(in crate::pipeline) mod study_checks;
#[cfg(test)]
mod study_tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::dataset::{Dataset, ShardInfo};
use crate::digest::fingerprint;
use crate::encoder::{Manifest, Modality, Pooling, Precision, TokenSelection};
use crate::ids::{EncoderId, LayerId, PairId, ShardId};
use crate::pipeline::choice::{choose, EncoderChoice};
use crate::pipeline::imports::ImportedSae;
use crate::pipeline::prepare::{build_dataset, export_package};
use crate::pipeline::study::{default_batch_size, FitRows, FitSpec, Study};
use crate::pipeline::units::Units;
use crate::run_layout::RunLayout;
use crate::sae::{ReadOut, SaeConfig};
use crate::torch::DeviceSpec;
use fit_rows::check_fit_rows;
pub use fit_rows::{fit_rows_per_pass, FitRowsEstimate};
use pair_list::plan_pairs;
use shard_contents::{shard_file_name, ShardContents};
pub(in crate::pipeline) use shards::first_of_changes;
pub use shards::{shard_key, ShardIdentity};
use shards::{without_empty_shards, SHARD_SHA256};

/// One encoder of the study, resolved.
#[derive(Clone, Debug)]
pub struct PlannedEncoder {
    /// The study's name for it, used in every output.
    pub name: String,
    pub package: PathBuf,
    pub manifest: Manifest,
    /// Indices into the manifest's layers.
    pub layers: Vec<usize>,
    pub pooling: Pooling,
    pub device: tch::Device,
    pub batch_size: usize,
    /// The study's `image_size`: a CNN run on images of this side instead of its package's.
    pub image_size: Option<u32>,
    /// What the forward pass runs in.
    pub precision: Precision,
    /// The study's `lanes`: forward passes side by side on a CPU (`None`: the encoder's choice).
    pub lanes: Option<usize>,
    pub sae: SaeConfig,
    /// What the SAEs are fitted on: pooled rows, or token rows chosen how.
    pub fit_rows: FitRows,
    /// Which values of the SAEs are the features.
    pub read_out: ReadOut,
    /// Changes when the package, the layers, the pooling, the SAE settings, what they are
    /// fitted on or the read-out change: what the encoder's codes and pairs depend on.
    pub fingerprint: String,
    /// What the SAEs depend on: [`Self::fingerprint`] without the read-out, which changes the
    /// codes and not the training.
    pub sae_fingerprint: String,
    /// The SAEs' fingerprint as versions that put the dense read-out in it recorded SAEs
    /// fitted for `read_out = "relu"`: [`Plan::saes_done`] takes those SAEs as fitted too,
    /// whatever the read-out is now.
    pub relu_era_sae_fingerprint: String,
    /// For the second SAEs of the ceiling baseline: the encoder whose rows this one reuses.
    pub twin_of: Option<EncoderId>,
    /// Per chosen layer: the SAE the study imports for it, or `None` where saeshare fits one.
    pub imported: Vec<Option<ImportedSae>>,
    /// Why the ceiling baseline has no second SAEs of this encoder, when it has none.
    pub no_ceiling: Option<String>,
}

impl PlannedEncoder {
    /// Its model, loaded onto `device` as the study runs it.
    pub fn load(&self, device: tch::Device) -> anyhow::Result<crate::encoder::Encoder> {
        let encoder = crate::encoder::Encoder::load(&self.package, device)?;
        let encoder = match self.image_size {
            None => encoder,
            Some(side) => encoder.at_image_size(side)?,
        };
        Ok(encoder
            .with_precision(self.precision)?
            .with_lanes(self.lanes)?)
    }

    /// Which token rows the SAEs are fitted on; `None` when they are fitted on pooled rows.
    pub fn token_selection(&self) -> Option<&TokenSelection> {
        match &self.fit_rows {
            FitRows::Tokens(selection) => Some(selection),
            FitRows::Pooled => None,
        }
    }

    /// The ids of the chosen layers.
    pub fn layer_ids(&self) -> impl Iterator<Item = LayerId> + Clone {
        LayerId::all(self.layers.len())
    }

    /// The name of a chosen layer.
    pub fn layer_name(&self, layer: LayerId) -> &str {
        &self.manifest.layers[self.layers[layer.index()]].name
    }

    /// The width of a chosen layer.
    pub fn layer_width(&self, layer: LayerId) -> usize {
        self.manifest.layers[self.layers[layer.index()]].width
    }

    /// The names of the chosen layers.
    pub fn layer_names(&self) -> Vec<String> {
        self.layers
            .iter()
            .map(|&l| self.manifest.layers[l].name.clone())
            .collect()
    }

    pub fn is_image(&self) -> bool {
        self.manifest.modality == Modality::Image
    }

    /// The SAE the study imports for a chosen layer, if it imports one.
    pub fn imported(&self, layer: LayerId) -> Option<&ImportedSae> {
        self.imported[layer.index()].as_ref()
    }

    /// Whether saeshare fits the SAE of at least one layer (else the encoder is never run in
    /// the fit pass).
    pub fn fits_any(&self) -> bool {
        self.imported.iter().any(Option::is_none)
    }
}

/// One compared (source, target) pair on some of their layers.
#[derive(Clone, Debug)]
pub struct PlannedPair {
    /// Folder and unit name: `source__target`, `__all` added for all layers.
    pub key: String,
    pub source: EncoderId,
    pub target: EncoderId,
    /// The layers compared, of each side.
    pub source_layers: Vec<LayerId>,
    pub target_layers: Vec<LayerId>,
    /// Changes when either encoder's settings, the layers or the baselines change (not with
    /// new shards); [`Plan::pair_fingerprint`] adds the SAEs actually fitted.
    pub fingerprint: String,
    /// For a ceiling pair (an encoder against its second SAEs): that encoder.
    pub ceiling_of: Option<EncoderId>,
}

/// Everything a run needs to know before it starts.
pub struct Plan {
    pub study: Study,
    pub dataset: Arc<Dataset>,
    pub output: PathBuf,
    pub encoders: Vec<PlannedEncoder>,
    pub pairs: Vec<PlannedPair>,
    /// The SHA-256 of each shard's file: what work made from a shard records of it.
    pub contents: ShardContents,
    /// What identifies each encoder's SAEs as fitted (a digest of its SAE record's files;
    /// empty before the first fit), read from the manifest. Codes and pair sums are made by
    /// particular SAEs, so their fingerprints include it: SAEs fitted anew for any reason
    /// (changed settings, a lost record, a damaged file) invalidate them, even in a run
    /// killed between the fit and the compare pass.
    sae_ids: RwLock<Vec<String>>,
}

impl Plan {
    /// Resolves `study` (read from `path`): builds the embedded dataset and exports the real
    /// encoder packages where they are missing and the study says how.
    pub fn resolve(study: Study, path: &Path) -> anyhow::Result<Plan> {
        let (output, dataset_dir) = Plan::folders(&study, path);
        if !dataset_dir.exists() {
            build_dataset(&study, &dataset_dir, path)?;
        }
        let mut dataset = Dataset::open(&dataset_dir)?;
        if let Some(shards) = &study.dataset.shards {
            dataset = dataset.select(shards)?;
        }
        let dataset = Arc::new(without_empty_shards(dataset)?);
        dataset.check_unique_ids()?;

        let mut encoders = study
            .encoders
            .keys()
            .map(|name| resolve_encoder(&study, name, path))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut pairs = plan_pairs(&study, &encoders, path)?;
        let seeds = study.baselines.all_ceiling_seeds();
        if !seeds.is_empty() {
            crate::pipeline::ceiling::add_twins(&mut encoders, &mut pairs, &seeds, path)?;
        }
        for e in &encoders {
            check_fit_rows(e, &dataset, path)?;
        }
        // Last: it reads every shard not hashed before, and each check above is cheaper.
        let contents = ShardContents::of(&dataset, &RunLayout::new(&output).shard_contents())?;
        let sae_ids = RwLock::new(read_sae_ids(&output, &encoders));
        Ok(Plan {
            study,
            dataset,
            output,
            encoders,
            pairs,
            contents,
            sae_ids,
        })
    }

    /// Whether `unit`, made from shard `s`, is done with `fingerprint` and was made from the
    /// shard as it is now (records of older versions, which did not say, are trusted).
    pub fn is_done_on_shard(
        &self,
        units: &Units,
        unit: &str,
        fingerprint: &str,
        s: ShardId,
    ) -> bool {
        if !units.is_done(unit, fingerprint) {
            return false;
        }
        let record = units.get(unit);
        let made_from = (record.as_ref()).and_then(|r| r.detail.get(SHARD_SHA256)?.as_str());
        match made_from {
            Some(sha) if sha != self.contents.digest(s) => {
                tracing::info!(
                    "{unit}: the shard {} changed since it was made; it runs again",
                    shard_file_name(self.shard(s))
                );
                false
            }
            _ => true,
        }
    }

    /// `detail` of a unit made from shard `s`, with the shard's digest added.
    pub fn shard_detail(&self, s: ShardId, mut detail: serde_json::Value) -> serde_json::Value {
        detail[SHARD_SHA256] = self.contents.digest(s).into();
        detail
    }

    /// Each shard as work made from it records it: `(name, rows, bytes)` and its SHA-256.
    pub fn shard_identities(&self) -> Vec<ShardIdentity> {
        (self.shard_ids())
            .map(|s| ShardIdentity {
                key: shard_key(self.shard(s)),
                sha256: self.contents.digest(s).to_string(),
            })
            .collect()
    }

    /// Reads the SAE records again: after a fit, every worker calls this before the compare
    /// pass.
    pub fn refresh_sae_ids(&self) {
        let ids = read_sae_ids(&self.output, &self.encoders);
        *self.sae_ids.write().expect("not poisoned") = ids;
    }

    fn sae_id(&self, encoder: EncoderId) -> String {
        self.sae_ids.read().expect("not poisoned")[encoder.index()].clone()
    }

    /// An encoder of the plan.
    pub fn encoder(&self, encoder: EncoderId) -> &PlannedEncoder {
        &self.encoders[encoder.index()]
    }

    /// A pair of the plan.
    pub fn pair(&self, pair: PairId) -> &PlannedPair {
        &self.pairs[pair.index()]
    }

    /// A shard of the dataset.
    pub fn shard(&self, shard: ShardId) -> &ShardInfo {
        &self.dataset.shards()[shard.index()]
    }

    /// Every encoder's id, in the plan's order.
    pub fn encoder_ids(&self) -> impl Iterator<Item = EncoderId> + Clone {
        EncoderId::all(self.encoders.len())
    }

    /// Every pair's id, in the plan's order.
    pub fn pair_ids(&self) -> impl Iterator<Item = PairId> + Clone {
        PairId::all(self.pairs.len())
    }

    /// Every shard's id, in the dataset's order.
    pub fn shard_ids(&self) -> impl Iterator<Item = ShardId> + Clone {
        ShardId::all(self.dataset.shards().len())
    }

    /// The output and dataset folders of `study` (read from `path`), resolved as paths in it
    /// are: `~/`, `$SAESHARE_CACHE/`, or relative to the study file's folder.
    pub fn folders(study: &Study, path: &Path) -> (PathBuf, PathBuf) {
        let root = path.parent().unwrap_or(Path::new("."));
        (
            resolve_path(root, &study.output),
            resolve_path(root, &study.dataset.path),
        )
    }

    /// The encoders the study names (not the ceiling's second SAEs).
    pub fn named_encoders(&self) -> impl Iterator<Item = (EncoderId, &PlannedEncoder)> {
        self.encoder_ids()
            .zip(&self.encoders)
            .filter(|(_, e)| e.twin_of.is_none())
    }

    /// Where everything lives in the output folder.
    pub fn layout(&self) -> RunLayout {
        RunLayout::new(&self.output)
    }

    /// The folder of an encoder's SAE on one of its layers: in the run folder where saeshare
    /// fits it, else where the imported SAE is.
    pub fn sae_dir(&self, encoder: EncoderId, layer: LayerId) -> PathBuf {
        let e = self.encoder(encoder);
        match e.imported(layer) {
            Some(imported) => imported.path().to_path_buf(),
            None => self.layout().sae_dir(&e.name, e.layer_name(layer)),
        }
    }

    /// The codes file of an encoder's layer on one shard.
    pub fn codes_file(&self, encoder: EncoderId, layer: LayerId, shard: ShardId) -> PathBuf {
        let e = self.encoder(encoder);
        self.layout().codes_file(
            &e.name,
            e.layer_name(layer),
            &shard_file_name(self.shard(shard)),
        )
    }

    /// The unit name and fingerprint of an encoder's codes on a shard.
    pub fn codes_unit(&self, encoder: EncoderId, shard: ShardId) -> (String, String) {
        let (e, shard) = (self.encoder(encoder), self.shard(shard));
        (
            format!("codes/{}/{}", e.name, shard_file_name(shard)),
            if self.keeps_readouts(encoder) {
                // The read-out rows are written with the codes.
                fingerprint(&(
                    &e.fingerprint,
                    shard_key(shard),
                    self.sae_id(encoder),
                    "readouts",
                ))
            } else {
                fingerprint(&(&e.fingerprint, shard_key(shard), self.sae_id(encoder)))
            },
        )
    }

    /// The unit name and fingerprint of an encoder's SAEs.
    pub fn sae_unit(&self, encoder: EncoderId) -> (String, String) {
        let e = self.encoder(encoder);
        (format!("saes/{}", e.name), e.sae_fingerprint.clone())
    }

    /// Whether an encoder's SAEs are fitted as the study asks: recorded with their fingerprint,
    /// or with the one versions that put the dense read-out in it recorded them with.
    pub fn saes_done(&self, units: &Units, encoder: EncoderId) -> bool {
        let (unit, fingerprint) = self.sae_unit(encoder);
        let relu_era = &self.encoder(encoder).relu_era_sae_fingerprint;
        units.is_done(&unit, &fingerprint) || units.is_done(&unit, relu_era)
    }
}

/// Encoder `name` of `study` (read from `path`), resolved: its package exported where missing
/// and the study says how, its choices checked against the package.
fn resolve_encoder(study: &Study, name: &str, path: &Path) -> anyhow::Result<PlannedEncoder> {
    let root = path.parent().unwrap_or(Path::new("."));
    let spec = &study.encoders[name];
    let package = resolve_path(root, &spec.package);
    if !package.join("encoder.json").is_file() {
        let (_, dataset) = Plan::folders(study, path);
        export_package(name, spec.export.as_deref(), &package, &dataset, path)?;
    }
    let EncoderChoice {
        manifest,
        layers,
        pooling,
        sae,
        imported,
    } = choose(study, name, &package, path)?;
    let device: DeviceSpec = spec
        .device
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: [encoders.{name}]: {e}", path.display()))?;
    let fit_rows = study.fit_rows_for(name);
    let what = (
        package_digest(&package)?,
        &layers,
        format!("{pooling:?}"),
        &sae,
    );
    // Studies made before the fit could be chosen keep their fingerprints: the fit's
    // settings enter only where they differ from what every fit was then.
    let read_out = spec.read_out.unwrap_or(study.codes.read_out);
    let fit = (
        fit_rows,
        study.fit.buffer_rows,
        study.fit.buffer_mib,
        study.fit.max_passes,
    );
    let fingerprint = if fit == (FitRows::Pooled, FitSpec::default().buffer_rows, None, None) {
        fingerprint(&what)
    } else {
        fingerprint(&(what, fit))
    };
    // Which layers are imported changes what is fitted; the imported files themselves enter
    // the SAE ids ([`read_sae_ids`]), so that a changed import redoes codes, not fits.
    let fingerprint = if imported.iter().all(Option::is_none) {
        fingerprint
    } else {
        let which: Vec<bool> = imported.iter().map(Option::is_some).collect();
        crate::digest::fingerprint(&(fingerprint, "imported", which))
    };
    // Another input size gives other activations: everything of the encoder is redone.
    let fingerprint = match spec.image_size {
        None => fingerprint,
        Some(side) => crate::digest::fingerprint(&(fingerprint, "image_size", side)),
    };
    // Mixed precision gives other activations (float32 keeps the fingerprints made before).
    let precision = spec.precision.unwrap_or_default();
    let fingerprint = match precision {
        Precision::Float32 => fingerprint,
        other => crate::digest::fingerprint(&(fingerprint, "precision", other)),
    };
    // Crops rounded to the nearest started a pixel off where the excess was odd, before they
    // rounded halves to even as torchvision does: such an encoder's work in an older run
    // folder is redone rather than mixed with the fixed crops. Other encoders keep theirs.
    let fingerprint = match crop_revision(&manifest) {
        None => fingerprint,
        Some(revision) => crate::digest::fingerprint(&(fingerprint, "crop", revision)),
    };
    // The read-out changes the codes, not the SAEs: codes and pairs follow the fingerprint.
    let sae_fingerprint = fingerprint.clone();
    let relu_era_sae_fingerprint = crate::digest::fingerprint(&(&fingerprint, ReadOut::Relu));
    let fingerprint = match read_out {
        ReadOut::Code => fingerprint,
        ReadOut::Relu => crate::digest::fingerprint(&(fingerprint, read_out)),
    };
    // Dense codes rounded to float16 are other codes (absent from older fingerprints); a TopK
    // SAE's own codes are always stored as float32.
    let without_k = !crate::sae::codes_have_k(sae.kind, read_out);
    let fingerprint = match study.codes.dense_values {
        crate::codes::DenseValues::Float16 if without_k => {
            crate::digest::fingerprint(&(fingerprint, study.codes.dense_values))
        }
        _ => fingerprint,
    };
    let batch_size = (spec.batch_size)
        .unwrap_or_else(|| default_batch_size(device.0, manifest.input_size_at(spec.image_size)));
    Ok(PlannedEncoder {
        name: name.to_string(),
        package,
        manifest,
        layers,
        pooling,
        device: match study.devices_elsewhere {
            true => device.0,
            false => device.check_available()?,
        },
        batch_size,
        image_size: spec.image_size,
        precision,
        lanes: spec.lanes,
        sae,
        fit_rows,
        read_out,
        fingerprint,
        sae_fingerprint,
        relu_era_sae_fingerprint,
        twin_of: None,
        imported,
        no_ceiling: None,
    })
}

/// Each encoder's SAE id: a digest of the files its SAE record lists.
fn read_sae_ids(output: &Path, encoders: &[PlannedEncoder]) -> Vec<String> {
    let units = Units::new(output);
    encoders
        .iter()
        .map(|e| {
            let Some(r) = units.get(&format!("saes/{}", e.name)) else {
                return String::new();
            };
            if e.imported.iter().all(Option::is_none) {
                return fingerprint(&(&r.fingerprint, &r.files));
            }
            let digests: Vec<Option<&str>> = (e.imported.iter())
                .map(|i| i.as_ref().map(|i| i.digest.as_str()))
                .collect();
            fingerprint(&(&r.fingerprint, &r.files, digests))
        })
        .collect()
}

/// What marks the fingerprint of an encoder (its package as the study chose it: an `image_size`
/// drops the crop) whose crop now starts elsewhere than it did in earlier versions: a crop whose
/// offsets round to the nearest, which took halves upwards before it took them to even.
fn crop_revision(manifest: &Manifest) -> Option<&'static str> {
    let image = manifest.image.as_ref()?;
    (image.crop.is_some() && image.crop_rounding == "round").then_some("halves to even")
}

/// The digest of a package's manifest and weights.
fn package_digest(package: &Path) -> anyhow::Result<String> {
    let files: Vec<PathBuf> = ["encoder.json", "model.pt", "tokenizer.json"]
        .iter()
        .map(|f| package.join(f))
        .filter(|p| p.exists())
        .collect();
    Ok(crate::digest::files_digest(&files)?)
}

/// `~/` is the home folder, `$SAESHARE_CACHE/` saeshare's cache folder ([`crate::cache_dir`],
/// also where it is unset); a relative path is relative to the study file's folder.
pub(in crate::pipeline) fn resolve_path(root: &Path, path: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("$SAESHARE_CACHE") {
        return crate::cache_dir().join(rest);
    }
    if let Ok(rest) = path.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return Path::new(&home).join(rest);
        }
    }
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image package that resizes to 8 px and crops `crop` px with offsets rounded by
    /// `rounding`.
    fn image_package(crop: Option<usize>, rounding: &str) -> Manifest {
        let side = crop.unwrap_or(8);
        serde_json::from_value(serde_json::json!({
            "format_version": crate::encoder::PACKAGE_VERSION, "name": "cnn", "modality": "image",
            "source": {"library": "torchvision", "family": "resnet18", "model": "random"},
            "outputs": "feature_maps", "default_pooling": "gap",
            "layers": [{"name": "layer1", "width": 4}],
            "image": {"resize": {"shortest_edge": 8}, "resample": "bilinear",
                      "crop": crop.map(|c| serde_json::json!({"height": c, "width": c})),
                      "crop_rounding": rounding, "rescale": 0.1, "mean": [0.5, 0.5, 0.5],
                      "std": [0.2, 0.2, 0.2], "background": [255, 255, 255],
                      "input_size": [side, side]},
        }))
        .unwrap()
    }

    /// Only the encoders whose inputs the crop fix changed are redone in an older run folder.
    #[test]
    fn only_crops_rounded_to_the_nearest_mark_the_fingerprint() {
        assert_eq!(
            crop_revision(&image_package(Some(7), "round")),
            Some("halves to even")
        );
        assert_eq!(crop_revision(&image_package(Some(7), "floor")), None);
        assert_eq!(crop_revision(&image_package(None, "round")), None);
        // A study's image_size resizes without a crop: nothing to redo.
        let resized = image_package(Some(7), "round").at_image_size(16).unwrap();
        assert_eq!(crop_revision(&resized), None);
        let mut text = image_package(None, "round");
        text.image = None;
        assert_eq!(crop_revision(&text), None);
    }
}
