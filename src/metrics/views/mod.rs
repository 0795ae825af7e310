//! What derives from MPPC, maintained by differential dataflow (docs/DESIGN.md, section 3): the wMPPC
//! matrix and the sharedness results are collections updated by difference. Adding the MPPC
//! rows of a new encoder changes only the wMPPC of the pairs that involve it and the sharedness
//! of the queries that name it; adding a query computes only that query.
//!
//! [`MetricViews`] owns a single-worker timely dataflow ([`dataflow::build`]): feed it rows and
//! queries, [`MetricViews::step`], read the current outputs and what the step changed.

mod dataflow;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use timely::communication::allocator::Thread;
use timely::communication::Allocator;
use timely::worker::Worker;

use std::collections::HashMap;

use super::sharedness::rank;
use super::{Aggregation, MetricsError, MppcRow, SharednessQuery, SharednessRow};

/// An f64 that differential dataflow can hold.
///
/// Collections must be `Ord`: arrangements sort their updates and consolidation cancels equal
/// records. f64 is only `PartialOrd` (NaN). `total_cmp` is a total order under which two values
/// are equal exactly when their bits are, so a retraction cancels its insertion exactly and no
/// value is rounded; fixed point would round small weights and break the agreement with the
/// batch metrics.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Real(f64);

impl PartialEq for Real {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}
impl Eq for Real {}
impl PartialOrd for Real {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Real {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl Hash for Real {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}

/// One `mppc` row as the dataflow holds it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Row {
    source: String,
    source_layer: String,
    /// The position of the source layer among its encoder's layers: the all-layers
    /// aggregations sum the layers in this order, as the batch does.
    source_rank: u32,
    feature: u32,
    target: String,
    target_layer: String,
    best_feature: Option<u32>,
    best_layer: Option<String>,
    rho: Real,
    weight: Real,
}

impl Row {
    fn of(r: &MppcRow, source_rank: u32) -> Row {
        Row {
            source: r.source.clone(),
            source_rank,
            source_layer: r.source_layer.clone(),
            feature: r.feature,
            target: r.target.clone(),
            target_layer: r.target_layer.clone(),
            best_feature: r.best_feature,
            best_layer: r.best_layer.clone(),
            rho: Real(r.rho),
            weight: Real(r.weight),
        }
    }

    fn key(&self) -> RowKey {
        (
            self.source.clone(),
            self.source_layer.clone(),
            self.feature,
            self.target.clone(),
            self.target_layer.clone(),
        )
    }
}

/// What identifies an `mppc` row: (source, source layer, feature, target, target layer).
type RowKey = (String, String, u32, String, String);

/// How many rows an [`MetricViews::update_mppc`] took out and put in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    pub removed: usize,
    pub added: usize,
}

/// A named sharedness query as the dataflow holds it (`top` is applied on reading).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Query {
    name: String,
    source: String,
    shared_with: Vec<String>,
    not_shared_with: Vec<String>,
}

/// A sharedness result without its key (query, layer, feature).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Shared {
    delta: Real,
    rho_min_shared: Real,
    rho_max_not_shared: Option<Real>,
    weight: Real,
}

impl Shared {
    fn from(row: &SharednessRow) -> Self {
        Shared {
            delta: Real(row.delta),
            rho_min_shared: Real(row.rho_min_shared),
            rho_max_not_shared: row.rho_max_not_shared.map(Real),
            weight: Real(row.weight),
        }
    }

    fn to_row(&self, source_layer: String, feature: u32) -> SharednessRow {
        SharednessRow {
            source_layer,
            feature,
            delta: self.delta.0,
            rho_min_shared: self.rho_min_shared.0,
            rho_max_not_shared: self.rho_max_not_shared.map(|r| r.0),
            weight: self.weight.0,
        }
    }
}

/// Output updates as the dataflow reports them, drained at each step.
#[derive(Default)]
struct Updates {
    wmppc: Vec<((WmppcKey, Option<Real>), isize)>,
    sharedness: Vec<(String, SharednessRow, isize)>,
}

/// Which wMPPC value: the key of the wMPPC matrix, as in the `wmppc` table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WmppcKey {
    /// Source model.
    pub source: String,
    /// Target model.
    pub target: String,
    /// Source layer, or `*`.
    pub source_layer: String,
    /// Target layer, or `*`.
    pub target_layer: String,
    /// Which average.
    pub aggregation: Aggregation,
}

/// The output updates of one [`MetricViews::step`]: `+1` a value that appeared, `-1` one that
/// went (a changed value is one of each).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    /// wMPPC values.
    pub wmppc: Vec<(WmppcKey, Option<f64>, isize)>,
    /// Sharedness results: query name, row.
    pub sharedness: Vec<(String, SharednessRow, isize)>,
}

/// The wMPPC matrix and the sharedness results of named queries, maintained by difference as
/// MPPC rows and queries arrive.
///
/// Unlike the batch [`super::sharedness()`], an incomplete input is not an error: a feature of
/// M has a sharedness result once it has an MPPC row towards every model of G and H, so a
/// query can be added before the rows it needs.
pub struct MetricViews {
    // Declared before the worker so the inputs close before the worker goes.
    dataflow: dataflow::Dataflow,
    worker: Worker,
    sink: Rc<RefCell<Updates>>,
    epoch: dataflow::Time,
    seen: HashSet<RowKey>,
    /// The position of each (encoder, layer) among its encoder's layers.
    ranks: HashMap<(String, String), u32>,
    queries: BTreeMap<String, SharednessQuery>,
    wmppc: BTreeMap<WmppcKey, Option<f64>>,
    sharedness: BTreeMap<(String, String, u32), SharednessRow>,
    last: Changes,
}

impl Default for MetricViews {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricViews {
    /// Empty views, with their dataflow on a worker of the calling thread.
    pub fn new() -> Self {
        let allocator = Allocator::Thread(Thread::default());
        let mut worker = Worker::new(
            timely::WorkerConfig::default(),
            allocator,
            Some(std::time::Instant::now()),
        );
        let sink = Rc::new(RefCell::new(Updates::default()));
        let dataflow = dataflow::build(&mut worker, sink.clone());
        MetricViews {
            dataflow,
            worker,
            sink,
            epoch: 0,
            seen: HashSet::new(),
            ranks: HashMap::new(),
            queries: BTreeMap::new(),
            wmppc: BTreeMap::new(),
            sharedness: BTreeMap::new(),
            last: Changes::default(),
        }
    }

    /// Adds `mppc` rows, taking effect at the next [`step`](Self::step). A row whose (source,
    /// source layer, feature, target, target layer) was already added is an error, and then
    /// none of `rows` is added.
    pub fn add_mppc(&mut self, rows: &[MppcRow]) -> Result<(), MetricsError> {
        let mut fresh = HashSet::with_capacity(rows.len());
        for r in rows {
            let k = self.row(r).key();
            if self.seen.contains(&k) || !fresh.insert(k) {
                return Err(MetricsError::BadInput(format!(
                    "{} layer {:?} feature {} has two mppc rows towards {} layer {:?}; was one table given twice?",
                    r.source, r.source_layer, r.feature, r.target, r.target_layer
                )));
            }
        }
        self.seen.extend(fresh);
        for r in rows {
            let row = self.row(r);
            self.dataflow.mppc.insert(row);
        }
        Ok(())
    }

    /// Says in which order `encoder`'s layers go, before its rows are added: the all-layers
    /// aggregations sum the layers in this order, so that their values are the bits `compare`
    /// gives. Without it, layers rank in the order their rows first arrive.
    pub fn order_layers(&mut self, encoder: &str, layers: &[String]) {
        for (rank, layer) in layers.iter().enumerate() {
            let rank = u32::try_from(rank).expect("fewer than 2^32 layers");
            self.ranks
                .insert((encoder.to_string(), layer.clone()), rank);
        }
    }

    /// The dataflow's row of `r`, its source layer ranked.
    fn row(&mut self, r: &MppcRow) -> Row {
        let key = (r.source.clone(), r.source_layer.clone());
        let rank = match self.ranks.get(&key) {
            Some(&rank) => rank,
            None => {
                let next = self.ranks.keys().filter(|(e, _)| *e == r.source).count() as u32;
                self.ranks.insert(key, next);
                next
            }
        };
        Row::of(r, rank)
    }

    /// Replaces the rows `old` (added before) by `new`, taking effect at the next
    /// [`step`](Self::step). Only the rows that differ enter the dataflow, so only the outputs
    /// that depend on them are computed again: a run that changed one pair recomputes the wMPPC
    /// of that pair and the rankings of the queries that read it. A row of `old` never added, or
    /// two rows of `new` with one key, is an error, and then nothing changes.
    pub fn update_mppc(
        &mut self,
        old: &[MppcRow],
        new: &[MppcRow],
    ) -> Result<Changed, MetricsError> {
        let old: HashSet<Row> = old.iter().map(|r| self.row(r)).collect();
        let new: HashSet<Row> = new.iter().map(|r| self.row(r)).collect();
        let gone: Vec<&Row> = old.difference(&new).collect();
        let came: Vec<&Row> = new.difference(&old).collect();
        if let Some(r) = gone.iter().find(|r| !self.seen.contains(&r.key())) {
            return Err(MetricsError::BadInput(format!(
                "{} layer {:?} feature {} towards {} layer {:?}: not among the rows added before",
                r.source, r.source_layer, r.feature, r.target, r.target_layer
            )));
        }
        let mut keys: HashSet<RowKey> = self.seen.clone();
        for r in &gone {
            keys.remove(&r.key());
        }
        for r in &came {
            if !keys.insert(r.key()) {
                return Err(MetricsError::BadInput(format!(
                    "{} layer {:?} feature {} has two mppc rows towards {} layer {:?}; was one table given twice?",
                    r.source, r.source_layer, r.feature, r.target, r.target_layer
                )));
            }
        }
        self.seen = keys;
        for r in &gone {
            self.dataflow.mppc.remove((*r).clone());
        }
        for r in &came {
            self.dataflow.mppc.insert((*r).clone());
        }
        Ok(Changed {
            removed: gone.len(),
            added: came.len(),
        })
    }

    /// Adds a sharedness query under `name`, taking effect at the next [`step`](Self::step).
    pub fn add_query(&mut self, name: &str, query: SharednessQuery) -> Result<(), MetricsError> {
        if self.queries.contains_key(name) {
            return Err(MetricsError::BadInput(format!(
                "a sharedness query named {name:?} exists already"
            )));
        }
        if query.shared_with.is_empty() {
            return Err(MetricsError::BadInput(format!(
                "query {name:?}: name at least one model to be shared with"
            )));
        }
        if let Some(m) = query
            .shared_with
            .iter()
            .find(|m| query.not_shared_with.contains(m))
        {
            return Err(MetricsError::BadInput(format!(
                "query {name:?}: {m:?} is both shared with and not shared with"
            )));
        }
        self.dataflow.queries.insert(Self::query(name, &query));
        self.queries.insert(name.to_string(), query);
        Ok(())
    }

    /// The query named `name`, if any.
    pub fn query_named(&self, name: &str) -> Option<&SharednessQuery> {
        self.queries.get(name)
    }

    /// Removes the query `name` (its results go at the next step); false when there is none.
    pub fn remove_query(&mut self, name: &str) -> bool {
        match self.queries.remove(name) {
            Some(query) => {
                self.dataflow.queries.remove(Self::query(name, &query));
                true
            }
            None => false,
        }
    }

    fn query(name: &str, query: &SharednessQuery) -> Query {
        // Distinct models: a result needs one MPPC per model of G and of H.
        let distinct = |models: &[String]| -> Vec<String> {
            let set: BTreeSet<&String> = models.iter().collect();
            set.into_iter().cloned().collect()
        };
        Query {
            name: name.to_string(),
            source: query.source.clone(),
            shared_with: distinct(&query.shared_with),
            not_shared_with: distinct(&query.not_shared_with),
        }
    }

    /// Brings the outputs up to date with everything added so far; returns what changed.
    pub fn step(&mut self) -> &Changes {
        self.epoch += 1;
        self.dataflow.mppc.advance_to(self.epoch);
        self.dataflow.mppc.flush();
        self.dataflow.queries.advance_to(self.epoch);
        self.dataflow.queries.flush();
        while self.dataflow.probe.less_than(&self.epoch) {
            self.worker.step();
        }

        let updates = std::mem::take(&mut *self.sink.borrow_mut());
        let mut changes = Changes {
            wmppc: updates
                .wmppc
                .into_iter()
                .map(|((key, value), diff)| (key, value.map(|v| v.0), diff))
                .collect(),
            sharedness: updates.sharedness,
        };
        // Retractions first: a changed value arrives as -old and +new, in any order.
        changes.wmppc.sort_by_key(|u| u.2);
        changes.sharedness.sort_by_key(|u| u.2);
        for (key, value, diff) in &changes.wmppc {
            match diff {
                d if *d < 0 => self.wmppc.remove(key),
                _ => self.wmppc.insert(key.clone(), *value),
            };
        }
        for (name, row, diff) in &changes.sharedness {
            let key = (name.clone(), row.source_layer.clone(), row.feature);
            match diff {
                d if *d < 0 => self.sharedness.remove(&key),
                _ => self.sharedness.insert(key, row.clone()),
            };
        }
        self.last = changes;
        &self.last
    }

    /// What the last [`step`](Self::step) changed.
    pub fn changes(&self) -> &Changes {
        &self.last
    }

    /// The current wMPPC matrix.
    pub fn wmppc(&self) -> &BTreeMap<WmppcKey, Option<f64>> {
        &self.wmppc
    }

    /// The current ranking of query `name`, as [`super::sharedness()`] orders it (highest Delta
    /// first, the query's `top` kept); `None` for an unknown query.
    pub fn sharedness(&self, name: &str) -> Option<Vec<SharednessRow>> {
        let query = self.queries.get(name)?;
        let from = (name.to_string(), String::new(), 0);
        let mut rows: Vec<SharednessRow> = self
            .sharedness
            .range(from..)
            .take_while(|((n, _, _), _)| n == name)
            .map(|(_, row)| row.clone())
            .collect();
        rank(&mut rows, query.top);
        Some(rows)
    }

    /// The queries, by name.
    pub fn queries(&self) -> &BTreeMap<String, SharednessQuery> {
        &self.queries
    }
}
