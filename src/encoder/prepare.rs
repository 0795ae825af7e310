//! A batch's model inputs, made on the helper thread without the model: images decoded and
//! preprocessed to bytes, or captions' tokens padded; identical inputs kept once.

use super::manifest::{ImageSpec, Modality};
use super::preparers::Preparers;
use super::{distinct, image, text, EncoderError, Manifest};
use crate::dataset::{EncodedImage, SampleBatch};

/// A batch's model inputs, made on the CPU without the model: decoded and preprocessed images,
/// or captions (tokenized with the model, which counts truncations). Identical inputs are kept
/// once ([`distinct`]).
pub struct Prepared {
    pub sample_ids: Vec<u64>,
    pub skipped: Vec<(u64, String)>,
    /// Rows the reader left out of this batch, counted with its rows.
    pub read_skips: u64,
    /// Per sample of `sample_ids`, its row of `input`.
    pub(super) input_rows: Vec<usize>,
    pub(super) input: PreparedInput,
}

impl Prepared {
    /// The distinct inputs the model will run on.
    pub fn inputs(&self) -> usize {
        match &self.input {
            PreparedInput::Tokens(tokens) => tokens.rows(),
            PreparedInput::Pixels { images, .. } => *images,
        }
    }

    /// Captions: the distinct captions and the length they are padded to, and how many of
    /// those positions are padding.
    fn shape_and_padding(&self) -> Option<((usize, usize), usize)> {
        match &self.input {
            PreparedInput::Tokens(tokens) => Some((tokens.shape(), tokens.padding())),
            PreparedInput::Pixels { .. } => None,
        }
    }
}

/// What the helper thread prepared of a batch ([`Encoder::prepare_only`](super::Encoder::prepare_only)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreparedCounts {
    /// Distinct inputs.
    pub inputs: usize,
    /// Captions: how many of the padded batches' token positions are padding.
    pub padding: usize,
    /// Captions: each model batch's shape, (distinct captions, padded length), in order.
    pub caption_batches: Vec<(usize, usize)>,
}

impl PreparedCounts {
    /// Adds one prepared model batch.
    pub fn add(&mut self, prepared: &Prepared) {
        self.inputs += prepared.inputs();
        if let Some(((rows, width), padding)) = prepared.shape_and_padding() {
            self.padding += padding;
            self.caption_batches.push((rows, width));
        }
    }

    /// The share of the computed positions that is padding; `None` for images.
    pub fn padding_share(&self) -> Option<f64> {
        let positions: usize = self
            .caption_batches
            .iter()
            .map(|(rows, width)| rows * width)
            .sum();
        (positions > 0).then(|| self.padding as f64 / positions as f64)
    }
}

pub(super) enum PreparedInput {
    /// `images` preprocessed images, `[images x 3 x H x W]` bytes row-major, not normalised.
    Pixels { pixels: Vec<u8>, images: usize },
    /// The distinct captions, tokenized and padded.
    Tokens(text::PaddedTokens),
}

/// Decodes and preprocesses a batch's images (image encoders), on `preparers`, or pads
/// the tokens of its distinct captions (text encoders: `tokens`, of a batch holding its
/// captions). Images that do not decode are skipped and counted, with a warning naming the
/// sample.
pub fn prepare(
    manifest: &Manifest,
    batch: &SampleBatch,
    preparers: &Preparers,
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
            let (mut pixels, failures) = preprocess_images(&images, spec, preparers);
            // The pixels of the images that decode, gathered to the front, and each one's row
            // among them.
            let slot = spec.bytes_per_image();
            let (mut row_of, mut images) = (Vec::with_capacity(failures.len()), 0);
            for (i, failure) in failures.iter().enumerate() {
                row_of.push(match failure {
                    None => {
                        pixels.copy_within(i * slot..(i + 1) * slot, images * slot);
                        images += 1;
                        Ok(images - 1)
                    }
                    Some(reason) => Err(reason),
                });
            }
            pixels.truncate(images * slot);
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

/// Decodes and preprocesses `images` into one buffer of a slot per image, on `threads` threads
/// (the calling one when 1), and says why each image that does not decode failed (its slot is
/// left as zeros).
fn preprocess_images(
    images: &[&EncodedImage],
    spec: &ImageSpec,
    preparers: &Preparers,
) -> (Vec<u8>, Vec<Option<String>>) {
    let slot = spec.bytes_per_image();
    // Sized once: a buffer grown image by image is copied as often as it doubles, into memory
    // the kernel has to zero afresh.
    let mut pixels = vec![0u8; images.len() * slot];
    let failures = preparers.map_into(images, &mut pixels, slot, |image, out| {
        match image.decode() {
            Ok(decoded) => {
                image::preprocess_into(&decoded, spec, out);
                None
            }
            Err(reason) => Some(reason.to_string()),
        }
    });
    (pixels, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let one = prepare(&manifest, &batch, &Preparers::here(), None).unwrap();
        let PreparedInput::Pixels { pixels, .. } = &one.input else {
            panic!("images give pixels")
        };
        assert_eq!(pixels.len(), 9 * 3 * 5 * 5);
        for threads in [2, 3, 16] {
            let many = prepare(&manifest, &batch, &Preparers::pool(threads), None).unwrap();
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
