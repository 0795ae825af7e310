//! Image preprocessing as the encoders' own processors do it: RGB with transparency composited on
//! white (what transformers' `convert_rgb` does, with Pillow's arithmetic), resize with the
//! processor's filter (Pillow's, bit for bit: [`super::resample`]), centre crop, channels first
//! ([`preprocess`], 8-bit, on the CPU); then rescale and normalise ([`normalise`], on the
//! model's device).
//!
//! The split is where the data is smallest: a batch crosses to a GPU as bytes, a quarter of its
//! floats, and the arithmetic is the same wherever it runs.

use image::{DynamicImage, RgbImage};
use tch::{Device, Kind, Tensor};

use super::manifest::ImageSpec;

/// One image resized and cropped as the processor does: `3 x height x width` bytes, channels
/// first.
pub fn preprocess(image: &DynamicImage, spec: &ImageSpec) -> Vec<u8> {
    let mut out = vec![0u8; spec.bytes_per_image()];
    preprocess_into(image, spec, &mut out);
    out
}

/// [`preprocess`] into `out`, a batch's slot of `3 x height x width` bytes: the helper thread
/// fills a batch's buffer in place.
///
/// Every package's preprocessing gives its `input_size` ([`ImageSpec::output_size`], checked
/// when the package opens), so the slot always fits.
pub fn preprocess_into(image: &DynamicImage, spec: &ImageSpec, out: &mut [u8]) {
    let rgb = flatten_on(image, spec.background);
    let resized = match &spec.resize {
        None => rgb,
        Some(resize) => {
            let (w, h) = target_size(rgb.width(), rgb.height(), resize);
            if (w, h) == (rgb.width(), rgb.height()) {
                rgb
            } else {
                super::resample::resize(&rgb, w, h, spec.resample)
            }
        }
    };
    let cropped = match &spec.crop {
        None => resized,
        Some(crop) => centre_crop(
            &resized,
            crop.width,
            crop.height,
            spec.crop_rounding == "round",
        ),
    };
    let plane = cropped.width() as usize * cropped.height() as usize;
    assert_eq!(
        out.len(),
        3 * plane,
        "the package's preprocessing gives its input_size (checked when it opens)"
    );
    let (red, rest) = out.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    for (i, pixel) in cropped.as_raw().chunks_exact(3).enumerate() {
        red[i] = pixel[0];
        green[i] = pixel[1];
        blue[i] = pixel[2];
    }
}

/// The model input on `device` from [`preprocess`]ed bytes (`images` of `3 x H x W`, channels
/// first): `(x * rescale - mean) / std` per channel, in float32, one operation at a time as the
/// processors compute it.
///
/// The bytes cross to a GPU and are normalised there ([`normalise`]). On the CPU they are
/// normalised in one vectorised pass straight into the tensor, where libtorch makes four
/// (conversion, scale, shift, division) and a copy; the forward-alone benchmark has no such
/// pass, so it is pure overhead of the encoding.
pub fn model_input(pixels: &[u8], images: usize, spec: &ImageSpec, device: Device) -> Tensor {
    let [h, w] = spec.input_size;
    let shape = [images as i64, 3, h as i64, w as i64];
    assert_eq!(
        pixels.len(),
        images * spec.bytes_per_image(),
        "a slot of 3 x H x W bytes an image"
    );
    if device != Device::Cpu {
        return normalise(
            &Tensor::from_slice(pixels).reshape(shape).to_device(device),
            spec,
        );
    }
    let input = Tensor::empty(shape, (Kind::Float, Device::Cpu));
    // SAFETY: a new contiguous float32 tensor of `pixels.len()` elements, owned here, which
    // nothing else reads or writes until this slice is gone.
    let floats =
        unsafe { std::slice::from_raw_parts_mut(input.data_ptr() as *mut f32, pixels.len()) };
    for (c, (bytes, out)) in (pixels.chunks_exact(h * w))
        .zip(floats.chunks_exact_mut(h * w))
        .enumerate()
    {
        let c = c % 3;
        normalise_plane(bytes, out, spec.rescale, spec.mean[c], spec.std[c]);
    }
    input
}

/// `out[i] = (bytes[i] * rescale - mean) / std` in float32, each operation rounded as libtorch
/// rounds it (no fused multiply-add); compiled for AVX2 too, chosen when the CPU has it.
fn normalise_plane(bytes: &[u8], out: &mut [f32], rescale: f32, mean: f32, std: f32) {
    #[inline(always)]
    fn plane(bytes: &[u8], out: &mut [f32], rescale: f32, mean: f32, std: f32) {
        for (o, &b) in out.iter_mut().zip(bytes) {
            *o = (f32::from(b) * rescale - mean) / std;
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn plane_avx2(bytes: &[u8], out: &mut [f32], rescale: f32, mean: f32, std: f32) {
        plane(bytes, out, rescale, mean, std)
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { plane_avx2(bytes, out, rescale, mean, std) };
    }
    plane(bytes, out, rescale, mean, std)
}

/// [`model_input`]'s arithmetic on a tensor of bytes (`[images x 3 x H x W]` uint8, on any
/// device).
pub fn normalise(pixels: &Tensor, spec: &ImageSpec) -> Tensor {
    let device = pixels.device();
    let per_channel = |v: [f32; 3]| {
        Tensor::from_slice(&v)
            .reshape([1, 3, 1, 1])
            .to_device(device)
    };
    let scaled = pixels.to_kind(Kind::Float) * f64::from(spec.rescale);
    (scaled - per_channel(spec.mean)) / per_channel(spec.std)
}

/// RGB, with any alpha composited on `background` (grey, palette and 16-bit images included).
fn flatten_on(image: &DynamicImage, background: [u8; 3]) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    // Most images with alpha are 8-bit RGBA already: read them in place.
    let converted;
    let rgba = match image {
        DynamicImage::ImageRgba8(rgba) => rgba,
        other => {
            converted = other.to_rgba8();
            &converted
        }
    };
    let mut rgb = Vec::with_capacity(rgba.as_raw().len() / 4 * 3);
    for p in rgba.as_raw().chunks_exact(4) {
        let a = p[3] as u32;
        // Pillow's alpha_composite over an opaque background: its 7-bit fixed point, and its
        // division by 255 as two shifts.
        let blend = |c: u8, b: u8| {
            if a == 0 {
                return b;
            }
            let sum = ((c as u32 * a + b as u32 * (255 - a)) << 7) + (0x80 << 7);
            ((((sum >> 8) + sum) >> 8) >> 7) as u8
        };
        rgb.extend([
            blend(p[0], background[0]),
            blend(p[1], background[1]),
            blend(p[2], background[2]),
        ]);
    }
    RgbImage::from_raw(rgba.width(), rgba.height(), rgb).expect("three bytes a pixel")
}

/// The size after resizing: the short side to `shortest_edge` (the long side scaled and
/// truncated, as transformers and torchvision do), or the given height and width.
fn target_size(w: u32, h: u32, resize: &super::manifest::ResizeSpec) -> (u32, u32) {
    if let Some(short) = resize.shortest_edge {
        if w <= h {
            (short, (short as u64 * h as u64 / w as u64) as u32)
        } else {
            ((short as u64 * w as u64 / h as u64) as u32, short)
        }
    } else {
        (resize.width.unwrap_or(w), resize.height.unwrap_or(h))
    }
}

fn centre_crop(image: &RgbImage, width: u32, height: u32, round: bool) -> RgbImage {
    let offset = |size: u32, crop: u32| {
        let excess = size.saturating_sub(crop);
        if round {
            // torchvision's `int(round(excess / 2.0))`: Python rounds halves to even.
            (excess as f64 / 2.0).round_ties_even() as u32
        } else {
            excess / 2
        }
    };
    let (left, top) = (offset(image.width(), width), offset(image.height(), height));
    // A crop larger than the image is padded with black, as transformers pads.
    RgbImage::from_fn(width, height, |x, y| {
        let (sx, sy) = (
            (left + x) as i64 - (width.saturating_sub(image.width()) / 2) as i64,
            (top + y) as i64 - (height.saturating_sub(image.height()) / 2) as i64,
        );
        if sx >= 0 && sy >= 0 && (sx as u32) < image.width() && (sy as u32) < image.height() {
            *image.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::manifest::{CropSpec, ResizeSpec};
    use crate::encoder::resample::Resample;

    fn spec() -> ImageSpec {
        ImageSpec {
            resize: Some(ResizeSpec {
                shortest_edge: Some(4),
                height: None,
                width: None,
            }),
            resample: Resample::Bilinear,
            crop: Some(CropSpec {
                height: 4,
                width: 4,
            }),
            crop_rounding: "floor".into(),
            rescale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            background: [255, 255, 255],
            input_size: [4, 4],
            processor: String::new(),
        }
    }

    #[test]
    fn transparent_pixels_become_the_background() {
        let image = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            4,
            4,
            image::Rgba([10, 20, 30, 0]),
        ));
        let out = preprocess(&image, &spec());
        assert!(out.iter().all(|&v| v == 255), "{out:?}");
        let half = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            4,
            4,
            image::Rgba([0, 0, 0, 128]),
        ));
        let out = preprocess(&half, &spec());
        assert_eq!(out[0], 127);
    }

    #[test]
    fn normalising_on_the_device_equals_the_processors_arithmetic() {
        let spec = ImageSpec {
            rescale: 1.0 / 255.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            ..spec()
        };
        let bytes: Vec<u8> = (0..48).map(|i| (i * 37 % 256) as u8).collect();
        let got = normalise(&Tensor::from_slice(&bytes).reshape([1, 3, 4, 4]), &spec);
        let got: Vec<f32> = got.reshape([-1]).try_into().unwrap();
        for (i, (&b, &g)) in bytes.iter().zip(&got).enumerate() {
            let c = i / 16;
            let want = (b as f32 * spec.rescale - spec.mean[c]) / spec.std[c];
            assert_eq!(g.to_bits(), want.to_bits(), "value {i}: {g} against {want}");
        }
    }

    #[test]
    fn normalising_on_the_cpu_gives_the_same_floats_as_the_devices_arithmetic() {
        let spec = ImageSpec {
            rescale: 1.0 / 255.0,
            mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            input_size: [16, 16],
            ..spec()
        };
        // Every byte value in every channel, in two images.
        let bytes: Vec<u8> = (0..2 * 3 * 256).map(|i| (i * 7 % 256) as u8).collect();
        let by_pass = model_input(&bytes, 2, &spec, Device::Cpu);
        let by_torch = normalise(&Tensor::from_slice(&bytes).reshape([2, 3, 16, 16]), &spec);
        assert_eq!(by_pass.size(), vec![2, 3, 16, 16]);
        let (a, b): (Vec<f32>, Vec<f32>) = (
            by_pass.reshape([-1]).try_into().unwrap(),
            by_torch.reshape([-1]).try_into().unwrap(),
        );
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x.to_bits(), y.to_bits(), "value {i}: {x} against {y}");
        }
    }

    #[test]
    fn the_short_side_is_resized_and_the_centre_kept() {
        assert_eq!(
            target_size(
                640,
                480,
                &ResizeSpec {
                    shortest_edge: Some(224),
                    height: None,
                    width: None
                }
            ),
            (298, 224)
        );
        assert_eq!(
            target_size(
                480,
                640,
                &ResizeSpec {
                    shortest_edge: Some(256),
                    height: None,
                    width: None
                }
            ),
            (256, 341)
        );
        // A 4x8 image, top half red and bottom half blue, cropped to 4x4 keeps the middle rows.
        let image = RgbImage::from_fn(4, 8, |_, y| {
            if y < 4 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let crop = centre_crop(&image, 4, 4, false);
        assert_eq!(crop.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(crop.get_pixel(0, 2).0, [0, 0, 255]);

        // An odd excess: torchvision's offset is Python's round, halves to even (an excess of 5
        // starts at 2, of 3 at 2 as well), where floor starts at 2 and 1.
        let columns = RgbImage::from_fn(9, 1, |x, _| image::Rgb([x as u8, 0, 0]));
        let first = |width, round| centre_crop(&columns, width, 1, round).get_pixel(0, 0).0[0];
        assert_eq!((first(4, true), first(6, true)), (2, 2));
        assert_eq!((first(4, false), first(6, false)), (2, 1));
    }
}
