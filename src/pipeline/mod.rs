//! The study as timely dataflows. For now: the source operator that streams a dataset's shards
//! into a dataflow, the worker/process flags, and a scan of a dataset through both.

mod scan;
mod source;
mod workers;

pub use scan::{scan, ScanSummary};
pub use source::{shard_source, SourceErrors};
pub use workers::WorkerArgs;
