//! `saeshare bench pipeline`: the same study on datasets of different sizes, each run in its own
//! process, to show that peak memory does not grow with the number of rows.

use std::path::Path;

use anyhow::Context;

use crate::dataset::{DatasetWriter, NewRow, WriterOptions};

/// One size's figures.
#[derive(Clone, Debug)]
pub struct MemoryFigure {
    pub rows: usize,
    pub peak_memory_mib: f64,
    pub seconds: f64,
}

/// Runs a two-encoder study (`encoder` under two names, SAEs with different seeds, compared
/// both ways; no floor baseline, which holds N x k codes by design; a mixing buffer smaller
/// than every dataset, as it is bounded by its size, not N) on synthetic datasets
/// of each of `rows`, in child processes of `exe`, and returns their peak memory.
pub fn bench_memory(
    exe: &Path,
    encoder: &Path,
    rows: &[usize],
    workdir: &Path,
) -> anyhow::Result<Vec<MemoryFigure>> {
    let mut figures = Vec::new();
    for &n in rows {
        let dir = workdir.join(format!("rows-{n}"));
        let dataset = dir.join("dataset");
        if !dataset.exists() {
            write_dataset(&dataset, n)?;
        }
        let study = dir.join("study.toml");
        std::fs::write(
            &study,
            format!(
                r#"name = "memory-{n}"
output = "out"
dataset = {{ path = "dataset" }}

[sae]
k = 16
expansion = 4
steps = 100
batch_size = 64

[fit]
buffer_rows = 4096

[baselines]
floor_permutations = 0

[encoders.a]
package = "{0}"
layers = "last"
batch_size = 64

[encoders.b]
package = "{0}"
layers = "last"
batch_size = 64
sae = {{ seed = 1 }}

[[comparisons]]
sources = ["*"]
targets = ["*"]
"#,
                encoder.display()
            ),
        )?;
        let _ = std::fs::remove_dir_all(dir.join("out"));
        let status = std::process::Command::new(exe)
            .args(["--quiet", "run"])
            .arg(&study)
            .stdout(std::process::Stdio::null())
            .status()
            .with_context(|| format!("running {}", exe.display()))?;
        anyhow::ensure!(status.success(), "the study on {n} rows failed ({status})");
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("out/last-run.json"))?)?;
        figures.push(MemoryFigure {
            rows: n,
            peak_memory_mib: summary["peak_memory_mib"].as_f64().unwrap_or(f64::NAN),
            seconds: summary["seconds"]["total"].as_f64().unwrap_or(f64::NAN),
        });
    }
    Ok(figures)
}

/// `n` rows with varied captions and small distinct images, in shards of 2048.
fn write_dataset(dir: &Path, n: usize) -> anyhow::Result<()> {
    const WORDS: [&str; 12] = [
        "red", "apple", "cat", "sleeping", "blue", "car", "on", "a", "road", "smiling", "face",
        "tree",
    ];
    let mut writer = DatasetWriter::create(dir, WriterOptions::new(2048, "bench"))?;
    for i in 0..n {
        let caption: Vec<&str> = (0..6)
            .map(|j| WORDS[(i / WORDS.len().pow(j as u32) + j) % WORDS.len()])
            .collect();
        writer.push(NewRow {
            image: tiny_png(i),
            caption: caption.join(" "),
            extra: vec![],
        })?;
    }
    writer.finish()?;
    Ok(())
}

fn tiny_png(seed: usize) -> Vec<u8> {
    let image = image::RgbImage::from_fn(8, 8, |x, y| {
        let v = (seed as u32)
            .wrapping_mul(2654435761)
            .wrapping_add(x * 31 + y * 17);
        image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    });
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("encoding a PNG in memory");
    bytes
}
