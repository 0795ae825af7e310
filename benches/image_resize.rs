//! Resizing an image as the encoders' processors do: saeshare's Pillow-exact fixed-point
//! resampler against the `image` crate's floating-point resize (what saeshare used before, and
//! the usual choice in Rust), side by side in one run on the same images.
//!
//! `cargo bench --bench image_resize` times three shapes an encoder meets: a 640 x 480 photo to
//! CLIP's short side of 224 (bicubic), a 512 x 512 image to ViT's 224 x 224 (bilinear), and a
//! 64 px emoji up to 96 px (bicubic). Under `cargo test` it runs each once as a smoke test.

use std::time::Instant;

use image::imageops::FilterType;
use image::RgbImage;
use saeshare::encoder::resample::{resize, Resample};

/// A photo-like image: smooth gradients with edges and a little noise.
fn photo(width: u32, height: u32) -> RgbImage {
    let mut state = 0x2545_f491_u32;
    RgbImage::from_fn(width, height, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let noise = (state % 9) as i32 - 4;
        let edge = if (x / 37 + y / 23) % 2 == 0 { 60 } else { 0 };
        let v = |base: u32| (base as i32 + edge + noise).clamp(0, 255) as u8;
        image::Rgb([
            v(x * 200 / width),
            v(y * 200 / height),
            v((x + y) % 256 / 2),
        ])
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let repeats = if benchmarking { 15 } else { 1 };
    let cases = [
        (
            "photo 640x480 -> 298x224, bicubic",
            (640, 480),
            (298, 224),
            Resample::Bicubic,
        ),
        (
            "image 512x512 -> 224x224, bilinear",
            (512, 512),
            (224, 224),
            Resample::Bilinear,
        ),
        (
            "emoji 64x64 -> 96x96, bicubic",
            (64, 64),
            (96, 96),
            Resample::Bicubic,
        ),
    ];
    println!("image_resize: median of {repeats} rounds, images a second");
    for (name, (w, h), (ow, oh), filter) in cases {
        let images: Vec<RgbImage> = (0..8).map(|i| photo(w + i, h)).collect();
        let float_filter = match filter {
            Resample::Bilinear => FilterType::Triangle,
            _ => FilterType::CatmullRom,
        };
        let (mut exact, mut float) = (Vec::new(), Vec::new());
        // Interleaved, so that load from elsewhere on a shared machine hits both alike.
        for _ in 0..repeats {
            let start = Instant::now();
            let ours: Vec<RgbImage> = images.iter().map(|i| resize(i, ow, oh, filter)).collect();
            exact.push(start.elapsed().as_secs_f64() / images.len() as f64);
            let start = Instant::now();
            let theirs: Vec<RgbImage> = (images.iter())
                .map(|i| image::imageops::resize(i, ow, oh, float_filter))
                .collect();
            float.push(start.elapsed().as_secs_f64() / images.len() as f64);
            // Same filter, other rounding: a few 8-bit levels apart at most, at edges.
            for (a, b) in ours.iter().zip(&theirs) {
                let worst = (a.as_raw().iter().zip(b.as_raw()))
                    .map(|(&x, &y)| x.abs_diff(y))
                    .max()
                    .unwrap_or(0);
                assert!(
                    worst <= 8,
                    "{name}: the two resizers differ by {worst} levels"
                );
            }
        }
        let (exact, float) = (median(exact), median(float));
        println!("  {name}");
        println!("    Pillow-exact (saeshare)  {:>9.0} images/s", 1.0 / exact);
        println!("    image crate (f32)        {:>9.0} images/s", 1.0 / float);
        println!("    ratio                    {:>9.2}x", float / exact);
    }
}
