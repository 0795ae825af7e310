//! The study's outputs from its pairs' tables: `wmppc` and `mppc` for the whole study, and one
//! `sharedness/<query>` table per query, computed by the differential views. Each pair's own
//! tables (with its `features`: moments over the samples that pair aligned) stay in
//! `pairs/<source>__<target>/`.

use std::path::PathBuf;

use std::collections::BTreeMap;

use crate::metrics::{ceiling_for, tables, FeatureMatch, MetricViews, SharednessQuery, WmppcRow};

use super::plan::Plan;
use crate::ids::EncoderId;

/// What the outputs stage wrote and the rows of the wMPPC matrix it prints.
pub struct Outputs {
    pub files: Vec<PathBuf>,
    pub wmppc: Vec<WmppcRow>,
}

/// Writes the study-wide tables and the sharedness rankings.
pub fn write(plan: &Plan) -> anyhow::Result<Outputs> {
    let mut files = Vec::new();
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
            if let Some(per_layer) = ceilings.get(&pair.source) {
                // In the pair's source layers' order, as the ceiling's aggregations expect.
                let matches: Option<Vec<Vec<FeatureMatch>>> = source_layers
                    .iter()
                    .map(|&l| per_layer.get(l).cloned())
                    .collect();
                let position = source_layers.iter().position(|&l| l == row.source_layer);
                row.baseline_ceiling =
                    matches.and_then(|m| ceiling_for(&m, row.aggregation, position));
            }
            merged.add_wmppc(row);
        }
        for row in tables::read_mppc(&dir.join(tables::MPPC_FILE))? {
            merged.add_mppc(row);
        }
    }
    let tables::MergedTables { wmppc, mppc, .. } = merged;
    let mut views = MetricViews::new();
    views.add_mppc(&mppc)?;
    if !wmppc.is_empty() {
        let out = plan.layout().wmppc();
        tables::write_wmppc(&out, &wmppc)?;
        files.push(out);
        let out = plan.layout().mppc();
        tables::write_mppc(&out, &mppc)?;
        files.push(out);
    }
    for query in &plan.study.sharedness {
        views.add_query(
            &query.name,
            SharednessQuery {
                source: query.model.get_ref().clone(),
                shared_with: query
                    .shared_with
                    .iter()
                    .map(|s| s.get_ref().clone())
                    .collect(),
                not_shared_with: query
                    .not_shared_with
                    .iter()
                    .map(|s| s.get_ref().clone())
                    .collect(),
                top: Some(query.top),
            },
        )?;
    }
    views.step();
    for query in &plan.study.sharedness {
        let rows = views.sharedness(&query.name).unwrap_or_default();
        let out = plan.layout().sharedness_table(&query.name);
        tables::write_sharedness(&out, query.model.get_ref(), &rows)?;
        tracing::info!(
            "sharedness {}: {} features ranked, written to {}",
            query.name,
            rows.len(),
            out.display()
        );
        files.push(out);
    }
    Ok(Outputs { files, wmppc })
}

/// For each encoder with a ceiling pair: per layer, its features' matches in the same layer of
/// its second SAEs.
fn ceiling_matches(
    plan: &Plan,
) -> anyhow::Result<BTreeMap<EncoderId, BTreeMap<String, Vec<FeatureMatch>>>> {
    let mut out: BTreeMap<EncoderId, BTreeMap<String, Vec<FeatureMatch>>> = BTreeMap::new();
    for p in plan.pair_ids() {
        let Some(source) = plan.pair(p).ceiling_of else {
            continue;
        };
        let per_layer = out.entry(source).or_default();
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
