//! The study record of a plan (the record's types and files are [`crate::run_record`]).

use std::path::Path;

use crate::ids::EncoderLayer;
use crate::pipeline::plan::Plan;
use crate::run_record::{
    DatasetRecord, EncoderRecord, PairRecord, QueryRecord, StudyRecord, STUDY_RECORD_VERSION,
};

impl StudyRecord {
    /// The record of `plan`, read from `study_file`.
    pub fn of(plan: &Plan, study_file: &Path) -> StudyRecord {
        let absolute = |p: &Path| {
            std::fs::canonicalize(p)
                .or_else(|_| std::path::absolute(p))
                .unwrap_or_else(|_| p.to_path_buf())
        };
        let encoders = plan
            .encoders
            .iter()
            .map(|e| EncoderRecord {
                name: e.name.clone(),
                modality: if e.is_image() { "image" } else { "text" }.to_string(),
                layers: e.layer_names(),
                package: absolute(&e.package),
                ceiling_of: e.twin_of.map(|t| plan.encoder(t).name.clone()),
                fit_on: match e.token_selection() {
                    Some(_) => "tokens",
                    None => "pooled",
                }
                .to_string(),
                tokens_per_sample: e.token_selection().and_then(|t| t.per_sample),
                read_at: Some(e.pooling),
                read_out: e.read_out,
                imported: (e.layer_ids())
                    .filter_map(|l| Some((e.layer_name(l).to_string(), e.imported(l)?.label())))
                    .collect(),
                no_ceiling: e.no_ceiling.clone(),
            })
            .collect();
        let pairs = plan
            .pairs
            .iter()
            .map(|p| {
                let names = |side: &mut dyn Iterator<Item = EncoderLayer>| {
                    side.map(|at| plan.encoder(at.encoder).layer_name(at.layer).to_string())
                        .collect()
                };
                PairRecord {
                    key: p.key.clone(),
                    source: plan.encoder(p.source).name.clone(),
                    target: plan.encoder(p.target).name.clone(),
                    source_layers: names(&mut p.source_at()),
                    target_layers: names(&mut p.target_at()),
                    ceiling: p.ceiling_of.is_some(),
                }
            })
            .collect();
        let sharedness = query_records(plan);
        StudyRecord {
            format_version: STUDY_RECORD_VERSION,
            name: plan.study.name.clone(),
            study_file: study_file.to_path_buf(),
            dataset: DatasetRecord {
                path: absolute(plan.dataset.dir()),
                shards: plan
                    .dataset
                    .shards()
                    .iter()
                    .map(|s| crate::pipeline::plan::shard_key(s).0)
                    .collect(),
                rows: plan.dataset.rows(),
            },
            encoders,
            pairs,
            sharedness,
        }
    }
}

/// The study's sharedness queries, as the records hold them.
pub(in crate::pipeline) fn query_records(plan: &Plan) -> Vec<QueryRecord> {
    let names = |list: &[toml::Spanned<String>]| -> Vec<String> {
        list.iter().map(|s| s.get_ref().clone()).collect()
    };
    (plan.study.sharedness.iter())
        .map(|q| QueryRecord {
            name: q.name.clone(),
            model: q.model.get_ref().clone(),
            shared_with: names(&q.shared_with),
            not_shared_with: names(&q.not_shared_with),
            top: q.top,
        })
        .collect()
}
