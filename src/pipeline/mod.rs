//! The study as timely dataflows: the study file, its plan and manifest of finished units, the
//! fit and compare passes, and the outputs (docs/DESIGN.md, section 3).
//!
//! - [`Study`]: the study file, typed. [`Plan`]: the study resolved against the disk.
//! - [`Units`]: the manifest of finished work that makes runs resumable and incremental.
//! - `fit`, `compare`: the two dataflows; `outputs`: the study-wide tables.
//! - [`run_study`]: all of it, on `-w` threads and `-n` processes.
//! - [`scan`]: a dataset streamed through a dataflow, to measure reading.
//! - [`bench_memory`], [`bench_fit`], [`bench_encoders`]: `saeshare bench pipeline`, `bench
//!   fit` and `bench encoders`.

mod bench;
mod bench_encoders;
mod bench_fit;
mod cache;
mod ceiling;
mod choice;
mod compare;
mod encoding;
mod fit;
mod imports;
mod outputs;
mod pairs;
mod plan;
mod prepare;
mod record;
mod run;
mod run_folder;
mod scan;
mod source;
mod stage;
mod study;
mod study_checks;
mod units;
mod workers;

pub use crate::digest::fingerprint;
pub use crate::run_record::{
    DatasetRecord, EncoderRecord, PairRecord, QueryRecord, StudyRecord, STUDY_RECORD_FILE,
};
pub use bench::{bench_memory, MemoryBench, MemoryFigure};
pub use bench_encoders::{bench_encoders, EncoderFigure, SHAPES_TIMED};
pub use bench_fit::{bench_fit, FitFigure};
pub use imports::{ImportSpec, ImportedSae};
pub use plan::{Plan, PlannedEncoder, PlannedPair};
pub use prepare::StudyCheck;
pub use run::{peak_memory_mib, run_study, RunSummary};
pub use run_folder::{FolderState, RunFolder, LOCK_FILE, MARKER_FILE};
pub use scan::{scan, ScanSummary};
pub use source::{shard_source, SourceErrors};
pub use study::{
    default_batch_size, BaselinesSpec, CodesSpec, ComparisonSpec, DatasetSpec, EncoderSpec, FitOn,
    FitRows, FitSpec, Position, SaeOverrideError, SharednessSpec, Study, StudyError,
};
pub use units::{UnitRecord, Units};
pub use workers::WorkerArgs;
