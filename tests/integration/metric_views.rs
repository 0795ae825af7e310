//! The differential views of wMPPC and sharedness: equal to the batch `compare` and
//! `sharedness` on the same MPPC rows, and updated by difference: a new encoder changes only
//! the outputs involving it, a new query only its own results.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use saeshare::codes::{CodesMeta, CodesWriter};
use saeshare::metrics::{
    self, Aggregation, CompareOptions, MetricViews, MppcRow, SharednessQuery, WmppcKey, WmppcRow,
};

const SAMPLES: u64 = 240;
const D: u32 = 14;
const K: u32 = 4;

/// Codes of `encoder` at `layer`: each sample shows 3 of 10 shared concepts; the model maps
/// concept `c` to its own feature (a seeded permutation), sometimes misses it, and adds one
/// feature of noise. Features no concept maps to fire only as noise or never.
fn write_layer(dir: &Path, encoder: &str, layer: &str, seed: u64) -> PathBuf {
    let path = dir.join(format!("{encoder}-{layer}.parquet"));
    let mut writer = CodesWriter::create(&path, CodesMeta::topk(encoder, layer, D, K)).unwrap();
    let mut mapping = ChaCha8Rng::seed_from_u64(seed);
    let mut feature_of: Vec<u32> = (0..D).collect();
    for i in (1..feature_of.len()).rev() {
        feature_of.swap(i, mapping.random_range(0..=i));
    }
    let mut concepts = ChaCha8Rng::seed_from_u64(99); // the same samples for every model
    let mut noise = ChaCha8Rng::seed_from_u64(seed + 1000);
    for s in 0..SAMPLES {
        let mut code = std::collections::BTreeMap::new();
        for _ in 0..3 {
            let c = concepts.random_range(0..10usize);
            let v = concepts.random_range(1..=8) as f32 / 4.0;
            if noise.random_bool(0.85) {
                code.insert(feature_of[c], v * noise.random_range(0.8..1.2f32));
            }
        }
        if noise.random_bool(0.5) {
            code.insert(
                noise.random_range(0..D - 2),
                noise.random_range(0.1..1.0f32),
            );
        }
        let (f, v): (Vec<u32>, Vec<f32>) = code.into_iter().unzip();
        writer.push(s, &f, &v).unwrap();
    }
    writer.finish().unwrap();
    path
}

/// The study: A and B with two layers each, C with one.
struct Study {
    _dir: tempfile::TempDir,
    files: Vec<(&'static str, Vec<PathBuf>)>,
}

fn study() -> Study {
    let dir = tempfile::tempdir().unwrap();
    let layers = [
        ("A", vec!["a0", "a1"]),
        ("B", vec!["b0", "b1"]),
        ("C", vec!["c0"]),
    ];
    let mut files = Vec::new();
    for (m, (model, names)) in layers.iter().enumerate() {
        let paths = names
            .iter()
            .enumerate()
            .map(|(l, name)| write_layer(dir.path(), model, name, 10 * m as u64 + l as u64))
            .collect();
        files.push((*model, paths));
    }
    Study { _dir: dir, files }
}

/// Batch `compare` of every ordered pair of models among `models`: (mppc, wmppc) rows.
fn compare_pairs(study: &Study, pairs: &[(&str, &str)]) -> (Vec<MppcRow>, Vec<WmppcRow>) {
    let files = |model: &str| &study.files.iter().find(|f| f.0 == model).unwrap().1;
    let (mut mppc, mut wmppc) = (Vec::new(), Vec::new());
    for (source, target) in pairs {
        let c = metrics::compare(
            files(source),
            files(target),
            &[],
            &CompareOptions::default(),
        )
        .unwrap();
        mppc.extend(c.mppc);
        wmppc.extend(c.wmppc);
    }
    (mppc, wmppc)
}

const AB: [(&str, &str); 2] = [("A", "B"), ("B", "A")];
const WITH_C: [(&str, &str); 4] = [("A", "C"), ("C", "A"), ("B", "C"), ("C", "B")];

fn query(source: &str, g: &[&str], h: &[&str], top: Option<usize>) -> SharednessQuery {
    let names = |m: &[&str]| m.iter().map(|s| s.to_string()).collect();
    SharednessQuery {
        source: source.into(),
        shared_with: names(g),
        not_shared_with: names(h),
        top,
    }
}

fn close(x: Option<f64>, y: Option<f64>, what: &str) {
    match (x, y) {
        (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-9, "{what}: {x} vs {y}"),
        (None, None) => {}
        _ => panic!("{what}: {x:?} vs {y:?}"),
    }
}

fn key(r: &WmppcRow) -> WmppcKey {
    WmppcKey {
        source: r.source.clone(),
        target: r.target.clone(),
        source_layer: r.source_layer.clone(),
        target_layer: r.target_layer.clone(),
        aggregation: r.aggregation,
    }
}

/// The views hold exactly the batch wMPPC rows, and each query's ranking equals `sharedness`.
fn assert_equals_batch(views: &MetricViews, mppc: &[MppcRow], wmppc: &[WmppcRow]) {
    let batch: BTreeSet<WmppcKey> = wmppc.iter().map(key).collect();
    let mine: BTreeSet<WmppcKey> = views.wmppc().keys().cloned().collect();
    assert_eq!(mine, batch);
    for r in wmppc {
        close(views.wmppc()[&key(r)], r.wmppc, &format!("{:?}", key(r)));
    }
    for (name, q) in views.queries() {
        let batch = metrics::sharedness(mppc, q).unwrap();
        let mine = views.sharedness(name).unwrap();
        assert_eq!(mine.len(), batch.len(), "{name}");
        assert!(!batch.is_empty());
        for (x, y) in mine.iter().zip(&batch) {
            assert_eq!((&x.source_layer, x.feature), (&y.source_layer, y.feature));
            close(Some(x.delta), Some(y.delta), name);
            close(Some(x.rho_min_shared), Some(y.rho_min_shared), name);
            close(x.rho_max_not_shared, y.rho_max_not_shared, name);
            close(Some(x.weight), Some(y.weight), name);
        }
    }
}

#[test]
fn views_equal_batch_compare_and_sharedness() {
    let study = study();
    let pairs: Vec<_> = AB.iter().chain(&WITH_C).copied().collect();
    let (mppc, wmppc) = compare_pairs(&study, &pairs);
    let mut views = MetricViews::new();
    views.add_mppc(&mppc).unwrap();
    views
        .add_query("a-bc", query("A", &["B", "C"], &[], None))
        .unwrap();
    views
        .add_query("a-b-not-c", query("A", &["B"], &["C"], None))
        .unwrap();
    views
        .add_query("c-a-not-b", query("C", &["A"], &["B"], Some(5)))
        .unwrap();
    views.step();
    assert_equals_batch(&views, &mppc, &wmppc);

    // An independent check of the batch numbers the views equal: one layer pair and the
    // reference's all-layers mean, recomputed from the mppc rows here.
    let rows = |sl: &str, tl: &str| -> Vec<&MppcRow> {
        let of = |r: &&MppcRow| r.source == "A" && r.target == "B" && r.source_layer == sl;
        mppc.iter()
            .filter(of)
            .filter(|r| r.target_layer == tl)
            .collect()
    };
    let w = |rs: &[&MppcRow]| {
        rs.iter().map(|r| r.weight * r.rho).sum::<f64>() / rs.iter().map(|r| r.weight).sum::<f64>()
    };
    let value = |sl: &str, tl: &str, aggregation| {
        views.wmppc()[&WmppcKey {
            source: "A".into(),
            target: "B".into(),
            source_layer: sl.into(),
            target_layer: tl.into(),
            aggregation,
        }]
            .unwrap()
    };
    close(
        Some(value("a1", "b0", Aggregation::Layer)),
        Some(w(&rows("a1", "b0"))),
        "a1 b0",
    );
    let (u0, u1) = (w(&rows("a0", "*")), w(&rows("a1", "*")));
    let mean = value("*", "*", Aggregation::MeanOverLayers);
    close(Some(mean), Some((u0 + u1) / 2.0), "mean over layers"); // equal feature counts

    // One table given twice is refused, and nothing of it is added.
    assert!(views.add_mppc(&mppc[..3]).is_err());
    assert!(views
        .add_query("a-bc", query("A", &["B"], &[], None))
        .is_err());
}

#[test]
fn a_new_encoder_and_a_new_query_change_only_what_depends_on_them() {
    let study = study();
    let (ab, ab_wmppc) = compare_pairs(&study, &AB);
    let (c, c_wmppc) = compare_pairs(&study, &WITH_C);
    let mut views = MetricViews::new();
    views.add_mppc(&ab).unwrap();
    views
        .add_query("a-b", query("A", &["B"], &[], None))
        .unwrap();
    views
        .add_query("a-b-not-c", query("A", &["B"], &["C"], None))
        .unwrap();
    views
        .add_query("c-a", query("C", &["A"], &[], None))
        .unwrap();
    let first = views.step().clone();
    assert_eq!(first.wmppc.len(), ab_wmppc.len());
    let a_features = 2 * D as usize;
    assert_eq!(views.sharedness("a-b").unwrap().len(), a_features);
    // Queries naming C wait for its rows.
    assert!(views.sharedness("a-b-not-c").unwrap().is_empty());
    assert!(views.sharedness("c-a").unwrap().is_empty());

    // Encoder C arrives: only wMPPC rows of pairs with C appear, nothing else moves, and the
    // sharedness of the queries naming C appears, once per feature of their M.
    views.add_mppc(&c).unwrap();
    let changes = views.step().clone();
    assert_eq!(changes.wmppc.len(), c_wmppc.len(), "{:?}", changes.wmppc);
    for (key, _, diff) in &changes.wmppc {
        assert_eq!(*diff, 1);
        assert!(key.source == "C" || key.target == "C", "{key:?} changed");
    }
    let count = |name: &str| changes.sharedness.iter().filter(|u| u.0 == name).count();
    assert_eq!(count("a-b"), 0);
    assert_eq!(count("a-b-not-c"), a_features);
    assert_eq!(count("c-a"), D as usize);
    assert_eq!(changes.sharedness.len(), a_features + D as usize);
    assert!(changes.sharedness.iter().all(|u| u.2 == 1));

    // A new query computes only its own results.
    views
        .add_query("b-c", query("B", &["C"], &["A"], Some(3)))
        .unwrap();
    let changes = views.step().clone();
    assert!(changes.wmppc.is_empty());
    assert_eq!(changes.sharedness.len(), 2 * D as usize);
    assert!(changes.sharedness.iter().all(|u| u.0 == "b-c" && u.2 == 1));
    assert_eq!(views.sharedness("b-c").unwrap().len(), 3);

    // A step with no input changes nothing.
    assert_eq!(views.step(), &Default::default());

    let all: Vec<MppcRow> = ab.iter().chain(&c).cloned().collect();
    let all_wmppc: Vec<WmppcRow> = ab_wmppc.into_iter().chain(c_wmppc).collect();
    assert_equals_batch(&views, &all, &all_wmppc);

    // Removing a query retracts exactly its results.
    assert!(views.remove_query("a-b-not-c"));
    let changes = views.step().clone();
    assert_eq!(changes.sharedness.len(), a_features);
    assert!(changes
        .sharedness
        .iter()
        .all(|u| u.0 == "a-b-not-c" && u.2 == -1));
    assert!(views.sharedness("a-b-not-c").is_none());
    assert_eq!(views.sharedness("a-b").unwrap().len(), a_features);
}

#[test]
fn replacing_rows_by_difference_equals_views_built_from_the_new_rows() {
    let study = study();
    let (ab, _) = compare_pairs(&study, &AB);
    let (c, _) = compare_pairs(&study, &WITH_C);
    // The pair A -> C recomputed: the same rows but for two features.
    let mut changed = c.clone();
    let touched: Vec<usize> = (0..changed.len())
        .filter(|&i| changed[i].source == "A" && changed[i].target == "C")
        .take(2)
        .collect();
    for &i in &touched {
        changed[i].rho = (changed[i].rho + 0.25).min(1.0);
    }
    let old: Vec<MppcRow> = ab.iter().chain(&c).cloned().collect();
    let new: Vec<MppcRow> = ab.iter().chain(&changed).cloned().collect();

    let mut views = MetricViews::new();
    views.add_mppc(&old).unwrap();
    views
        .add_query("a-c", query("A", &["C"], &[], None))
        .unwrap();
    views
        .add_query("b-a", query("B", &["A"], &[], None))
        .unwrap();
    views.step();
    let counts = views.update_mppc(&old, &new).unwrap();
    assert_eq!((counts.removed, counts.added), (2, 2));
    let changes = views.step().clone();
    // Only what reads A -> C moved: its wMPPC values and the ranking of A against C.
    assert!(!changes.wmppc.is_empty());
    for (key, _, _) in &changes.wmppc {
        assert_eq!(
            (key.source.as_str(), key.target.as_str()),
            ("A", "C"),
            "{key:?}"
        );
    }
    assert!(changes.sharedness.iter().all(|u| u.0 == "a-c"));
    assert_eq!(changes.sharedness.len(), 2 * touched.len());

    let mut fresh = MetricViews::new();
    fresh.add_mppc(&new).unwrap();
    fresh
        .add_query("a-c", query("A", &["C"], &[], None))
        .unwrap();
    fresh
        .add_query("b-a", query("B", &["A"], &[], None))
        .unwrap();
    fresh.step();
    assert_eq!(views.wmppc(), fresh.wmppc());
    for name in ["a-c", "b-a"] {
        assert_eq!(views.sharedness(name), fresh.sharedness(name), "{name}");
    }

    // Rows never added cannot be taken out, and nothing changes then.
    let stranger = MppcRow {
        source: "Z".into(),
        ..new[0].clone()
    };
    assert!(views.update_mppc(&[stranger], &[]).is_err());
    assert_eq!(views.step(), &Default::default());
}

#[test]
fn views_give_the_bits_of_compare_whatever_the_layer_names() {
    let dir = tempfile::tempdir().unwrap();
    // As text, "l10" < "l11" < "l9": the study's order is not the names' order.
    let names = ["l9", "l10", "l11"];
    let a: Vec<PathBuf> = (names.iter().enumerate())
        .map(|(i, n)| write_layer(dir.path(), "A", n, 50 + i as u64))
        .collect();
    let b: Vec<PathBuf> = (["m9", "m10"].iter().enumerate())
        .map(|(i, n)| write_layer(dir.path(), "B", n, 60 + i as u64))
        .collect();
    let batch = metrics::compare(&a, &b, &[], &CompareOptions::default()).unwrap();
    assert!(batch
        .wmppc
        .iter()
        .any(|r| r.aggregation == Aggregation::AllFeatures));
    let mut views = MetricViews::new();
    views.order_layers("A", &names.map(String::from));
    // The rows arrive in another order: the ranks come from the order given.
    let mut rows = batch.mppc.clone();
    rows.reverse();
    views.add_mppc(&rows).unwrap();
    views.step();
    for r in &batch.wmppc {
        let bits = |v: Option<f64>| v.map(f64::to_bits);
        assert_eq!(bits(views.wmppc()[&key(r)]), bits(r.wmppc), "{r:?}");
    }
}
