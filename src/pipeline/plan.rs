//! A study resolved against the disk: packages read, layers chosen, pairs listed, every unit of
//! work named with the fingerprint of what it depends on. All workers of all processes compute
//! the same plan from the same files, so they agree on the work without talking.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::run_folder::{FolderState, RunFolder};
use super::study::Study;
use super::units::Units;
use crate::dataset::{Dataset, ShardInfo};
use crate::digest::fingerprint;
use crate::encoder::{Manifest, Modality, Pooling};
use crate::names::{check_name, pair_key};
use crate::run_layout::RunLayout;
use crate::sae::SaeConfig;
use crate::torch::DeviceSpec;

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
    pub sae: SaeConfig,
    /// Changes when the package, the layers, the pooling or the SAE settings change.
    pub fingerprint: String,
    /// For the second SAEs of the ceiling baseline: the encoder whose rows this one reuses.
    pub twin_of: Option<usize>,
}

impl PlannedEncoder {
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
}

/// One compared (source, target) pair on some of their layers.
#[derive(Clone, Debug)]
pub struct PlannedPair {
    /// Folder and unit name: `source__target`, `__all` added for all layers.
    pub key: String,
    pub source: usize,
    pub target: usize,
    /// Positions in the encoders' chosen layers.
    pub source_layers: Vec<usize>,
    pub target_layers: Vec<usize>,
    /// Changes when either encoder's settings, the layers or the baselines change (not with
    /// new shards); [`Plan::pair_fingerprint`] adds the SAEs actually fitted.
    pub fingerprint: String,
    /// For a ceiling pair (an encoder against its second SAEs): that encoder.
    pub ceiling_of: Option<usize>,
}

/// Everything a run needs to know before it starts.
pub struct Plan {
    pub study: Study,
    pub dataset: Arc<Dataset>,
    pub output: PathBuf,
    pub encoders: Vec<PlannedEncoder>,
    pub pairs: Vec<PlannedPair>,
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
        let root = path.parent().unwrap_or(Path::new("."));
        let (output, dataset_dir) = Plan::folders(&study, path);
        if !dataset_dir.exists() {
            build_dataset(&study, &dataset_dir, path)?;
        }
        let mut dataset = Dataset::open(&dataset_dir)?;
        if let Some(shards) = &study.dataset.shards {
            dataset = dataset.select(shards)?;
        }
        let dataset = Arc::new(dataset);
        dataset.check_unique_ids()?;

        let mut encoders = Vec::new();
        for (name, spec) in &study.encoders {
            let package = resolve_path(root, &spec.package);
            if !package.join("encoder.json").is_file() {
                export_package(name, spec.export.as_deref(), &package, path)?;
            }
            let EncoderChoice {
                manifest,
                layers,
                pooling,
                sae,
            } = choose(&study, name, &package, path)?;
            let device: DeviceSpec = spec
                .device
                .parse()
                .map_err(|e| anyhow::anyhow!("{}: [encoders.{name}]: {e}", path.display()))?;
            let fingerprint = fingerprint(&(
                package_digest(&package)?,
                &layers,
                format!("{pooling:?}"),
                &sae,
            ));
            encoders.push(PlannedEncoder {
                name: name.clone(),
                package,
                manifest,
                layers,
                pooling,
                device: device.check_available()?,
                batch_size: spec.batch_size,
                sae,
                fingerprint,
                twin_of: None,
            });
        }

        let mut pairs: Vec<PlannedPair> = Vec::new();
        for comparison in &study.comparisons {
            let pick = |names: &[toml::Spanned<String>]| -> Vec<usize> {
                (0..encoders.len())
                    .filter(|&i| {
                        names
                            .iter()
                            .any(|n| n.get_ref() == "*" || *n.get_ref() == encoders[i].name)
                    })
                    .collect()
            };
            let all = match comparison.layers.as_str() {
                "last" => false,
                "all" => true,
                other => anyhow::bail!(
                    "{}: comparison layers {other:?}: use \"last\" or \"all\"",
                    path.display()
                ),
            };
            for &s in &pick(&comparison.sources) {
                for &t in &pick(&comparison.targets) {
                    if s == t {
                        continue;
                    }
                    let key = pair_key(&encoders[s].name, &encoders[t].name, all);
                    if pairs.iter().any(|p| p.key == key) {
                        continue;
                    }
                    let layers = |e: &PlannedEncoder| -> Vec<usize> {
                        if all {
                            (0..e.layers.len()).collect()
                        } else {
                            vec![e.layers.len() - 1]
                        }
                    };
                    let fingerprint = fingerprint(&(
                        &encoders[s].fingerprint,
                        &encoders[t].fingerprint,
                        all,
                        study.baselines.floor_permutations,
                    ));
                    pairs.push(PlannedPair {
                        key,
                        source: s,
                        target: t,
                        source_layers: layers(&encoders[s]),
                        target_layers: layers(&encoders[t]),
                        fingerprint,
                        ceiling_of: None,
                    });
                }
            }
        }
        if let Some(seed) = study.baselines.ceiling_seed {
            add_ceiling_twins(&mut encoders, &mut pairs, seed, path)?;
        }
        let sae_ids = RwLock::new(read_sae_ids(&output, &encoders));
        Ok(Plan {
            study,
            dataset,
            output,
            encoders,
            pairs,
            sae_ids,
        })
    }

    /// Reads the SAE records again: after a fit, every worker calls this before the compare
    /// pass.
    pub fn refresh_sae_ids(&self) {
        let ids = read_sae_ids(&self.output, &self.encoders);
        *self.sae_ids.write().expect("not poisoned") = ids;
    }

    fn sae_id(&self, encoder: usize) -> String {
        self.sae_ids.read().expect("not poisoned")[encoder].clone()
    }

    /// The fingerprint of a pair's sums: its settings and the SAEs of both sides.
    pub fn pair_fingerprint(&self, pair: usize) -> String {
        let p = &self.pairs[pair];
        fingerprint(&(&p.fingerprint, self.sae_id(p.source), self.sae_id(p.target)))
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
    pub fn named_encoders(&self) -> impl Iterator<Item = (usize, &PlannedEncoder)> {
        self.encoders
            .iter()
            .enumerate()
            .filter(|(_, e)| e.twin_of.is_none())
    }

    /// Where everything lives in the output folder.
    pub fn layout(&self) -> RunLayout {
        RunLayout::new(&self.output)
    }

    /// The folder of an encoder's SAE on one of its layers.
    pub fn sae_dir(&self, encoder: usize, layer: &str) -> PathBuf {
        self.layout().sae_dir(&self.encoders[encoder].name, layer)
    }

    /// The codes file of an encoder's layer on one shard.
    pub fn codes_file(&self, encoder: usize, layer: &str, shard: &ShardInfo) -> PathBuf {
        self.layout()
            .codes_file(&self.encoders[encoder].name, layer, &shard_name(shard))
    }

    /// The folder of a pair's accumulators and tables.
    pub fn pair_dir(&self, pair: usize) -> PathBuf {
        self.layout().pair_dir(&self.pairs[pair].key)
    }

    /// The unit name and fingerprint of an encoder's codes on a shard.
    pub fn codes_unit(&self, encoder: usize, shard: &ShardInfo) -> (String, String) {
        (
            format!(
                "codes/{}/{}",
                self.encoders[encoder].name,
                shard_name(shard)
            ),
            fingerprint(&(
                &self.encoders[encoder].fingerprint,
                shard_key(shard),
                self.sae_id(encoder),
            )),
        )
    }

    /// The unit name and fingerprint of an encoder's SAEs.
    pub fn sae_unit(&self, encoder: usize) -> (String, String) {
        (
            format!("saes/{}", self.encoders[encoder].name),
            self.encoders[encoder].fingerprint.clone(),
        )
    }

    /// The unit name and fingerprint of a pair's tables.
    pub fn pair_unit(&self, pair: usize) -> (String, String) {
        (
            format!("pairs/{}", self.pairs[pair].key),
            self.pair_fingerprint(pair),
        )
    }
}

/// What a study chooses of an encoder package: its layers, pooling and SAE settings.
struct EncoderChoice {
    manifest: Manifest,
    layers: Vec<usize>,
    pooling: Pooling,
    sae: SaeConfig,
}

/// Reads encoder `name`'s package and checks the study's choices against it: the layers exist
/// and their names can name folders, the SAE fits each layer's width.
fn choose(study: &Study, name: &str, package: &Path, path: &Path) -> anyhow::Result<EncoderChoice> {
    let spec = &study.encoders[name];
    let manifest = Manifest::read(package)?;
    let layers = manifest
        .select_layers(&spec.layers)
        .map_err(|e| anyhow::anyhow!("{}: [encoders.{name}]: {e}", path.display()))?;
    let pooling = spec.pooling.unwrap_or(manifest.default_pooling);
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
    Ok(EncoderChoice {
        manifest,
        layers,
        pooling,
        sae,
    })
}

/// What `saeshare study check` finds: whose folder the output is, what `run` would build or
/// export first, and the plan when nothing is missing.
pub struct StudyCheck {
    pub folder: FolderState,
    /// (what, how): the dataset and packages `run` makes before anything else.
    pub to_make: Vec<(String, String)>,
    /// What the user must supply before the study can run (a dataset, a package without an
    /// `export` command).
    pub to_provide: Vec<String>,
    pub plan: Option<Plan>,
}

impl Plan {
    /// Every check `run` makes before it starts work, without building a dataset or running
    /// an `export` command: the output folder, the dataset's shards, the packages there are,
    /// and, when nothing is missing, the whole plan.
    pub fn check(study: Study, path: &Path) -> anyhow::Result<StudyCheck> {
        let root = path.parent().unwrap_or(Path::new("."));
        let (output, dataset) = Plan::folders(&study, path);
        let folder = RunFolder::inspect(&output, &dataset)?;
        let mut to_make = Vec::new();
        let mut to_provide = Vec::new();
        if dataset.exists() {
            let mut opened = Dataset::open(&dataset)?;
            if let Some(shards) = &study.dataset.shards {
                opened = opened.select(shards)?;
            }
            opened.check_unique_ids()?;
        } else if let Some(builtin) = &study.dataset.builtin {
            to_make.push((
                format!("dataset {}", dataset.display()),
                format!("saeshare builds the embedded {builtin:?} dataset"),
            ));
        } else {
            to_provide.push(format!(
                "the dataset {}: import one with `saeshare dataset import-coco`, `import-folder` \
                 or `import-hf`",
                dataset.display()
            ));
        }
        for (name, spec) in &study.encoders {
            let package = resolve_path(root, &spec.package);
            if package.join("encoder.json").is_file() {
                choose(&study, name, &package, path)?;
                continue;
            }
            let Some(command) = &spec.export else {
                to_provide.push(format!(
                    "the package of {name} in {}: make it with `python -m saeshare_export`, or \
                     give the encoder an `export` command",
                    package.display()
                ));
                continue;
            };
            to_make.push((
                format!("package of {name} in {}", package.display()),
                format!("runs the shell command `{command}`"),
            ));
        }
        let plan = if to_make.is_empty() && to_provide.is_empty() {
            Some(Plan::resolve(study, path)?)
        } else {
            None
        };
        Ok(StudyCheck {
            folder,
            to_make,
            to_provide,
            plan,
        })
    }
}

/// For the ceiling baseline: a second SAE set (seed `seed`) of every source encoder, fed the
/// same rows, and a pair of each source encoder against it on all its layers.
fn add_ceiling_twins(
    encoders: &mut Vec<PlannedEncoder>,
    pairs: &mut Vec<PlannedPair>,
    seed: u64,
    path: &Path,
) -> anyhow::Result<()> {
    let sources: std::collections::BTreeSet<usize> = pairs.iter().map(|p| p.source).collect();
    for s in sources {
        let mut twin = encoders[s].clone();
        twin.name = format!("{}.ceiling", encoders[s].name);
        anyhow::ensure!(
            encoders.iter().all(|e| e.name != twin.name),
            "{}: an encoder is named {:?}, the name of the ceiling's second SAEs of {:?}; rename it",
            path.display(),
            twin.name,
            encoders[s].name
        );
        anyhow::ensure!(
            twin.sae.seed != seed,
            "{}: [baselines] ceiling_seed {seed} is the SAE seed of {:?}; the ceiling needs another",
            path.display(),
            encoders[s].name
        );
        twin.sae.seed = seed;
        twin.fingerprint = fingerprint(&(&encoders[s].fingerprint, "ceiling", seed));
        twin.twin_of = Some(s);
        let layers: Vec<usize> = (0..twin.layers.len()).collect();
        let key = pair_key(&encoders[s].name, &twin.name, false);
        let pair_fingerprint = fingerprint(&(&encoders[s].fingerprint, &twin.fingerprint));
        encoders.push(twin);
        pairs.push(PlannedPair {
            key,
            source: s,
            target: encoders.len() - 1,
            source_layers: layers.clone(),
            target_layers: layers,
            fingerprint: pair_fingerprint,
            ceiling_of: Some(s),
        });
    }
    Ok(())
}

/// Each encoder's SAE id: a digest of the files its SAE record lists.
fn read_sae_ids(output: &Path, encoders: &[PlannedEncoder]) -> Vec<String> {
    let units = Units::new(output);
    encoders
        .iter()
        .map(|e| {
            units
                .get(&format!("saes/{}", e.name))
                .map(|r| fingerprint(&(&r.fingerprint, &r.files)))
                .unwrap_or_default()
        })
        .collect()
}

/// What identifies a shard's content cheaply: its file name, rows and bytes.
pub fn shard_key(shard: &ShardInfo) -> (String, u64, u64) {
    (shard_name(shard), shard.rows, shard.bytes)
}

fn shard_name(shard: &ShardInfo) -> String {
    shard
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("shard-{}", shard.index))
}

/// The digest of a package's manifest and weights.
fn package_digest(package: &Path) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    for file in ["encoder.json", "model.pt", "tokenizer.json"] {
        let path = package.join(file);
        if !path.exists() {
            continue;
        }
        let mut reader = std::fs::File::open(&path).with_context(|| path.display().to_string())?;
        std::io::copy(&mut reader, &mut hasher).with_context(|| path.display().to_string())?;
    }
    Ok(hasher.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// `~/` is the home folder, `$SAESHARE_CACHE/` saeshare's cache folder ([`crate::cache_dir`],
/// also where it is unset); a relative path is relative to the study file's folder.
fn resolve_path(root: &Path, path: &Path) -> PathBuf {
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

fn build_dataset(study: &Study, dir: &Path, file: &Path) -> anyhow::Result<()> {
    match study.dataset.builtin.as_deref() {
        Some("emoji") => {
            tracing::info!("building the emoji dataset into {}", dir.display());
            let spec = crate::dataset::import::EmojiBuild {
                cache: crate::cache_dir().join("npm"),
            };
            let target = crate::dataset::import::ImportTarget {
                out: dir.to_path_buf(),
                shard_rows: 2048,
                append: false,
            };
            crate::dataset::import::build_emoji(&spec, &target)?;
            Ok(())
        }
        Some(other) => anyhow::bail!(
            "{}: dataset builtin {other:?}: the only embedded dataset is \"emoji\"",
            file.display()
        ),
        None => anyhow::bail!(
            "{}: dataset {} does not exist; import one with `saeshare dataset import-...`",
            file.display(),
            dir.display()
        ),
    }
}

fn export_package(
    name: &str,
    export: Option<&str>,
    package: &Path,
    file: &Path,
) -> anyhow::Result<()> {
    let Some(command) = export else {
        anyhow::bail!(
            "{}: [encoders.{name}]: no encoder package in {}; make one with `python -m saeshare_export` \
             or give an `export` command",
            file.display(),
            package.display()
        );
    };
    tracing::info!("encoder {name}: exporting the package with `{command}`");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .with_context(|| format!("running `{command}`"))?;
    anyhow::ensure!(
        status.success() && package.join("encoder.json").is_file(),
        "{}: [encoders.{name}]: `{command}` did not make {} ({status}); run it by hand in the \
         environment of scripts/python-env.sh to see why",
        file.display(),
        package.display()
    );
    Ok(())
}
