//! Helpers shared by the integration tests: images, datasets and the CLI binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use parquet::arrow::ArrowWriter;
use saeshare::dataset::{DatasetWriter, NewRow, WriteSummary, WriterOptions};

/// A small PNG whose pixels depend on `seed`, so different rows have different bytes.
pub fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let image = image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([
            seed,
            (x as u8).wrapping_mul(7),
            (y as u8).wrapping_add(seed),
            255,
        ])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgba8(image)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

/// Bytes that start like a PNG and then stop: the header promises pixels that are not there.
pub fn truncated_png() -> Vec<u8> {
    let mut bytes = png(16, 16, 1);
    bytes.truncate(40);
    bytes
}

/// Writes `rows` captions (`caption {i}`) with distinct images as a dataset.
pub fn write_dataset(dir: &Path, rows: usize, shard_rows: usize) -> WriteSummary {
    let mut writer = DatasetWriter::create(dir, WriterOptions::new(shard_rows, "test")).unwrap();
    for i in 0..rows {
        writer
            .push(NewRow {
                image: png(4, 4, i as u8),
                caption: format!("caption {i}"),
                extra: vec![],
            })
            .unwrap();
    }
    writer.finish().unwrap()
}

/// Writes one record batch as a Parquet file, for files saeshare would not write itself.
/// Snappy-compressed, as pyarrow and Hugging Face `datasets` write by default.
pub fn write_parquet(path: &Path, batch: RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let schema: Arc<Schema> = batch.schema();
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut writer = ArrowWriter::try_new(file, schema, Some(properties)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// Runs the `saeshare` binary with `args`, quietly.
pub fn saeshare(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_saeshare"))
        .arg("--quiet")
        .args(args)
        .output()
        .expect("the saeshare binary runs")
}

/// `saeshare encode` of `dataset` with the package `package` into `out`, with the flags `more`
/// (`--layers`, `--tokens`...); the command's output.
pub fn encode(package: &Path, dataset: &Path, out: &Path, more: &[&str]) -> Output {
    let mut args = vec![
        "encode",
        "--encoder",
        package.to_str().unwrap(),
        "--dataset",
        dataset.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    saeshare(&args)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The Python of scripts/python-env.sh (torch, transformers, the exporter on its path), for the
/// references the tests compare against.
pub fn python() -> Command {
    let python = std::env::var("SAESHARE_PYTHON").expect(
        "SAESHARE_PYTHON names the Python of scripts/python-env.sh; run the tests with `make test`",
    );
    let mut command = Command::new(python);
    command.env(
        "PYTHONPATH",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("python"),
    );
    command
}

/// A folder for a fixture that the tests of this process share, `name` under this process's
/// folder in the target's scratch space.
///
/// Statics are never dropped, so a shared fixture cannot remove itself as a `TempDir` would:
/// each test process removes instead the folders of test processes that have ended, its own
/// pid's included (a pid is reused only once its process is gone). A fixture in `/tmp` leaked
/// 600 MB a run and once filled a CI machine's disk.
pub fn shared_fixture(name: &str) -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shared-fixtures");
        let own = std::process::id().to_string();
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let alive = name.to_str().is_some_and(|pid| {
                pid != own && pid.parse::<u32>().is_ok() && Path::new("/proc").join(pid).exists()
            });
            if !alive {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        base.join(own)
    });
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The real packages, exported once for the tests.
pub fn real_packages() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = shared_fixture("real-packages");
        let output = python()
            .args(["-m", "saeshare_export", "real", "--out"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        dir
    })
}

/// Tiny randomly initialised packages of every family (`saeshare_export.tiny`), exported once
/// for the tests.
pub fn tiny_packages() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = shared_fixture("tiny-packages");
        let output = python()
            .args(["-m", "saeshare_export.tiny"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        dir
    })
}

/// The emoji dataset in shards of 100 rows, built once for the tests: 76 shards, each emoji's
/// google row beside its twitter row.
pub fn emoji_shards() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = shared_fixture("emoji-shards").join("emoji");
        let built = saeshare(&[
            "dataset",
            "build-emoji",
            "--out",
            dir.to_str().unwrap(),
            "--shard-rows",
            "100",
        ]);
        assert!(built.status.success(), "{}", stderr(&built));
        dir
    })
}

/// A dataset folder in `dir` holding copies of the emoji shards `shards` (by index).
pub fn emoji_subset(dir: &Path, shards: &[usize]) -> PathBuf {
    let out = dir.join("emoji");
    std::fs::create_dir_all(&out).unwrap();
    for s in shards {
        let name = format!("shard-{s:06}.parquet");
        std::fs::copy(emoji_shards().join(&name), out.join(&name)).unwrap();
    }
    out
}

/// A hostfile in `dir` naming two free localhost ports, for two timely processes.
pub fn hostfile(dir: &Path) -> PathBuf {
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let path = dir.join("hosts.txt");
    std::fs::write(
        &path,
        ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}\n"))
            .collect::<String>(),
    )
    .unwrap();
    path
}
