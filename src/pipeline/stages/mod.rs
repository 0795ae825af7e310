//! The stages of a run, each a timely dataflow or the work after one: the fit pass (`fit`),
//! the compare pass (`compare`, and `pairs` for the pair owners' half), the study-wide
//! `outputs`; what their operators share (`stage`, `encoding`, `source`), the SAEs' weights
//! (`decoders`: loading, and a pair's decoder geometry), and the optional
//! activation cache (`cache`).

pub(in crate::pipeline) mod cache;
pub(in crate::pipeline) mod compare;
pub(in crate::pipeline) mod decoders;
pub(in crate::pipeline) mod encoding;
pub(in crate::pipeline) mod fit;
pub(in crate::pipeline) mod outputs;
pub(in crate::pipeline) mod pairs;
pub(in crate::pipeline) mod readouts;
pub(in crate::pipeline) mod source;
pub(in crate::pipeline) mod stage;
