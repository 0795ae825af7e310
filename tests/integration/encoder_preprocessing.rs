//! Rust image preprocessing against the Python processors (transformers' CLIP, ViT, DINOv2 and
//! SigLIP processors; torchvision's ImageNet transform) on real images: scikit-image's sample
//! photos, an RGB PNG with a transparent colour, a 16-bit RGB PNG, and emoji PNGs (RGBA, grey + alpha, palette with
//! transparency).
//!
//! Compositing and resizing are Pillow's, bit for bit (the second test checks the resize against
//! Pillow itself), so against torchvision's transform, which resizes a PIL image, the inputs are
//! equal. transformers' processors resize uint8 tensors with torch's antialiased kernels, whose
//! 16-bit weights round differently from Pillow's 22-bit ones in a fraction of a percent of the
//! pixels, by one level; measured: means 0.00001 to 0.00017 in normalised units, maxima one or
//! two 8-bit levels (0.0078 to 0.0175). Allowed: mean 0.0005, maximum two levels.

use crate::common;

use saeshare::dataset::import::{build_emoji, EmojiBuild, ImportTarget};
use saeshare::dataset::{decode_image, Dataset, Projection};
use saeshare::encoder::image::{normalise, preprocess};
use saeshare::encoder::ImageSpec;
use tch::Tensor;

const PHOTOS: &str = r#"
import sys, skimage.data as d
from PIL import Image
for n in ["astronaut", "coffee", "chelsea"]:
    Image.fromarray(getattr(d, n)()).save(f"{sys.argv[1]}/{n}.png")
# An RGB PNG with a transparent colour (a tRNS chunk), a block of it in the middle: transformers'
# convert_to_rgb composites it on white, as any transparency.
pixels = d.coffee()[:200, :300].copy()
pixels[80:120, 100:200] = (10, 200, 30)
Image.fromarray(pixels).save(f"{sys.argv[1]}/trns.png", transparency=(10, 200, 30))
# A 16-bit RGB PNG (Pillow writes none: its chunks by hand), low bytes at random, so that taking
# the high byte and rounding differ.
import numpy as np, struct, zlib
high = d.chelsea()[:120, :160].astype(np.uint16)
low = np.random.default_rng(3).integers(0, 256, high.shape, dtype=np.uint16)
rows = (high << 8 | low).astype(">u2")
raw = b"".join(b"\x00" + row.tobytes() for row in rows)
chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
header = struct.pack(">IIBBBBB", rows.shape[1], rows.shape[0], 16, 2, 0, 0, 0)
with open(f"{sys.argv[1]}/rgb16.png", "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
"#;

#[test]
fn rust_preprocessing_matches_the_python_processors_on_real_images() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    assert!(common::python()
        .args(["-c", PHOTOS])
        .arg(&images)
        .status()
        .unwrap()
        .success());

    // Emoji PNGs of both styles, among them palette and grey+alpha images.
    let emoji = dir.path().join("emoji");
    let cache = saeshare::cache_dir().join("npm");
    build_emoji(
        &EmojiBuild { cache },
        &ImportTarget {
            out: emoji.clone(),
            shard_rows: 8000,
            append: false,
        },
    )
    .unwrap();
    let dataset = Dataset::open(&emoji).unwrap();
    let batch = dataset.shards()[0]
        .reader(Projection::ALL, 8000)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    // Rows 2i and 2i + 1 are emoji i's google and twitter images: google's 0 and 40, twitter's
    // 0, 14 and 114.
    for (n, i) in [0usize, 80, 1, 29, 229].iter().enumerate() {
        std::fs::write(images.join(format!("emoji{n}.png")), &batch.images[*i].0).unwrap();
    }
    let mut files: Vec<_> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let trns = std::fs::read(images.join("trns.png")).unwrap();
    assert!(
        trns.windows(4).any(|w| w == b"tRNS"),
        "the file has a transparent colour"
    );
    let image = decode_image(&trns).unwrap();
    assert_eq!(image.to_rgba8().get_pixel(150, 100).0, [10, 200, 30, 0]);
    assert_eq!(image.to_rgba8().get_pixel(10, 10).0[3], 255);

    let out = dir.path().join("reference");
    let status = common::python()
        .args(["-m", "saeshare_export.reference"])
        .arg(&out)
        .args(&files)
        .status()
        .unwrap();
    assert!(status.success());
    let specs: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("specs.json")).unwrap()).unwrap();
    let pixels = Tensor::read_safetensors(out.join("pixels.safetensors")).unwrap();

    for (processor, spec) in specs {
        let spec: ImageSpec = serde_json::from_value(spec).unwrap();
        for (i, file) in files.iter().enumerate() {
            let image = decode_image(&std::fs::read(file).unwrap()).unwrap();
            let bytes = Tensor::from_slice(&preprocess(&image, &spec));
            let [h, w] = spec.input_size;
            let ours = normalise(&bytes.reshape([1, 3, h as i64, w as i64]), &spec).reshape([-1]);
            let name = format!("{processor}.{i}");
            let theirs = pixels
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap()
                .1
                .reshape([-1]);
            assert_eq!(ours.size(), theirs.size(), "{name}");
            let diff = (&ours - &theirs).abs();
            let (mean, max) = (
                diff.mean(tch::Kind::Double).double_value(&[]),
                diff.max().double_value(&[]),
            );
            eprintln!(
                "{processor:>12} {:>14}: mean {mean:.5} max {max:.4}",
                file.file_name().unwrap().to_string_lossy()
            );
            if processor == "torchvision" {
                assert!(max <= 1e-6, "torchvision on {}: max {max}", file.display());
            }
            let level = 1.0 / 255.0 / f64::from(spec.std.iter().copied().fold(1.0, f32::min));
            assert!(
                mean <= 0.0005 && max <= 2.0 * level + 1e-6,
                "{processor} on {}: mean {mean}, max {max}",
                file.display()
            );
        }
    }
}

const PILLOW_RESIZES: &str = r#"
import sys, numpy as np, torch, skimage.data
from PIL import Image
from safetensors.torch import save_file
out = sys.argv[1]
rng = np.random.default_rng(7)
images = {
    "noise": rng.integers(0, 256, (61, 83, 3), dtype=np.uint8),
    "astronaut": skimage.data.astronaut(),
    # Over 100 times taller than wide: Pillow resizes the height first, in its own call.
    "tall": rng.integers(0, 256, (410, 3, 3), dtype=np.uint8),
    "small": rng.integers(0, 256, (9, 7, 3), dtype=np.uint8),
}
filters = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
resized = {}
for name, pixels in images.items():
    image = Image.fromarray(pixels)
    image.save(f"{out}/{name}.png")
    sizes = [(224, 224), (40, 30), (83, 17), (5, 61), (97, 300), (image.width, 2), (3, image.height)]
    for filter_name, code in filters.items():
        for w, h in sizes:
            result = np.asarray(image.resize((w, h), code)).copy()
            resized[f"{name}.{filter_name}.{w}.{h}"] = torch.from_numpy(result)
save_file(resized, f"{out}/resized.safetensors")
"#;

#[test]
fn resizing_equals_pillow_bit_for_bit_with_every_filter() {
    use saeshare::encoder::resample::{resize, Resample};
    let dir = tempfile::tempdir().unwrap();
    let status = (common::python()
        .args(["-c", PILLOW_RESIZES])
        .arg(dir.path()))
    .status()
    .unwrap();
    assert!(status.success());
    let expected = Tensor::read_safetensors(dir.path().join("resized.safetensors")).unwrap();
    assert_eq!(expected.len(), 4 * 6 * 7);
    let mut differing = Vec::new();
    for (key, pillow) in &expected {
        let parts: Vec<&str> = key.split('.').collect();
        let [name, filter, w, h] = parts[..] else {
            panic!("{key}")
        };
        let image = image::open(dir.path().join(format!("{name}.png")))
            .unwrap()
            .to_rgb8();
        let filter: Resample = serde_json::from_value(filter.into()).unwrap();
        let ours = resize(&image, w.parse().unwrap(), h.parse().unwrap(), filter);
        let pillow = Vec::<u8>::try_from(pillow.reshape([-1])).unwrap();
        assert_eq!(ours.as_raw().len(), pillow.len(), "{key}");
        let wrong = (ours.as_raw().iter().zip(&pillow))
            .filter(|(a, b)| a != b)
            .count();
        if wrong > 0 {
            differing.push(format!("{key}: {wrong} of {} bytes", pillow.len()));
        }
    }
    assert!(differing.is_empty(), "{differing:#?}");
}
