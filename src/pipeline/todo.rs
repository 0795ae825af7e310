//! What a run has to do, from the manifest: the SAEs to fit (their settings changed, their
//! record lost, a shard they were fitted on changed, a ceiling twin fitted on other shards) and
//! the compare pass's work.

use std::sync::Arc;

use super::compare::CompareWork;
use super::plan::{Plan, ShardIdentity};
use super::run::RunSummary;
use super::run_folder::RunFolder;
use super::units::Units;
use super::WorkerArgs;
use crate::ids::EncoderId;

/// What a run has to do, from the manifest: the encoders whose SAEs are fitted, and the
/// compare pass's work (made larger by those fits).
pub(super) struct Todo {
    pub(super) fit: Vec<EncoderId>,
    pub(super) compare: CompareWork,
}

impl Todo {
    pub(super) fn of(plan: &Plan) -> Todo {
        let units = Units::new(&plan.output);
        let identities = plan.shard_identities();
        let mut fit: Vec<EncoderId> = (plan.encoder_ids())
            .filter(|&e| {
                if !plan.saes_done(&units, e) {
                    return true;
                }
                let (unit, _) = plan.sae_unit(e);
                let Some(changed) = changed_since_fit(&units, &unit, &identities) else {
                    return false;
                };
                tracing::warn!(
                    "{}: {changed} since its SAEs were fitted on it; they are fitted again",
                    plan.encoder(e).name
                );
                true
            })
            .collect();
        // An encoder and its ceiling twin are fed the very same rows: when one of them is
        // fitted and the other was fitted on other shards (rows appended since), both are.
        for e in plan.encoder_ids() {
            let Some(base) = plan.encoder(e).twin_of else {
                continue;
            };
            if fit.contains(&e) == fit.contains(&base) {
                continue;
            }
            let other = if fit.contains(&e) { base } else { e };
            let (unit, _) = plan.sae_unit(other);
            if fitted_on(&units, &unit).is_some_and(|on| on != identities) {
                tracing::warn!(
                    "{}: fitted on other shards than the study has now, and the ceiling's SAEs \
                     are fitted on all of them; fitted again, so that both see the same rows",
                    plan.encoder(other).name
                );
                fit.push(other);
            }
        }
        fit.sort();
        let mut compare = CompareWork::of(plan, &units);
        // New SAEs make new codes and new sums, whatever the manifest says of older ones.
        for &e in &fit {
            compare.refit(plan, e);
        }
        Todo { fit, compare }
    }

    /// The encoders of `fit` that have an SAE to fit (not every one imported).
    pub(super) fn fitted<'a>(&'a self, plan: &'a Plan) -> impl Iterator<Item = EncoderId> + 'a {
        (self.fit.iter().copied()).filter(|&e| plan.encoder(e).fits_any())
    }

    fn pairs_updated(&self, plan: &Plan) -> Vec<String> {
        (plan.pair_ids())
            .filter(|&p| self.compare.needs_tables(p))
            .map(|p| plan.pair(p).key.clone())
            .collect()
    }

    pub(super) fn log(&self, plan: &Plan, workers: &WorkerArgs) {
        let (codes_units, pairs) = self.compare.counts();
        if self.fit.is_empty() && codes_units == 0 && pairs == 0 && plan.layout().wmppc().exists() {
            tracing::info!(
                "study {}: every unit is done and the outputs are in {}; nothing to do",
                plan.study.name,
                plan.output.display()
            );
        }
        tracing::info!(
            "study {}: {} SAE set(s) to fit, {} codes unit(s), {} pair(s) to update, on {} worker(s) x {} process(es)",
            plan.study.name,
            self.fitted(plan).count(),
            codes_units,
            pairs,
            workers.workers,
            workers.processes
        );
    }

    /// The summary's part known before the run starts.
    pub(super) fn summary(&self, plan: &Plan, folder: RunFolder) -> RunSummary {
        RunSummary {
            study: plan.study.name.clone(),
            output: plan.output.clone(),
            saes_fitted: (self.fitted(plan))
                .map(|e| plan.encoder(e).name.clone())
                .collect(),
            codes_units: self.compare.counts().0,
            pairs_updated: self.pairs_updated(plan),
            folder: Some(Arc::new(folder)),
            ..RunSummary::default()
        }
    }
}

/// The shards an SAE record says its SAEs were fitted on (records of older versions and of
/// encoders whose every SAE is imported do not say).
fn fitted_on(units: &Units, unit: &str) -> Option<Vec<ShardIdentity>> {
    let record = units.get(unit)?;
    serde_json::from_value(record.detail.get("fitted_on")?.clone()).ok()
}

/// What changed of the shards the SAEs of `unit` were fitted on, said for the log: a shard
/// rewritten under its name or left out of the study. Shards added since are not a change:
/// SAEs are kept as fitted while rows are appended (docs/DESIGN.md, section 5).
fn changed_since_fit(units: &Units, unit: &str, now: &[ShardIdentity]) -> Option<String> {
    let on = fitted_on(units, unit)?;
    let changes: Vec<String> = (on.iter())
        .filter_map(|was| match now.iter().find(|s| s.key.0 == was.key.0) {
            None => Some(format!(
                "the shard {} is no longer in the dataset",
                was.key.0
            )),
            Some(is) if is != was => Some(format!("the shard {} changed", was.key.0)),
            Some(_) => None,
        })
        .collect();
    crate::pipeline::plan::first_of_changes(changes)
}
