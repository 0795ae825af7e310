//! One-to-one feature matches against scipy's `linear_sum_assignment` on float64 correlations,
//! and planted shared concepts recovered by the matching.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use saeshare::codes::SparseCode;
use saeshare::metrics::{one_to_one, OneToOne};
use saeshare::stats::CoactivationAccumulator;

use crate::common;

/// Sparse non-negative codes of two SAEs, `n` samples: source features `0..planted` have a
/// partner `planted_partner(i)` in the target that fires with them (noisy copies); the rest
/// fire at random; source feature `d_a - 1` is dead and target feature `d_b - 1` constant.
fn codes(
    n: usize,
    (d_a, d_b): (usize, usize),
    planted: usize,
    seed: u64,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut a, mut b) = (vec![vec![0f32; d_a]; n], vec![vec![0f32; d_b]; n]);
    for s in 0..n {
        for _ in 0..4 {
            let i = rng.random_range(0..d_a - 1);
            let v = rng.random_range(1..=32) as f32 / 8.0;
            a[s][i] = v;
            if i < planted && rng.random_bool(0.9) {
                b[s][planted_partner(i, d_b)] = v + rng.random_range(0..4) as f32 / 16.0;
            }
        }
        for _ in 0..3 {
            b[s][rng.random_range(0..d_b - 1)] = rng.random_range(1..=32) as f32 / 8.0;
        }
        b[s][d_b - 1] = 0.5;
    }
    (a, b)
}

fn planted_partner(i: usize, d_b: usize) -> usize {
    (i * 7 + 3) % (d_b - 1)
}

fn accumulate(a: &[Vec<f32>], b: &[Vec<f32>]) -> CoactivationAccumulator {
    let mut acc = CoactivationAccumulator::new(a[0].len(), b[0].len());
    let sparse = |row: &[f32]| -> (Vec<u32>, Vec<f32>) {
        (row.iter().enumerate())
            .filter(|(_, &v)| v != 0.0)
            .map(|(i, &v)| (i as u32, v))
            .unzip()
    };
    for (s, (ra, rb)) in a.iter().zip(b).enumerate() {
        let ((fa, va), (fb, vb)) = (sparse(ra), sparse(rb));
        acc.add(
            &SparseCode {
                sample_id: s as u64,
                features: &fa,
                values: &va,
            },
            &SparseCode {
                sample_id: s as u64,
                features: &fb,
                values: &vb,
            },
        );
    }
    acc
}

/// scipy's total and pairs on the same codes.
fn scipy(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f64, Vec<(u32, u32, f64)>) {
    let mut child = common::python()
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/one_to_one/reference.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = serde_json::json!({ "a": a, "b": b });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pairs = (v["pairs"].as_array().unwrap().iter())
        .map(|p| {
            (
                p[0].as_u64().unwrap() as u32,
                p[1].as_u64().unwrap() as u32,
                p[2].as_f64().unwrap(),
            )
        })
        .collect();
    (v["total"].as_f64().unwrap(), pairs)
}

fn total(matches: &[OneToOne]) -> f64 {
    matches.iter().map(|m| m.rho).sum()
}

#[test]
fn the_matching_is_as_heavy_as_scipys_assignment_and_finds_the_planted_partners() {
    for (seed, n, dims, planted) in [
        (1, 300, (30, 40), 12),
        (2, 500, (60, 45), 30),
        (3, 40, (12, 12), 4),
    ] {
        let (a, b) = codes(n, dims, planted, seed);
        let mut acc = accumulate(&a, &b);
        let sparse = one_to_one(&acc);
        acc.densify();
        let dense = one_to_one(&acc);
        assert_eq!(
            sparse, dense,
            "seed {seed}: the dense sums match as the sparse ones do"
        );

        let (want, pairs) = scipy(&a, &b);
        let got = total(&sparse);
        assert!(
            (got - want).abs() <= 1e-9 * want.max(1.0),
            "seed {seed}: total {got} against scipy's {want}"
        );
        // One to one, and each matched correlation the float64 one.
        let mut targets: Vec<u32> = sparse.iter().map(|m| m.target).collect();
        targets.sort_unstable();
        targets.dedup();
        assert_eq!(
            targets.len(),
            sparse.len(),
            "seed {seed}: a target matched twice"
        );
        let rho = crate::stats_reference::reference_rho(
            &a.iter()
                .map(|r| r.iter().map(|&v| v as f64).collect())
                .collect::<Vec<_>>(),
            &b.iter()
                .map(|r| r.iter().map(|&v| v as f64).collect())
                .collect::<Vec<_>>(),
        );
        for m in &sparse {
            let r = rho[m.source as usize][m.target as usize];
            assert!((m.rho - r).abs() <= 1e-9, "seed {seed}: {m:?} against {r}");
        }
        assert!(
            sparse
                .iter()
                .all(|m| m.source as usize != dims.0 - 1 && m.target as usize != dims.1 - 1),
            "seed {seed}: dead and constant features have no partner"
        );
        // Where scipy's optimum is unique, the same pairs (ties aside, checked by the total).
        if n >= 300 {
            let mut theirs: Vec<(u32, u32)> = pairs.iter().map(|p| (p.0, p.1)).collect();
            let mut ours: Vec<(u32, u32)> = sparse.iter().map(|m| (m.source, m.target)).collect();
            theirs.sort_unstable();
            ours.sort_unstable();
            assert_eq!(ours, theirs, "seed {seed}");
        }
        for i in 0..planted {
            let m = sparse.iter().find(|m| m.source as usize == i);
            assert_eq!(
                m.map(|m| m.target as usize),
                Some(planted_partner(i, dims.1)),
                "seed {seed}: planted feature {i}"
            );
        }
    }
}
