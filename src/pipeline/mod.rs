//! The study as timely dataflows. For now: the study file, the source operator that streams a
//! dataset's shards into a dataflow, the worker/process flags, and a scan of a dataset through
//! both.

mod scan;
mod source;
mod study;
mod workers;

pub use scan::{scan, ScanSummary};
pub use source::{shard_source, SourceErrors};
pub use study::{
    BaselinesSpec, ComparisonSpec, DatasetSpec, EncoderSpec, SharednessSpec, Study, StudyError,
};
pub use workers::WorkerArgs;
