//! The study as timely dataflows: the study file, its plan and manifest of finished units, the
//! fit and compare passes, and the outputs (docs/DESIGN.md, section 3).
//!
//! - [`Study`]: the study file, typed. [`Plan`]: the study resolved against the disk.
//! - [`Units`]: the manifest of finished work that makes runs resumable and incremental.
//!
//! The layout follows that: `plan/` (the study file, its checks, the encoders chosen, the
//! imported SAEs, the ceiling's twins, the plan), `stages/` (the fit and compare dataflows and
//! what their operators share, the pairs' tables, the study-wide outputs), `bench/` (what the
//! pipeline measures of itself: [`bench_memory`], [`bench_fit`], [`bench_encoders`], [`scan`]),
//! and at the top what a run is made of: [`run_study`] (all of it, on `-w` threads and `-n`
//! processes), the run folder's claim and lock, the units' records and the workers' flags.

mod bench;
mod cluster;
mod plan;
mod run;
mod run_folder;
mod scheduler;
mod stages;
mod todo;
mod units;
mod workers;

// The modules of the plan and of the stages, by their short names, for the rest of `pipeline`.
use plan::{ceiling, choice, imports, prepare, record, study, study_checks};
use stages::{cache, compare, encoding, fit, outputs, pairs, readouts, source, stage};

pub use crate::digest::fingerprint;
pub use crate::run_record::{
    DatasetRecord, EncoderRecord, PairRecord, QueryRecord, StudyRecord, STUDY_RECORD_FILE,
};
pub use bench::encoders::{bench_encoders, EncoderFigure, SHAPES_TIMED};
pub use bench::fit::{bench_fit, bench_fit_of, FitFigure};
pub use bench::memory::{bench_memory, MemoryBench, MemoryFigure};
pub use bench::scan::{scan, ScanSummary};
pub use imports::{ImportSpec, ImportedSae};
pub use plan::cost::{self, Cost, EncoderRates, Rates};
pub use plan::{calibrate, stand_ins};
pub use plan::{fit_rows_per_pass, FitRowsEstimate, Plan, PlannedEncoder, PlannedPair};
pub use prepare::StudyCheck;
pub use run::{peak_memory_mib, run_study, RunSummary};
pub use run_folder::{FolderState, RunFolder, LOCK_FILE, MARKER_FILE};
pub use scheduler::{expand_hostlist, ScheduledProcess};
pub use source::{shard_source, SourceErrors};
pub use study::{
    default_batch_size, BaselinesSpec, CodesSpec, ComparisonSpec, DatasetSpec, EncoderSpec, FitOn,
    FitRows, FitSpec, Position, SaeOverrideError, SharednessSpec, Study, StudyError,
};
pub use units::{UnitRecord, Units};
pub use workers::WorkerArgs;
