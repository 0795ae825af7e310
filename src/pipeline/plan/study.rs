//! Study files (TOML): what to compare, typed. Every key is documented in
//! pipelines/README.md with an example; unknown keys and references to encoders the file does not
//! define are errors naming the line.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::encoder::{Pooling, TokenSelection};
use crate::sae::{ReadOut, SaeConfig};

/// A study file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Study {
    /// Names the study in logs and outputs.
    pub name: String,
    pub dataset: DatasetSpec,
    /// Where every output goes (relative paths: from the study file's folder).
    pub output: PathBuf,
    /// SAE settings for every encoder and layer, unless an encoder overrides them.
    #[serde(default)]
    pub sae: SaeConfig,
    /// The encoders, by the name outputs use.
    pub encoders: BTreeMap<String, EncoderSpec>,
    #[serde(default)]
    pub comparisons: Vec<ComparisonSpec>,
    #[serde(default)]
    pub sharedness: Vec<SharednessSpec>,
    #[serde(default)]
    pub baselines: BaselinesSpec,
    /// How SAEs are fitted from the stream.
    #[serde(default)]
    pub fit: FitSpec,
    /// How each sample's features are read off its SAE.
    #[serde(default)]
    pub codes: CodesSpec,
    /// How the compare pass holds and adds up co-activation sums.
    #[serde(default)]
    pub stats: StatsSpec,
    /// The representation measures beside wMPPC (CKA, the CCA family, Procrustes, ridge, the
    /// kNN family): on unless `enabled = false`.
    #[serde(default)]
    pub similarity: crate::similarity::SimilarityOptions,
    /// Keep each encoder's pooled activations on disk (off: they stream into the SAEs).
    #[serde(default)]
    pub activation_cache: bool,
    /// The line of each `[encoders.NAME]` table in the file, for the plan's errors about an
    /// encoder (filled by [`Study::parse`]).
    #[serde(skip)]
    pub encoder_lines: BTreeMap<String, usize>,
    /// The study is planned for another machine (`study plan --stand-ins --rates FILE`): its
    /// encoders' devices are taken as they are written, without looking for them here.
    #[serde(skip)]
    pub devices_elsewhere: bool,
}

/// How the fit pass feeds the SAEs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FitSpec {
    /// What an SAE is trained on, unless an encoder says otherwise.
    pub fit_on: FitOn,
    /// With `fit_on = "tokens"`: positions drawn at random per sample (seeded), to thin the
    /// stream; all of them when absent.
    pub tokens_per_sample: Option<usize>,
    /// With `fit_on = "tokens"`, text: the tokenizer's special tokens are rows too.
    pub special_tokens: bool,
    /// With `fit_on = "tokens"`, ViTs: the class token is a row too.
    pub class_token: bool,
    /// With `fit_on = "tokens"`, ViTs: the register tokens are rows too.
    pub register_tokens: bool,
    /// Seeds the draw of `tokens_per_sample`.
    pub token_seed: u64,
    /// Rows each SAE's mixing buffer holds (as `sae train --buffer-rows`).
    pub buffer_rows: usize,
    /// The mixing buffer's size in MiB instead of rows: `buffer_mib x 2^20 / (4 x width)` rows
    /// for a layer of `width` floats.
    pub buffer_mib: Option<usize>,
    /// Memory per SAE for replaying a pass from memory when its steps need more rows than the
    /// dataset has: the encoders then run once, not once per pass.
    pub replay_memory_mib: usize,
    /// End each fit after this many passes over its rows, even with steps left (1: the
    /// reference's one epoch); the learning rate schedule still follows `[sae] steps`.
    pub max_passes: Option<usize>,
    /// Threads per worker on which the SAEs take their steps while the worker encodes the next
    /// batch; 0 takes them on the worker's thread. The SAEs are the same either way. Absent:
    /// one thread for SAEs on a GPU, none on the CPU, where the encoder already keeps every
    /// core busy (`saeshare bench fit` measures both ways).
    pub sae_threads: Option<usize>,
    /// Keep each fitted SAE's optimizer state (`optimizer.safetensors`, about twice the
    /// weights' size), which only continuing its training needs. Off: the SAEs are saved for
    /// inference. It changes no SAE, and no fingerprint.
    pub keep_optimizer: bool,
    /// What the fits of one pass may hold, in GiB over all processes (mixing buffers, replays,
    /// SAE weights with their gradients and Adam's moments: `saeshare study plan` says what
    /// each encoder takes). Encoders are fitted in as many passes over the dataset as it takes,
    /// each encoder with its ceiling twin in one pass; an encoder larger than the budget has a
    /// pass of its own. Absent: every encoder in one pass. No SAE changes.
    pub memory_gib: Option<f64>,
}

impl Default for FitSpec {
    fn default() -> Self {
        FitSpec {
            fit_on: FitOn::Pooled,
            tokens_per_sample: None,
            special_tokens: true,
            class_token: true,
            register_tokens: true,
            token_seed: 0,
            buffer_rows: 65_536,
            buffer_mib: None,
            replay_memory_mib: 1024,
            max_passes: None,
            sae_threads: None,
            keep_optimizer: false,
            memory_gib: None,
        }
    }
}

impl FitSpec {
    /// Step threads for the SAEs of a worker on `device`.
    pub fn sae_threads_for(&self, device: tch::Device) -> usize {
        self.sae_threads.unwrap_or(usize::from(device.is_cuda()))
    }

    /// The mixing buffer's rows for a layer of `width` floats.
    pub fn buffer_rows_for(&self, width: usize) -> usize {
        match self.buffer_mib {
            Some(mib) => (mib.saturating_mul(1 << 20) / (4 * width.max(1))).max(1),
            None => self.buffer_rows,
        }
    }
}

/// How the compare pass holds, adds up and keeps co-activation sums. No key changes a sum (the
/// sums are the same bit for bit), so none is part of any fingerprint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsSpec {
    /// Memory budget (MiB) of the sums of one pair on one shard, per worker: a layer pair's
    /// sums are a dense `d_A x d_B` array of f64 when it fits, else hash tables of the pairs
    /// that fired together.
    pub memory_mib: usize,
    /// Threads each worker adds up sums on. 1 by default: the workers already keep the cores
    /// busy, and threads inside every worker would oversubscribe them.
    pub threads: usize,
    /// Disk (MiB) for the pairs' saved sums, which let a later run add new shards without
    /// reading the old ones' codes. The codes store is the record: pairs past the budget (in
    /// the study's order) keep their tables and drop their sums, which a run that adds shards
    /// sums again from the codes. 0 keeps none.
    pub keep_sums_mib: u64,
}

impl Default for StatsSpec {
    fn default() -> Self {
        StatsSpec {
            memory_mib: crate::stats::DEFAULT_MEMORY_MIB,
            threads: 1,
            keep_sums_mib: 64 * 1024,
        }
    }
}

/// How each sample's features are read: at which position, and which values of the SAE.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodesSpec {
    pub read_out: ReadOut,
    pub position: Position,
    /// How codes stored one row per sample (a `relu` read-out's) keep their values.
    pub dense_values: crate::codes::DenseValues,
}

/// The position a sample's activation is read at, for its codes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    /// The encoder's pooling (the package's default, or the encoder's `pooling` key).
    #[default]
    Pooled,
    /// Token 0, as the reference code reads every encoder: BERT's [CLS] and a ViT's class
    /// token, but for a causal text tower (CLIP's) the start token, which has seen nothing of
    /// the caption and is the same for every sample.
    Token0,
}

/// What the SAEs of an encoder are trained on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FitOn {
    /// One pooled vector per sample (the read-out position).
    #[default]
    Pooled,
    /// Every token, patch or spatial position of the layer (padding never), as the paper's
    /// protocol: the stream no disk holds.
    Tokens,
}

/// The rows an encoder's SAEs are fitted on, resolved from `[fit]` and the encoder's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum FitRows {
    Pooled,
    Tokens(TokenSelection),
}

/// The dataset: a folder of shards, or the embedded default built when missing.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    pub path: PathBuf,
    /// `emoji`: built by `saeshare dataset build-emoji` when `path` does not exist.
    #[serde(default)]
    pub builtin: Option<String>,
    /// Only these shards (positions in the folder's sorted shard files): a study on part of a
    /// dataset.
    #[serde(default)]
    pub shards: Option<Vec<usize>>,
    /// Rows per shard when the embedded dataset is built (2,048 by default): smaller shards
    /// let `shards` pick a smaller study.
    #[serde(default)]
    pub shard_rows: Option<usize>,
}

/// One encoder of the study.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderSpec {
    /// The encoder package folder.
    pub package: PathBuf,
    /// How to make the package where it is missing, for the user to run (or for `saeshare run` to
    /// run when it is `saeshare_export real`).
    #[serde(default)]
    pub export: Option<String>,
    /// `all`, `last`, or a list of layer names.
    #[serde(default = "default_layers")]
    pub layers: String,
    /// The model's shape (`vit-b16`, `bert-base`, ...: `python -m saeshare_export random
    /// --help` lists them), for `saeshare study plan` to stand a package of random weights at
    /// that shape in for a package not made yet.
    #[serde(default)]
    pub shape: Option<String>,
    /// The package's default when absent.
    #[serde(default)]
    pub pooling: Option<Pooling>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Samples per forward pass; absent: [`default_batch_size`] for the encoder's device.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// A convolutional network run on square images of this many pixels, resized without a
    /// crop, instead of its package's size.
    #[serde(default)]
    pub image_size: Option<u32>,
    /// `float32` (the default) or `float16`: mixed precision under CUDA autocast, a GPU only.
    #[serde(default)]
    pub precision: Option<crate::encoder::Precision>,
    /// Forward passes run side by side on a CPU, each on its share of the worker's libtorch
    /// threads; absent: for an image encoder two of one thread each where the worker has two or
    /// three threads, else one (one for a text encoder, one on a GPU).
    #[serde(default)]
    pub lanes: Option<usize>,
    /// Keys of `[sae]` to change for this encoder only.
    #[serde(default)]
    pub sae: Option<toml::Table>,
    /// `[fit]`'s `fit_on` for this encoder only.
    #[serde(default)]
    pub fit_on: Option<FitOn>,
    /// `[fit]`'s `tokens_per_sample` for this encoder only.
    #[serde(default)]
    pub tokens_per_sample: Option<usize>,
    /// `[fit]`'s `special_tokens` for this encoder only.
    #[serde(default)]
    pub special_tokens: Option<bool>,
    /// `[fit]`'s `class_token` for this encoder only.
    #[serde(default)]
    pub class_token: Option<bool>,
    /// `[fit]`'s `register_tokens` for this encoder only.
    #[serde(default)]
    pub register_tokens: Option<bool>,
    /// `[codes]`'s `read_out` for this encoder only.
    #[serde(default)]
    pub read_out: Option<ReadOut>,
    /// `[codes]`'s `position` for this encoder only.
    #[serde(default)]
    pub position: Option<Position>,
    /// SAEs trained elsewhere, by layer name, used instead of fitting one: a path, or a table
    /// with `path` and optionally `format`, `ceiling`, `scale_mean`, `scale_norm`.
    #[serde(default)]
    pub saes: BTreeMap<String, crate::pipeline::imports::ImportSpec>,
}

fn default_layers() -> String {
    "all".to_string()
}

fn default_device() -> String {
    "cpu".to_string()
}

/// Samples per forward pass when the study does not say: on the CPU, small batches whose
/// activations stay in cache (`saeshare bench encoders` measured CNNs 2-3x faster at 8-16 than
/// at 64 at 224 px, and all-mpnet-base-v2 1.2x faster at 32 than at 64, in the same process):
/// 32 captions grouped by length, and images of about 800,000 pixels a batch, a power of two
/// from 8 to 32 (16 at 224 px; 32 at 96 px, where MobileNetV2 and EfficientNet-Lite0 ran 1.1-1.2x
/// faster at 32 than at 16 and no faster at 64); on a GPU, batches large enough to fill it.
/// `input_size` is an image encoder's `[height, width]`.
pub fn default_batch_size(device: tch::Device, input_size: Option<[usize; 2]>) -> usize {
    const PIXELS_A_BATCH: usize = 16 * 224 * 224;
    match (device.is_cuda(), input_size) {
        (true, _) => 256,
        (false, None) => 32,
        (false, Some([h, w])) => {
            let fits = PIXELS_A_BATCH / (h * w).max(1);
            // The largest power of two that fits, within 8 to 32.
            let power = 1usize << fits.max(1).ilog2();
            power.clamp(8, 32)
        }
    }
}

/// Which pairs to compare, and on which layers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComparisonSpec {
    /// Source models; `["*"]` for every encoder.
    pub sources: Vec<Spanned<String>>,
    /// Target models; `["*"]` for every encoder.
    pub targets: Vec<Spanned<String>>,
    /// `last`: the last layers against each other; `all`: every layer against the union of the
    /// target's layers (all-layers wMPPC).
    #[serde(default = "default_comparison_layers")]
    pub layers: String,
}

fn default_comparison_layers() -> String {
    "last".to_string()
}

/// A Comparative Sharedness query: features of `model` shared with every model of
/// `shared_with` and with none of `not_shared_with`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharednessSpec {
    pub name: String,
    pub model: Spanned<String>,
    pub shared_with: Vec<Spanned<String>>,
    #[serde(default)]
    pub not_shared_with: Vec<Spanned<String>>,
    /// How many features to keep in the ranking.
    #[serde(default = "default_top")]
    pub top: usize,
}

fn default_top() -> usize {
    100
}

/// The null baselines of every wMPPC.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselinesSpec {
    /// Permutations of the target's samples for the floor (0: none).
    pub floor_permutations: usize,
    /// Train a second SAE with this seed on each source layer, for the ceiling.
    pub ceiling_seed: Option<u64>,
    /// More seeds of the ceiling (after `ceiling_seed`, or alone): an SAE set per seed fed the
    /// same rows; the ceiling is the mean over them, with its spread.
    pub ceiling_seeds: Vec<u64>,
    /// Replicates of the Poisson bootstrap giving each wMPPC its 95% interval (0: none).
    pub bootstrap: usize,
    /// Shuffled pairings the SVCCA of matched features' decoder rows is tested against (0:
    /// the value alone).
    pub geometry_permutations: usize,
}

impl Default for BaselinesSpec {
    fn default() -> Self {
        BaselinesSpec {
            floor_permutations: 3,
            ceiling_seed: None,
            ceiling_seeds: Vec::new(),
            bootstrap: 100,
            geometry_permutations: 200,
        }
    }
}

impl BaselinesSpec {
    /// Every seed of the ceiling's SAE sets: `ceiling_seed`, then `ceiling_seeds`.
    pub fn all_ceiling_seeds(&self) -> Vec<u64> {
        (self.ceiling_seed.iter().chain(&self.ceiling_seeds))
            .copied()
            .collect()
    }
}

/// A study file that does not describe a study: the file and line, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {problem}", .file.display(), line_suffix(*.line))]
pub struct StudyError {
    pub file: PathBuf,
    pub line: usize,
    pub problem: String,
}

impl Study {
    /// Reads and checks a study file.
    pub fn read(path: &Path) -> Result<Study, StudyError> {
        let text = std::fs::read_to_string(path).map_err(|e| StudyError {
            file: path.to_path_buf(),
            line: 0,
            problem: e.to_string(),
        })?;
        Study::parse(path, &text)
    }

    /// Parses and checks study text; `path` names it in errors. Every check that needs no file
    /// is made here (names, references, settings); [`crate::pipeline::Plan::check`] makes the rest.
    pub fn parse(path: &Path, text: &str) -> Result<Study, StudyError> {
        let at = |span: Option<Range<usize>>, problem: String| StudyError {
            file: path.to_path_buf(),
            line: span.map_or(0, |s| line_of(text, s.start)),
            problem,
        };
        let study: Study =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().to_string()))?;
        // The same text again for the lines of tables serde's typed pass keeps no span of.
        let lines: crate::pipeline::study_checks::StudyLines =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().to_string()))?;
        crate::pipeline::study_checks::check(&study, &lines, &at)?;
        let mut study = study;
        study.encoder_lines = lines.encoder_lines(|span| line_of(text, span.start));
        Ok(study)
    }

    /// `FILE:LINE: [encoders.NAME]`: where an error about encoder `name` of the study in
    /// `path` points.
    pub fn encoder_at(&self, path: &Path, name: &str) -> String {
        let line = self.encoder_lines.get(name).copied().unwrap_or(0);
        format!("{}{}: [encoders.{name}]", path.display(), line_suffix(line))
    }

    /// What `encoder`'s SAEs are fitted on: `[fit]` with the encoder's keys on top.
    pub fn fit_rows_for(&self, encoder: &str) -> FitRows {
        let (fit, spec) = (&self.fit, &self.encoders[encoder]);
        match spec.fit_on.unwrap_or(fit.fit_on) {
            FitOn::Pooled => FitRows::Pooled,
            FitOn::Tokens => FitRows::Tokens(TokenSelection {
                special_tokens: spec.special_tokens.unwrap_or(fit.special_tokens),
                class_token: spec.class_token.unwrap_or(fit.class_token),
                register_tokens: spec.register_tokens.unwrap_or(fit.register_tokens),
                per_sample: spec.tokens_per_sample.or(fit.tokens_per_sample),
                seed: fit.token_seed,
            }),
        }
    }

    /// The SAE settings of `encoder`: `[sae]` with the encoder's overrides on top.
    pub fn sae_for(&self, encoder: &str) -> Result<SaeConfig, SaeOverrideError> {
        let Some(overrides) = self.encoders.get(encoder).and_then(|e| e.sae.as_ref()) else {
            return Ok(self.sae.clone());
        };
        let mut merged = toml::Table::try_from(&self.sae).map_err(SaeOverrideError::Table)?;
        merged.extend(overrides.clone());
        merged.try_into().map_err(SaeOverrideError::Settings)
    }
}

/// An encoder's `sae` overrides that do not make SAE settings with `[sae]`.
#[derive(Debug, thiserror::Error)]
pub enum SaeOverrideError {
    /// `[sae]` as a table, for the overrides to go on top.
    #[error("{0}")]
    Table(toml::ser::Error),
    /// The merged table: a misspelt key, a value of the wrong type.
    #[error("{}", .0.message())]
    Settings(toml::de::Error),
}

/// `:N` for a line, nothing for a problem of the whole file (line 0).
fn line_suffix(line: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}")
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}
