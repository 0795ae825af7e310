//! The differential dataflow behind [`super::MetricViews`]: MPPC rows and sharedness queries
//! in, the wMPPC matrix and the sharedness results out, each maintained by difference.
//!
//! Every operator is keyed so that an output depends only on the inputs it is computed from:
//! wMPPC on the rows of one (source, target) pair, a sharedness result on the rows of its
//! model M towards the models of its G and H. Adding the rows of a new encoder, or a new query,
//! therefore changes only the outputs that involve them.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::VecCollection;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::worker::Worker;

use super::{Query, Real, Row, Shared, Updates, WmppcKey};
use crate::metrics::compare::all_layers;
use crate::metrics::sharedness::feature_delta;
use crate::metrics::ALL_LAYERS;
use crate::metrics::{wmppc, Aggregation, FeatureMatch};

/// Logical time of the views: one epoch per [`super::MetricViews::step`].
pub(super) type Time = u64;

/// The inputs of a built dataflow and the probe telling when an epoch is through.
pub(super) struct Dataflow {
    pub mppc: InputSession<Time, Row, isize>,
    pub queries: InputSession<Time, Query, isize>,
    pub probe: ProbeHandle<Time>,
}

/// A collection of the views' dataflow.
type Coll<'scope, D> = VecCollection<'scope, Time, D, isize>;

/// (source, target, source layer, target layer): one compared layer pair; target layer `*` is
/// the union of the target's layers.
type LayerPair = (String, String, String, String);

/// One feature's (index, MPPC, weight S).
type FeatureValue = (u32, Real, Real);

/// Builds the dataflow in `worker`; every output update is appended to `sink`.
pub(super) fn build(worker: &mut Worker, sink: Rc<RefCell<Updates>>) -> Dataflow {
    worker.dataflow::<Time, _, _>(|scope| {
        let (mppc, rows) = scope.new_collection::<Row, isize>();
        let (queries, query_rows) = scope.new_collection::<Query, isize>();
        let probe = ProbeHandle::new();

        let per_layer = per_layer_wmppc(rows.clone());
        let wmppc_sink = sink.clone();
        wmppc_values(rows.clone(), per_layer.clone())
            .consolidate()
            .inspect(move |(update, _time, diff)| {
                wmppc_sink.borrow_mut().wmppc.push((update.clone(), *diff))
            })
            .probe_with(&probe);

        sharedness(rows, standing_layers(per_layer), query_rows)
            .consolidate()
            .inspect(move |(((name, layer, feature), value), _time, diff)| {
                let row = value.to_row(layer.clone(), *feature);
                sink.borrow_mut()
                    .sharedness
                    .push((name.clone(), row, *diff))
            })
            .probe_with(&probe);

        Dataflow {
            mppc,
            queries,
            probe,
        }
    })
}

/// The MPPC rows keyed by their layer pair.
fn by_layer_pair(rows: Coll<'_, Row>) -> Coll<'_, (LayerPair, FeatureValue)> {
    rows.map(|r| {
        let key = (r.source, r.target, r.source_layer, r.target_layer);
        (key, (r.feature, r.rho, r.weight))
    })
}

/// A feature's match as the batch core takes it (the best target feature plays no part in
/// the averages).
fn feature_match(rho: Real, weight: Real) -> FeatureMatch {
    FeatureMatch {
        rho: rho.0,
        best: None,
        weight: weight.0,
    }
}

/// wMPPC of every layer pair (target layer `*`: the union), by the batch core's formula over
/// the features in order: the same bits as `compare`.
fn per_layer_wmppc(rows: Coll<'_, Row>) -> Coll<'_, (LayerPair, Option<Real>)> {
    by_layer_pair(rows).reduce(|_pair, features, out| {
        let matches: Vec<FeatureMatch> = (features.iter())
            .map(|(f, _)| feature_match(f.1, f.2))
            .collect();
        out.push((wmppc(&matches).map(Real), 1))
    })
}

/// wMPPC of every layer pair, and both all-layers aggregations of every (source, target) pair.
fn wmppc_values<'scope>(
    rows: Coll<'scope, Row>,
    per_layer: Coll<'scope, (LayerPair, Option<Real>)>,
) -> Coll<'scope, (WmppcKey, Option<Real>)> {
    let per_layer = per_layer.map(|((source, target, source_layer, target_layer), value)| {
        let aggregation = if target_layer == ALL_LAYERS {
            Aggregation::Union
        } else {
            Aggregation::Layer
        };
        let key = WmppcKey {
            source,
            target,
            source_layer,
            target_layer,
            aggregation,
        };
        (key, value)
    });
    let all_layers = rows
        .map(|r| {
            let at = (r.source_rank, r.source_layer, r.target_layer);
            ((r.source, r.target), (at, r.feature, r.rho, r.weight))
        })
        .reduce(|_pair, features, out| {
            let features = features.iter().map(|(f, _)| (&f.0, f.2, f.3));
            for (aggregation, value) in all_layers_of(features) {
                out.push(((aggregation, value.map(Real)), 1));
            }
        })
        .map(|((source, target), (aggregation, value))| {
            let key = WmppcKey {
                source,
                target,
                source_layer: ALL_LAYERS.to_string(),
                target_layer: ALL_LAYERS.to_string(),
                aggregation,
            };
            (key, value)
        });
    per_layer.concat(all_layers)
}

/// `compare`'s all-layers aggregations from the MPPC rows of one (source, target) pair, each
/// `((source rank, source layer, target layer), rho, weight)` in order: none unless there are
/// several layer pairs and every source layer has its union (or the only target layer). The
/// unions go to the batch core in the source layers' order.
fn all_layers_of<'a>(
    features: impl Iterator<Item = (&'a (u32, String, String), Real, Real)>,
) -> Vec<(Aggregation, Option<f64>)> {
    let mut layers: BTreeMap<(u32, &str), BTreeMap<&str, Vec<FeatureMatch>>> = BTreeMap::new();
    for ((rank, source, target), rho, weight) in features {
        (layers.entry((*rank, source.as_str())).or_default())
            .entry(target.as_str())
            .or_default()
            .push(feature_match(rho, weight));
    }
    let targets: BTreeSet<&str> = (layers.values())
        .flat_map(|t| t.keys().copied())
        .filter(|t| *t != ALL_LAYERS)
        .collect();
    if layers.len() * targets.len() <= 1 {
        return Vec::new();
    }
    let standing = match targets.len() {
        1 => *targets.first().expect("one"),
        _ => ALL_LAYERS,
    };
    let mut unions = Vec::with_capacity(layers.len());
    for per_target in layers.into_values() {
        match per_target.into_iter().find(|(t, _)| *t == standing) {
            Some((_, matches)) => unions.push(matches),
            None => return Vec::new(),
        }
    }
    all_layers(&unions)
        .into_iter()
        .map(|(key, value)| (key.aggregation, value))
        .collect()
}

/// The target layer standing for a target model at one source layer: the union when there is
/// one, else the only layer (several layers without a union: none, as `sharedness` refuses
/// them).
fn standing_layers(per_layer: Coll<'_, (LayerPair, Option<Real>)>) -> Coll<'_, LayerPair> {
    per_layer
        .map(|((source, target, source_layer, target_layer), _)| {
            ((source, target, source_layer), target_layer)
        })
        .reduce(|_key, layers, out| {
            let union = layers.iter().any(|(l, _)| l.as_str() == ALL_LAYERS);
            match (union, layers) {
                (true, _) => out.push((ALL_LAYERS.to_string(), 1)),
                (false, [(only, _)]) => out.push(((*only).clone(), 1)),
                (false, _) => {}
            }
        })
        .map(|((source, target, source_layer), target_layer)| {
            (source, target, source_layer, target_layer)
        })
}

/// Each query's Delta per (query, layer, feature), once the feature has an MPPC towards every
/// model of G and H at the standing layer.
fn sharedness<'scope>(
    rows: Coll<'scope, Row>,
    standing: Coll<'scope, LayerPair>,
    queries: Coll<'scope, Query>,
) -> Coll<'scope, ((String, String, u32), Shared)> {
    let towards = by_layer_pair(rows).semijoin(standing).map(
        |((source, target, source_layer, _), feature)| ((source, target), (source_layer, feature)),
    );
    // Which (M, model) pairs each query reads, as a model of G or of H.
    let roles = queries.flat_map(|q| {
        let sizes = (q.shared_with.len(), q.not_shared_with.len());
        let role = |model: &String, shared: bool| {
            let key = (q.source.clone(), model.clone());
            (key, (q.name.clone(), shared, sizes))
        };
        let g = q.shared_with.iter().map(|m| role(m, true));
        let h = q.not_shared_with.iter().map(|m| role(m, false));
        g.chain(h).collect::<Vec<_>>()
    });
    towards
        .join_map(
            roles,
            |(_m, model), (layer, feature), (name, shared, sizes)| {
                let key = (name.clone(), layer.clone(), feature.0);
                (key, (*shared, model.clone(), feature.1, feature.2, *sizes))
            },
        )
        .reduce(|(_name, layer, feature), models, out| {
            let (g, h) = models[0].0 .4;
            let shared = models.iter().filter(|(m, _)| m.0).map(|(m, _)| m.2 .0);
            let not_shared = models.iter().filter(|(m, _)| !m.0).map(|(m, _)| m.2 .0);
            if shared.clone().count() != g || not_shared.clone().count() != h {
                return;
            }
            let weight = models[0].0 .3 .0;
            let row = feature_delta(layer.clone(), *feature, weight, shared, not_shared);
            out.push((Shared::from(&row), 1));
        })
}
