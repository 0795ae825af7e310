//! The moments' algebra: sums merged in any grouping, about any shifts, through bytes, equal
//! the sums taken at once.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::Device;

use super::{sum_sides, LayerRows, SideRows, SimilarityOptions, SimilaritySums};

/// One layer `"0"` of `width` features.
fn one_layer(name: &str, width: usize, values: Vec<f32>) -> SideRows {
    SideRows {
        encoder: name.into(),
        layers: vec![LayerRows {
            name: "0".into(),
            width,
            values,
        }],
    }
}

/// Rows with a large offset on one feature (as a massive activation) and small variances.
fn side(name: &str, n: usize, d: usize, seed: u64) -> SideRows {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values = (0..n * d)
        .map(|i| if i % d == 0 { 300.0 } else { 2.0 } + rng.random_range(-0.01..0.01f32))
        .collect();
    one_layer(name, d, values)
}

fn slice(side: &SideRows, rows: std::ops::Range<usize>) -> SideRows {
    let d = side.layers[0].width;
    SideRows {
        encoder: side.encoder.clone(),
        layers: vec![LayerRows {
            values: side.layers[0].values[rows.start * d..rows.end * d].to_vec(),
            ..side.layers[0].clone()
        }],
    }
}

fn values(sums: &SimilaritySums) -> Vec<Option<f64>> {
    let prep = |m: &super::moments::LayerMoments| super::linear::LayerPrep::of(m);
    let (pa, pb) = (prep(&sums.sources[0]), prep(&sums.targets[0]));
    let options = SimilarityOptions::default();
    let x = (&sums.sources[0], &pa);
    let y = (&sums.targets[0], &pb);
    let [forward, _] = super::linear::measures(x, y, &sums.cross[0][0], &options, false);
    forward.into_iter().map(|(_, v)| v).collect()
}

#[test]
fn sums_merged_in_any_order_through_bytes_equal_the_sums_at_once() {
    let n = 900;
    let (a, b) = (side("a", n, 12, 1), side("b", n, 9, 2));
    let ids: Vec<u64> = (0..n as u64).map(|i| i * 7 + 3).collect();
    let whole = sum_sides(&ids, &a, &b, 0, Device::Cpu);
    // Three shards, merged last-first, each through bytes: three shifts, one order of its own.
    let cuts = [0, 250, 600, n];
    let mut merged: Option<SimilaritySums> = None;
    for w in cuts.windows(2).rev() {
        let part = sum_sides(
            &ids[w[0]..w[1]],
            &slice(&a, w[0]..w[1]),
            &slice(&b, w[0]..w[1]),
            0,
            Device::Cpu,
        );
        let part = SimilaritySums::from_bytes(&part.to_bytes(), Device::Cpu).unwrap();
        match &mut merged {
            Some(total) => total.merge(&part),
            None => merged = Some(part),
        }
    }
    let (want, got) = (values(&whole), values(&merged.unwrap()));
    for (w, g) in want.iter().zip(&got) {
        let (w, g) = (w.unwrap(), g.unwrap());
        assert!(
            (w - g).abs() <= 1e-9 * w.abs().max(1e-3),
            "{want:?} against {got:?}"
        );
    }
}

#[test]
fn damaged_bytes_are_an_error_not_a_panic() {
    let (a, b) = (side("a", 20, 3, 1), side("b", 20, 2, 2));
    let ids: Vec<u64> = (0..20).collect();
    let bytes = sum_sides(&ids, &a, &b, 0, Device::Cpu).to_bytes();
    assert!(SimilaritySums::from_bytes(&bytes[..bytes.len() / 2], Device::Cpu).is_err());
    assert!(SimilaritySums::from_bytes(b"not sums", Device::Cpu).is_err());
}

/// `b` a noisy linear image of `a`: related, of the given width.
fn related(a: &SideRows, name: &str, d: usize, seed: u64) -> SideRows {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let da = a.layers[0].width;
    let mix: Vec<f32> = (0..da * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let values = (a.layers[0].values.chunks(da))
        .flat_map(|row| {
            let noise: Vec<f32> = (0..d).map(|_| rng.random_range(-0.5..0.5)).collect();
            (0..d)
                .map(|j| {
                    let image: f32 = row
                        .iter()
                        .enumerate()
                        .map(|(i, x)| x * mix[i * d + j])
                        .sum();
                    image + noise[j]
                })
                .collect::<Vec<f32>>()
        })
        .collect();
    one_layer(name, d, values)
}

fn gaussian_side(name: &str, n: usize, d: usize, seed: u64) -> SideRows {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values = (0..n * d).map(|_| rng.random_range(-1.0..1.0f32)).collect();
    one_layer(name, d, values)
}

/// A pair and its mirror are one computation: the table of both directions is the two tables
/// each direction gives alone, the symmetric measures are equal either way round (floors
/// included) and the ridge's two directions swap.
#[test]
fn a_pair_and_its_mirror_give_the_same_rows_from_one_computation() {
    use super::{similarity, tabulate, Measure, SimilarityRow, TableSpec};
    let n = 400;
    let a = gaussian_side("alpha", n, 6, 3);
    // Equal widths: PWCCA weighs the source in each direction.
    for (b, d) in [
        (related(&a, "beta", 6, 4), 6),
        (related(&a, "beta", 4, 5), 4),
    ] {
        let ids: Vec<u64> = (0..n as u64).map(|i| i * 3 + 1).collect();
        let options = SimilarityOptions {
            knn_samples: 150,
            knn_k: 5,
            ..SimilarityOptions::default()
        };
        let spec = |both| TableSpec {
            permutations: 2,
            permutation_seed: 7,
            both_directions: both,
        };
        let one =
            |s: &SideRows, t: &SideRows| similarity(&ids, s, t, &options, spec(false), Device::Cpu);
        let (ab, ba) = (one(&a, &b), one(&b, &a));
        // Summed as the pair named second would sum them, then both directions from it.
        let sums = sum_sides(&ids, &b, &a, 0, Device::Cpu);
        let both = tabulate(&sums, &ids, &b, &a, &options, spec(true), Device::Cpu);
        assert_eq!(both.len(), 2 * ab.len(), "width {d}");
        let close = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1e-3),
            (x, y) => x == y,
        };
        let same = |x: &SimilarityRow, y: &SimilarityRow| {
            (&x.source, &x.target, x.measure, x.samples)
                == (&y.source, &y.target, y.measure, y.samples)
                && close(x.value, y.value)
                && close(x.floor, y.floor)
                && close(x.floor_std, y.floor_std)
        };
        for (x, y) in both.iter().zip(ba.iter().chain(&ab)) {
            assert!(same(x, y), "width {d}: {x:?} against {y:?}");
        }
        for (x, y) in ab.iter().zip(&ba) {
            assert_eq!(x.measure, y.measure);
            let y_value = match x.measure {
                Measure::RidgeR2 => ba.iter().find(|r| r.measure == Measure::RidgeR2Reverse),
                Measure::RidgeR2Reverse => ba.iter().find(|r| r.measure == Measure::RidgeR2),
                Measure::CycleKnn | Measure::Cknna => continue,
                Measure::Pwcca if d == 6 => continue,
                _ => Some(y),
            }
            .unwrap();
            assert!(close(x.value, y_value.value), "{x:?} against {y_value:?}");
            if !matches!(x.measure, Measure::RidgeR2 | Measure::RidgeR2Reverse) {
                assert!(close(x.floor, y_value.floor), "{x:?} against {y_value:?}");
            }
        }
        assert!(ab.iter().all(|r| r.value.is_some() && r.floor.is_some()));
    }
}

#[test]
fn svcca_of_paired_rows_is_the_svcca_of_their_moments_in_every_order() {
    // Rows with some shared structure, so that SVCCA is neither 0 nor 1.
    let n = 300;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let shared: Vec<f32> = (0..n * 3).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut rows = |d: usize| -> Vec<f32> {
        (0..n * d)
            .map(|i| {
                shared[(i / d) * 3 + (i % d) % 3] * (1 + i % d) as f32 + rng.random_range(-1.0..1.0)
            })
            .collect()
    };
    let (a, b) = (one_layer("a", 7, rows(7)), one_layer("b", 5, rows(5)));
    let svcca_of_moments = |b: &SideRows| {
        let ids: Vec<u64> = (0..n as u64).collect();
        values(&sum_sides(&ids, &a, b, 0, Device::Cpu))[2].unwrap()
    };
    let tensor = |s: &SideRows| {
        tch::Tensor::from_slice(&s.layers[0].values).view([n as i64, s.layers[0].width as i64])
    };
    let order: Vec<i64> = (0..n as i64).rev().map(|i| (i * 7) % n as i64).collect();
    let reordered = SideRows {
        layers: vec![LayerRows {
            values: (order.iter())
                .flat_map(|&i| b.layers[0].values[i as usize * 5..(i as usize + 1) * 5].to_vec())
                .collect(),
            ..b.layers[0].clone()
        }],
        ..b.clone()
    };
    let options = SimilarityOptions::default();
    let (value, null) = super::linear::svcca_of_rows(
        &tensor(&a),
        &tensor(&b),
        &options,
        usize::MAX,
        &[tch::Tensor::from_slice(&order)],
    )
    .unwrap();
    assert!(value > 0.2 && value < 0.99, "{value}");
    assert!((value - svcca_of_moments(&b)).abs() < 1e-9);
    assert!((null[0] - svcca_of_moments(&reordered)).abs() < 1e-9);
    assert!(null[0] < value - 0.1, "{null:?} against {value}");
}
