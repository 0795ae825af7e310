//! saeshare: how much do visual, textual and multimodal encoders share concepts?
//!
//! Sparse autoencoders (SAEs) are trained on the activations of many encoders over one paired
//! image-caption dataset; encoders are then compared through their SAE features with wMPPC
//! (weighted max pairwise Pearson correlation) and Comparative Sharedness. The whole study runs
//! as a streaming timely dataflow: no activation needs to be stored.
//!
//! Modules, each with one job:
//! - [`ids`]: typed ids of a study's encoders, layers, shards and pairs.
//! - [`digest`]: the fingerprints that name what a unit of work depends on.
//! - [`dataset`]: the Parquet shard format, importers, and the streaming reader.
//! - [`encoder`]: encoder packages run through tch: preprocessing, tokenization, pooling.
//! - [`atomic`]: files and folders written whole or not at all.
//! - [`file_error`]: the failures every file format shares ([`file_error::FileError`]).
//! - [`activations`]: files of pooled activations, per sample and layer.
//! - [`sae`]: sparse autoencoders: variants, online training, checkpoints.
//! - [`pipeline`]: the timely dataflows.
//! - [`codes`]: the sparse code file format (what an SAE produces per sample), writer and reader.
//! - [`stats`]: per-feature moments and exact co-activation sums between code streams.
//! - [`metrics`]: MPPC, wMPPC, Comparative Sharedness and their null baselines.
//! - [`similarity`]: CKA, the CCA family, Procrustes, ridge and the kNN family, beside wMPPC.
//! - [`names`]: the one rule for names that become paths in a run folder.
//! - [`parquet_meta`]: saeshare's keys in a Parquet file, where pyarrow and pandas find them too.
//! - [`run_record`]: `study.json`, what a run folder holds, for the report and other tools.
//! - [`run_layout`]: where everything lives in a run folder, spelled once.
//! - [`report`]: the static HTML report of a run folder: heatmaps, rankings, feature pages.
//! - [`progress`]: progress bars and logging set-up shared by every command.
//! - [`torch`]: the libtorch facts a user needs to trust a run (version, devices).
//! - [`table_diff`]: how far apart the tables of two runs are (`saeshare diff`).

pub mod activations;
pub mod allocator;
pub mod atomic;
pub mod cli;
pub mod codes;
pub mod dataset;
pub mod digest;
pub mod encoder;
pub mod file_error;
pub mod ids;
pub mod metrics;
pub mod names;
pub mod parquet_meta;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod run_layout;
pub mod run_record;
pub mod sae;
pub mod similarity;
pub mod stats;
pub mod table_diff;
pub mod torch;

/// The folder where saeshare keeps what it downloads or builds once per machine: `$SAESHARE_CACHE`,
/// else `$XDG_CACHE_HOME/saeshare`, else `~/.cache/saeshare`. The same rule as
/// `scripts/python-env.sh`.
pub fn cache_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("SAESHARE_CACHE") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("saeshare")
}
