//! The differential dataflow behind [`super::MetricViews`]: MPPC rows and sharedness queries
//! in, the wMPPC matrix and the sharedness results out, each maintained by difference.
//!
//! Every operator is keyed so that an output depends only on the inputs it is computed from:
//! wMPPC on the rows of one (source, target) pair, a sharedness result on the rows of its
//! model M towards the models of its G and H. Adding the rows of a new encoder, or a new query,
//! therefore changes only the outputs that involve them.

use std::cell::RefCell;
use std::rc::Rc;

use differential_dataflow::input::{Input, InputSession};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::worker::Worker;

use super::{Partial, Query, Real, Row, Shared, Updates, WmppcKey};
use crate::metrics::compare::ALL_LAYERS;
use crate::metrics::sharedness::feature_delta;
use crate::metrics::Aggregation;

/// Logical time of the views: one epoch per [`super::MetricViews::step`].
pub(super) type Time = u64;

/// The inputs of a built dataflow and the probe telling when an epoch is through.
pub(super) struct Dataflow {
    pub mppc: InputSession<Time, Row, isize>,
    pub queries: InputSession<Time, Query, isize>,
    pub probe: ProbeHandle<Time>,
}

/// Builds the dataflow in `worker`; every output update is appended to `sink`.
pub(super) fn build(worker: &mut Worker, sink: Rc<RefCell<Updates>>) -> Dataflow {
    worker.dataflow::<Time, _, _>(|scope| {
        let (mppc, rows) = scope.new_collection::<Row, isize>();
        let (queries, query_rows) = scope.new_collection::<Query, isize>();
        let probe = ProbeHandle::new();

        // S-weighted sums per (source, target, source layer, target layer); target layer `*`
        // holds the MPPC over the union of the target layers.
        let partials = rows
            .clone()
            .map(|r| {
                let key = (r.source, r.target, r.source_layer, r.target_layer);
                (key, (r.feature, r.rho, r.weight))
            })
            .reduce(|_pair, features, out| {
                out.push((
                    Partial::of(features.iter().map(|(f, _)| (f.1 .0, f.2 .0))),
                    1,
                ))
            });

        // wMPPC of one layer pair, or of one source layer against the union.
        let per_layer =
            partials
                .clone()
                .map(|((source, target, source_layer, target_layer), p)| {
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
                    (key, p.wmppc().map(Real))
                });

        // Both all-layers aggregations, from the partial sums of one (source, target) pair.
        let all_layers = partials
            .clone()
            .map(|((source, target, source_layer, target_layer), p)| {
                ((source, target), (source_layer, target_layer, p))
            })
            .reduce(|_pair, layers, out| {
                let layers = layers
                    .iter()
                    .map(|(l, _)| (l.0.as_str(), l.1.as_str(), &l.2));
                for (aggregation, value) in Partial::all_layers(layers) {
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

        let wmppc_sink = sink.clone();
        per_layer
            .concat(all_layers)
            .consolidate()
            .inspect(move |(update, _time, diff)| {
                wmppc_sink.borrow_mut().wmppc.push((update.clone(), *diff))
            })
            .probe_with(&probe);

        // The target layer standing for a target model at one source layer: the union when
        // there is one, else the only layer (several layers without a union: none, as
        // `sharedness` refuses them).
        let standing = partials
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
            });

        // MPPC of each feature of M towards each target model, at the standing layer.
        let towards = rows
            .map(|r| {
                let key = (r.source, r.target, r.source_layer, r.target_layer);
                (key, (r.feature, r.rho, r.weight))
            })
            .semijoin(standing)
            .map(|((source, target, source_layer, _), feature)| {
                ((source, target), (source_layer, feature))
            });

        // Which (M, model) pairs each query reads, as a model of G or of H.
        let roles = query_rows.flat_map(|q| {
            let sizes = (q.shared_with.len(), q.not_shared_with.len());
            let role = |model: &String, shared: bool| {
                let key = (q.source.clone(), model.clone());
                (key, (q.name.clone(), shared, sizes))
            };
            let g = q.shared_with.iter().map(|m| role(m, true));
            let h = q.not_shared_with.iter().map(|m| role(m, false));
            g.chain(h).collect::<Vec<_>>()
        });

        // Delta per (query, feature), once the feature has an MPPC towards every model of G and H.
        let shared_sink = sink;
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
            .consolidate()
            .inspect(move |(((name, layer, feature), value), _time, diff)| {
                let row = value.to_row(layer.clone(), *feature);
                shared_sink
                    .borrow_mut()
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
