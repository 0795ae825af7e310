//! Encoders: packages made by `python/saeshare_export`, run through tch on CPU or CUDA.
//!
//! - [`Manifest`]: `encoder.json`, checked on load.
//! - [`image::preprocess`], [`text::TextTokenizer`]: inputs as each family's processor makes them.
//! - [`pooling::pool`]: `cls`, `eos`, `last`, `mean`, `gap`.
//! - [`Encoder`]: a loaded package; [`Encoder::encode`] turns a dataset batch into pooled
//!   activations per layer, skipping (and counting) images that do not decode.
//! - [`tokens::token_rows`]: the rows of an SAE trained on every token (padding never).
//! - [`Encoder::encode_batches`]: the one loop over dataset batches, preparing the next on a
//!   helper thread while the model runs, on a CPU on several [`Lanes`]; [`EncodedRows`] its
//!   output.
//! - [`encode_dataset`]: `saeshare encode`.

mod buckets;
mod distinct;
pub mod image;
mod lanes;
mod manifest;
pub mod pooling;
mod precision;
mod prepare;
mod preparers;
pub mod resample;
mod run;
mod stage_times;
mod stream;
pub mod text;
pub mod tokens;

use std::path::{Path, PathBuf};

use tch::{CModule, Device, IValue, Kind, Tensor};

pub use buckets::{READER_BATCH_ROWS, WINDOW_BYTES};
pub use lanes::Lanes;
pub use manifest::{
    CropSpec, ImageSpec, Layer, Manifest, Modality, OutputKind, Pooling, ResizeSpec, Source,
    TextSpec, PACKAGE_VERSION,
};
pub use precision::Precision;
use prepare::PreparedInput;
pub use prepare::{prepare, Prepared, PreparedCounts};
pub use preparers::Preparers;
pub use run::{encode_dataset, EncodeOptions, EncodeReport};
pub use stage_times::StageTimes;
pub use stream::EncodedRows;
pub use tokens::{TokenRows, TokenSelection};

use crate::dataset::SampleBatch;

/// What can go wrong loading or running an encoder, naming the package, layer and sample.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error("encoder package {package}: {problem}")]
    Package { package: PathBuf, problem: String },
    #[error("encoder {encoder}: {source}")]
    Torch {
        encoder: String,
        #[source]
        source: tch::TchError,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("encoder {encoder}, layer {layer}, sample_id {sample_id}: the activation holds NaN or infinite values")]
    NotFinite {
        encoder: String,
        layer: String,
        sample_id: u64,
    },
    #[error("encoder {encoder}, layer {layer}, sample_id {sample_id}, token {position}: the activation holds NaN or infinite values")]
    NotFiniteToken {
        encoder: String,
        layer: String,
        sample_id: u64,
        position: u32,
    },
    #[error("encoder {encoder}: {problem}")]
    Usage { encoder: String, problem: String },
    #[error("encoder {encoder}: {problem}")]
    Pooling {
        encoder: String,
        problem: pooling::PoolingError,
    },
    #[error("{encoder}: no layer {layer:?}; its layers are {}", .layers.join(", "))]
    NoLayer {
        encoder: String,
        layer: String,
        layers: Vec<String>,
    },
}

/// A loaded encoder package.
pub struct Encoder {
    pub manifest: Manifest,
    dir: PathBuf,
    module: CModule,
    device: Device,
    tokenizer: Option<std::sync::Arc<text::TextTokenizer>>,
    precision: Precision,
    /// Forward passes run side by side on a CPU; `None`: [`lanes::Lanes::new`]'s choice.
    lanes: Option<usize>,
    /// The threads that prepare its inputs ([`Preparers::for_device`]).
    preparers: Preparers,
    tally: Tally,
}

/// What an encoder's passes have counted: each stage's seconds and the captions cut at the
/// model's maximum length. Each model lane keeps its own; the encoder adds them up.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    times: StageTimes,
    truncated_captions: u64,
}

/// Pooled activations of a batch: for each selected layer, `[n, width]` float32 on the CPU, rows
/// in the order of `sample_ids`; and the token rows of each layer when they were asked for.
pub struct Pooled {
    pub sample_ids: Vec<u64>,
    pub layers: Vec<(usize, Tensor)>,
    /// Per selected layer, when asked for: its token rows.
    pub tokens: Vec<TokenRows>,
    /// Samples left out, with the reason (an image that does not decode).
    pub skipped: Vec<(u64, String)>,
    /// Distinct inputs the model ran on (samples with identical inputs share one).
    pub inputs: usize,
}

impl Encoder {
    /// Loads the package in `dir` onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Encoder, EncoderError> {
        let manifest = Manifest::read(dir)?;
        let model = dir.join("model.pt");
        let module =
            CModule::load_on_device(&model, device).map_err(|e| EncoderError::Package {
                package: dir.to_path_buf(),
                problem: format!("model.pt does not load: {e}"),
            })?;
        let tokenizer = match &manifest.text {
            Some(spec) => Some(std::sync::Arc::new(text::TextTokenizer::load(dir, spec)?)),
            None => None,
        };
        Ok(Encoder {
            manifest,
            dir: dir.to_path_buf(),
            module,
            device,
            tokenizer,
            precision: Precision::Float32,
            lanes: None,
            preparers: Preparers::for_device(device),
            tally: Tally::default(),
        })
    }

    /// The same model run on square images of `side` pixels ([`Manifest::at_image_size`]).
    pub fn at_image_size(mut self, side: u32) -> Result<Encoder, EncoderError> {
        self.manifest =
            (self.manifest.at_image_size(side)).map_err(|problem| EncoderError::Package {
                package: self.dir.clone(),
                problem,
            })?;
        Ok(self)
    }

    /// The same model run in `precision`; refused where its device cannot.
    pub fn with_precision(mut self, precision: Precision) -> Result<Encoder, EncoderError> {
        if let Some(problem) = precision.refused_on(self.device) {
            return Err(EncoderError::Usage {
                encoder: self.manifest.name.clone(),
                problem,
            });
        }
        self.precision = precision;
        Ok(self)
    }

    /// The same model with `lanes` forward passes side by side on a CPU, each on its share of
    /// the calling thread's libtorch threads (`None`: for an image encoder two of one thread
    /// each where there are two or three threads, else one; one for a text encoder or on a
    /// GPU: [`lanes`](Self::lanes)). Refused: no lane, or several on a GPU, whose forward passes queue on one
    /// stream anyway.
    pub fn with_lanes(mut self, lanes: Option<usize>) -> Result<Encoder, EncoderError> {
        let problem = match lanes {
            Some(0) => Some("lanes = 0: an encoder needs at least one lane".to_string()),
            Some(n) if n > 1 && self.device.is_cuda() => Some(format!(
                "lanes = {n}: several lanes are for a CPU; a GPU runs one forward pass at a time"
            )),
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(EncoderError::Usage {
                encoder: self.manifest.name.clone(),
                problem,
            });
        }
        self.lanes = lanes;
        Ok(self)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the model runs.
    pub fn device(&self) -> Device {
        self.device
    }

    /// How its forward passes share the calling thread's libtorch threads: as asked, else one
    /// lane for captions and [`Lanes::new`]'s choice for images. Images are where lanes pay:
    /// decoding and resizing an image costs the helper thread a sixth of a small CNN's forward
    /// pass, and each time it takes a core a forward on both stalls, while a caption's tokens
    /// cost a hundredth of a transformer's, whose matrix products use both threads well (on 2
    /// cores, two lanes encoded the demo's CNNs 1.04-1.12x faster and its text encoders
    /// 0.98-1.01x as fast).
    pub fn lanes(&self) -> Lanes {
        let requested = self.lanes.or(match self.manifest.modality {
            Modality::Text => Some(1),
            Modality::Image => None,
        });
        Lanes::new(self.device, requested)
    }

    /// The seconds of each stage since the last call (or the load), and a fresh count.
    pub fn take_stage_times(&mut self) -> StageTimes {
        std::mem::take(&mut self.tally.times)
    }

    /// Captions cut at the model's maximum length so far.
    pub fn truncated_captions(&self) -> u64 {
        self.tally.truncated_captions
    }

    /// Runs the model: one tensor per layer of the package.
    pub fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EncoderError> {
        let inputs: Vec<IValue> = inputs
            .iter()
            .map(|t| IValue::Tensor(t.shallow_clone()))
            .collect();
        // A setting of the calling thread, which is the encoder's.
        tch::jit::set_graph_executor_optimize(crate::torch::torchscript_optimize());
        let run = || self.module.forward_is(&inputs);
        let output = tch::no_grad(|| match self.precision {
            Precision::Float32 => run(),
            Precision::Float16 => tch::autocast(true, run),
        })
        .map_err(|source| EncoderError::Torch {
            encoder: self.manifest.name.clone(),
            source,
        })?;
        let tensors = match output {
            IValue::Tuple(items) | IValue::GenericList(items) => items
                .into_iter()
                .map(|item| match item {
                    IValue::Tensor(t) => Ok(t),
                    other => Err(format!("a layer output is {other:?}, not a tensor")),
                })
                .collect::<Result<Vec<_>, _>>(),
            IValue::TensorList(items) => Ok(items),
            other => Err(format!(
                "model.pt returned {other:?}, not a tuple of layer tensors"
            )),
        }
        .map_err(|problem| EncoderError::Package {
            package: self.dir.clone(),
            problem,
        })?;
        if tensors.len() != self.manifest.layers.len() {
            return Err(EncoderError::Package {
                package: self.dir.clone(),
                problem: format!(
                    "model.pt returned {} layers, encoder.json lists {}",
                    tensors.len(),
                    self.manifest.layers.len()
                ),
            });
        }
        Ok(tensors)
    }

    /// Pooled activations of `layers` (indices into the manifest's layers) for a dataset batch.
    pub fn encode(
        &mut self,
        batch: &SampleBatch,
        layers: &[usize],
        pooling: Pooling,
    ) -> Result<Pooled, EncoderError> {
        let tokens = (self.tokenizer.as_ref())
            .map(|t| t.tokenize(&batch.captions, &self.preparers))
            .transpose()?;
        let prepared = prepare(&self.manifest, batch, &self.preparers, tokens.as_ref())?;
        let mut tally = self.tally;
        let pooled = self.encode_prepared(prepared, layers, pooling, None, &mut tally);
        self.tally = tally;
        pooled
    }

    /// The model and pooling half of [`encode`](Self::encode), on inputs [`prepare`]d elsewhere
    /// (another thread, while the model runs the previous batch); with `tokens`, each layer's
    /// token rows too. Counts into `tally`, so that lanes may run it side by side.
    fn encode_prepared(
        &self,
        prepared: Prepared,
        layers: &[usize],
        pooling: Pooling,
        tokens: Option<&TokenSelection>,
        tally: &mut Tally,
    ) -> Result<Pooled, EncoderError> {
        let inputs = prepared.inputs();
        let mut pooled = Pooled {
            sample_ids: prepared.sample_ids,
            layers: Vec::new(),
            tokens: Vec::new(),
            skipped: prepared.skipped,
            inputs,
        };
        if pooled.sample_ids.is_empty() {
            return Ok(pooled);
        }
        let mut laps = stage_times::Laps::start();
        let (inputs_on_device, mask, special) = match prepared.input {
            PreparedInput::Tokens(tokens) => {
                tally.truncated_captions += tokens.truncated;
                let tokens = tokens.to_device(self.device);
                let mask = tokens.mask.shallow_clone();
                (
                    vec![tokens.ids, tokens.mask],
                    Some(mask),
                    Some(tokens.special),
                )
            }
            PreparedInput::Pixels { pixels, images } => {
                let spec = self.manifest.image.as_ref().expect("checked on load");
                let input = image::model_input(&pixels, images, spec, self.device);
                (vec![input], None, None)
            }
        };
        tally.times.inputs += laps.lap();
        let mut outputs = self.forward(&inputs_on_device)?;
        // Pooling and token rows read float32, whatever the forward ran in.
        if self.precision != Precision::Float32 {
            for &layer in layers {
                outputs[layer] = outputs[layer].to_kind(Kind::Float);
            }
        }
        // The forward's kernels are queued, not run: waiting for them here costs nothing (the
        // copy back below would wait anyway) and keeps the forward's time out of the outputs'.
        if let Device::Cuda(index) = self.device {
            tch::Cuda::synchronize(index as i64);
        }
        tally.times.forward += laps.lap();
        let input_rows = &prepared.input_rows;
        if let Some(selection) = tokens {
            let masks = tokens::PositionMasks {
                attention: mask.as_ref(),
                special: special.as_ref(),
                prefix: self.manifest.prefix_tokens,
            };
            let samples = tokens::BatchSamples {
                ids: &pooled.sample_ids,
                input_rows,
            };
            for &layer in layers {
                let rows = tokens::token_rows(
                    &outputs[layer],
                    self.manifest.outputs,
                    &masks,
                    selection,
                    &samples,
                )
                .map_err(|source| EncoderError::Torch {
                    encoder: self.manifest.name.clone(),
                    source,
                })?;
                self.check_finite_tokens(layer, &rows, &pooled.sample_ids)?;
                pooled.tokens.push(rows);
            }
        }
        // Each sample's pooled row is its input's.
        let copies = (inputs != input_rows.len()).then(|| {
            let rows: Vec<i64> = input_rows.iter().map(|&r| r as i64).collect();
            Tensor::from_slice(&rows)
        });
        for &layer in layers {
            let mut vectors = pooling::pool(
                &outputs[layer],
                self.manifest.outputs,
                pooling,
                mask.as_ref(),
                self.manifest.prefix_tokens,
            )
            .map_err(|problem| EncoderError::Pooling {
                encoder: self.manifest.name.clone(),
                problem,
            })?
            .to_kind(Kind::Float)
            .to_device(Device::Cpu);
            if let Some(copies) = &copies {
                vectors = vectors.index_select(0, copies);
            }
            let finite = vectors.isfinite().all_dim(1, false);
            if finite.all().int64_value(&[]) == 0 {
                let row = finite.logical_not().nonzero().int64_value(&[0, 0]) as usize;
                return Err(EncoderError::NotFinite {
                    encoder: self.manifest.name.clone(),
                    layer: self.manifest.layers[layer].name.clone(),
                    sample_id: pooled.sample_ids[row],
                });
            }
            pooled.layers.push((layer, vectors));
        }
        tally.times.outputs += laps.lap();
        Ok(pooled)
    }

    /// A token row with NaN or infinite values is an error naming its sample and position.
    fn check_finite_tokens(
        &self,
        layer: usize,
        rows: &TokenRows,
        sample_ids: &[u64],
    ) -> Result<(), EncoderError> {
        let width = self.manifest.layers[layer].width.max(1);
        match rows.values.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(EncoderError::NotFiniteToken {
                encoder: self.manifest.name.clone(),
                layer: self.manifest.layers[layer].name.clone(),
                sample_id: sample_ids[rows.sample[i / width] as usize],
                position: rows.position[i / width],
            }),
        }
    }
}
