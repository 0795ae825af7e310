//! The codes format (writer, reader, the errors a user sees) and the accumulators' algebra:
//! merging partial results equals accumulating the whole, saving and loading changes nothing.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use saeshare::codes::{CodeBatch, CodesMeta, CodesReader, CodesWriter, SparseCode};
use saeshare::stats::{CoactivationAccumulator, DenseAccumulator};

use crate::common;

type Sample = (Vec<u32>, Vec<f32>);

fn write_codes(path: &Path, meta: CodesMeta, samples: &[(u64, Sample)]) {
    let mut writer = CodesWriter::create(path, meta).unwrap();
    for (id, (f, v)) in samples {
        writer.push(*id, f, v).unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn codes_round_trip_in_bounded_batches_with_empty_samples() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.parquet");
    // 30,000 samples of 3 latents: rows span several Parquet reads, samples never split.
    let samples: Vec<(u64, Sample)> = (0..30_000u64)
        .map(|s| {
            let code = if s % 7 == 0 {
                (vec![], vec![])
            } else {
                let f = (s % 50) as u32;
                (vec![f + 2, f, f + 1], vec![1.0, s as f32, 0.5])
            };
            (s * 2, code)
        })
        .collect();
    let meta = CodesMeta::topk("enc", "l3", 64, 3).with_sae("seed1");
    write_codes(&path, meta.clone(), &samples);

    let reader = CodesReader::open(&path).unwrap().with_batch_samples(1000);
    assert_eq!(reader.meta(), &meta);
    assert_eq!(reader.samples(), Some(30_000));
    let mut seen = 0usize;
    for batch in reader {
        let batch = batch.unwrap();
        assert!(batch.len() <= 1000);
        for code in batch.iter() {
            let (id, (f, v)) = &samples[seen];
            assert_eq!(code.sample_id, *id);
            // Features come back sorted with their values.
            let mut pairs: Vec<(u32, f32)> = f.iter().copied().zip(v.iter().copied()).collect();
            pairs.sort_by_key(|p| p.0);
            let back: Vec<(u32, f32)> = code
                .features
                .iter()
                .copied()
                .zip(code.values.iter().copied())
                .collect();
            assert_eq!(back, pairs, "sample {id}");
            seen += 1;
        }
    }
    assert_eq!(seen, samples.len(), "every sample, empty ones included");
}

#[test]
fn the_writer_refuses_what_breaks_the_format_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.parquet");
    let mut writer = CodesWriter::create(&path, CodesMeta::topk("e", "l", 10, 2)).unwrap();
    writer.push(5, &[1], &[1.0]).unwrap();
    let cases: [(u64, &[u32], &[f32], &str); 5] = [
        (5, &[2], &[1.0], "strictly increasing"),
        (6, &[10], &[1.0], "out of range"),
        (6, &[1, 1], &[1.0, 2.0], "twice"),
        (6, &[1, 2, 3], &[1.0, 2.0, 3.0], "more than k = 2"),
        (6, &[1], &[f32::NAN], "value NaN"),
    ];
    for (id, f, v, expected) in cases {
        let err = writer.push(id, f, v).unwrap_err().to_string();
        assert!(err.contains(expected) && err.contains("c.parquet"), "{err}");
    }
    assert!(!path.exists(), "nothing appears before finish");
    writer.finish().unwrap();
    let err = CodesWriter::create(&path, CodesMeta::topk("e", "l", 10, 2))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn the_reader_names_the_file_and_row_of_a_bad_row() {
    use arrow::array::{ArrayRef, Float32Array, RecordBatch, UInt32Array, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other-tool.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::UInt64, false),
        Field::new("feature", DataType::UInt32, true),
        Field::new("value", DataType::Float32, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(vec![1, 2, 1])),
        Arc::new(UInt32Array::from(vec![0, 1, 2])),
        Arc::new(Float32Array::from(vec![1.0, 1.0, 1.0])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(vec![
            parquet::file::metadata::KeyValue::new(
                "saeshare.codes.version".into(),
                "1".to_string(),
            ),
            parquet::file::metadata::KeyValue::new("saeshare.codes.d_sae".into(), "4".to_string()),
            parquet::file::metadata::KeyValue::new(
                "saeshare.codes.encoder".into(),
                "e".to_string(),
            ),
            parquet::file::metadata::KeyValue::new("saeshare.codes.layer".into(), "l".to_string()),
        ]))
        .build();
    let file = std::fs::File::create(&path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let reader = CodesReader::open(&path).unwrap();
    assert_eq!(reader.samples(), None);
    let err = reader
        .map(|b| b.map(|_| ()))
        .collect::<Result<Vec<()>, _>>()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("other-tool.parquet") && err.contains("row 2") && err.contains("sorted"),
        "{err}"
    );
}

/// Samples of a `d_a x d_b` comparison with dyadic values, whose f64 sums are exact in any
/// order: merged results must then equal the whole bit for bit.
fn samples(d_a: u32, d_b: u32) -> impl Strategy<Value = Vec<(Sample, Sample)>> {
    let code = |d: u32| {
        proptest::collection::btree_map(0..d, (1..64u8).prop_map(|v| v as f32 / 8.0), 0..5)
            .prop_map(|m| m.into_iter().unzip::<u32, f32, Vec<u32>, Vec<f32>>())
    };
    proptest::collection::vec((code(d_a), code(d_b)), 0..60)
}

fn accumulate(samples: &[(Sample, Sample)], d_a: usize, d_b: usize) -> CoactivationAccumulator {
    let mut acc = CoactivationAccumulator::new(d_a, d_b);
    for (n, ((fa, va), (fb, vb))) in samples.iter().enumerate() {
        let a = SparseCode {
            sample_id: n as u64,
            features: fa,
            values: va,
        };
        let b = SparseCode {
            sample_id: n as u64,
            features: fb,
            values: vb,
        };
        acc.add(&a, &b);
    }
    acc
}

fn assert_same(x: &CoactivationAccumulator, y: &CoactivationAccumulator) {
    assert_eq!(x.samples(), y.samples());
    assert_eq!(x.source(), y.source());
    assert_eq!(x.target(), y.target());
    for i in 0..x.source().d() {
        for j in 0..x.target().d() {
            assert_eq!(x.cross_sum(i, j), y.cross_sum(i, j), "pair ({i}, {j})");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn merging_any_split_in_any_grouping_equals_the_whole(
        data in samples(9, 7),
        cuts in proptest::collection::vec(0usize..60, 0..5),
        dense_parts in proptest::collection::vec(any::<bool>(), 6),
        right_to_left in any::<bool>(),
    ) {
        let whole = accumulate(&data, 9, 7);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
        cuts.push(0);
        cuts.push(data.len());
        cuts.sort_unstable();
        let mut parts: Vec<CoactivationAccumulator> = cuts
            .windows(2)
            .zip(&dense_parts)
            .map(|(w, &dense)| {
                let mut acc = accumulate(&data[w[0]..w[1]], 9, 7);
                if dense { acc.densify(); }
                acc
            })
            .collect();
        if right_to_left { parts.reverse(); }
        // ((p0 + p1) + p2) + ... in one order, or the reverse grouping from the other end.
        let mut merged = parts.remove(0);
        for part in &parts {
            merged.merge(part).unwrap();
        }
        assert_same(&merged, &whole);
    }

    #[test]
    fn save_then_load_gives_the_same_accumulator(data in samples(6, 11), dense in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acc.zst");
        let mut acc = accumulate(&data, 6, 11);
        if dense { acc.densify(); }
        acc.save(&path).unwrap();
        let back = CoactivationAccumulator::load(&path).unwrap();
        prop_assert_eq!(back.is_dense(), acc.is_dense());
        prop_assert_eq!(back.pairs(), acc.pairs());
        assert_same(&back, &acc);
    }
}

#[test]
fn merging_different_shapes_and_loading_garbage_are_errors() {
    let mut a = CoactivationAccumulator::new(3, 4);
    let err = a
        .merge(&CoactivationAccumulator::new(4, 3))
        .unwrap_err()
        .to_string();
    assert!(err.contains("4x3") && err.contains("3x4"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.zst");
    std::fs::write(
        &path,
        zstd::encode_all(&b"not an accumulator at all"[..], 3).unwrap(),
    )
    .unwrap();
    let err = CoactivationAccumulator::load(&path)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("bad.zst") && err.contains("not a saeshare accumulator"),
        "{err}"
    );
}

#[test]
fn the_dense_backend_gives_the_sums_of_the_sparse_one() {
    let mut a = CodeBatch::new();
    let mut b = CodeBatch::new();
    let data: Vec<(Sample, Sample)> = (0..40u32)
        .map(|n| {
            let fa: Vec<u32> = (0..5).filter(|i| (n + i) % 3 == 0).collect();
            let fb: Vec<u32> = (0..4).filter(|j| (n * j) % 5 == 1).collect();
            let va = fa.iter().map(|&i| (n + i) as f32 / 4.0).collect();
            let vb = fb.iter().map(|&j| (n * j % 7) as f32 + 0.5).collect();
            ((fa, va), (fb, vb))
        })
        .collect();
    for (n, ((fa, va), (fb, vb))) in data.iter().enumerate() {
        a.push(SparseCode {
            sample_id: n as u64,
            features: fa,
            values: va,
        });
        b.push(SparseCode {
            sample_id: n as u64,
            features: fb,
            values: vb,
        });
    }
    let mut dense = DenseAccumulator::new(5, 4, tch::Device::Cpu);
    dense.add_batch(&a, &b).unwrap();
    let dense = dense.finish().unwrap();
    assert!(dense.is_dense());
    // Moments exactly; cross sums from float32 products of centred blocks, to float32's
    // rounding (tests/integration/dense_codes.rs holds them to float64 at scale).
    let exact = accumulate(&data, 5, 4);
    assert_eq!(dense.samples(), exact.samples());
    assert_eq!(dense.source(), exact.source());
    assert_eq!(dense.target(), exact.target());
    for i in 0..5 {
        for j in 0..4 {
            let (got, want) = (dense.cross_sum(i, j), exact.cross_sum(i, j));
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "({i}, {j}): {got} vs {want}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The dense layout (batched updates grouped by row) holds the same sums as the sparse map,
    /// and MPPC from either layout is the same, pairs that never fired together included.
    #[test]
    fn dense_and_sparse_layouts_agree(data in samples(8, 12)) {
        let (mut a, mut b) = (CodeBatch::new(), CodeBatch::new());
        for (n, ((fa, va), (fb, vb))) in data.iter().enumerate() {
            a.push(SparseCode { sample_id: n as u64, features: fa, values: va });
            b.push(SparseCode { sample_id: n as u64, features: fb, values: vb });
        }
        let mut sparse = CoactivationAccumulator::new(8, 12);
        sparse.add_batch(&a, &b);
        let mut dense = CoactivationAccumulator::new(8, 12);
        dense.densify();
        dense.add_batch(&a, &b);
        prop_assert!(!sparse.is_dense() && dense.is_dense());
        assert_same(&sparse, &dense);
        let (ms, md) = (saeshare::metrics::mppc(&sparse), saeshare::metrics::mppc(&dense));
        for (i, (s, d)) in ms.iter().zip(&md).enumerate() {
            prop_assert!((s.rho - d.rho).abs() < 1e-12, "feature {}: {:?} vs {:?}", i, s, d);
            prop_assert_eq!(s.weight, d.weight);
            prop_assert_eq!(s.best.is_some(), d.best.is_some());
        }
    }
}

#[test]
fn files_from_other_tools_read_with_wider_types_and_any_column_order() {
    use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::file::metadata::KeyValue;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pandas.parquet");
    // As pandas writes it: int64 and float64, value first, an extra column.
    let schema = Arc::new(Schema::new(vec![
        Field::new("value", DataType::Float64, true),
        Field::new("note", DataType::Utf8, true),
        Field::new("sample_id", DataType::Int64, false),
        Field::new("feature", DataType::Int64, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from(vec![Some(0.5), None, Some(2.0)])),
        Arc::new(StringArray::from(vec!["a", "b", "c"])),
        Arc::new(Int64Array::from(vec![4, 6, 9])),
        Arc::new(Int64Array::from(vec![Some(3), None, Some(1)])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let kv = |k: &str, v: &str| KeyValue::new(k.to_string(), v.to_string());
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(vec![
            kv("saeshare.codes.version", "1"),
            kv("saeshare.codes.d_sae", "5"),
            kv("saeshare.codes.encoder", "e"),
            kv("saeshare.codes.layer", "l"),
        ]))
        .build();
    let file = std::fs::File::create(&path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let batches: Vec<CodeBatch> = CodesReader::open(&path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let codes: Vec<(u64, Vec<u32>, Vec<f32>)> = batches
        .iter()
        .flat_map(|b| {
            b.iter()
                .map(|c| (c.sample_id, c.features.to_vec(), c.values.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            (4, vec![3], vec![0.5]),
            (6, vec![], vec![]),
            (9, vec![1], vec![2.0])
        ]
    );
}

/// Other tools see a file's saeshare keys where they look: pyarrow's `read_table().schema
/// .metadata` (and `read_metadata().metadata`), pandas' `DataFrame.attrs`; keys known only at
/// the end (a codes file's sample count) included.
#[test]
fn pyarrow_and_pandas_see_the_saeshare_keys_of_codes_and_activation_files() {
    use saeshare::activations::{ActivationWriter, ActivationsMeta, LayerWidth};
    let dir = tempfile::tempdir().unwrap();
    let codes = dir.path().join("codes.parquet");
    let samples: Vec<(u64, Sample)> = (0..5u64)
        .map(|s| (s, (vec![s as u32], vec![1.0 + s as f32])))
        .collect();
    write_codes(&codes, CodesMeta::topk("enc", "l3", 64, 1), &samples);
    let activations = dir.path().join("activations.parquet");
    let meta = ActivationsMeta {
        encoder: "enc".into(),
        pooling: "mean".into(),
        layers: vec![LayerWidth {
            name: "l3".into(),
            width: 2,
        }],
        input_size: Some([96, 96]),
        precision: Default::default(),
    };
    let mut writer = ActivationWriter::create(&activations, meta).unwrap();
    writer.push(0, "l3", &[1.0, 2.0]).unwrap();
    writer.finish().unwrap();

    let script = r#"
import json, sys
import pandas as pd
import pyarrow.parquet as pq
for path in sys.argv[1:]:
    table = pq.read_table(path)
    schema = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    footer = {k.decode(): v.decode() for k, v in pq.read_metadata(path).metadata.items()}
    attrs = pd.read_parquet(path).attrs
    print(json.dumps({"rows": table.num_rows, "schema": schema, "footer": footer, "attrs": attrs}))
"#;
    let output = common::python()
        .arg("-c")
        .arg(script)
        .arg(&codes)
        .arg(&activations)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    let lines: Vec<serde_json::Value> = common::stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let codes_seen = &lines[0];
    assert_eq!(codes_seen["rows"], 5);
    for place in ["schema", "footer", "attrs"] {
        let keys = &codes_seen[place];
        assert_eq!(keys["saeshare.codes.encoder"], "enc", "{place}: {keys}");
        assert_eq!(keys["saeshare.codes.layer"], "l3", "{place}");
        assert_eq!(keys["saeshare.codes.d_sae"], "64", "{place}");
        assert_eq!(keys["saeshare.codes.k"], "1", "{place}");
        assert_eq!(keys["saeshare.codes.samples"], "5", "{place}");
    }
    let activations_seen = &lines[1];
    for place in ["schema", "footer", "attrs"] {
        let keys = &activations_seen[place];
        let meta: serde_json::Value =
            serde_json::from_str(keys["saeshare.activations.meta"].as_str().unwrap()).unwrap();
        assert_eq!(meta["encoder"], "enc", "{place}");
        assert_eq!(meta["layers"][0]["width"], 2, "{place}");
        assert_eq!(meta["input_size"], serde_json::json!([96, 96]), "{place}");
        assert_eq!(meta["precision"], "float32", "{place}");
    }
    // saeshare still reads both.
    let reader = CodesReader::open(&codes).unwrap();
    assert_eq!(reader.samples(), Some(5));
}
