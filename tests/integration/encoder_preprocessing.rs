//! Rust image preprocessing against the Python processors (transformers' CLIP, ViT, DINOv2 and
//! SigLIP processors; torchvision's ImageNet transform) on real images: scikit-image's sample
//! photos and emoji PNGs (RGBA, grey + alpha, palette with transparency).
//!
//! Tolerance, in normalised units (after `(x / 255 - mean) / std`): mean absolute difference at
//! most 0.005 and maximum at most 0.1 (measured: means 0.0004 to 0.0035; maxima 0.008 to 0.018
//! for bilinear, one 8-bit level, and up to 0.088 for bicubic). Why not exact: both sides resample with the same
//! antialiased separable kernels (Catmull-Rom for bicubic, triangle for bilinear), but PIL and
//! torchvision round to 8 bits between the horizontal and vertical passes and clamp the bicubic
//! overshoot at each, while `image` keeps the intermediate in floats; a difference of 1/255 in a
//! pixel is 0.017 after dividing by a std of 0.229, and edges with overshoot differ by a few
//! levels more. The means stay far below the noise any encoder tolerates.

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
            assert!(
                mean <= 0.01 && max <= 0.1,
                "{processor} on {}: mean {mean}, max {max}",
                file.display()
            );
        }
    }
}
