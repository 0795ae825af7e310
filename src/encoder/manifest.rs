//! `encoder.json`: what an encoder package is and how to feed it (FORMATS.md, "Encoder package").

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::resample::Resample;
use super::EncoderError;

/// The package format version this saeshare reads.
pub const PACKAGE_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Image,
    Text,
}

/// How the tokens (or the feature map) of a layer become one vector per sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The first token (a trained summary token: BERT's [CLS], ViT's class token).
    Cls,
    /// The last non-padding token (CLIP text: the end-of-text token, the only one that has seen
    /// the whole caption under the causal mask).
    Eos,
    /// The final position, padding included (SigLIP text, trained padded to 64).
    Last,
    /// The mean of the non-padding tokens, or of the patches (without class or register tokens).
    Mean,
    /// Global average over the height and width of a CNN feature map.
    Gap,
}

/// What `model.pt` returns per layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// `[batch, tokens, width]`.
    Tokens,
    /// `[batch, channels, height, width]`.
    FeatureMaps,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub library: String,
    pub family: String,
    pub model: String,
    #[serde(default)]
    pub notes: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub name: String,
    pub width: usize,
}

/// Image preprocessing, as the model's own processor does it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// `{"shortest_edge": S}` or `{"height": H, "width": W}`; none: no resize.
    pub resize: Option<ResizeSpec>,
    /// `bicubic`, `bilinear` (or `linear`), `nearest`, `lanczos`, `box`, `hamming`: Pillow's.
    pub resample: Resample,
    pub crop: Option<CropSpec>,
    /// How the crop's offset is rounded: `floor` (transformers) or `round` (torchvision: to the
    /// nearest, halves to even, as Python's `round`).
    pub crop_rounding: String,
    pub rescale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Transparent pixels are composited on this colour.
    pub background: [u8; 3],
    /// The size the model takes, `[height, width]`.
    pub input_size: [usize; 2],
    #[serde(default)]
    pub processor: String,
}

impl ImageSpec {
    /// Whether a size it gives is 0, which no image can be resized or cropped to.
    fn has_a_zero_size(&self) -> bool {
        let resize = self
            .resize
            .as_ref()
            .map_or(vec![], |r| vec![r.shortest_edge, r.height, r.width]);
        let crop = self
            .crop
            .as_ref()
            .map_or(vec![], |c| vec![c.height, c.width]);
        (resize.into_iter().flatten().chain(crop)).any(|size| size == 0)
            || self.input_size.contains(&0)
    }

    /// Bytes of one preprocessed image, `3 x height x width` of `input_size`: a batch's slot.
    pub fn bytes_per_image(&self) -> usize {
        3 * self.input_size[0] * self.input_size[1]
    }

    /// The `[height, width]` every image comes out at: the crop's, or a resize's to a fixed
    /// height and width. `None` where it follows the image (a resize of the short side alone,
    /// no crop), which cannot make a batch.
    pub fn output_size(&self) -> Option<[usize; 2]> {
        match (&self.crop, &self.resize) {
            (Some(crop), _) => Some([crop.height as usize, crop.width as usize]),
            (
                None,
                Some(ResizeSpec {
                    shortest_edge: None,
                    height: Some(h),
                    width: Some(w),
                }),
            ) => Some([*h as usize, *w as usize]),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeSpec {
    pub shortest_edge: Option<u32>,
    pub height: Option<u32>,
    pub width: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropSpec {
    pub height: u32,
    pub width: u32,
}

/// Tokenization, as the model was trained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextSpec {
    pub max_length: usize,
    /// `longest` (pad to the longest caption of the batch) or `max_length`.
    pub padding: String,
    /// Whether attention is causal (CLIP text): padding then cannot change earlier tokens.
    #[serde(default)]
    pub causal: bool,
    /// The token that pads captions to a common length.
    #[serde(default)]
    pub pad_id: u32,
}

/// `encoder.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    pub modality: Modality,
    pub source: Source,
    pub outputs: OutputKind,
    pub default_pooling: Pooling,
    pub layers: Vec<Layer>,
    pub image: Option<ImageSpec>,
    pub text: Option<TextSpec>,
    /// Tokens before the patches (class and register tokens), left out of `mean` pooling.
    #[serde(default)]
    pub prefix_tokens: usize,
}

impl Manifest {
    /// The `[height, width]` images reach the model at: `side x side` where a study's
    /// `image_size` gives a side, else the package's input size; `None` for a text encoder.
    pub fn input_size_at(&self, side: Option<u32>) -> Option<[usize; 2]> {
        let image = self.image.as_ref()?;
        Some(side.map_or(image.input_size, |side| [side as usize; 2]))
    }

    /// The package run on square images of `side` pixels: resized to `side x side` (no crop),
    /// with the package's resampling and normalisation. Only for convolutional networks, which
    /// take any size; a transformer's position embeddings fix its size.
    pub fn at_image_size(&self, side: u32) -> Result<Manifest, String> {
        let image = match (&self.image, self.outputs) {
            (Some(image), OutputKind::FeatureMaps) => image,
            (Some(_), OutputKind::Tokens) => {
                return Err(format!(
                    "image_size: {} is a transformer, whose position embeddings fix its input \
                     size ({}); only convolutional networks (feature-map outputs) take another",
                    self.name,
                    match self.image.as_ref().map(|i| i.input_size) {
                        Some([h, w]) => format!("{h} x {w} px"),
                        None => "its package's".to_string(),
                    }
                ))
            }
            (None, _) => return Err(format!("image_size: {} reads captions", self.name)),
        };
        if !(16..=4096).contains(&side) {
            return Err(format!("image_size = {side}: give 16 to 4096 pixels"));
        }
        let mut manifest = self.clone();
        manifest.image = Some(ImageSpec {
            resize: Some(ResizeSpec {
                shortest_edge: None,
                height: Some(side),
                width: Some(side),
            }),
            crop: None,
            input_size: [side as usize; 2],
            processor: format!("{} at {side} px, uncropped", image.processor),
            ..image.clone()
        });
        Ok(manifest)
    }

    /// Whether a batch is padded to its longest caption: a text encoder that does not pad to a
    /// fixed length, whose batches then gain from captions of like length.
    pub fn pads_to_longest(&self) -> bool {
        self.text
            .as_ref()
            .is_some_and(|t| t.padding != "max_length")
    }

    /// Reads and checks `dir/encoder.json`.
    pub fn read(dir: &Path) -> Result<Manifest, EncoderError> {
        let path = dir.join("encoder.json");
        let text = std::fs::read(&path).map_err(|e| EncoderError::Package {
            package: dir.to_path_buf(),
            problem: format!(
                "cannot read encoder.json ({e}); make a package with `python -m saeshare_export`"
            ),
        })?;
        let bad = |problem: String| EncoderError::Package {
            package: dir.to_path_buf(),
            problem,
        };
        let value: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| bad(format!("encoder.json is not JSON: {e}")))?;
        let version = value.get("format_version").and_then(|v| v.as_u64());
        if version != Some(PACKAGE_VERSION as u64) {
            return Err(bad(format!(
                "encoder.json has format_version {}, this saeshare reads version {PACKAGE_VERSION}; \
                 export the model again with this version's python/saeshare_export",
                version.map_or("none".to_string(), |v| v.to_string())
            )));
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| bad(format!("encoder.json: {e}")))?;
        match manifest.modality {
            Modality::Image if manifest.image.is_none() => {
                Err(bad("an image encoder needs `image`".into()))
            }
            Modality::Text if manifest.text.is_none() => {
                Err(bad("a text encoder needs `text`".into()))
            }
            _ if manifest.layers.is_empty() => Err(bad("no layers".into())),
            _ if manifest.image.as_ref().is_some_and(ImageSpec::has_a_zero_size) => Err(bad(
                "`image` has a size of 0 (resize, crop or input_size); export the package again"
                    .into(),
            )),
            _ => match manifest.image.as_ref().map(|i| (i.output_size(), i.input_size)) {
                Some((output, input)) if output != Some(input) => Err(bad(format!(
                    "`image` makes images of {} but the model takes {input:?} (input_size): \
                     a batch needs one size, given by `crop` or by `resize` to a height and \
                     width; export the package again",
                    output.map_or("each image's own size".into(), |o| format!("{o:?}"))
                ))),
                _ => Ok(manifest),
            },
        }
    }

    /// The layers named by `all`, `last`, or a comma-separated list of names.
    pub fn select_layers(&self, selection: &str) -> Result<Vec<usize>, EncoderError> {
        match selection {
            "all" => Ok((0..self.layers.len()).collect()),
            "last" => Ok(vec![self.layers.len() - 1]),
            list => list
                .split(',')
                .map(|name| {
                    let name = name.trim();
                    self.layers
                        .iter()
                        .position(|l| l.name == name)
                        .ok_or_else(|| EncoderError::NoLayer {
                            encoder: self.name.clone(),
                            layer: name.to_string(),
                            layers: self.layers.iter().map(|l| l.name.clone()).collect(),
                        })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_unknown_resampling_filter_or_a_size_of_0_is_refused_naming_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = |resample: &str| {
            serde_json::json!({
                "format_version": PACKAGE_VERSION, "name": "cnn", "modality": "image",
                "source": {"library": "torchvision", "family": "resnet18", "model": "random"},
                "outputs": "feature_maps", "default_pooling": "gap",
                "layers": [{"name": "layer1", "width": 4}],
                "image": {"resize": {"height": 6, "width": 6}, "resample": resample, "crop": null,
                          "crop_rounding": "round", "rescale": 0.1, "mean": [0.5, 0.5, 0.5],
                          "std": [0.2, 0.2, 0.2], "background": [255, 255, 255],
                          "input_size": [6, 6]},
            })
            .to_string()
        };
        std::fs::write(dir.path().join("encoder.json"), manifest("hamming")).unwrap();
        let read = Manifest::read(dir.path()).unwrap();
        assert_eq!(read.image.unwrap().resample, Resample::Hamming);
        std::fs::write(dir.path().join("encoder.json"), manifest("cubic")).unwrap();
        let error = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains(&dir.path().display().to_string())
                && error.contains("cubic")
                && error.contains("bicubic"),
            "{error}"
        );
        let zero = manifest("bicubic").replace(r#""height":6"#, r#""height":0"#);
        assert!(zero.contains(r#""height":0"#));
        std::fs::write(dir.path().join("encoder.json"), zero).unwrap();
        let error = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(error.contains("size of 0"), "{error}");
    }

    #[test]
    fn preprocessing_that_does_not_give_the_models_input_size_is_refused_naming_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let read = |resize: serde_json::Value, crop: serde_json::Value| {
            let manifest = serde_json::json!({
                "format_version": PACKAGE_VERSION, "name": "cnn", "modality": "image",
                "source": {"library": "torchvision", "family": "resnet18", "model": "random"},
                "outputs": "feature_maps", "default_pooling": "gap",
                "layers": [{"name": "layer1", "width": 4}],
                "image": {"resize": resize, "resample": "bilinear", "crop": crop,
                          "crop_rounding": "round", "rescale": 0.1, "mean": [0.5, 0.5, 0.5],
                          "std": [0.2, 0.2, 0.2], "background": [255, 255, 255],
                          "input_size": [6, 8]},
            });
            std::fs::write(dir.path().join("encoder.json"), manifest.to_string()).unwrap();
            Manifest::read(dir.path()).map_err(|e| e.to_string())
        };
        let fits = [
            (
                json!({"shortest_edge": 9}),
                json!({"height": 6, "width": 8}),
            ),
            (json!(null), json!({"height": 6, "width": 8})),
            (json!({"height": 6, "width": 8}), json!(null)),
        ];
        for (resize, crop) in fits {
            let spec = read(resize.clone(), crop.clone()).unwrap().image.unwrap();
            assert_eq!(spec.output_size(), Some([6, 8]), "{resize} {crop}");
        }
        let misfits = [
            // The short side alone follows each image's aspect.
            (
                json!({"shortest_edge": 6}),
                json!(null),
                "each image's own size",
            ),
            (json!(null), json!(null), "each image's own size"),
            (json!({"height": 6}), json!(null), "each image's own size"),
            (
                json!({"shortest_edge": 9}),
                json!({"height": 8, "width": 6}),
                "[8, 6]",
            ),
            (json!({"height": 8, "width": 8}), json!(null), "[8, 8]"),
        ];
        for (resize, crop, made) in misfits {
            let error = read(resize.clone(), crop.clone()).unwrap_err();
            assert!(
                error.contains(&dir.path().display().to_string())
                    && error.contains(made)
                    && error.contains("[6, 8] (input_size)"),
                "{resize} {crop}: {error}"
            );
        }
    }
}
