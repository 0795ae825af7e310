//! What a study needs before it runs, and what `saeshare study check` says of it: the embedded
//! dataset built and the encoder packages exported where they are missing and the study says
//! how, or what the user must supply.

use std::path::Path;

use anyhow::Context;

use crate::dataset::Dataset;
use crate::pipeline::choice::choose;
use crate::pipeline::plan::{resolve_path, Plan};
use crate::pipeline::run_folder::{FolderState, RunFolder};
use crate::pipeline::study::Study;

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

/// Builds the study's embedded dataset into `dir`, or says what to do when it has none.
pub(in crate::pipeline) fn build_dataset(
    study: &Study,
    dir: &Path,
    file: &Path,
) -> anyhow::Result<()> {
    match study.dataset.builtin.as_deref() {
        Some("emoji") => {
            tracing::info!("building the emoji dataset into {}", dir.display());
            let spec = crate::dataset::import::EmojiBuild {
                cache: crate::cache_dir().join("npm"),
            };
            let target = crate::dataset::import::ImportTarget {
                out: dir.to_path_buf(),
                shard_rows: study.dataset.shard_rows.unwrap_or(2048),
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

/// Runs encoder `name`'s `export` command to make its missing `package`. The command sees the
/// study's dataset folder as `$SAESHARE_DATASET` (a package made from the dataset, such as
/// `saeshare_export align`'s, reads it there) and the study file's folder as
/// `$SAESHARE_STUDY_DIR`, both absolute (a study file named without a folder has an empty
/// parent, which the command would read as the root), and checks that it made the package.
pub(in crate::pipeline) fn export_package(
    name: &str,
    export: Option<&str>,
    package: &Path,
    dataset: &Path,
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
    let absolute = |path: &Path| {
        let path = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        std::path::absolute(path).with_context(|| path.display().to_string())
    };
    let study_dir = absolute(file.parent().unwrap_or(Path::new(".")))?;
    let dataset = absolute(dataset)?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("SAESHARE_DATASET", &dataset)
        .env("SAESHARE_STUDY_DIR", &study_dir)
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
