//! `saeshare similarity`: every measure against an independent float64 reference written from
//! the definitions (tests/fixtures/similarity/reference.py), and floors that sit at chance.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use saeshare::activations::{ActivationWriter, ActivationsMeta, LayerWidth};
use saeshare::similarity::{read_similarity, Measure, SimilarityRow};

use crate::common;

/// Activations of a random latent seen through random maps, with offsets and noise: two files
/// of one latent are related, not equal; files of two latents are unrelated.
struct Fixture {
    samples: usize,
    latent: usize,
}

impl Fixture {
    fn latent(&self, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..self.samples)
            .map(|_| {
                (0..self.latent)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect()
            })
            .collect()
    }

    /// Writes `encoder`'s layers (name, width, map seed) of the latent `z`, sample ids from
    /// `ids` (in that order), values offset by `offset`.
    fn write(
        &self,
        path: &Path,
        encoder: &str,
        layers: &[(&str, usize, u64)],
        z: &[Vec<f64>],
        ids: &[u64],
        offset: f32,
    ) {
        let meta = ActivationsMeta {
            encoder: encoder.into(),
            pooling: "mean".into(),
            layers: (layers.iter())
                .map(|&(name, width, _)| LayerWidth {
                    name: name.into(),
                    width,
                })
                .collect(),
            input_size: None,
            precision: Default::default(),
        };
        let maps: Vec<Vec<f64>> = (layers.iter())
            .map(|&(_, width, seed)| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                (0..self.latent * width)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect()
            })
            .collect();
        let mut noise = ChaCha8Rng::seed_from_u64(99);
        let mut writer = ActivationWriter::create(path, meta).unwrap();
        for &id in ids {
            let z = &z[id as usize % self.samples];
            for (l, &(name, width, _)) in layers.iter().enumerate() {
                let values: Vec<f32> = (0..width)
                    .map(|j| {
                        let mix: f64 = (0..self.latent)
                            .map(|i| z[i] * maps[l][i * width + j])
                            .sum();
                        // A large offset on the first feature, as the massive activations of
                        // ViTs: centring must not lose the small variances next to it.
                        let shift = if j == 0 { 40.0 * offset } else { offset };
                        (mix.tanh() + 0.3 * noise.random_range(-1.0..1.0)) as f32 + shift
                    })
                    .collect();
                writer.push(id, name, &values).unwrap();
            }
        }
        writer.finish().unwrap();
    }
}

fn run(a: &Path, b: &Path, out: &Path, more: &[&str]) -> Vec<SimilarityRow> {
    let mut args = vec![
        "similarity",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    let output = common::saeshare(&args);
    assert!(output.status.success(), "{}", common::stderr(&output));
    read_similarity(out).unwrap()
}

#[test]
fn every_measure_equals_a_float64_reference_written_from_its_definition() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Fixture {
        samples: 700,
        latent: 6,
    };
    let z = fixture.latent(1);
    // Ids with gaps, the target's in another order and with samples the source lacks.
    let ids_a: Vec<u64> = (0..650).map(|i| i * 3 + 1).collect();
    let mut ids_b: Vec<u64> = (0..700).map(|i| i * 3 + 1).rev().collect();
    ids_b.swap(3, 400);
    let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
    fixture.write(
        &a,
        "vision",
        &[("4", 24, 10), ("8", 40, 11)],
        &z,
        &ids_a,
        5.0,
    );
    fixture.write(&b, "text", &[("last", 32, 20)], &z, &ids_b, -3.0);
    let out = dir.path().join("similarity.parquet");

    // The target holds samples the source lacks: an error naming one, unless asked to drop.
    let refused = common::saeshare(&[
        "similarity",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(
        common::stderr(&refused).contains("--drop-missing"),
        "{}",
        common::stderr(&refused)
    );

    let rows = run(
        &a,
        &b,
        &out,
        &[
            "--drop-missing",
            "--knn-samples",
            "256",
            "--permutations",
            "2",
        ],
    );
    assert_eq!(rows.len(), 2 * Measure::ALL.len());

    let reference = dir.path().join("reference.json");
    let output = common::python()
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/similarity/reference.py"))
        .args([&a, &b, &reference])
        .args(["0", "256", "10", "0.1"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&reference).unwrap()).unwrap();
    assert_eq!(reference["samples"], 650);
    for row in &rows {
        let key = format!(
            "{}|{}|{}",
            row.source_layer,
            row.target_layer,
            row.measure.name()
        );
        let want = reference["values"][&key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}"));
        let got = row.value.unwrap_or_else(|| panic!("{key}: no value"));
        let tolerance = 1e-9 * want.abs().max(1e-3);
        assert!(
            (got - want).abs() <= tolerance,
            "{key}: {got} against the reference's {want}"
        );
        let samples = if row.measure.on_subsample() { 256 } else { 650 };
        assert_eq!(row.samples, samples, "{key}");
        assert_eq!(
            (row.source.as_str(), row.target.as_str()),
            ("vision", "text")
        );
    }
}

#[test]
fn floors_sit_at_chance_and_below_the_values_of_related_layers() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Fixture {
        samples: 500,
        latent: 4,
    };
    let ids: Vec<u64> = (0..500).collect();
    let (a, b, c) = (
        dir.path().join("a.parquet"),
        dir.path().join("b.parquet"),
        dir.path().join("c.parquet"),
    );
    fixture.write(&a, "a", &[("1", 16, 1)], &fixture.latent(1), &ids, 0.0);
    fixture.write(&b, "b", &[("1", 20, 2)], &fixture.latent(1), &ids, 1.0);
    // Another latent altogether: unrelated to `a`.
    fixture.write(&c, "c", &[("1", 20, 3)], &fixture.latent(2), &ids, 1.0);
    let args = ["--knn-samples", "200", "--permutations", "4"];
    let related = run(&a, &b, &dir.path().join("ab.parquet"), &args);
    let unrelated = run(&a, &c, &dir.path().join("ac.parquet"), &args);
    for (r, u) in related.iter().zip(&unrelated) {
        let name = r.measure.name();
        let (value, floor) = (r.value.unwrap(), r.floor.unwrap());
        assert!(
            r.floor_std.is_some(),
            "{name}: four permutations give a spread"
        );
        let (u_value, u_floor) = (u.value.unwrap(), u.floor.unwrap());
        if r.measure == Measure::Procrustes {
            // A distance: related layers are nearer than chance.
            assert!(value < floor, "{name}: {value} against its floor {floor}");
        } else {
            assert!(value > floor, "{name}: {value} against its floor {floor}");
        }
        // Unrelated layers score what permuted ones do, give or take the chance spread.
        let spread = 6.0 * u.floor_std.unwrap() + 0.05 * u_floor.abs().max(0.05);
        assert!(
            (u_value - u_floor).abs() <= spread,
            "{name}: unrelated layers {u_value} against their floor {u_floor}"
        );
    }
}

#[test]
fn a_study_keeps_read_out_rows_and_measures_them_as_the_one_shot_command_does() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[16]);
    let study = crate::pipeline::study(dir.path(), &dataset, "run", &["bert", "vit"], 4);
    crate::pipeline::run(&study, &["--no-report"]);
    let output = dir.path().join("run");
    let rows = read_similarity(&output.join("similarity.parquet")).unwrap();
    assert_eq!(
        rows.len(),
        2 * Measure::ALL.len(),
        "both ordered pairs, every measure"
    );
    // One pass gives both directions: the pair named first holds its mirror's rows.
    let pair_table = |key: &str| output.join("pairs").join(key).join("similarity.parquet");
    assert!(!pair_table("vit__bert").exists());
    assert_eq!(read_similarity(&pair_table("bert__vit")).unwrap(), rows);

    // The read-out rows are what `saeshare encode` gives at the study's layer and pooling.
    let readouts = |e: &str| output.join("readouts").join(e).join("shard-000016.parquet");
    let encoded = dir.path().join("vit.parquet");
    let package = common::tiny_packages().join("vit");
    let out = common::encode(&package, &dataset, &encoded, &["--layers", "last"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let diff = common::saeshare(&[
        "diff",
        encoded.to_str().unwrap(),
        readouts("vit").to_str().unwrap(),
        "--tolerance",
        "1e-6",
    ]);
    assert!(
        diff.status.success(),
        "{}{}",
        common::stdout(&diff),
        common::stderr(&diff)
    );

    // The one-shot command on those files: the very rows, floors included (same seed).
    let study_rows: Vec<&SimilarityRow> = rows.iter().filter(|r| r.source == "vit").collect();
    let (source_layer, target_layer) = (&study_rows[0].source_layer, &study_rows[0].target_layer);
    let one_shot = run(
        &readouts("vit"),
        &readouts("bert"),
        &dir.path().join("one-shot.parquet"),
        &[
            "--permutations",
            "2",
            "--source-layers",
            source_layer,
            "--target-layers",
            target_layer,
        ],
    );
    assert_eq!(study_rows.len(), one_shot.len());
    for (s, o) in study_rows.iter().zip(&one_shot) {
        assert_eq!(
            (s.measure, s.samples, &s.target),
            (o.measure, o.samples, &o.target)
        );
        let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
            (a, b) => a == b,
        };
        assert!(
            close(s.value, o.value) && close(s.floor, o.floor),
            "{s:?} against {o:?}"
        );
        assert!(
            s.floor.is_some(),
            "{s:?}: the study's two permutations give a floor"
        );
    }
}
