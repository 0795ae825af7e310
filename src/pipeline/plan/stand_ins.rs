//! Planning a study whose dataset or packages do not exist yet (the paper's study on a machine
//! without its weights or COCO): each is replaced, for the plan only, by a stand-in of the same
//! cost.
//!
//! - A missing encoder package whose study entry gives a `shape` (`vit-b16`, `bert-base`, ...)
//!   is planned with a package of random weights at that shape (`saeshare_export random`),
//!   kept in `$SAESHARE_CACHE/encoders/random/<shape>` and made there where missing: its
//!   layers, widths, tokens and speed are the real model's.
//! - A missing dataset is planned with the embedded emoji dataset (built in
//!   `$SAESHARE_CACHE/stand-ins/emoji` where missing) at the sample count the user gives
//!   (`--assume-samples`): the emoji give the calibration its images and captions, and their
//!   shard size.
//! - An encoder on a GPU this machine lacks is planned on its CPU; with the rates of a machine
//!   that has one (`--rates FILE`, which `study plan --calibrate` wrote there: the device
//!   check writes one), it keeps its GPU and the times are that machine's.

use std::path::{Path, PathBuf};

use crate::pipeline::plan::resolve_path;
use crate::pipeline::prepare::{build_dataset, export_package};
use crate::pipeline::study::{DatasetSpec, Study};

/// Replaces what `study` lacks by stand-ins; returns one line per replacement, for the user.
/// Fails, saying what to do, where something is missing and cannot stand in.
pub fn stand_in(
    study: &mut Study,
    file: &Path,
    assume_samples: Option<u64>,
    rates_from: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let root = file.parent().unwrap_or(Path::new("."));
    let mut lines = Vec::new();
    let dataset = resolve_path(root, &study.dataset.path);
    if !dataset.exists() && study.dataset.builtin.is_none() {
        let Some(samples) = assume_samples else {
            anyhow::bail!(
                "{}: the dataset {} does not exist; give --assume-samples N to plan the study \
                 over N samples with the embedded emoji dataset standing in for its images \
                 and captions",
                file.display(),
                dataset.display()
            );
        };
        let stand = crate::cache_dir().join("stand-ins").join("emoji");
        study.dataset = DatasetSpec {
            path: stand.clone(),
            builtin: Some("emoji".into()),
            shards: None,
            shard_rows: None,
        };
        if !stand.exists() {
            build_dataset(study, &stand, file)?;
        }
        lines.push(format!(
            "dataset {} is missing: the emoji dataset ({}) stands in for its images and \
             captions, planned at {samples} samples",
            dataset.display(),
            stand.display()
        ));
    }
    // Calibrating holds the output folder as a run would: a study planned before it runs
    // must not make its folder.
    let output = resolve_path(root, &study.output);
    if !output.exists() {
        study.output = crate::cache_dir()
            .join("stand-ins")
            .join("outputs")
            .join(crate::digest::fingerprint(&output));
    }
    let dataset = resolve_path(root, &study.dataset.path);
    let gpu = tch::Cuda::is_available();
    study.devices_elsewhere = rates_from.is_some();
    for (name, spec) in study.encoders.iter_mut() {
        let package = resolve_path(root, &spec.package);
        if !package.join("encoder.json").is_file() {
            if let Some(shape) = &spec.shape {
                let stand = random_package(shape);
                if !stand.join("encoder.json").is_file() {
                    let command = format!(
                        "python -m saeshare_export random {shape} --out '{}'",
                        stand.display()
                    );
                    export_package(name, Some(&command), &stand, &dataset, file)?;
                }
                lines.push(format!(
                    "package of {name} is missing: random weights at its shape {shape} stand in ({})",
                    stand.display()
                ));
                spec.package = stand;
                spec.export = None;
            }
        }
        if spec.device.starts_with("cuda") && !gpu {
            match rates_from {
                Some(machine) => lines.push(format!(
                    "{name} runs on {} in the study: planned with the rates of {machine}",
                    spec.device
                )),
                None => {
                    lines.push(format!(
                        "{name} runs on {} in the study: planned on this machine's CPU",
                        spec.device
                    ));
                    spec.device = "cpu".into();
                    spec.precision = None;
                    spec.batch_size = None;
                }
            }
        }
    }
    Ok(lines)
}

/// Where the package of random weights at `shape` is kept.
fn random_package(shape: &str) -> PathBuf {
    crate::cache_dir()
        .join("encoders")
        .join("random")
        .join(shape)
}
