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
mod matches;
mod pages;
mod specificity;
pub mod svg;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::atomic::{self, AtomicDir, ReplaceError};

pub use crate::metrics::{MatrixCell, WmppcMatrix};
pub use examples::FeatureKey;
pub use inputs::RunInputs;

use examples::{FeatureActivity, Sample, SampleRequest};
use inputs::Ranking;
use matches::Match;

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

impl ReportOptions {
    /// Top-activating images shown for each match listed on a feature page.
    pub(crate) fn match_examples(&self) -> usize {
        self.examples.min(6)
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

/// Everything the pages are drawn from.
pub(crate) struct Site<'a> {
    pub inputs: &'a RunInputs,
    pub matrix: &'a WmppcMatrix,
    pub activity: &'a BTreeMap<FeatureKey, FeatureActivity>,
    pub samples: &'a HashMap<u64, Sample>,
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

    /// The distinct source and target layers of a pair's rows, each in the study's order;
    /// `None` when the pair was compared on one layer of each encoder only (no grid to draw).
    pub fn layer_grid<'r>(
        &self,
        (source, target): (&str, &str),
        layers: impl Iterator<Item = (&'r str, &'r str)> + Clone,
    ) -> Option<(Vec<&'r str>, Vec<&'r str>)> {
        let mut source_layers = distinct(layers.clone().map(|l| l.0));
        let mut target_layers = distinct(layers.map(|l| l.1));
        if source_layers.len() < 2 && target_layers.len() < 2 {
            return None;
        }
        self.sort_by_study_layers(source, &mut source_layers, |l| l);
        self.sort_by_study_layers(target, &mut target_layers, |l| l);
        Some((source_layers, target_layers))
    }

    /// Sorts `items` of `encoder` in the study's order of its layers; without a study record
    /// (or for an encoder it does not name) the order is left as it is.
    pub fn sort_by_study_layers<T>(
        &self,
        encoder: &str,
        items: &mut [T],
        layer: impl Fn(&T) -> &str,
    ) {
        if let Some(e) = self.inputs.record.as_ref().and_then(|r| r.encoder(encoder)) {
            items.sort_by_key(|item| e.layers.iter().position(|l| l == layer(item)));
        }
    }
}

/// The paths in `dir`, in name order; none when it cannot be read.
pub(crate) fn paths_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths
}

/// The distinct `items`, in the order they first appear.
pub(crate) fn distinct<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
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

/// Puts the folder `staged` at its target, replacing an earlier report only once the new one is
/// in place; on failure the earlier report is put back.
fn swap_into_place(staged: AtomicDir, parent: &Path) -> anyhow::Result<()> {
    let out = staged.target().to_path_buf();
    staged.replace().or_else(|e| {
        let context = match &e {
            ReplaceError::AsideFolder(_) => {
                format!("creating a temporary folder in {}", parent.display())
            }
            ReplaceError::MoveAside(_) => format!("moving {} aside", out.display()),
            ReplaceError::MoveIn(_) => format!("moving the report into {}", out.display()),
            ReplaceError::PutBack { old, .. } => format!(
                "putting the earlier report back from {} into {}",
                old.display(),
                out.display()
            ),
        };
        Err(e.into_io()).context(context)
    })
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
    let parent = atomic::folder_of(&out).to_path_buf();
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let temp = AtomicDir::create(&out)
        .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;

    let pages = listed_features(&inputs.rankings, options.features_per_query);
    let matches = matches::best_matches(&inputs.mppc, &pages);
    let sources = ExampleSources {
        run,
        inputs: &inputs,
        options,
        pages: &pages,
        matches: &matches,
    };
    let examples = sources.gather(temp.path(), &mut missing)?;
    let thumbnails = examples
        .samples
        .values()
        .filter(|s| s.thumbnail.is_some())
        .count();
    let site = Site {
        inputs: &inputs,
        matrix: &matrix,
        activity: &examples.activity,
        samples: &examples.samples,
        pages: &pages,
        matches: &matches,
        missing: &missing,
        options,
    };
    let files = render_pages(&site);
    write_files(temp.path(), &files)?;
    std::fs::write(temp.path().join(REPORT_MARKER), b"")
        .with_context(|| format!("writing into {}", temp.path().display()))?;
    swap_into_place(temp, &parent)?;

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

/// The features that get a page: each query's first `per_query` ranked features that fire.
fn listed_features(rankings: &[Ranking], per_query: usize) -> BTreeSet<FeatureKey> {
    let mut pages = BTreeSet::new();
    for ranking in rankings {
        // Dead features (S = 0) rank at Delta = 0 but have nothing to show.
        let alive = ranking.rows.iter().filter(|r| r.weight > 0.0);
        pages.extend(alive.take(per_query).map(|row| ranking.feature(row)));
    }
    pages
}

/// What the codes say of the features shown, and the dataset rows of their top samples.
struct Examples {
    activity: BTreeMap<FeatureKey, FeatureActivity>,
    samples: HashMap<u64, Sample>,
}

/// Where the examples come from, and which features they are wanted for.
struct ExampleSources<'a> {
    run: &'a Path,
    inputs: &'a RunInputs,
    options: &'a ReportOptions,
    /// Features with a page: they show more samples than the matches listed on a page.
    pages: &'a BTreeSet<FeatureKey>,
    matches: &'a BTreeMap<FeatureKey, Vec<Match>>,
}

impl ExampleSources<'_> {
    /// Reads the codes of the features shown, then the dataset rows of their top samples,
    /// writing thumbnails under `report`; what cannot be shown is noted in `missing`.
    fn gather(&self, report: &Path, missing: &mut Vec<String>) -> anyhow::Result<Examples> {
        let mut wanted = self.pages.clone();
        wanted.extend(self.matches.values().flatten().map(|m| m.key.clone()));
        let activity =
            examples::collect_activity(self.run, &wanted, self.top_kept(), self.shards())?;
        for dir in &activity.missing_codes {
            missing.push(format!(
                "{} is missing: features of that layer are shown without examples; `saeshare run` writes the codes",
                dir.display()
            ));
        }
        let ids = self.shown_samples(&activity.features);
        let samples = self.read_samples(&ids, report, missing)?;
        Ok(Examples {
            activity: activity.features,
            samples,
        })
    }

    /// The study's shards, which the codes and the dataset are read from.
    fn shards(&self) -> Option<&[String]> {
        let record = self.inputs.record.as_ref();
        record.map(|r| r.dataset.shards.as_slice())
    }

    /// How many top samples a feature page lists (as images or as captions).
    fn top_kept(&self) -> usize {
        self.options.examples.max(self.options.captions)
    }

    /// The ids of the samples some page shows: a page's own feature's, and fewer of each match.
    fn shown_samples(&self, activity: &BTreeMap<FeatureKey, FeatureActivity>) -> BTreeSet<u64> {
        let mut ids = BTreeSet::new();
        for (key, a) in activity {
            let n = if self.pages.contains(key) {
                self.top_kept()
            } else {
                self.options.match_examples()
            };
            ids.extend(a.top.iter().take(n).map(|t| t.1));
        }
        ids
    }

    /// The dataset rows `ids`, when the dataset is there.
    fn read_samples(
        &self,
        ids: &BTreeSet<u64>,
        report: &Path,
        missing: &mut Vec<String>,
    ) -> anyhow::Result<HashMap<u64, Sample>> {
        let record = self.inputs.record.as_ref();
        let dataset = self
            .options
            .dataset
            .clone()
            .or_else(|| record.map(|r| r.dataset.path.clone()));
        match dataset {
            Some(dir) if dir.is_dir() => {
                let request = SampleRequest {
                    dataset: &dir,
                    shards: self.shards(),
                    ids,
                    report,
                    size: self.options.thumbnail_px,
                };
                let found = examples::fetch_samples(&request)
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
                Ok(found.rows)
            }
            Some(dir) if !ids.is_empty() => {
                missing.push(format!(
                    "the dataset {} is not there: examples are shown without images or captions; pass --dataset DIR",
                    dir.display()
                ));
                Ok(HashMap::new())
            }
            _ => Ok(HashMap::new()),
        }
    }
}

/// Every page of the report: (path relative to the report's folder, HTML).
fn render_pages(site: &Site) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = vec![
        ("index.html".to_string(), pages::index::page(site)),
        ("training.html".to_string(), pages::training::page(site)),
    ];
    for ranking in &site.inputs.rankings {
        files.push((
            format!("sharedness/{}.html", file_name(&ranking.query.name)),
            pages::sharedness::page(site, ranking),
        ));
    }
    for key in site.pages {
        files.push((Site::feature_path(key), pages::feature::page(site, key)));
    }
    files
}

/// Writes `files` (relative path, text) under `dir`, making their folders.
fn write_files(dir: &Path, files: &[(String, String)]) -> anyhow::Result<()> {
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
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
