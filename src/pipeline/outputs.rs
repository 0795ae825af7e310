//! The study's outputs from its pairs' tables: `wmppc` and `mppc` for the whole study, and one
//! `sharedness/<query>` table per query, computed by the differential views. Each pair's own
//! tables (with its `features`: moments over the samples that pair aligned) stay in
//! `pairs/<source>__<target>/`.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::metrics::{tables, Aggregation, MetricViews, MppcRow, SharednessQuery, WmppcRow};

use super::plan::Plan;

/// What the outputs stage wrote and the rows of the wMPPC matrix it prints.
pub struct Outputs {
    pub files: Vec<PathBuf>,
    pub wmppc: Vec<WmppcRow>,
}

/// Writes the study-wide tables and the sharedness rankings.
pub fn write(plan: &Plan) -> anyhow::Result<Outputs> {
    let mut files = Vec::new();
    // A last-layers pair and an all-layers pair of the same encoders share their last-layer
    // rows (the same sums): each row once.
    let mut wmppc: Vec<WmppcRow> = Vec::new();
    let mut mppc: Vec<MppcRow> = Vec::new();
    let mut seen_wmppc = HashSet::new();
    let mut seen_mppc = HashSet::new();
    for p in 0..plan.pairs.len() {
        let dir = plan.pair_dir(p);
        for row in tables::read_wmppc(&dir.join(tables::WMPPC_FILE))? {
            let key = (
                row.source.clone(),
                row.target.clone(),
                row.source_layer.clone(),
                row.target_layer.clone(),
                row.aggregation,
            );
            if seen_wmppc.insert(key) {
                wmppc.push(row);
            }
        }
        for row in tables::read_mppc(&dir.join(tables::MPPC_FILE))? {
            let key = (
                row.source.clone(),
                row.source_layer.clone(),
                row.feature,
                row.target.clone(),
                row.target_layer.clone(),
            );
            if seen_mppc.insert(key) {
                mppc.push(row);
            }
        }
    }
    let mut views = MetricViews::new();
    views.add_mppc(&mppc)?;
    if !wmppc.is_empty() {
        let out = plan.output.join(tables::WMPPC_FILE);
        tables::write_wmppc(&out, &wmppc)?;
        files.push(out);
        let out = plan.output.join(tables::MPPC_FILE);
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
        let out = plan
            .output
            .join("sharedness")
            .join(format!("{}.parquet", query.name));
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

/// The last-layer wMPPC matrix (rows: source, columns: target), with the floor under each value.
pub fn matrix(plan: &Plan, rows: &[WmppcRow]) -> String {
    let names: Vec<&str> = plan.encoders.iter().map(|e| e.name.as_str()).collect();
    let last: Vec<String> = plan
        .encoders
        .iter()
        .map(|e| e.layer_names().pop().expect("at least one layer"))
        .collect();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(8).max(14);
    let mut out = format!("{:width$}", "wMPPC (floor)");
    for n in &names {
        out.push_str(&format!(" {n:>width$}"));
    }
    out.push('\n');
    for (i, s) in names.iter().enumerate() {
        out.push_str(&format!("{s:width$}"));
        for (j, t) in names.iter().enumerate() {
            let cell = rows
                .iter()
                .find(|r| {
                    r.source == *s
                        && r.target == *t
                        && r.aggregation == Aggregation::Layer
                        && r.source_layer == last[i]
                        && r.target_layer == last[j]
                })
                .map(|r| match (r.wmppc, r.baseline_floor) {
                    (Some(v), Some(f)) => format!("{v:.3} ({f:.3})"),
                    (Some(v), None) => format!("{v:.3}"),
                    _ => "-".to_string(),
                })
                .unwrap_or_else(|| if i == j { "." } else { "" }.to_string());
            out.push_str(&format!(" {cell:>width$}"));
        }
        out.push('\n');
    }
    out
}
