//! The study as timely dataflows. For now: the source operator that streams a dataset's shards
//! into a dataflow, one worker per shard.

mod source;

pub use source::{shard_source, SourceErrors};
