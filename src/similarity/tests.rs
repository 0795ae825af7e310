//! The moments' algebra: sums merged in any grouping, about any shifts, through bytes, equal
//! the sums taken at once.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::Device;

use super::{sum_sides, LayerRows, SideRows, SimilarityOptions, SimilaritySums};

/// Rows with a large offset on one feature (as a massive activation) and small variances.
fn side(name: &str, n: usize, d: usize, seed: u64) -> SideRows {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values = (0..n * d)
        .map(|i| if i % d == 0 { 300.0 } else { 2.0 } + rng.random_range(-0.01..0.01f32))
        .collect();
    SideRows {
        encoder: name.into(),
        layers: vec![LayerRows {
            name: "0".into(),
            width: d,
            values,
        }],
    }
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
    super::linear::measures(x, y, &sums.cross[0][0], &options)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
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
