//! The study's outputs from its pairs' tables: `wmppc` and `mppc` for the whole study (the
//! union of the pairs' tables, the ceiling filled in), and one `sharedness/<query>` table per
//! query. Each pair's own tables (with its `features`: moments over the samples that pair
//! aligned) stay in `pairs/<source>__<target>/`.
//!
//! The rankings are maintained by the differential views ([`MetricViews`]) across runs. The
//! views start from what the last outputs were made of (`outputs.json`: the queries, and the
//! `mppc.parquet` they read, trusted only if it is the file that record describes), take in the
//! difference with this run's rows and queries, and report what changed: only the rankings
//! that changed are written again. A run that adds an encoder recomputes the rankings that
//! involve it; a new query is computed alone; a run that changed nothing rewrites none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ids::EncoderId;
use crate::metrics::{
    ceiling_for, tables, Changes, FeatureMatch, MetricViews, MppcRow, SharednessQuery,
    SharednessRow, WmppcKey, WmppcRow,
};
use crate::metrics::{spread, DECODERS_FILE, MATCHES_FILE};
use crate::pipeline::plan::Plan;
use crate::pipeline::record::query_records;
use crate::pipeline::units::MadeFile;
use crate::run_record::QueryRecord;
use crate::similarity::{merge_similarity, SIMILARITY_FILE};

/// What the outputs stage wrote and the rows of the wMPPC matrix it prints.
pub struct Outputs {
    pub files: Vec<PathBuf>,
    pub wmppc: Vec<WmppcRow>,
}

/// Writes the study-wide tables and the sharedness rankings that changed.
pub fn write(plan: &Plan) -> anyhow::Result<Outputs> {
    let root = &plan.output;
    let tables::MergedTables {
        mut wmppc, mppc, ..
    } = merge_pair_tables(plan)?;
    let queries = query_records(plan);
    let orders: Vec<(String, Vec<String>)> = (plan.encoders.iter())
        .map(|e| (e.name.clone(), e.layer_names()))
        .collect();
    let views = StudyViews::update(root, &plan.layout().mppc(), &orders, &mppc, &queries)?;
    // The pairs' tables give each row's baselines and samples; the views give its value.
    for row in &mut wmppc {
        row.wmppc = views.wmppc(row)?;
    }
    let mut files = Vec::new();
    if !wmppc.is_empty() {
        let out = plan.layout().wmppc();
        tables::write_wmppc(&out, &wmppc)?;
        files.push(out);
        let out = plan.layout().mppc();
        tables::write_mppc(&out, &mppc)?;
        files.push(out);
    }
    // Every pair's, the ceilings' included (which features a second seed finds again).
    let pair_tables =
        |file: &'static str| plan.pair_ids().map(move |p| plan.pair_dir(p).join(file));
    let matches = crate::metrics::merge_matches(pair_tables(MATCHES_FILE))?;
    let out = plan.layout().matches();
    files.extend(study_table(out, &matches, crate::metrics::write_matches)?);
    let geometry = crate::metrics::merge_decoders(pair_tables(DECODERS_FILE))?;
    let out = plan.layout().decoders();
    files.extend(study_table(out, &geometry, crate::metrics::write_decoders)?);
    let pairs = plan.pair_ids().filter(|&p| plan.similarity_of(p));
    let measures = merge_similarity(pairs.map(|p| plan.pair_dir(p).join(SIMILARITY_FILE)))?;
    if !measures.is_empty() {
        let out = plan.layout().similarity();
        crate::similarity::write_similarity(&out, &measures)?;
        files.push(out);
    }
    for query in &queries {
        let out = plan.layout().sharedness_table(&query.name);
        if views.changed(&query.name) || !views.intact(root, &out) {
            let rows = views.ranking(&query.name);
            tables::write_sharedness(&out, &query.model, &rows)?;
            tracing::info!(
                "sharedness {}: {} features ranked, written to {}",
                query.name,
                rows.len(),
                out.display()
            );
        } else {
            tracing::info!(
                "sharedness {}: unchanged, {} kept",
                query.name,
                out.display()
            );
        }
        files.push(out);
    }
    OutputsRecord::of(root, &plan.layout().mppc(), queries, &files)?.write(root)?;
    Ok(Outputs { files, wmppc })
}

/// Writes the study-wide table `out` of the pairs' `rows` with `write`, where there are rows:
/// the file written.
fn study_table<R>(
    out: PathBuf,
    rows: &[R],
    write: impl Fn(&Path, &[R]) -> Result<(), crate::metrics::MetricsError>,
) -> anyhow::Result<Option<PathBuf>> {
    if rows.is_empty() {
        return Ok(None);
    }
    write(&out, rows)?;
    Ok(Some(out))
}

/// The study's wMPPC values and sharedness rankings, brought up to date by difference from the
/// last outputs.
struct StudyViews {
    views: MetricViews,
    /// The ranking tables of the last outputs, as written.
    written: Vec<MadeFile>,
    /// Queries new or changed since the last outputs.
    fresh: Vec<String>,
    changes: Changes,
}

impl StudyViews {
    /// The views fed the last outputs' rows and queries, then the difference with `mppc` and
    /// `queries`: what changed is what depends on the difference. `orders` lists each
    /// encoder's layers in the study's order, the order the all-layers averages sum them in.
    fn update(
        root: &Path,
        mppc_file: &Path,
        orders: &[(String, Vec<String>)],
        mppc: &[MppcRow],
        queries: &[QueryRecord],
    ) -> anyhow::Result<StudyViews> {
        let mut views = MetricViews::new();
        for (encoder, layers) in orders {
            views.order_layers(encoder, layers);
        }
        let Baseline {
            rows: old_rows,
            queries: old_queries,
            rankings: written,
        } = OutputsRecord::baseline(root, mppc_file);
        views.add_mppc(&old_rows)?;
        for query in &old_queries {
            views.add_query(&query.name, query_of(query))?;
        }
        views.step();
        let rows = views.update_mppc(&old_rows, mppc)?;
        let mut fresh = Vec::new();
        for query in queries {
            let now = query_of(query);
            if views.query_named(&query.name) != Some(&now) {
                views.remove_query(&query.name);
                views.add_query(&query.name, now)?;
                fresh.push(query.name.clone());
            }
        }
        let changes = views.step().clone();
        tracing::info!(
            "outputs: {} mppc row(s) out and {} in since the last outputs; {} wMPPC value(s) and \
             {} ranked feature(s) changed (the floor and ceiling columns are read from the pairs' \
             tables, not counted here)",
            rows.removed,
            rows.added,
            changes.wmppc.len(),
            changes.sharedness.len()
        );
        Ok(StudyViews {
            views,
            written,
            fresh,
            changes,
        })
    }

    /// Query `name`'s current ranking.
    fn ranking(&self, name: &str) -> Vec<SharednessRow> {
        self.views.sharedness(name).unwrap_or_default()
    }

    /// The value of a `wmppc` row's key, as the views maintain it.
    fn wmppc(&self, row: &WmppcRow) -> anyhow::Result<Option<f64>> {
        let key = WmppcKey {
            source: row.source.clone(),
            target: row.target.clone(),
            source_layer: row.source_layer.clone(),
            target_layer: row.target_layer.clone(),
            aggregation: row.aggregation,
        };
        let value = self.views.wmppc().get(&key).copied();
        value.ok_or_else(|| anyhow::anyhow!("the views hold no wMPPC of {key:?}"))
    }

    /// Whether the ranking table `table` is the file the last outputs wrote.
    fn intact(&self, root: &Path, table: &Path) -> bool {
        let relative = table.strip_prefix(root).unwrap_or(table);
        (self.written.iter())
            .find(|made| Path::new(&made.path) == relative)
            .is_some_and(|made| made.problem(root).is_none())
    }

    /// Whether query `name`'s ranking is new or changed.
    fn changed(&self, name: &str) -> bool {
        self.fresh.iter().any(|f| f == name) || self.changes.sharedness.iter().any(|u| u.0 == name)
    }
}

/// What the last outputs were made of: the queries, and the `mppc` table the views read.
#[derive(Serialize, Deserialize)]
struct OutputsRecord {
    version: u32,
    queries: Vec<QueryRecord>,
    /// `mppc.parquet` as written (absent when the study had no pair).
    mppc: Option<MadeFile>,
    /// The ranking tables as written.
    #[serde(default)]
    rankings: Vec<MadeFile>,
}

/// What the views start from: the rows, queries and ranking tables of the last outputs.
#[derive(Default)]
struct Baseline {
    rows: Vec<MppcRow>,
    queries: Vec<QueryRecord>,
    rankings: Vec<MadeFile>,
}

const OUTPUTS_RECORD_VERSION: u32 = 1;

impl OutputsRecord {
    fn of(
        root: &Path,
        mppc: &Path,
        queries: Vec<QueryRecord>,
        written: &[PathBuf],
    ) -> anyhow::Result<OutputsRecord> {
        let mppc = if mppc.is_file() {
            Some(MadeFile::of(root, mppc)?)
        } else {
            None
        };
        let sharedness = crate::run_layout::RunLayout::new(root).sharedness();
        let rankings = (written.iter())
            .filter(|f| f.starts_with(&sharedness))
            .map(|f| MadeFile::of(root, f))
            .collect::<Result<_, _>>()?;
        Ok(OutputsRecord {
            version: OUTPUTS_RECORD_VERSION,
            queries,
            mppc,
            rankings,
        })
    }

    fn write(&self, root: &Path) -> anyhow::Result<()> {
        let path = crate::run_layout::RunLayout::new(root).outputs_record();
        crate::atomic::write(&path, &serde_json::to_vec_pretty(self)?)
    }

    /// The rows, queries and ranking tables of the last outputs, where their record can be
    /// trusted (it reads, and `mppc.parquet` is the file it describes); else none, and the
    /// outputs are made anew.
    fn baseline(root: &Path, mppc: &Path) -> Baseline {
        let path = crate::run_layout::RunLayout::new(root).outputs_record();
        let Ok(bytes) = std::fs::read(&path) else {
            return Baseline::default();
        };
        let record = match serde_json::from_slice::<OutputsRecord>(&bytes) {
            Ok(record) if record.version == OUTPUTS_RECORD_VERSION => record,
            Ok(_) => return Baseline::default(),
            Err(e) => {
                tracing::warn!(
                    "{}: unreadable ({e}); the outputs are made anew",
                    path.display()
                );
                return Baseline::default();
            }
        };
        let rows = match &record.mppc {
            None => Vec::new(),
            Some(made) => {
                if let Some(problem) = made.problem(root) {
                    tracing::warn!("{}: {problem}; the outputs are made anew", mppc.display());
                    return Baseline::default();
                }
                match tables::read_mppc(mppc) {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::warn!("{e}; the outputs are made anew");
                        return Baseline::default();
                    }
                }
            }
        };
        Baseline {
            rows,
            queries: record.queries,
            rankings: record.rankings,
        }
    }
}

fn query_of(record: &QueryRecord) -> SharednessQuery {
    SharednessQuery {
        source: record.model.clone(),
        shared_with: record.shared_with.clone(),
        not_shared_with: record.not_shared_with.clone(),
        top: Some(record.top),
    }
}

/// The union of the pairs' `wmppc` (the ceiling filled in) and `mppc` tables, in the plan's
/// order of pairs, each key once.
fn merge_pair_tables(plan: &Plan) -> anyhow::Result<tables::MergedTables> {
    let mut merged = tables::MergedTables::default();
    let ceilings = ceiling_matches(plan)?;
    for p in plan
        .pair_ids()
        .filter(|&p| plan.pair(p).ceiling_of.is_none())
    {
        let dir = plan.pair_dir(p);
        let pair = plan.pair(p);
        let source = plan.encoder(pair.source);
        let source_layers: Vec<&str> = (pair.source_layers.iter())
            .map(|&l| source.layer_name(l))
            .collect();
        for mut row in tables::read_wmppc(&dir.join(tables::WMPPC_FILE))? {
            let sets = ceilings
                .get(&pair.source)
                .into_iter()
                .flat_map(|s| s.values());
            let position = source_layers.iter().position(|&l| l == row.source_layer);
            // One value per ceiling set (seed), each from the set's matches in the pair's source
            // layers' order, as the ceiling's aggregations expect.
            let values = sets.map(|per_layer| {
                let matches: Option<Vec<Vec<FeatureMatch>>> = (source_layers.iter())
                    .map(|&l| per_layer.get(l).cloned())
                    .collect();
                matches.and_then(|m| ceiling_for(&m, row.aggregation, position))
            });
            (row.baseline_ceiling, row.baseline_ceiling_std) = spread(values);
            merged.add_wmppc(row);
        }
        for row in tables::read_mppc(&dir.join(tables::MPPC_FILE))? {
            merged.add_mppc(row);
        }
    }
    Ok(merged)
}

/// A layer's features' matches, by layer name.
type LayerMatches = BTreeMap<String, Vec<FeatureMatch>>;

/// For each encoder with ceiling pairs, per ceiling SAE set (by the set's encoder): per layer,
/// its features' matches in the same layer of that set.
fn ceiling_matches(
    plan: &Plan,
) -> anyhow::Result<BTreeMap<EncoderId, BTreeMap<EncoderId, LayerMatches>>> {
    let mut out: BTreeMap<EncoderId, BTreeMap<EncoderId, LayerMatches>> = BTreeMap::new();
    for p in plan.pair_ids() {
        let Some(source) = plan.pair(p).ceiling_of else {
            continue;
        };
        let sets = out.entry(source).or_default();
        let per_layer = sets.entry(plan.pair(p).target).or_default();
        for row in tables::read_mppc(&plan.pair_dir(p).join(tables::MPPC_FILE))? {
            if row.source_layer == row.target_layer {
                per_layer
                    .entry(row.source_layer.clone())
                    .or_default()
                    .push(FeatureMatch {
                        rho: row.rho,
                        best: row.best_feature,
                        weight: row.weight,
                    });
            }
        }
    }
    Ok(out)
}

/// The last-layer wMPPC matrix (rows: source, columns: target), with the floor (and the
/// ceiling, when the study has one) of each value in brackets.
pub fn matrix(plan: &Plan, rows: &[WmppcRow]) -> String {
    let encoders: Vec<(String, String)> = plan
        .named_encoders()
        .map(|(_, e)| {
            let last = e.layer_names().pop().expect("at least one layer");
            (e.name.clone(), last)
        })
        .collect();
    crate::metrics::WmppcMatrix::last_layers(&encoders, rows).to_text()
}
