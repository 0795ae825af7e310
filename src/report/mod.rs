//! The report: a static HTML view of a run folder that opens from disk (no server, no network).
//!
//! `index.html` holds the last-layer wMPPC matrix (heatmap and sortable table, with the floor
//! and ceiling baselines), a layer x layer heatmap per all-layers pair and the sharedness
//! queries; `sharedness/<query>.html` ranks a query's features with the correlations behind
//! each Delta and Delta's distribution; `features/<encoder>/<layer>/<feature>.html` shows a
//! feature's top-activating images and captions, its activation histogram and its best matches
//! in every other encoder with their own examples; `training.html` the SAEs' training curves.
//! Thumbnails are small JPEGs in `thumbs/`. Plots are inline SVG ([`svg`]).
//!
//! The report is written into a temporary folder beside its destination and renamed into
//! place, so a report folder is always whole.

mod examples;
mod html;
mod inputs;
mod pages;
pub mod svg;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context;

pub use crate::metrics::{MatrixCell, WmppcMatrix};
pub use examples::FeatureKey;
pub use inputs::RunInputs;

use crate::metrics::MppcRow;

/// What `saeshare report` draws, and where.
#[derive(Clone, Debug)]
pub struct ReportOptions {
    /// The report's folder; `RUN/report` by default.
    pub out: Option<PathBuf>,
    /// The dataset the examples come from; by default the one `RUN/study.json` names.
    pub dataset: Option<PathBuf>,
    /// Feature pages per sharedness query (its highest Delta).
    pub features_per_query: usize,
    /// Top-activating images shown per feature.
    pub examples: usize,
    /// Captions listed per feature.
    pub captions: usize,
    /// Thumbnail size in pixels (the longer side).
    pub thumbnail_px: u32,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            out: None,
            dataset: None,
            features_per_query: 20,
            examples: 12,
            captions: 30,
            thumbnail_px: 128,
        }
    }
}

/// What a report holds.
#[derive(Clone, Debug)]
pub struct ReportSummary {
    pub dir: PathBuf,
    pub index: PathBuf,
    pub feature_pages: usize,
    pub thumbnails: usize,
    /// What the run folder lacks (the report is partial when this is not empty).
    pub missing: Vec<String>,
    /// The matrix as a text table.
    pub matrix: String,
}

/// A best-matching feature of another encoder.
#[derive(Clone, Debug)]
pub(crate) struct Match {
    pub key: FeatureKey,
    pub rho: f64,
}

/// Everything the pages are drawn from.
pub(crate) struct Site<'a> {
    pub inputs: &'a RunInputs,
    pub matrix: &'a WmppcMatrix,
    pub activity: &'a BTreeMap<FeatureKey, examples::FeatureActivity>,
    pub samples: &'a HashMap<u64, examples::Sample>,
    /// Features with a page.
    pub pages: &'a BTreeSet<FeatureKey>,
    pub matches: &'a BTreeMap<FeatureKey, Vec<Match>>,
    pub missing: &'a [String],
    pub options: &'a ReportOptions,
}

impl Site<'_> {
    /// A feature page's path, relative to the report's folder.
    pub fn feature_path(key: &FeatureKey) -> String {
        format!(
            "features/{}/{}/{}.html",
            file_name(&key.encoder),
            file_name(&key.layer),
            key.feature
        )
    }

    /// A link to `key`'s page from a page at `root`, or the plain name when it has none.
    pub fn feature_link(&self, key: &FeatureKey, root: &str, text: &str) -> String {
        if self.pages.contains(key) {
            format!(
                r#"<a href="{root}{}">{}</a>"#,
                Self::feature_path(key),
                html::escape(text)
            )
        } else {
            html::escape(text)
        }
    }
}

/// A path component made of safe characters. A name that had to change gets a digest of the
/// original, so two names never share a page (`a b` and `a_b`), and `.` or `..` never escape.
fn file_name(text: &str) -> String {
    let safe: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe == text && !matches!(text, "" | "." | "..") {
        return safe;
    }
    let digest = crate::digest::fingerprint(&text);
    format!("{}_{}", safe.replace('.', "_"), &digest[..8])
}

/// The file that marks a folder as a report, so that only a report is ever replaced.
const REPORT_MARKER: &str = ".saeshare-report";

/// Refuses an output folder that holds the run, or holds anything but an earlier report.
fn check_destination(run: &Path, out: &Path) -> anyhow::Result<()> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (run, target) = (canonical(run), canonical(out));
    anyhow::ensure!(
        !run.starts_with(&target),
        "--out {}: the report would replace the run folder {} it reads; choose a folder outside it (RUN/report by default)",
        out.display(),
        run.display()
    );
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        anyhow::ensure!(
            empty || out.join(REPORT_MARKER).is_file(),
            "--out {}: the folder exists and is not a saeshare report; the report replaces its folder whole, so give a new or empty folder",
            out.display()
        );
    }
    Ok(())
}

/// Puts the folder `staged` at `out`, replacing an earlier report only once the new one is
/// in place; on failure the earlier report is put back.
fn swap_into_place(staged: tempfile::TempDir, out: &Path, parent: &Path) -> anyhow::Result<()> {
    if !out.exists() {
        let staged = staged.keep();
        return std::fs::rename(&staged, out)
            .with_context(|| format!("moving the report into {}", out.display()));
    }
    let aside = tempfile::Builder::new()
        .prefix(".report-old-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
    let old = aside.path().join("report");
    std::fs::rename(out, &old).with_context(|| format!("moving {} aside", out.display()))?;
    if let Err(error) = std::fs::rename(staged.path(), out) {
        std::fs::rename(&old, out).with_context(|| {
            format!(
                "putting the earlier report back from {} into {}",
                old.display(),
                out.display()
            )
        })?;
        return Err(error).with_context(|| format!("moving the report into {}", out.display()));
    }
    // `staged` now is `out`: not to be removed. `aside`, dropped, removes the earlier report.
    let _ = staged.keep();
    Ok(())
}

/// Writes the report of the run folder `run`.
pub fn write_report(run: &Path, options: &ReportOptions) -> anyhow::Result<ReportSummary> {
    let inputs = RunInputs::load(run)?;
    let mut missing = inputs.missing.clone();
    let matrix = WmppcMatrix::last_layers(&inputs.matrix_encoders, &inputs.wmppc);
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| crate::run_layout::RunLayout::new(run).report());
    check_destination(run, &out)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let temp = tempfile::Builder::new()
        .prefix(".report-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;

    // The listed features, their matches, and what the codes and the dataset say of them.
    let mut pages = BTreeSet::new();
    for ranking in &inputs.rankings {
        // Dead features (S = 0) rank at Delta = 0 but have nothing to show.
        let alive = ranking.rows.iter().filter(|r| r.weight > 0.0);
        for row in alive.take(options.features_per_query) {
            pages.insert(FeatureKey {
                encoder: ranking.query.model.clone(),
                layer: row.source_layer.clone(),
                feature: row.feature,
            });
        }
    }
    let matches = best_matches(&inputs.mppc, &pages);
    let mut wanted = pages.clone();
    wanted.extend(matches.values().flatten().map(|m| m.key.clone()));
    let shards = inputs.record.as_ref().map(|r| r.dataset.shards.as_slice());
    let keep = options.examples.max(options.captions);
    let activity = examples::collect_activity(run, &wanted, keep, shards)?;
    for dir in &activity.missing_codes {
        missing.push(format!(
            "{} is missing: features of that layer are shown without examples; `saeshare run` writes the codes",
            dir.display()
        ));
    }
    let mut ids = BTreeSet::new();
    for (key, a) in &activity.features {
        let n = if pages.contains(key) {
            keep
        } else {
            options.examples.min(6)
        };
        ids.extend(a.top.iter().take(n).map(|t| t.1));
    }
    let dataset = options
        .dataset
        .clone()
        .or_else(|| inputs.record.as_ref().map(|r| r.dataset.path.clone()));
    let samples = match dataset {
        Some(dir) if dir.is_dir() => {
            let found =
                examples::fetch_samples(&dir, shards, &ids, temp.path(), options.thumbnail_px)
                    .with_context(|| format!("reading the examples from {}", dir.display()))?;
            if found.not_found > 0 {
                missing.push(format!(
                    "{} sample(s) of the codes are not in the dataset {}; is it the study's?",
                    found.not_found,
                    dir.display()
                ));
            }
            if found.unreadable_images > 0 {
                missing.push(format!(
                    "{} image(s) could not be read and are shown as blanks (see the log)",
                    found.unreadable_images
                ));
            }
            found.rows
        }
        Some(dir) if !ids.is_empty() => {
            missing.push(format!(
                "the dataset {} is not there: examples are shown without images or captions; pass --dataset DIR",
                dir.display()
            ));
            HashMap::new()
        }
        _ => HashMap::new(),
    };
    let thumbnails = samples.values().filter(|s| s.thumbnail.is_some()).count();

    let site = Site {
        inputs: &inputs,
        matrix: &matrix,
        activity: &activity.features,
        samples: &samples,
        pages: &pages,
        matches: &matches,
        missing: &missing,
        options,
    };
    let mut files: Vec<(String, String)> = vec![
        ("index.html".to_string(), pages::index::page(&site)),
        ("training.html".to_string(), pages::training::page(&site)),
    ];
    for ranking in &inputs.rankings {
        files.push((
            format!("sharedness/{}.html", file_name(&ranking.query.name)),
            pages::sharedness::page(&site, ranking),
        ));
    }
    for key in &pages {
        files.push((Site::feature_path(key), pages::feature::page(&site, key)));
    }
    for (path, text) in &files {
        let path = temp.path().join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }

    std::fs::write(temp.path().join(REPORT_MARKER), b"")
        .with_context(|| format!("writing into {}", temp.path().display()))?;
    swap_into_place(temp, &out, &parent)?;
    tracing::info!(
        "report: {} page(s), {} feature page(s), {} thumbnail(s) in {}{}",
        files.len(),
        pages.len(),
        thumbnails,
        out.display(),
        if missing.is_empty() { "" } else { " (partial)" }
    );
    Ok(ReportSummary {
        index: out.join("index.html"),
        dir: out,
        feature_pages: pages.len(),
        thumbnails,
        missing,
        matrix: matrix.to_text(),
    })
}

/// For each feature, its best match in every other model it was compared with: the row over
/// all target layers (`*`) when there is one, else the best of the layers' rows.
fn best_matches(
    mppc: &[MppcRow],
    features: &BTreeSet<FeatureKey>,
) -> BTreeMap<FeatureKey, Vec<Match>> {
    let mut out: BTreeMap<FeatureKey, BTreeMap<String, (bool, Match)>> = BTreeMap::new();
    for row in mppc {
        let key = FeatureKey {
            encoder: row.source.clone(),
            layer: row.source_layer.clone(),
            feature: row.feature,
        };
        if !features.contains(&key) || row.target.ends_with(".ceiling") {
            continue;
        }
        let Some(best) = row.best_feature else {
            continue;
        };
        let union = row.target_layer == crate::metrics::ALL_LAYERS;
        let layer = if union {
            match &row.best_layer {
                Some(l) => l.clone(),
                None => continue,
            }
        } else {
            row.target_layer.clone()
        };
        let candidate = Match {
            key: FeatureKey {
                encoder: row.target.clone(),
                layer,
                feature: best,
            },
            rho: row.rho,
        };
        let per_target = out.entry(key).or_default();
        match per_target.get(&row.target) {
            Some((true, _)) => {}
            Some((false, m)) if !union && m.rho >= candidate.rho => {}
            _ => {
                per_target.insert(row.target.clone(), (union, candidate));
            }
        }
    }
    out.into_iter()
        .map(|(k, per_target)| (k, per_target.into_values().map(|(_, m)| m).collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_names_stay_in_their_folder_and_never_collide() {
        assert_eq!(file_name("features.18"), "features.18");
        for name in ["", ".", "..", "a/b", "a b"] {
            let safe = file_name(name);
            assert!(
                !safe.is_empty() && safe != "." && safe != "..",
                "{name:?} -> {safe:?}"
            );
            assert!(!safe.contains('/'), "{safe}");
        }
        assert_ne!(file_name("a b"), file_name("a_b"));
        assert_ne!(file_name("a b"), file_name("a/b"));
    }

    #[test]
    fn only_an_earlier_report_or_an_empty_folder_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(run.join("codes")).unwrap();
        assert!(check_destination(&run, &run).is_err());
        assert!(check_destination(&run, dir.path()).is_err());
        assert!(check_destination(&run, &run.join("report")).is_ok());
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        assert!(check_destination(&run, &other).is_ok(), "empty");
        std::fs::write(other.join("x"), "").unwrap();
        assert!(check_destination(&run, &other).is_err(), "not a report");
        std::fs::write(other.join(REPORT_MARKER), "").unwrap();
        assert!(check_destination(&run, &other).is_ok(), "a report");
    }
}
