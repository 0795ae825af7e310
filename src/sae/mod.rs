//! Sparse autoencoders, trained online with tch on whatever device holds them.
//!
//! - [`SaeConfig`]: hyperparameters, shared by the CLI, study files and checkpoints.
//! - [`Sae`]: weights and the forward pass; sparse codes decode by gathering decoder rows.
//! - variants behind a registry ([`variant`]): [`SaeKind::Topk`], [`SaeKind::BatchTopk`],
//!   [`SaeKind::Relu`] (with L1), one module each.
//! - [`SaeTrainer`]: one Adam step per pushed batch, AuxK, metrics, checkpoints.
//! - [`MixingBuffer`]: shuffles activations between the encoder and the trainer.
//! - [`BatchSchedule`]: the one order of batches, from a file or a stream.
//! - [`LayerFit`]: an SAE fitted from a stream of activations, as `sae train` fits it from a file;
//!   its steps on the caller's thread or on [`StepThreads`] while the caller encodes on.
//! - [`Sae::sample_codes`], [`codes_meta`]: an SAE's codes, for `sae encode` and the pipeline.
//! - [`train_from_file`], [`encode_file`]: `saeshare sae train` and `sae encode`.
//! - [`saelens`]: every checkpoint folder opens in SAELens too.
//! - [`formats`]: which SAE format a path holds (saeshare, SAELens, sparsify, saev), described.

mod adam;
mod batch_topk;
mod buffer;
mod checkpoint;
mod code;
mod config;
pub mod formats;
mod load;
mod model;
mod online;
mod relu;
pub mod saelens;
mod schedule;
mod step_threads;
mod to_codes;
mod topk;
mod torch_pickle;
mod train_file;
mod trainer;
pub mod variant;

pub use buffer::{MixingBuffer, RowBatch};
pub use checkpoint::{
    read_meta, CheckpointError, CheckpointMeta, CHECKPOINT_FILES, CHECKPOINT_VERSION, OPTIMIZER,
};
pub use code::Code;
pub use config::{DecoderBiasInit, SaeConfig, SaeConfigError, SaeKind};
pub use load::{inference_config, load, LoadOptions, LoadedSae, SaevScaling};
pub use model::{InputNorm, Sae};
pub use online::{FitError, LayerFit};
pub use schedule::{BatchSchedule, FILE_CHUNK_ROWS};
pub use step_threads::{StepThreads, QUEUED_BATCHES_PER_THREAD};
pub use to_codes::{codes_have_k, codes_meta, encode_file, EncodeSettings, ReadOut, SampleCode};
pub use train_file::{train_from_file, TrainFileOptions, TrainReport};
pub use trainer::{SaeSource, SaeTrainer, TrainError, TrainingMetrics};
