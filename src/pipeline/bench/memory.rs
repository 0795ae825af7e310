//! `saeshare bench pipeline`: the same study on datasets of different sizes, each run in its own
//! process, to show that peak memory does not grow with the number of rows, pooled or tokens.

use std::path::Path;

use anyhow::Context;

use crate::dataset::{Dataset, DatasetWriter, NewRow, Projection, WriterOptions};
use crate::encoder::{text::TextTokenizer, Manifest};
use crate::pipeline::study::FitOn;

/// One size's figures.
#[derive(Clone, Debug)]
pub struct MemoryFigure {
    pub rows: usize,
    /// With `fit_on = "tokens"`: the token rows each SAE's stream held.
    pub token_rows: Option<u64>,
    pub peak_memory_mib: f64,
    pub seconds: f64,
}

/// What the SAEs of the benchmark's study are fitted on, and how long its captions are.
#[derive(Clone, Copy, Debug)]
pub struct MemoryBench {
    pub fit_on: FitOn,
    /// Words per synthetic caption: with tokens, the token rows a sample gives.
    pub caption_words: usize,
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
    bench: MemoryBench,
) -> anyhow::Result<Vec<MemoryFigure>> {
    let mut figures = Vec::new();
    let fit_on = match bench.fit_on {
        FitOn::Pooled => "pooled",
        FitOn::Tokens => "tokens",
    };
    for &n in rows {
        let dir = workdir.join(format!("rows-{n}-words-{}", bench.caption_words));
        let dataset = dir.join("dataset");
        if !dataset.exists() {
            write_dataset(&dataset, n, bench.caption_words)?;
        }
        let token_rows = match bench.fit_on {
            FitOn::Tokens => Some(count_tokens(encoder, &dataset)?),
            FitOn::Pooled => None,
        };
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
fit_on = "{fit_on}"

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
            token_rows,
            peak_memory_mib: summary["peak_memory_mib"].as_f64().unwrap_or(f64::NAN),
            seconds: summary["seconds"]["total"].as_f64().unwrap_or(f64::NAN),
        });
    }
    Ok(figures)
}

/// The non-padding tokens of every caption of `dataset` under `encoder`'s tokenizer: the token
/// rows each of its SAEs is fitted on.
fn count_tokens(encoder: &Path, dataset: &Path) -> anyhow::Result<u64> {
    let manifest = Manifest::read(encoder)?;
    let spec = (manifest.text.as_ref()).with_context(|| {
        format!(
            "{}: token rows are counted for text encoders",
            encoder.display()
        )
    })?;
    let tokenizer = TextTokenizer::load(encoder, spec)?;
    let mut total = 0u64;
    for shard in Dataset::open(dataset)?.shards() {
        for batch in shard.reader(Projection::TEXT, 1024)? {
            let tokens = tokenizer.encode(&batch?.captions, tch::Device::Cpu)?;
            total += tokens.mask.sum(tch::Kind::Int64).int64_value(&[]) as u64;
        }
    }
    Ok(total)
}

/// `n` rows with varied captions of `words` words and small distinct images, in shards of 2048.
fn write_dataset(dir: &Path, n: usize, words: usize) -> anyhow::Result<()> {
    const WORDS: [&str; 12] = [
        "red", "apple", "cat", "sleeping", "blue", "car", "on", "a", "road", "smiling", "face",
        "tree",
    ];
    let mut writer = DatasetWriter::create(dir, WriterOptions::new(2048, "bench"))?;
    for i in 0..n {
        let caption: Vec<&str> = (0..words)
            .map(|j| WORDS[(i / WORDS.len().pow(j.min(6) as u32) + j) % WORDS.len()])
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
