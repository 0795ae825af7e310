//! A timely source that streams the shards of a dataset.
//!
//! Worker `w` of `n` reads the shards with `index % n == w` (the rule is
//! [`Dataset::shards_for_worker`]), one record batch per activation so that downstream operators
//! run between reads. Batches are stamped with their shard index: once the frontier passes `s`,
//! every worker is done with shard `s`, which is what lets later stages commit per shard.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

use crate::dataset::{Dataset, DatasetError, Projection, SampleBatch, ShardReader};
use crate::ids::ShardId;

/// Where a source leaves the error that stopped it; the worker loop checks it after stepping.
#[derive(Clone, Default)]
pub struct SourceErrors(Rc<RefCell<Option<DatasetError>>>);

impl SourceErrors {
    /// Whether an error stopped the source.
    pub fn is_set(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// The error that stopped the source, if any.
    pub fn take(&self) -> Option<DatasetError> {
        self.0.borrow_mut().take()
    }
}

/// Streams this worker's shards among `shards` in batches of at most `batch_rows` rows.
pub fn shard_source<'scope>(
    scope: Scope<'scope, u64>,
    dataset: Arc<Dataset>,
    shards: Vec<ShardId>,
    projection: Projection,
    batch_rows: usize,
) -> (Stream<'scope, u64, Vec<SampleBatch>>, SourceErrors) {
    let errors = SourceErrors::default();
    let slot = errors.clone();
    let mine: Vec<usize> = dataset
        .shards_for_worker(scope.index(), scope.peers())
        .map(|s| s.index)
        .filter(|&index| shards.contains(&ShardId::new(index)))
        .collect();
    let stream = source(scope, "ShardSource", move |capability, info| {
        let activator = scope.activator_for(info.address);
        let mut pending = mine.into_iter();
        let mut capability = Some(capability);
        let mut reader: Option<ShardReader> = None;
        move |output| {
            let Some(cap) = capability.as_mut() else {
                return;
            };
            if reader.is_none() {
                let Some(shard) = pending.next() else {
                    capability = None;
                    return;
                };
                cap.downgrade(&(shard as u64));
                match dataset.shards()[shard].reader(projection, batch_rows) {
                    Ok(r) => reader = Some(r),
                    Err(e) => {
                        *slot.0.borrow_mut() = Some(e);
                        capability = None;
                        return;
                    }
                }
            }
            match reader.as_mut().and_then(Iterator::next) {
                Some(Ok(batch)) => output.session(cap).give(batch),
                Some(Err(e)) => {
                    *slot.0.borrow_mut() = Some(e);
                    capability = None;
                    return;
                }
                None => reader = None,
            }
            activator.activate();
        }
    });
    (stream, errors)
}
