//! What a run folder holds, read for the report: the study record, the tables, the SAEs'
//! training metrics. A half-finished run gives what exists and a list of what is missing,
//! each with the command that makes it.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::metrics::{
    self, merge_decoders, read_decoders, summarize_matches, tables, Aggregation, DecoderRow,
    MatchSummary, MppcRow, SharednessQuery, SharednessRow, WmppcRow, DECODERS_FILE, MATCHES_FILE,
};
use crate::report::{paths_in, FeatureKey};
use crate::run_layout::RunLayout;
use crate::run_record::{QueryRecord, StudyRecord};
use crate::sae::{read_meta, CheckpointMeta};
use crate::similarity::{merge_similarity, read_similarity, SimilarityRow, SIMILARITY_FILE};

/// One sharedness query with its ranking.
pub struct Ranking {
    pub query: QueryRecord,
    /// The ranking as written (`sharedness/<query>.parquet`), highest Delta first.
    pub rows: Vec<SharednessRow>,
    /// Delta of every feature of the model, for its distribution (empty without the `mppc` rows).
    pub all: Vec<SharednessRow>,
}

/// One SAE's training record.
pub struct TrainedSae {
    pub encoder: String,
    pub layer: String,
    pub meta: CheckpointMeta,
}

/// Everything the report draws.
pub struct RunInputs {
    /// The run folder.
    pub dir: PathBuf,
    /// `study.json`; `None` for a `saeshare compare` folder.
    pub record: Option<StudyRecord>,
    /// The study's name (the folder's without a record).
    pub name: String,
    /// The study's `wmppc` rows (from the finished pairs when the study table is missing).
    pub wmppc: Vec<WmppcRow>,
    /// The study's `mppc` rows, likewise.
    pub mppc: Vec<MppcRow>,
    /// One per sharedness query.
    pub rankings: Vec<Ranking>,
    /// Every fitted SAE, by encoder and layer name.
    pub saes: Vec<TrainedSae>,
    /// The representation measures (`similarity.parquet`; empty where the study has none).
    pub similarity: Vec<SimilarityRow>,
    /// Each layer pair's one-to-one matches, summed up (`matches.parquet`, or the pairs').
    pub matches: Vec<MatchSummary>,
    /// Each layer pair's decoder geometry (`decoders.parquet`, or the pairs').
    pub decoders: Vec<DecoderRow>,
    /// The matrix's encoders: (name, last layer), in the study's order.
    pub matrix_encoders: Vec<(String, String)>,
    /// What is missing, with the command that makes it; empty for a finished run.
    pub missing: Vec<String>,
}

impl RunInputs {
    /// Reads `dir`: a `saeshare run` output folder (or a `saeshare compare --out` folder).
    pub fn load(dir: &Path) -> anyhow::Result<RunInputs> {
        anyhow::ensure!(
            dir.is_dir(),
            "{}: no such folder; give the `output` folder of a study (`saeshare run STUDY.toml` makes it)",
            dir.display()
        );
        let record = StudyRecord::read(dir)?;
        let mut loader = Loader {
            dir,
            layout: RunLayout::new(dir),
            run_command: match &record {
                Some(r) => format!("`saeshare run {}`", r.study_file.display()),
                None => "`saeshare run STUDY.toml`".to_string(),
            },
            missing: Vec::new(),
        };
        // Only the ranked models' mppc rows are drawn (rankings, feature matches): a study's
        // table holds every pair's, which need not all be in memory.
        let queries = queries_of(dir, record.as_ref())?;
        let ranked: HashSet<String> = queries.iter().map(|q| q.model.clone()).collect();
        let (wmppc, mppc) = loader.tables(record.is_some(), |source| ranked.contains(source))?;
        if let Some(record) = &record {
            loader.note_pairs_without_wmppc(record);
        }
        let rankings = loader.rankings(queries, &mppc)?;
        let saes = loader.saes()?;
        let similarity = loader.similarity()?;
        let matches = loader.matches()?;
        let decoders = loader.decoders()?;
        let matrix_encoders = match &record {
            Some(r) => r
                .named_encoders()
                .map(|e| {
                    let last = e.layers.last().cloned().unwrap_or_default();
                    (e.name.clone(), last)
                })
                .collect(),
            None => encoders_of(&wmppc),
        };
        let name = record.as_ref().map_or_else(
            || {
                dir.file_name()
                    .map_or("run".into(), |n| n.to_string_lossy().into_owned())
            },
            |r| r.name.clone(),
        );
        Ok(RunInputs {
            dir: dir.to_path_buf(),
            record,
            name,
            wmppc,
            mppc,
            rankings,
            saes,
            similarity,
            matches,
            decoders,
            matrix_encoders,
            missing: loader.missing,
        })
    }
}

impl Ranking {
    /// The feature of the query's model that `row` ranks.
    pub fn feature(&self, row: &SharednessRow) -> FeatureKey {
        FeatureKey {
            encoder: self.query.model.clone(),
            layer: row.source_layer.clone(),
            feature: row.feature,
        }
    }

    /// How many features of the model have Delta > 0 (of those in the distribution).
    pub fn positive(&self) -> usize {
        self.all.iter().filter(|r| r.delta > 0.0).count()
    }
}

/// A run folder being read, and what it was found to lack so far.
struct Loader<'a> {
    dir: &'a Path,
    layout: RunLayout,
    /// The command that completes the run, for the notes on what is missing.
    run_command: String,
    missing: Vec<String>,
}

impl Loader<'_> {
    /// The study's `wmppc` and `mppc` rows (of the sources `keep` accepts): its tables, or
    /// what the finished pairs hold when the run stopped before writing them.
    fn tables(
        &mut self,
        has_record: bool,
        keep: impl Fn(&str) -> bool + Copy,
    ) -> anyhow::Result<(Vec<WmppcRow>, Vec<MppcRow>)> {
        let run_command = &self.run_command;
        let study_wmppc = self.layout.wmppc();
        if study_wmppc.is_file() {
            let wmppc = tables::read_wmppc(&study_wmppc)?;
            let mppc_path = self.layout.mppc();
            if mppc_path.is_file() {
                return Ok((wmppc, tables::read_mppc_of(&mppc_path, keep)?));
            }
            self.missing.push(format!(
                "{} is missing: sharedness and feature matches need it; {run_command} (or `saeshare compare`) writes it",
                mppc_path.display()
            ));
            return Ok((wmppc, Vec::new()));
        }
        let pair_dirs = self.pair_dirs();
        if pair_dirs
            .iter()
            .any(|p| p.join(tables::WMPPC_FILE).is_file())
        {
            self.missing.push(format!(
                "{} is missing: the run stopped before its outputs stage; the values below come from the pairs finished so far. {run_command} finishes it",
                study_wmppc.display()
            ));
            return read_pair_tables(&pair_dirs, keep);
        }
        anyhow::ensure!(
            has_record || self.layout.saes().is_dir(),
            "{}: there is no wmppc.parquet, no pairs/ and no saes/ here, so nothing to report. \
             `saeshare run STUDY.toml` makes a run folder (its `output` key); \
             `saeshare compare ... --out DIR` makes wmppc.parquet and mppc.parquet",
            self.dir.display()
        );
        self.missing.push(format!(
            "{} is missing: no pair has been compared yet; {run_command} compares them",
            study_wmppc.display()
        ));
        Ok((Vec::new(), Vec::new()))
    }

    /// The representation measures: the study's table, or the finished pairs' where the run
    /// stopped before its outputs (each layer pair's rows once); none where the study has none.
    fn similarity(&self) -> anyhow::Result<Vec<SimilarityRow>> {
        let study = self.layout.similarity();
        if study.is_file() {
            return Ok(read_similarity(&study)?);
        }
        let files = self
            .pair_dirs()
            .into_iter()
            .map(|d| d.join(SIMILARITY_FILE));
        Ok(merge_similarity(files)?)
    }

    /// The one-to-one matches: the study's table, or every finished pair's (the ceilings'
    /// too), each layer pair once.
    fn matches(&self) -> anyhow::Result<Vec<MatchSummary>> {
        let study = self.layout.matches();
        if study.is_file() {
            return Ok(summarize_matches(&study)?);
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for dir in paths_in(&self.layout.pairs()) {
            let file = dir.join(MATCHES_FILE);
            if file.is_file() {
                for s in summarize_matches(&file)? {
                    let key = (s.source.clone(), s.target.clone(), s.source_layer.clone());
                    if seen.insert((key, s.target_layer.clone())) {
                        out.push(s);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The decoder geometry: the study's table, or every finished pair's (the ceilings' too),
    /// each layer pair once.
    fn decoders(&self) -> anyhow::Result<Vec<DecoderRow>> {
        let study = self.layout.decoders();
        if study.is_file() {
            return Ok(read_decoders(&study)?);
        }
        let files = paths_in(&self.layout.pairs()).into_iter();
        Ok(merge_decoders(files.map(|d| d.join(DECODERS_FILE)))?)
    }

    /// The folders of the compared pairs, ceilings aside, in name order.
    fn pair_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = paths_in(&self.layout.pairs());
        dirs.retain(|p| {
            p.file_name()
                .is_some_and(|n| !n.to_string_lossy().contains(".ceiling"))
        });
        dirs
    }

    /// Notes each planned pair whose folder has no wMPPC yet.
    fn note_pairs_without_wmppc(&mut self, record: &StudyRecord) {
        // By folder: an all-layers pair and a last-layers pair of the same two encoders
        // share rows, and one may be missing while the other is done.
        for pair in record.pairs.iter().filter(|p| !p.ceiling) {
            let table = self.layout.pair_dir(&pair.key).join(tables::WMPPC_FILE);
            if !table.is_file() {
                self.missing.push(format!(
                    "pair {} has no wMPPC yet; {} compares it",
                    pair.key, self.run_command
                ));
            }
        }
    }

    /// One ranking per query: its table, else one computed from the `mppc` rows found.
    fn rankings(
        &mut self,
        queries: Vec<QueryRecord>,
        mppc: &[MppcRow],
    ) -> anyhow::Result<Vec<Ranking>> {
        let run_command = &self.run_command;
        let mut rankings = Vec::new();
        for query in queries {
            let path = self.layout.sharedness_table(&query.name);
            let as_query = |top| SharednessQuery {
                source: query.model.clone(),
                shared_with: query.shared_with.clone(),
                not_shared_with: query.not_shared_with.clone(),
                top,
            };
            let computable = !mppc.is_empty() && !query.shared_with.is_empty();
            let all = if computable {
                match metrics::sharedness(&comparable_rows(mppc, &query), &as_query(None)) {
                    Ok(all) => all,
                    Err(error) => {
                        self.missing.push(format!(
                            "sharedness {}: the distribution of Delta could not be computed: {error}",
                            query.name
                        ));
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            let rows = if path.is_file() {
                tables::read_sharedness(&path)
                    .with_context(|| format!("reading the ranking of query {}", query.name))?
                    .1
            } else {
                self.missing.push(format!(
                    "{} is missing: the outputs stage of {run_command} writes it{}",
                    path.display(),
                    if all.is_empty() {
                        ""
                    } else {
                        "; the ranking below is computed from the mppc rows found"
                    }
                ));
                all.iter().take(query.top.max(1)).cloned().collect()
            };
            rankings.push(Ranking { query, rows, all });
        }
        Ok(rankings)
    }

    /// Every `saes/<encoder>/<layer>/sae.json`, in name order.
    fn saes(&mut self) -> anyhow::Result<Vec<TrainedSae>> {
        let run_command = &self.run_command;
        let root = self.layout.saes();
        let mut out = Vec::new();
        let Ok(encoders) = std::fs::read_dir(&root) else {
            self.missing.push(format!(
                "{} is missing: no SAE has been fitted yet, so there are no training curves; {run_command} fits them",
                root.display()
            ));
            return Ok(out);
        };
        let mut found: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
        for encoder in encoders.filter_map(|e| e.ok()) {
            let Ok(layers) = std::fs::read_dir(encoder.path()) else {
                continue;
            };
            for layer in layers.filter_map(|e| e.ok()) {
                if layer.path().join("sae.json").is_file() {
                    found.insert(
                        (
                            encoder.file_name().to_string_lossy().into_owned(),
                            layer.file_name().to_string_lossy().into_owned(),
                        ),
                        layer.path(),
                    );
                }
            }
        }
        for ((encoder, layer), path) in found {
            let meta = read_meta(&path)?;
            out.push(TrainedSae {
                encoder,
                layer,
                meta,
            });
        }
        Ok(out)
    }
}

/// The tables of every finished pair, each row once.
fn read_pair_tables(
    pair_dirs: &[PathBuf],
    keep: impl Fn(&str) -> bool + Copy,
) -> anyhow::Result<(Vec<WmppcRow>, Vec<MppcRow>)> {
    let mut merged = tables::MergedTables::default();
    for dir in pair_dirs {
        let (w, m) = (dir.join(tables::WMPPC_FILE), dir.join(tables::MPPC_FILE));
        if !(w.is_file() && m.is_file()) {
            continue;
        }
        for row in tables::read_wmppc(&w)? {
            merged.add_wmppc(row);
        }
        for row in tables::read_mppc_of(&m, keep)? {
            merged.add_mppc(row);
        }
    }
    Ok((merged.wmppc, merged.mppc))
}

/// The study's sharedness queries; without a study record, the rankings' files (their G and H
/// unknown).
fn queries_of(dir: &Path, record: Option<&StudyRecord>) -> anyhow::Result<Vec<QueryRecord>> {
    if let Some(r) = record {
        return Ok(r.sharedness.clone());
    }
    let mut found = Vec::new();
    for path in paths_in(&RunLayout::new(dir).sharedness()) {
        if path.extension().is_some_and(|e| e == "parquet") {
            let (model, _) = tables::read_sharedness(&path)?;
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            found.push(QueryRecord {
                name,
                model,
                shared_with: Vec::new(),
                not_shared_with: Vec::new(),
                top: 0,
            });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Without a study record: the models of the table in order of appearance, each with its last
/// layer: the table does not say which that is, so the layer compared with the most models
/// (last-layer comparisons cover every pair), ties broken by the highest layer number.
fn encoders_of(rows: &[WmppcRow]) -> Vec<(String, String)> {
    let mut models: Vec<String> = Vec::new();
    let mut partners: BTreeMap<(&str, &str), HashSet<&str>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.aggregation == Aggregation::Layer) {
        for (name, layer, other) in [
            (&r.source, &r.source_layer, &r.target),
            (&r.target, &r.target_layer, &r.source),
        ] {
            if !models.contains(name) {
                models.push(name.clone());
            }
            partners
                .entry((name.as_str(), layer.as_str()))
                .or_default()
                .insert(other.as_str());
        }
    }
    models
        .into_iter()
        .map(|model| {
            let last = partners
                .iter()
                .filter(|((m, _), _)| *m == model)
                .max_by(|((_, a), pa), ((_, b), pb)| {
                    pa.len()
                        .cmp(&pb.len())
                        .then_with(|| natural_key(a).cmp(&natural_key(b)))
                })
                .map(|((_, layer), _)| layer.to_string())
                .unwrap_or_default();
            (model, last)
        })
        .collect()
}

/// Orders layer names as people do: `features.18` after `features.3`.
fn natural_key(name: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            key.push((rest[..digits].parse().unwrap_or(u64::MAX), String::new()));
            rest = &rest[digits..];
        } else {
            let text = rest.len() - rest.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
            key.push((0, rest[..text].to_string()));
            rest = &rest[text..];
        }
    }
    key
}

/// The rows of the query's model restricted to its layers compared with every model of G and H
/// (a study may compare all layers with one model and only the last with the others).
fn comparable_rows(mppc: &[MppcRow], query: &QueryRecord) -> Vec<MppcRow> {
    let models: Vec<&String> = query
        .shared_with
        .iter()
        .chain(&query.not_shared_with)
        .collect();
    let mut compared: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for r in mppc.iter().filter(|r| r.source == query.model) {
        compared
            .entry(r.source_layer.as_str())
            .or_default()
            .insert(r.target.as_str());
    }
    let layers: HashSet<&str> = compared
        .into_iter()
        .filter(|(_, targets)| models.iter().all(|m| targets.contains(m.as_str())))
        .map(|(layer, _)| layer)
        .collect();
    mppc.iter()
        .filter(|r| r.source == query.model && layers.contains(r.source_layer.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_sort_by_their_numbers() {
        let mut layers = vec!["features.18", "features.3", "features.13", "head"];
        layers.sort_by_key(|l| natural_key(l));
        assert_eq!(layers, ["features.3", "features.13", "features.18", "head"]);
    }
}
