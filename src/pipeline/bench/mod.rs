//! What the pipeline measures of itself: `bench pipeline` (memory, `memory`), `bench fit`
//! (`fit`), `bench encoders` (`encoders`), and `dataset scan` (reading through a dataflow,
//! `scan`).

pub(in crate::pipeline) mod encoders;
pub(in crate::pipeline) mod fit;
pub(in crate::pipeline) mod memory;
pub(in crate::pipeline) mod scan;
