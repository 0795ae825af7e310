//! Reading a dataset: what the column projection and the image decoding cost.
//!
//! `cargo bench --bench dataset_read` writes a synthetic dataset of 64 px PNGs (like the emoji
//! dataset, 20,000 rows) and reads it three ways in one run, printing rows/s and the ratios to
//! the captions-only read: what a text encoder pays, what an image encoder pays before decoding,
//! and the decode on top. Under `cargo test` it runs on 500 rows as a smoke test.

use std::time::Instant;

use saeshare::dataset::{Dataset, DatasetWriter, NewRow, Projection, WriterOptions};

fn png(seed: u32) -> Vec<u8> {
    let image = image::RgbaImage::from_fn(64, 64, |x, y| {
        let v = (x * 31 + y * 17 + seed * 7) as u8;
        image::Rgba([
            v,
            v.wrapping_mul(3),
            (seed % 251) as u8,
            if (x + y) % 9 == 0 { 0 } else { 255 },
        ])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgba8(image)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("PNG encodes");
    bytes
}

fn time_read(dataset: &Dataset, projection: Projection, decode: bool) -> (u64, f64) {
    let start = Instant::now();
    let mut rows = 0u64;
    for shard in dataset.shards() {
        for batch in shard.reader(projection, 256).expect("shard opens") {
            let batch = batch.expect("batch reads");
            rows += batch.len() as u64;
            if decode {
                for image in &batch.images {
                    std::hint::black_box(image.decode().expect("image decodes"));
                }
            }
        }
    }
    (rows, start.elapsed().as_secs_f64())
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let rows = if benchmarking { 20_000 } else { 500 };
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("data");
    let images: Vec<Vec<u8>> = (0..64).map(png).collect();
    let mut writer =
        DatasetWriter::create(&path, WriterOptions::new(2048, "bench")).expect("writer");
    for i in 0..rows {
        writer
            .push(NewRow {
                image: images[i % images.len()].clone(),
                caption: format!("emoji number {i}: a small picture, with some keywords"),
                extra: vec![],
            })
            .expect("row");
    }
    writer.finish().expect("dataset written");
    let dataset = Dataset::open(&path).expect("dataset opens");

    let (n, captions) = time_read(&dataset, Projection::TEXT, false);
    let (_, encoded) = time_read(&dataset, Projection::ALL, false);
    let (_, decoded) = time_read(&dataset, Projection::ALL, true);
    assert_eq!(n, rows as u64);
    let rate = |s: f64| n as f64 / s;
    println!(
        "dataset_read: {n} rows of 64 px PNG, {} shards",
        dataset.shards().len()
    );
    println!(
        "  captions only        {:>10.0} rows/s  1.00x time",
        rate(captions)
    );
    println!(
        "  captions + images    {:>10.0} rows/s  {:.2}x time",
        rate(encoded),
        encoded / captions
    );
    println!(
        "  ... + decode images  {:>10.0} rows/s  {:.2}x time",
        rate(decoded),
        decoded / captions
    );
}
