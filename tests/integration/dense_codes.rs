//! Codes of SAEs read out without TopK: most latents active, stored one row per sample and
//! read back as the same codes; their sums by float32 block products, checked against a
//! float64 computation written here from the definitions.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{FixedSizeListArray, Float32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use proptest::prelude::*;
use saeshare::codes::{CodeBatch, CodesMeta, CodesReader, CodesWriter, DenseValues};
use saeshare::metrics::{self, Backend, CompareOptions};
use saeshare::stats::DenseAccumulator;

use crate::stats_reference::reference_rho;

/// Samples as dense rows of `d` values (zeros inactive).
fn write_rows(path: &Path, meta: CodesMeta, rows: &[Vec<f32>]) {
    let d = meta.d_sae;
    let mut writer = CodesWriter::create(path, meta).unwrap();
    let features: Vec<u32> = (0..d).collect();
    for (id, row) in rows.iter().enumerate() {
        writer.push(id as u64 * 3, &features, row).unwrap();
    }
    writer.finish().unwrap();
}

fn layout_key(path: &Path) -> Option<String> {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let kv = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned();
    kv.unwrap_or_default()
        .into_iter()
        .find(|kv| kv.key == "saeshare.codes.layout")
        .and_then(|kv| kv.value)
}

fn read_all(path: &Path, batch: usize) -> Vec<(u64, Vec<(u32, f32)>)> {
    let mut out = Vec::new();
    for b in CodesReader::open(path).unwrap().with_batch_samples(batch) {
        let b: CodeBatch = b.unwrap();
        assert!(b.len() <= batch);
        for code in b.iter() {
            let pairs = code
                .features
                .iter()
                .copied()
                .zip(code.values.iter().copied());
            out.push((code.sample_id, pairs.collect()));
        }
    }
    out
}

fn nonzero(row: &[f32]) -> Vec<(u32, f32)> {
    let pairs = row.iter().enumerate().map(|(f, &v)| (f as u32, v));
    pairs.filter(|p| p.1 != 0.0).collect()
}

/// Rows with about `density` of their latents active, some rows all zero.
fn rows(n: usize, d: usize, density: f64, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            (0..d)
                .map(|_| {
                    let u = next();
                    if i % 11 == 5 || u >= density {
                        0.0
                    } else {
                        (u * 7.0 + next()) as f32
                    }
                })
                .collect()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Whatever the density and the batch size, what is written is what is read, and the
    /// layout is the smaller one: one row per sample past one active latent in eight.
    #[test]
    fn codes_without_k_round_trip_in_the_layout_their_density_picks(
        n in 1usize..700,
        d in 1usize..40,
        density in 0.0f64..1.0,
        batch in 1usize..300,
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codes.parquet");
        let rows = rows(n, d, density, seed);
        write_rows(&path, CodesMeta::dense("enc", "l", d as u32), &rows);
        let back = read_all(&path, batch);
        prop_assert_eq!(back.len(), n);
        for (i, (id, pairs)) in back.iter().enumerate() {
            prop_assert_eq!(*id, i as u64 * 3);
            prop_assert_eq!(pairs, &nonzero(&rows[i]));
        }
        // The layout follows the first 256 samples' density.
        let first = &rows[..n.min(256)];
        let active: usize = first.iter().map(|r| nonzero(r).len()).sum();
        let dense = active * 8 > first.len() * d;
        let key = layout_key(&path);
        prop_assert_eq!(key.as_deref(), dense.then_some("dense"));
        let reader = CodesReader::open(&path).unwrap();
        prop_assert_eq!(reader.samples(), Some(n as u64));
        prop_assert_eq!(reader.meta(), &CodesMeta::dense("enc", "l", d as u32));
    }
}

#[test]
fn half_active_codes_take_less_room_one_row_per_sample() {
    // 500 samples of 2,048 latents, half active: one row per latent would spend a sample id
    // and a feature index on each; one row per sample is the values, zeros folded away.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("codes.parquet");
    let (n, d) = (500, 2048);
    let rows = rows(n, d, 0.5, 7);
    write_rows(&path, CodesMeta::dense("enc", "l", d as u32), &rows);
    assert_eq!(layout_key(&path).as_deref(), Some("dense"));
    let bytes = std::fs::metadata(&path).unwrap().len() as f64;
    // The same codes one row per active latent (a TopK meta with k = d keeps that layout).
    let sparse = dir.path().join("sparse.parquet");
    write_rows(
        &sparse,
        CodesMeta::topk("enc", "l", d as u32, d as u32),
        &rows,
    );
    assert_eq!(layout_key(&sparse), None);
    let sparse_bytes = std::fs::metadata(&sparse).unwrap().len() as f64;
    assert!(
        bytes < 0.85 * sparse_bytes,
        "{bytes} bytes against {sparse_bytes}"
    );
    assert!(bytes < 0.7 * (n * d * 4) as f64, "{bytes} bytes");
    // A folder holding a dense shard and a sparse one reads as one stream.
    let folder = dir.path().join("shards");
    std::fs::create_dir(&folder).unwrap();
    let meta = CodesMeta::dense("enc", "l", 64);
    let all: Vec<u32> = (0..64).collect();
    let values: Vec<f32> = (1..=64).map(|v| v as f32).collect();
    let mut dense = CodesWriter::create(&folder.join("a.parquet"), meta.clone()).unwrap();
    dense.push(0, &all, &values).unwrap();
    dense.finish().unwrap();
    let mut sparse = CodesWriter::create(&folder.join("b.parquet"), meta).unwrap();
    sparse.push(5, &[2], &[9.0]).unwrap();
    sparse.finish().unwrap();
    assert_eq!(
        layout_key(&folder.join("a.parquet")).as_deref(),
        Some("dense")
    );
    assert_eq!(layout_key(&folder.join("b.parquet")), None);
    let back = read_all(&folder, 10);
    let expected_dense: Vec<(u32, f32)> = all.iter().copied().zip(values).collect();
    assert_eq!(back, [(0, expected_dense), (5, vec![(2, 9.0)])]);
}

#[test]
fn float16_values_halve_the_file_and_round_each_value_to_11_bits() {
    let dir = tempfile::tempdir().unwrap();
    let (n, d) = (1500, 256);
    let rows = rows(n, d, 0.5, 3);
    let write = |name: &str, values: DenseValues| {
        let path = dir.path().join(name);
        let mut writer = CodesWriter::create(&path, CodesMeta::dense("enc", "l", d as u32))
            .unwrap()
            .with_dense_values(values);
        let features: Vec<u32> = (0..d as u32).collect();
        for (id, row) in rows.iter().enumerate() {
            writer.push(id as u64, &features, row).unwrap();
        }
        writer.finish().unwrap();
        path
    };
    // A value float16 cannot hold is refused, naming it, rather than stored as infinity.
    let mut writer = CodesWriter::create(
        &dir.path().join("big.parquet"),
        CodesMeta::dense("enc", "l", 2),
    )
    .unwrap()
    .with_dense_values(DenseValues::Float16);
    writer.push(0, &[0, 1], &[1.0, 70000.0]).unwrap();
    let refused = writer.finish().unwrap_err().to_string();
    assert!(
        refused.contains("big.parquet") && refused.contains("beyond float16"),
        "{refused}"
    );
    let full = write("f32.parquet", DenseValues::Float32);
    let half = write("f16.parquet", DenseValues::Float16);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    assert!(
        size(&half) < 0.6 * size(&full),
        "{} against {}",
        size(&half),
        size(&full)
    );
    let back = read_all(&half, 100);
    assert_eq!(back.len(), n);
    // Within half a unit of float16's last place: 2^-11 of the value, or 2^-25 below
    // 2^-14 (its subnormals, where the tiniest values become 0).
    for (i, (id, pairs)) in back.iter().enumerate() {
        assert_eq!(*id, i as u64);
        let mut row = vec![0f32; d];
        for &(f, v) in pairs {
            row[f as usize] = v;
        }
        for (f, (v, w)) in row.iter().zip(&rows[i]).enumerate() {
            let bound = (w.abs() / 2048.0).max(2f32.powi(-25));
            assert!(
                (v - w).abs() <= bound,
                "sample {i} feature {f}: {v} for {w}"
            );
        }
    }
}

/// A dense file another tool wrote: `values` of `len` floats, the given ids and values.
fn foreign_dense(path: &Path, d_sae: u32, len: i32, ids: Vec<u64>, values: Vec<f32>) {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let list = FixedSizeListArray::new(
        item.clone(),
        len,
        Arc::new(Float32Array::from(values)),
        None,
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::UInt64, false),
        Field::new("values", DataType::FixedSizeList(item, len), false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(UInt64Array::from(ids)), Arc::new(list)],
    )
    .unwrap();
    let metadata = [
        ("saeshare.codes.version", "2".to_string()),
        ("saeshare.codes.d_sae", d_sae.to_string()),
        ("saeshare.codes.encoder", "enc".into()),
        ("saeshare.codes.layer", "l".into()),
        ("saeshare.codes.layout", "dense".into()),
    ];
    let properties = WriterProperties::builder()
        .set_key_value_metadata(Some(
            metadata
                .into_iter()
                .map(|(k, v)| KeyValue::new(k.into(), v))
                .collect(),
        ))
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema, Some(properties)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[test]
fn a_bad_dense_file_is_refused_naming_the_file_and_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let error = |path: &Path| -> String {
        match CodesReader::open(path) {
            Err(e) => e.to_string(),
            Ok(reader) => match reader.into_iter().find_map(Result::err) {
                Some(e) => e.to_string(),
                None => panic!("{} was read without an error", path.display()),
            },
        }
    };
    let short = dir.path().join("short.parquet");
    foreign_dense(&short, 4, 3, vec![0], vec![1.0, 2.0, 3.0]);
    let message = error(&short);
    assert!(
        message.contains("short.parquet") && message.contains("fixed-size list of 4"),
        "{message}"
    );

    let nan = dir.path().join("nan.parquet");
    foreign_dense(&nan, 2, 2, vec![0, 1], vec![1.0, 0.0, f32::NAN, 2.0]);
    let message = error(&nan);
    assert!(
        message.contains("nan.parquet")
            && message.contains("row 1")
            && message.contains("sample_id 1"),
        "{message}"
    );

    let twice = dir.path().join("twice.parquet");
    foreign_dense(&twice, 2, 2, vec![4, 4], vec![1.0, 0.0, 3.0, 2.0]);
    let message = error(&twice);
    assert!(
        message.contains("twice.parquet") && message.contains("second row of its sample"),
        "{message}"
    );
}

#[test]
fn dense_sums_by_float32_blocks_equal_float64_and_the_exact_sparse_sums() {
    // Codes with a large common offset, where uncentred float32 products lose digits.
    let (n, d) = (900, 24);
    let shift = |rows: Vec<Vec<f32>>| -> Vec<Vec<f32>> {
        rows.into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|v| if v != 0.0 { v + 300.0 } else { 0.0 })
                    .collect()
            })
            .collect()
    };
    let x = shift(rows(n, d, 0.6, 1));
    let y = shift(rows(n, d, 0.5, 2));
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
    write_rows(&a, CodesMeta::dense("x", "l", d as u32), &x);
    write_rows(&b, CodesMeta::dense("y", "l", d as u32), &y);
    // Every correlation in float64 from the definition (0 where a feature is constant).
    let wide = |m: &[Vec<f32>]| -> Vec<Vec<f64>> {
        m.iter()
            .map(|r| r.iter().map(|&v| f64::from(v)).collect())
            .collect()
    };
    let reference = reference_rho(&wide(&x), &wide(&y));

    let mut results = Vec::new();
    for backend in [Backend::Dense, Backend::Sparse] {
        let options = CompareOptions {
            backend,
            batch_samples: 128,
            ..CompareOptions::default()
        };
        let result = metrics::compare(
            std::slice::from_ref(&a),
            std::slice::from_ref(&b),
            &[],
            &options,
        )
        .unwrap();
        assert_eq!(result.align.samples, n as u64);
        for row in &result.mppc {
            let i = row.feature as usize;
            let best = reference[i]
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            assert!(
                (row.rho - best).abs() < 1e-6,
                "{backend:?} feature {i}: {} vs {best}",
                row.rho
            );
            let j = row.best_feature.unwrap() as usize;
            assert!(
                best - reference[i][j] < 1e-6,
                "{backend:?} feature {i}: best {j}"
            );
        }
        results.push(result.wmppc[0].wmppc.unwrap());
    }
    assert!((results[0] - results[1]).abs() < 1e-7, "{results:?}");

    // The accumulator alone, on blocks of one sample and of all: the same sums.
    let tensor = |m: &[Vec<f32>]| {
        let flat: Vec<f32> = m.iter().flatten().copied().collect();
        tch::Tensor::from_slice(&flat).view([m.len() as i64, m[0].len() as i64])
    };
    let (tx, ty) = (tensor(&x), tensor(&y));
    let mut whole = DenseAccumulator::new(d, d, tch::Device::Cpu);
    whole.add_dense(&tx, &ty).unwrap();
    let mut pieces = DenseAccumulator::new(d, d, tch::Device::Cpu);
    for r in 0..n as i64 {
        pieces
            .add_dense(&tx.narrow(0, r, 1), &ty.narrow(0, r, 1))
            .unwrap();
    }
    let (whole, pieces) = (whole.finish().unwrap(), pieces.finish().unwrap());
    assert_eq!(whole.samples(), n as u64);
    // Moments in float64 (summed in another order block by block: equal to the last bits).
    for (m, p) in [
        (whole.source(), pieces.source()),
        (whole.target(), pieces.target()),
    ] {
        assert_eq!(m.counts(), p.counts());
        for f in 0..d {
            assert!((m.sums()[f] - p.sums()[f]).abs() <= 1e-12 * m.sums()[f].abs());
            assert!((m.sums_sq()[f] - p.sums_sq()[f]).abs() <= 1e-12 * m.sums_sq()[f].abs());
        }
    }
    for i in 0..d {
        for j in 0..d {
            let exact: f64 = x
                .iter()
                .zip(&y)
                .map(|(p, q)| p[i] as f64 * q[j] as f64)
                .sum();
            for sums in [&whole, &pieces] {
                let got = sums.cross_sum(i, j);
                assert!(
                    (got - exact).abs() <= 1e-6 * exact.abs().max(1.0),
                    "({i}, {j}): {got} vs {exact}"
                );
            }
        }
    }
}

#[test]
fn bench_dense_gives_the_rate_against_the_peak_and_the_error_against_float64() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_saeshare"))
        .args([
            "bench",
            "dense",
            "--samples",
            "600",
            "--features",
            "192",
            "--block",
            "256",
        ])
        .args(["--repeats", "1"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "peak: float32 block products alone",
        "accumulator:",
        "compare end to end:",
    ] {
        let found = out
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(
            found.contains("GFLOP/s") && found.contains("% of the peak"),
            "{found}"
        );
    }
    let error: f64 = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("largest difference of a best-match correlation from float64: ")
        })
        .unwrap_or_else(|| panic!("{out}"))
        .parse()
        .unwrap();
    assert!(error < 1e-5, "{out}");
}
