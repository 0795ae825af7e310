//! Encoders: packages made by `python/saeshare_export`, run through tch on CPU or CUDA.
//!
//! - [`Manifest`]: `encoder.json`, checked on load.
//! - [`image::preprocess`], [`text::TextTokenizer`]: inputs as each family's processor makes them.
//! - [`pooling::pool`]: `cls`, `eos`, `last`, `mean`, `gap`.
//! - [`Encoder`]: a loaded package; [`Encoder::encode`] turns a dataset batch into pooled
//!   activations per layer, skipping (and counting) images that do not decode.
//! - [`tokens::token_rows`]: the rows of an SAE trained on every token (padding never).
//! - [`Encoder::encode_batches`]: the one loop over dataset batches, preparing the next on a
//!   helper thread while the model runs; [`EncodedRows`] its output.
//! - [`encode_dataset`]: `saeshare encode`.

mod buckets;
mod distinct;
pub mod image;
mod manifest;
pub mod pooling;
mod precision;
pub mod resample;
mod run;
mod stage_times;
mod stream;
pub mod text;
pub mod tokens;

use std::path::{Path, PathBuf};

use tch::{CModule, Device, IValue, Kind, Tensor};

pub use buckets::{BUCKET_WINDOW, READER_BATCH_ROWS};
pub use manifest::{
    CropSpec, ImageSpec, Layer, Manifest, Modality, OutputKind, Pooling, ResizeSpec, Source,
    TextSpec, PACKAGE_VERSION,
};
pub use precision::Precision;
pub use run::{encode_dataset, EncodeOptions, EncodeReport};
pub use stage_times::StageTimes;
pub use stream::EncodedRows;
pub use tokens::{TokenRows, TokenSelection};

use crate::dataset::{EncodedImage, SampleBatch};

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
    /// Captions cut at the model's maximum length so far.
    truncated_captions: u64,
    precision: Precision,
    stage_times: StageTimes,
}

/// A batch's model inputs, made on the CPU without the model: decoded and preprocessed images,
/// or captions (tokenized with the model, which counts truncations). Identical inputs are kept
/// once ([`distinct`]).
pub struct Prepared {
    pub sample_ids: Vec<u64>,
    pub skipped: Vec<(u64, String)>,
    /// Rows the reader left out of this batch, counted with its rows.
    pub read_skips: u64,
    /// Per sample of `sample_ids`, its row of `input`.
    input_rows: Vec<usize>,
    input: PreparedInput,
}

impl Prepared {
    /// The distinct inputs the model will run on.
    pub fn inputs(&self) -> usize {
        match &self.input {
            PreparedInput::Tokens(tokens) => tokens.rows(),
            PreparedInput::Pixels { images, .. } => *images,
        }
    }
}

enum PreparedInput {
    /// `images` preprocessed images, `[images x 3 x H x W]` bytes row-major, not normalised.
    Pixels { pixels: Vec<u8>, images: usize },
    /// The distinct captions, tokenized and padded.
    Tokens(text::PaddedTokens),
}

/// Decodes and preprocesses a batch's images (image encoders), on `threads` threads, or pads
/// the tokens of its distinct captions (text encoders: `tokens`, of a batch holding its
/// captions). Images that do not decode are skipped and counted, with a warning naming the
/// sample.
pub fn prepare(
    manifest: &Manifest,
    batch: &SampleBatch,
    threads: usize,
    tokens: Option<&text::BatchTokens>,
) -> Result<Prepared, EncoderError> {
    match manifest.modality {
        Modality::Text => {
            let tokens = tokens.ok_or_else(|| EncoderError::Usage {
                encoder: manifest.name.clone(),
                problem: "a text encoder's batch is prepared from its tokens".into(),
            })?;
            let distinct = distinct::DistinctInputs::of(&batch.captions);
            let captions: Vec<&str> = (distinct.first.iter())
                .map(|&s| batch.captions[s].as_str())
                .collect();
            Ok(Prepared {
                sample_ids: batch.sample_ids.clone(),
                skipped: Vec::new(),
                read_skips: batch.skipped.len() as u64,
                input: PreparedInput::Tokens(tokens.padded(&captions)),
                input_rows: distinct.input_of,
            })
        }
        Modality::Image => {
            if batch.images.len() != batch.len() {
                return Err(EncoderError::Usage {
                    encoder: manifest.name.clone(),
                    problem:
                        "an image encoder needs the images: read the dataset with Projection::ALL"
                            .into(),
                });
            }
            let spec = manifest.image.as_ref().expect("checked on load");
            let distinct = distinct::DistinctInputs::of(batch.images.iter().map(|i| &i.0));
            let images: Vec<&EncodedImage> =
                distinct.first.iter().map(|&s| &batch.images[s]).collect();
            let chunk = images.len().div_ceil(threads.max(1)).max(1);
            let decoded: Vec<Result<Vec<u8>, String>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (images.chunks(chunk))
                    .map(|part| {
                        scope.spawn(move || {
                            crate::allocator::use_thread_heap();
                            (part.iter())
                                .map(|image| match image.decode() {
                                    Ok(decoded) => Ok(image::preprocess(&decoded, spec)),
                                    Err(reason) => Err(reason.to_string()),
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                (handles.into_iter())
                    .flat_map(|h| h.join().expect("preprocessing an image does not panic"))
                    .collect()
            });
            // The pixels of the images that decode, and each one's row among them.
            let (mut pixels, mut images) = (Vec::new(), 0);
            let mut row_of = Vec::with_capacity(decoded.len());
            for image in &decoded {
                row_of.push(match image {
                    Ok(values) => {
                        pixels.extend_from_slice(values);
                        images += 1;
                        Ok(images - 1)
                    }
                    Err(reason) => Err(reason),
                });
            }
            let (mut sample_ids, mut skipped, mut input_rows) =
                (Vec::new(), Vec::new(), Vec::new());
            for (s, &id) in batch.sample_ids.iter().enumerate() {
                match row_of[distinct.input_of[s]] {
                    Ok(row) => {
                        sample_ids.push(id);
                        input_rows.push(row);
                    }
                    Err(reason) => {
                        tracing::warn!(
                            sample_id = id,
                            "shard {}: unreadable image skipped: {reason}",
                            batch.shard
                        );
                        skipped.push((id, reason.clone()));
                    }
                }
            }
            Ok(Prepared {
                sample_ids,
                skipped,
                read_skips: batch.skipped.len() as u64,
                input_rows,
                input: PreparedInput::Pixels { pixels, images },
            })
        }
    }
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
            truncated_captions: 0,
            precision: Precision::Float32,
            stage_times: StageTimes::default(),
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

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the model runs.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The seconds of each stage since the last call (or the load), and a fresh count.
    pub fn take_stage_times(&mut self) -> StageTimes {
        std::mem::take(&mut self.stage_times)
    }

    /// Captions cut at the model's maximum length so far.
    pub fn truncated_captions(&self) -> u64 {
        self.truncated_captions
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
        let threads = self.preparing_threads();
        let tokens = (self.tokenizer.as_ref())
            .map(|t| t.tokenize(&batch.captions, threads))
            .transpose()?;
        let prepared = prepare(&self.manifest, batch, threads, tokens.as_ref())?;
        self.encode_prepared(prepared, layers, pooling, None)
    }

    /// Threads that prepare a batch (decode and preprocess its images, tokenize its captions):
    /// one beside a model on the CPU, whose forward takes the other cores; every core feeding a
    /// GPU, which one thread leaves idle (on an H200's machine, a 224-pixel image took about
    /// 5 ms to decode and resize and a caption 0.27 ms to tokenize; MobileNetV2's forward took
    /// 0.06 ms an image, BERT-base's 0.14 ms a caption).
    fn preparing_threads(&self) -> usize {
        if self.device.is_cuda() {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            1
        }
    }

    /// The model and pooling half of [`encode`](Self::encode), on inputs [`prepare`]d elsewhere
    /// (another thread, while the model runs the previous batch); with `tokens`, each layer's
    /// token rows too.
    pub fn encode_prepared(
        &mut self,
        prepared: Prepared,
        layers: &[usize],
        pooling: Pooling,
        tokens: Option<&TokenSelection>,
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
                self.truncated_captions += tokens.truncated;
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
                let [h, w] = spec.input_size;
                let bytes = Tensor::from_slice(&pixels)
                    .reshape([images as i64, 3, h as i64, w as i64])
                    .to_device(self.device);
                (vec![image::normalise(&bytes, spec)], None, None)
            }
        };
        self.stage_times.inputs += laps.lap();
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
        self.stage_times.forward += laps.lap();
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
        self.stage_times.outputs += laps.lap();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::EncodedImage;

    fn png(seed: u8) -> EncodedImage {
        let image = ::image::RgbImage::from_fn(9, 7, |x, y| {
            ::image::Rgb([seed, (x * 20) as u8, (y * 30) as u8])
        });
        let mut bytes = Vec::new();
        ::image::DynamicImage::ImageRgb8(image)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                ::image::ImageFormat::Png,
            )
            .unwrap();
        EncodedImage(bytes.into())
    }

    #[test]
    fn images_prepared_on_several_threads_equal_one_thread_and_keep_their_skips() {
        let manifest: Manifest = serde_json::from_value(serde_json::json!({
            "format_version": 1, "name": "cnn", "modality": "image",
            "source": {"library": "torchvision", "family": "resnet18", "model": "random", "notes": ""},
            "outputs": "feature_maps", "default_pooling": "gap",
            "layers": [{"name": "layer1", "width": 4}],
            "image": {"resize": {"shortest_edge": 6}, "resample": "bilinear",
                      "crop": {"height": 5, "width": 5}, "crop_rounding": "round",
                      "rescale": 0.00392156862745098, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2],
                      "background": [255, 255, 255], "processor": "", "input_size": [5, 5]},
        }))
        .unwrap();
        let mut images: Vec<EncodedImage> = (0..11).map(png).collect();
        images[4] = EncodedImage(b"not an image".to_vec().into());
        images[9] = EncodedImage(Vec::new().into());
        let batch = SampleBatch {
            shard: 0,
            sample_ids: (100..111).collect(),
            captions: vec![String::new(); 11],
            images,
            skipped: Vec::new(),
        };
        let one = prepare(&manifest, &batch, 1, None).unwrap();
        let PreparedInput::Pixels { pixels, .. } = &one.input else {
            panic!("images give pixels")
        };
        assert_eq!(pixels.len(), 9 * 3 * 5 * 5);
        for threads in [2, 3, 16] {
            let many = prepare(&manifest, &batch, threads, None).unwrap();
            assert_eq!(many.sample_ids, one.sample_ids);
            assert_eq!(
                many.skipped.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
                vec![104, 109]
            );
            let PreparedInput::Pixels { pixels: p, .. } = &many.input else {
                panic!("images give pixels")
            };
            assert_eq!(p, pixels, "{threads} threads");
        }
    }
}
