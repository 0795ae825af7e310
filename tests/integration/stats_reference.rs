//! saeshare's statistics against an independent dense float64 implementation written here:
//! plain Pearson over all N samples with zeros for inactive features, on random sparse codes with
//! dead features, constant features, features that never fire together, empty samples and
//! negatively correlated best matches. Everything must agree within 1e-5.

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use saeshare::codes::{CodesMeta, CodesWriter};
use saeshare::metrics::{self, tables, Aggregation, Backend, CompareOptions, MppcRow};

const TOL: f64 = 1e-5;

/// Dense codes of one layer: `x[n][i]`.
struct Layer {
    encoder: &'static str,
    layer: &'static str,
    x: Vec<Vec<f64>>,
}

/// Source codes: features 0-1 dead, 2 constant, 3 fires on even samples only, 4 only on samples
/// where the "quiet" target has no feature (all its correlations negative), the rest random with
/// some copied into the targets (features 5-11 into both beta and quiet) so that strong positive
/// matches exist; the second source layer is unrelated to the first.
fn models(n: usize, seed: u64) -> (Vec<Layer>, Vec<Layer>, Layer) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (d_a, d_b) = (24, 20);
    let mut a0 = vec![vec![0.0; d_a]; n];
    let mut a1 = vec![vec![0.0; d_a]; n];
    let mut b0 = vec![vec![0.0; d_b]; n];
    let mut b1 = vec![vec![0.0; d_b]; n];
    let mut quiet = vec![vec![0.0; 16]; n];
    let value = |rng: &mut ChaCha8Rng| (rng.random_range(1..=64) as f32 / 16.0) as f64;
    for s in 0..n {
        a0[s][2] = 0.75;
        if s % 2 == 0 {
            a0[s][3] = value(&mut rng);
        }
        if s % 5 == 0 {
            a0[s][4] = value(&mut rng);
            a1[s][4] = value(&mut rng);
        }
        for _ in 0..3 {
            let i = rng.random_range(5..d_a);
            let v = value(&mut rng);
            a0[s][i] = v;
            // Copies with noise give strong positive matches, sometimes a layer away.
            let j = i % d_b;
            if rng.random_bool(0.7) {
                b0[s][j] = v + value(&mut rng) * 0.1;
            }
            if rng.random_bool(0.3) {
                b1[s][(j + 3) % d_b] = v;
            }
            if s % 5 != 0 && i < 12 {
                quiet[s][i] = v;
            }
            let unrelated = rng.random_range(5..d_a);
            a1[s][unrelated] = value(&mut rng);
        }
        // Target features: 0 dead, 1 constant, 2 only on odd samples (never with source 3).
        b0[s][1] = 1.5;
        if s % 2 == 1 {
            b0[s][2] = value(&mut rng);
        }
        for _ in 0..2 {
            let j = rng.random_range(3..d_b);
            b0[s][j] = value(&mut rng);
            let j = rng.random_range(0..d_b);
            b1[s][j] = value(&mut rng);
        }
        if s % 5 != 0 {
            for _ in 0..3 {
                quiet[s][rng.random_range(0..16)] = value(&mut rng);
            }
        }
    }
    let layer = |encoder, layer, x| Layer { encoder, layer, x };
    (
        vec![layer("alpha", "l0", a0), layer("alpha", "l1", a1)],
        vec![layer("beta", "l0", b0), layer("beta", "l1", b1)],
        layer("quiet", "final", quiet),
    )
}

/// Writes a layer with the crate's writer; `skip` leaves samples out.
fn write(dir: &Path, layer: &Layer, k: u32, skip: &[u64]) -> PathBuf {
    let path = dir.join(format!("{}-{}.parquet", layer.encoder, layer.layer));
    let meta = CodesMeta::topk(layer.encoder, layer.layer, layer.x[0].len() as u32, k);
    let mut writer = CodesWriter::create(&path, meta).unwrap();
    for (s, row) in layer.x.iter().enumerate() {
        // Sample ids with gaps: alignment is by id, never by position.
        let id = 3 * s as u64 + 7;
        if skip.contains(&id) {
            continue;
        }
        let (f, v): (Vec<u32>, Vec<f32>) = row
            .iter()
            .enumerate()
            .filter(|(_, &v)| v != 0.0)
            .map(|(i, &v)| (i as u32, v as f32))
            .rev() // any order is accepted
            .unzip();
        writer.push(id, &f, &v).unwrap();
    }
    writer.finish().unwrap();
    path
}

/// The reference: centered Pearson over all samples, `rho := 0` for dead or constant features.
fn pearson_columns(x: &[Vec<f64>]) -> Vec<Option<Vec<f64>>> {
    let (n, d) = (x.len(), x[0].len());
    (0..d)
        .map(|i| {
            let mean = x.iter().map(|r| r[i]).sum::<f64>() / n as f64;
            let centered: Vec<f64> = x.iter().map(|r| r[i] - mean).collect();
            let norm = centered.iter().map(|c| c * c).sum::<f64>().sqrt();
            let rms = (x.iter().map(|r| r[i] * r[i]).sum::<f64>() / n as f64).sqrt();
            (norm > 1e-9 * rms * (n as f64).sqrt() && rms > 0.0)
                .then(|| centered.iter().map(|c| c / norm).collect())
        })
        .collect()
}

/// `rho[i][j]` of every source feature with every target feature.
pub(crate) fn reference_rho(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let (za, zb) = (pearson_columns(a), pearson_columns(b));
    za.iter()
        .map(|zi| {
            zb.iter()
                .map(|zj| match (zi, zj) {
                    (Some(x), Some(y)) => x.iter().zip(y).map(|(p, q)| p * q).sum(),
                    _ => 0.0,
                })
                .collect()
        })
        .collect()
}

/// Reference MPPC (over the union of the target layers) and weight of every source feature.
fn reference_mppc(a: &[Vec<f64>], targets: &[&Layer]) -> Vec<(f64, f64)> {
    let live = pearson_columns(a);
    let rhos: Vec<Vec<Vec<f64>>> = targets.iter().map(|t| reference_rho(a, &t.x)).collect();
    (0..a[0].len())
        .map(|i| {
            if live[i].is_none() {
                return (0.0, 0.0);
            }
            let best = rhos
                .iter()
                .flat_map(|r| r[i].iter().copied())
                .fold(f64::NEG_INFINITY, f64::max);
            (best, a.iter().map(|r| r[i]).sum())
        })
        .collect()
}

fn reference_wmppc(m: &[(f64, f64)]) -> f64 {
    m.iter().map(|(r, w)| r * w).sum::<f64>() / m.iter().map(|(_, w)| w).sum::<f64>()
}

fn close(x: f64, y: f64, what: &str) {
    assert!((x - y).abs() <= TOL, "{what}: {x} vs reference {y}");
}

/// Checks every mppc row of (source layer, target layer) against the reference, including that
/// the named best feature really reaches the max.
fn check_rows(rows: &[MppcRow], source: &Layer, target: &Layer, source_name: &str) {
    let expected = reference_mppc(&source.x, &[target]);
    let rho = reference_rho(&source.x, &target.x);
    let mine: Vec<&MppcRow> = rows
        .iter()
        .filter(|r| {
            r.source == source_name
                && r.source_layer == source.layer
                && r.target == target.encoder
                && r.target_layer == target.layer
        })
        .collect();
    assert_eq!(mine.len(), source.x[0].len());
    for r in mine {
        let i = r.feature as usize;
        let what = format!(
            "{}/{} feature {i} -> {}/{}",
            source_name, source.layer, target.encoder, target.layer
        );
        close(r.rho, expected[i].0, &what);
        close(r.weight, expected[i].1, &what);
        match r.best_feature {
            Some(j) => close(
                rho[i][j as usize],
                expected[i].0,
                &format!("{what}: best {j}"),
            ),
            None => assert_eq!(expected[i], (0.0, 0.0), "{what}: no best match"),
        }
    }
}

#[test]
fn sparse_and_dense_backends_equal_the_float64_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (alpha, beta, quiet) = models(600, 1);
    let a = write(dir.path(), &alpha[0], 8, &[]);
    let b = write(dir.path(), &beta[0], 8, &[]);
    let q = write(dir.path(), &quiet, 8, &[]);

    for backend in [Backend::Sparse, Backend::Dense] {
        let options = CompareOptions {
            backend,
            batch_samples: 64,
            ..CompareOptions::default()
        };
        let result = metrics::compare(
            std::slice::from_ref(&a),
            std::slice::from_ref(&b),
            &[],
            &options,
        )
        .unwrap();
        assert_eq!(result.align.samples, 600);
        check_rows(&result.mppc, &alpha[0], &beta[0], "alpha");
        let to_quiet = metrics::compare(
            std::slice::from_ref(&a),
            std::slice::from_ref(&q),
            &[],
            &options,
        )
        .unwrap();
        check_rows(&to_quiet.mppc, &alpha[0], &quiet, "alpha");

        // Dead (0, 1) and constant (2) sources: rho 0, no match, no weight.
        for r in result.mppc.iter().filter(|r| r.feature <= 2) {
            assert_eq!((r.rho, r.best_feature, r.weight), (0.0, None, 0.0), "{r:?}");
        }
        // Source 4 never fires with the quiet target: a negative best match, exactly.
        let neg = to_quiet
            .mppc
            .iter()
            .find(|r| r.feature == 4 && r.target == "quiet" && r.target_layer == "final")
            .unwrap();
        assert!(neg.rho < -0.05, "{neg:?}");
        // Source 3 and target 2 never fire together; with dead targets the max is >= 0.
        assert!(result
            .mppc
            .iter()
            .filter(|r| r.target == "beta")
            .all(|r| r.rho >= 0.0));

        let layer = |t: &Layer| {
            result
                .wmppc
                .iter()
                .find(|w| {
                    w.target_layer == t.layer
                        && w.aggregation == Aggregation::Layer
                        && w.target == t.encoder
                })
                .unwrap()
                .wmppc
                .unwrap()
        };
        close(
            layer(&beta[0]),
            reference_wmppc(&reference_mppc(&alpha[0].x, &[&beta[0]])),
            "wmppc",
        );
    }
}

#[test]
fn all_layers_aggregations_equal_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (alpha, beta, _) = models(400, 2);
    let sources: Vec<PathBuf> = alpha.iter().map(|l| write(dir.path(), l, 8, &[])).collect();
    let targets: Vec<PathBuf> = beta.iter().map(|l| write(dir.path(), l, 8, &[])).collect();
    let result = metrics::compare(&sources, &targets, &[], &CompareOptions::default()).unwrap();

    let targets_ref: Vec<&Layer> = beta.iter().collect();
    let unions: Vec<Vec<(f64, f64)>> = alpha
        .iter()
        .map(|a| reference_mppc(&a.x, &targets_ref))
        .collect();
    let get = |source_layer: &str, aggregation| {
        result
            .wmppc
            .iter()
            .find(|w| w.source_layer == source_layer && w.aggregation == aggregation)
            .unwrap()
            .wmppc
            .unwrap()
    };
    for (a, u) in alpha.iter().zip(&unions) {
        close(
            get(a.layer, Aggregation::Union),
            reference_wmppc(u),
            "union",
        );
        for r in result
            .mppc
            .iter()
            .filter(|r| r.source_layer == a.layer && r.target_layer == "*")
        {
            close(r.rho, u[r.feature as usize].0, "union mppc");
        }
        for b in &beta {
            check_rows(&result.mppc, a, b, "alpha");
        }
    }
    let d = alpha[0].x[0].len() as f64;
    let mean =
        unions.iter().map(|u| reference_wmppc(u) * d).sum::<f64>() / (d * unions.len() as f64);
    close(
        get("*", Aggregation::MeanOverLayers),
        mean,
        "mean over layers",
    );
    let all: Vec<(f64, f64)> = unions.concat();
    close(
        get("*", Aggregation::AllFeatures),
        reference_wmppc(&all),
        "all features",
    );
}

#[test]
fn floor_is_seeded_and_near_chance_and_ceiling_compares_two_saes() {
    let dir = tempfile::tempdir().unwrap();
    let (alpha, beta, _) = models(500, 3);
    let a = write(dir.path(), &alpha[0], 8, &[]);
    let b = write(dir.path(), &beta[0], 8, &[]);
    // A "second SAE" of alpha/l0: the same codes, so the ceiling is exactly 1.
    let twin_dir = dir.path().join("twin");
    let twin = write(&twin_dir, &alpha[0], 8, &[]);
    let options = CompareOptions {
        baselines: 3,
        seed: 11,
        ..CompareOptions::default()
    };
    let first = metrics::compare(
        std::slice::from_ref(&a),
        std::slice::from_ref(&b),
        std::slice::from_ref(&twin),
        &options,
    )
    .unwrap();
    let again = metrics::compare(&[a], &[b], &[twin], &options).unwrap();
    let row = &first.wmppc[0];
    assert_eq!(row.baseline_floor, again.wmppc[0].baseline_floor, "seeded");
    let (value, floor) = (row.wmppc.unwrap(), row.baseline_floor.unwrap());
    assert!(floor < value - 0.2, "floor {floor} vs value {value}");
    assert!(row.baseline_floor_std.unwrap() >= 0.0);
    close(
        row.baseline_ceiling.unwrap(),
        1.0,
        "ceiling of identical codes",
    );
}

#[test]
fn missing_samples_fail_unless_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (alpha, beta, _) = models(200, 4);
    let a = write(dir.path(), &alpha[0], 8, &[]);
    let b = write(dir.path(), &beta[0], 8, &[10, 40]);
    let err = metrics::compare(
        std::slice::from_ref(&a),
        std::slice::from_ref(&b),
        &[],
        &CompareOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("sample_id 10") && err.contains("beta-l0.parquet"),
        "{err}"
    );

    let options = CompareOptions {
        missing: saeshare::stats::MissingSamples::Drop,
        ..CompareOptions::default()
    };
    let result = metrics::compare(&[a], &[b], &[], &options).unwrap();
    assert_eq!((result.align.samples, result.align.dropped), (198, 2));
    // The reference without those samples (ids 3s+7: s = 1 and 11).
    let keep = |l: &Layer| Layer {
        encoder: l.encoder,
        layer: l.layer,
        x: l.x
            .iter()
            .enumerate()
            .filter(|(s, _)| *s != 1 && *s != 11)
            .map(|(_, r)| r.clone())
            .collect(),
    };
    check_rows(&result.mppc, &keep(&alpha[0]), &keep(&beta[0]), "alpha");
}

fn saeshare(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_saeshare"))
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn compare_and_sharedness_commands_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (alpha, beta, quiet) = models(300, 5);
    // Models G1 = beta (two layers), G2 = quiet, H = alpha's second layer as a model "gamma".
    let gamma = Layer {
        encoder: "gamma",
        layer: "l1",
        x: alpha[1].x.clone(),
    };
    let a = write(dir.path(), &alpha[0], 8, &[]);
    let p = |p: &PathBuf| p.to_str().unwrap().to_string();
    let targets = [
        vec![
            p(&write(dir.path(), &beta[0], 8, &[])),
            p(&write(dir.path(), &beta[1], 8, &[])),
        ],
        vec![p(&write(dir.path(), &quiet, 8, &[]))],
        vec![p(&write(dir.path(), &gamma, 8, &[]))],
    ];
    let mut outs = Vec::new();
    for (t, files) in targets.iter().enumerate() {
        let out = dir.path().join(format!("cmp{t}"));
        let mut args = vec!["compare", "--source", a.to_str().unwrap(), "--target"];
        args.extend(files.iter().map(String::as_str));
        args.extend(["--baselines", "2", "--out", out.to_str().unwrap()]);
        let printed = saeshare(&args);
        assert!(
            printed.contains("300 samples compared, 0 dropped"),
            "{printed}"
        );
        outs.push(out);
    }
    let rows = tables::read_mppc(&outs[0]).unwrap();
    check_rows(&rows, &alpha[0], &beta[0], "alpha");
    check_rows(&rows, &alpha[0], &beta[1], "alpha");

    let ranking_file = dir.path().join("rank.parquet");
    saeshare(&[
        "sharedness",
        "--mppc",
        outs[0].to_str().unwrap(),
        outs[1].to_str().unwrap(),
        outs[2].to_str().unwrap(),
        "--source",
        "alpha",
        "--shared-with",
        "beta,quiet",
        "--not-shared-with",
        "gamma",
        "--top",
        "10",
        "--out",
        ranking_file.to_str().unwrap(),
    ]);

    // The reference ranking.
    let to_beta = reference_mppc(&alpha[0].x, &[&beta[0], &beta[1]]);
    let to_quiet = reference_mppc(&alpha[0].x, &[&quiet]);
    let to_gamma = reference_mppc(&alpha[0].x, &[&gamma]);
    let mut expected: Vec<(u32, f64)> = (0..to_beta.len())
        .map(|i| {
            let min = to_beta[i].0.min(to_quiet[i].0);
            let delta = to_beta[i].1 * (min.max(0.0).powi(2) - to_gamma[i].0.max(0.0).powi(2));
            (i as u32, delta)
        })
        .collect();
    expected.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
    assert!(
        expected[0].1 > 0.0,
        "the fixture has a feature shared with G and not H"
    );

    let file = std::fs::File::open(&ranking_file).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut got: Vec<(u32, f64)> = Vec::new();
    for batch in reader {
        use arrow::array::AsArray;
        let batch = batch.unwrap();
        let f = batch
            .column_by_name("feature")
            .unwrap()
            .as_primitive::<arrow::datatypes::UInt32Type>()
            .clone();
        let d = batch
            .column_by_name("delta")
            .unwrap()
            .as_primitive::<arrow::datatypes::Float64Type>()
            .clone();
        got.extend((0..batch.num_rows()).map(|r| (f.value(r), d.value(r))));
    }
    assert_eq!(got.len(), 10);
    for ((gf, gd), (ef, ed)) in got.iter().zip(&expected) {
        // Deltas scale with S_i (sums over samples): compare relative to the weight.
        let scale = to_beta[*ef as usize].1.max(1.0);
        assert!(
            (gd - ed).abs() <= TOL * scale,
            "delta of {gf}: {gd} vs reference {ed} (feature {ef})"
        );
    }
}
