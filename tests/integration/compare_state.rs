//! `compare --state`: comparing shards 1 and 2 at once equals comparing shard 1, then adding
//! shard 2 through the saved accumulators; and the `features` table holds each feature's
//! count, sum and sum of squares, checked against sums taken here.

use std::path::{Path, PathBuf};
use std::process::Command;

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, UInt64Type};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use saeshare::codes::{CodesMeta, CodesWriter};
use saeshare::metrics::{self, CompareOptions, Comparison};

const D: u32 = 10;
const SAMPLES: u64 = 300;

/// The code of `sample` at (encoder, layer): a function of the sample alone, so a shard file
/// holds exactly the rows of the full file. Model B copies some of A's features.
fn code(encoder: &str, layer: u64, sample: u64) -> Vec<(u32, f32)> {
    let mut rng = ChaCha8Rng::seed_from_u64(sample);
    let shared: Vec<(u32, f32)> = (0..2)
        .map(|_| {
            (
                rng.random_range(0..D - 1),
                rng.random_range(1..=8) as f32 / 4.0,
            )
        })
        .collect();
    let mut own = ChaCha8Rng::seed_from_u64(sample * 31 + layer * 7 + encoder.len() as u64);
    let mut out: Vec<(u32, f32)> = shared
        .into_iter()
        .filter(|_| encoder == "A" || own.random_bool(0.8))
        .map(|(f, v)| ((f + layer as u32) % (D - 1), v))
        .collect();
    out.push((
        own.random_range(0..D - 1),
        own.random_range(1..=8) as f32 / 8.0,
    ));
    out.sort_by_key(|p| p.0);
    out.dedup_by_key(|p| p.0); // feature D - 1 never fires: a dead feature
    out
}

fn write(dir: &Path, encoder: &str, layer: u64, samples: std::ops::Range<u64>) -> PathBuf {
    let name = format!(
        "{encoder}-l{layer}-{}-{}.parquet",
        samples.start, samples.end
    );
    let path = dir.join(name);
    let meta = CodesMeta::topk(encoder, format!("l{layer}"), D, 4);
    let mut writer = CodesWriter::create(&path, meta).unwrap();
    for s in samples {
        let (f, v): (Vec<u32>, Vec<f32>) = code(encoder, layer, s).into_iter().unzip();
        writer.push(s, &f, &v).unwrap();
    }
    writer.finish().unwrap();
    path
}

/// Source A (two layers) and target B (two layers) over `samples`.
fn files(dir: &Path, samples: std::ops::Range<u64>) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let side = |e| (0..2).map(|l| write(dir, e, l, samples.clone())).collect();
    (side("A"), side("B"))
}

fn run(files: &(Vec<PathBuf>, Vec<PathBuf>), state: Option<&Path>) -> Comparison {
    let options = CompareOptions {
        state: state.map(Path::to_path_buf),
        batch_samples: 64,
        ..CompareOptions::default()
    };
    metrics::compare(&files.0, &files.1, &[], &options).unwrap()
}

fn close(x: f64, y: f64, what: &str) {
    assert!(
        (x - y).abs() <= 1e-9 * (1.0 + x.abs()),
        "{what}: {x} vs {y}"
    );
}

fn assert_same(x: &Comparison, y: &Comparison) {
    assert_eq!(x.features.len(), y.features.len());
    for (a, b) in x.features.iter().zip(&y.features) {
        assert_eq!(
            (&a.encoder, &a.layer, a.feature),
            (&b.encoder, &b.layer, b.feature)
        );
        assert_eq!((a.count, a.samples), (b.count, b.samples));
        close(a.sum, b.sum, "sum");
        close(a.sum_sq, b.sum_sq, "sum_sq");
    }
    assert_eq!(x.mppc.len(), y.mppc.len());
    for (a, b) in x.mppc.iter().zip(&y.mppc) {
        let key = |r: &metrics::MppcRow| {
            let layers = (r.source_layer.clone(), r.target_layer.clone());
            (r.source.clone(), r.target.clone(), layers, r.feature)
        };
        assert_eq!(key(a), key(b));
        close(a.rho, b.rho, "rho");
        close(a.weight, b.weight, "weight");
    }
    assert_eq!(x.wmppc.len(), y.wmppc.len());
    for (a, b) in x.wmppc.iter().zip(&y.wmppc) {
        assert_eq!(
            (&a.source_layer, &a.target_layer),
            (&b.source_layer, &b.target_layer)
        );
        assert_eq!((a.aggregation, a.samples), (b.aggregation, b.samples));
        close(a.wmppc.unwrap(), b.wmppc.unwrap(), "wmppc");
    }
}

#[test]
fn shards_added_through_the_state_equal_one_run_over_all() {
    let dir = tempfile::tempdir().unwrap();
    let all = files(dir.path(), 0..SAMPLES);
    let first = files(dir.path(), 0..120);
    let second = files(dir.path(), 120..SAMPLES);
    let state = dir.path().join("state");

    let whole = run(&all, None);
    let partial = run(&first, Some(&state));
    assert_eq!(partial.wmppc[0].samples, 120);
    let merged = run(&second, Some(&state));
    assert_eq!(merged.wmppc[0].samples, SAMPLES);
    assert_same(&merged, &whole);

    // The features table against sums taken here, feature by feature.
    for row in &whole.features {
        let layer: u64 = row.layer[1..].parse().unwrap();
        let (mut count, mut sum, mut sum_sq) = (0, 0.0, 0.0);
        for s in 0..SAMPLES {
            for (f, v) in code(&row.encoder, layer, s) {
                if f == row.feature {
                    count += 1;
                    sum += v as f64;
                    sum_sq += (v * v) as f64;
                }
            }
        }
        assert_eq!(row.count, count, "{row:?}");
        close(row.sum, sum, "sum");
        close(row.sum_sq, sum_sq, "sum_sq");
    }
    assert_eq!(whole.features.len(), 4 * D as usize);
    assert!(
        whole.features.iter().any(|r| r.count == 0),
        "a dead feature"
    );

    // A shard given twice would count twice: refused, and the state is left as it was.
    let options = CompareOptions {
        state: Some(state.clone()),
        ..CompareOptions::default()
    };
    let again = metrics::compare(&second.0, &second.1, &[], &options).unwrap_err();
    assert!(again.to_string().contains("already added"), "{again}");
    // Other layers than the state's: refused, naming both.
    let other = metrics::compare(&second.0[..1], &second.1, &[], &options).unwrap_err();
    assert!(other.to_string().contains("same layers"), "{other}");
    // Only the current generation's files remain: one `state-N` folder, its 4 accumulators.
    assert_eq!(coact_files(&state), (1, 4));
}

/// The `state-N` folders in a state folder, and the accumulator files in them.
fn coact_files(state: &Path) -> (usize, usize) {
    let generations: Vec<PathBuf> = std::fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("state-")
        })
        .collect();
    let coact = generations
        .iter()
        .flat_map(|g| std::fs::read_dir(g).unwrap())
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("coact".as_ref()))
        .count();
    (generations.len(), coact)
}

#[test]
fn a_state_of_the_earlier_layout_is_added_to_and_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let all = files(dir.path(), 0..SAMPLES);
    let first = files(dir.path(), 0..120);
    let second = files(dir.path(), 120..SAMPLES);
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();

    // The earlier layout, by hand: state.json (version 1) and g<g>-<a>-<b>.coact in the folder.
    let (sums, _) =
        metrics::accumulate_files(&first.0, &first.1, &CompareOptions::default()).unwrap();
    for (a, row) in sums.iter().enumerate() {
        for (b, acc) in row.iter().enumerate() {
            acc.save(&state.join(format!("g3-{a}-{b}.coact"))).unwrap();
        }
    }
    let inputs: Vec<PathBuf> = first
        .0
        .iter()
        .chain(&first.1)
        .map(|p| p.canonicalize().unwrap())
        .collect();
    let layers = serde_json::json!([["l0", D], ["l1", D]]);
    let manifest = serde_json::json!({
        "version": 1,
        "generation": 3,
        "source": {"encoder": "A", "layers": layers},
        "target": {"encoder": "B", "layers": layers},
        "inputs": inputs,
    });
    std::fs::write(state.join("state.json"), manifest.to_string()).unwrap();
    // Not the state's: stays.
    std::fs::write(state.join("g9-0-0.coact"), b"mine").unwrap();

    let merged = run(&second, Some(&state));
    assert_eq!(merged.wmppc[0].samples, SAMPLES);
    assert_same(&merged, &run(&all, None));

    // The new layout, with the old inputs and the new; the old files it read are gone.
    assert!(!state.join("state.json").exists());
    assert!(!state.join("g3-0-0.coact").exists() && !state.join("g3-1-1.coact").exists());
    assert!(state.join("g9-0-0.coact").is_file());
    assert_eq!(coact_files(&state), (1, 4));
    let saved = saeshare::stats::SavedSums::latest(&state).unwrap();
    assert_eq!((saved.shards.len(), saved.samples), (8, SAMPLES));
    assert!(saved.problem(&state).is_none());

    // The inputs of the old state are still known: adding one again is refused.
    let options = CompareOptions {
        state: Some(state.clone()),
        ..CompareOptions::default()
    };
    let again = metrics::compare(&first.0, &first.1, &[], &options).unwrap_err();
    assert!(again.to_string().contains("already added"), "{again}");
}

#[test]
fn the_compare_command_writes_the_features_table_and_keeps_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let first = files(dir.path(), 0..120);
    let second = files(dir.path(), 120..SAMPLES);
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let p = |p: &Path| p.to_str().unwrap().to_string();
    for shard in [&first, &second] {
        let mut args = vec!["--quiet".to_string(), "compare".into(), "--source".into()];
        args.extend(shard.0.iter().map(|f| p(f)));
        args.push("--target".into());
        args.extend(shard.1.iter().map(|f| p(f)));
        args.extend(["--state".into(), p(&state), "--out".into(), p(&out)]);
        let run = Command::new(env!("CARGO_BIN_EXE_saeshare"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let file = std::fs::File::open(out.join("features.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let (mut rows, mut total) = (0, 0.0);
    for batch in reader {
        let batch = batch.unwrap();
        let samples = batch.column_by_name("samples").unwrap();
        assert!(samples
            .as_primitive::<UInt64Type>()
            .values()
            .iter()
            .all(|&n| n == SAMPLES));
        let sum = batch.column_by_name("sum").unwrap();
        total += sum
            .as_primitive::<Float64Type>()
            .values()
            .iter()
            .sum::<f64>();
        rows += batch.num_rows();
    }
    assert_eq!(rows, 4 * D as usize);
    let expected: f64 = ["A", "B"]
        .iter()
        .flat_map(|e| (0..2).map(move |l| (e, l)))
        .map(|(e, l)| {
            (0..SAMPLES)
                .flat_map(|s| code(e, l, s))
                .map(|(_, v)| v as f64)
                .sum::<f64>()
        })
        .sum();
    close(total, expected, "sum of all features");
}

#[test]
fn a_folder_of_shard_files_reads_as_one_layer_in_sample_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let whole = run(&files(dir.path(), 0..SAMPLES), None);
    // Name order (0-90, 200-300, 90-200) is not sample order: the folder is read by first id.
    let folder = |encoder: &str, layer: u64| {
        let folder = dir.path().join(format!("{encoder}-l{layer}"));
        std::fs::create_dir(&folder).unwrap();
        for range in [0..90, 90..200, 200..SAMPLES] {
            write(&folder, encoder, layer, range);
        }
        folder
    };
    let folders = (
        vec![folder("A", 0), folder("A", 1)],
        vec![folder("B", 0), folder("B", 1)],
    );
    assert_same(&run(&folders, None), &whole);

    // Overlapping shards would count a sample twice: an error naming both files.
    write(&folders.1[0], "B", 0, 250..260);
    let options = CompareOptions::default();
    let error = metrics::compare(&folders.0, &folders.1, &[], &options).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("disjoint ranges") && text.contains("B-l0-250-260"),
        "{text}"
    );
}
