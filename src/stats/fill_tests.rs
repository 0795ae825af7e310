//! The threaded fills against one-sample-at-a-time sums and a plain f64 reference, bit for bit,
//! and the memory budget's choice of layout.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{AccumulatorOptions, CoactivationAccumulator, Layout};
use crate::codes::{CodeBatch, SparseCode};
use crate::metrics::bench_codes::{Popularity, SyntheticCodes, SyntheticPair};

/// Aligned batches of `n` synthetic samples of `d_a x d_b` features (`d_b` at most `d_a`): some
/// samples empty on both sides, some on one side only.
fn codes(n: usize, d_a: usize, d_b: usize, popularity: Popularity, seed: u64) -> [CodeBatch; 2] {
    let mut synthetic = SyntheticCodes::new(d_a, 6, popularity, 1.0, seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 1);
    let (mut a, mut b) = (CodeBatch::new(), CodeBatch::new());
    let mut pair = SyntheticPair::default();
    for id in 0..n as u64 {
        synthetic.next_into(&mut pair);
        // Target features past d_b are left out (a narrower target SAE).
        let (mut fb, mut vb): (Vec<u32>, Vec<f32>) = (pair.target_features.iter())
            .zip(&pair.target_values)
            .filter(|(&j, _)| (j as usize) < d_b)
            .unzip();
        let (mut fa, mut va) = (pair.source_features.clone(), pair.source_values.clone());
        let empty = rng.random_range(0..10);
        if empty == 0 || empty == 1 {
            fa.clear();
            va.clear();
        }
        if empty == 0 || empty == 2 {
            fb.clear();
            vb.clear();
        }
        a.push(SparseCode {
            sample_id: id,
            features: &fa,
            values: &va,
        });
        b.push(SparseCode {
            sample_id: id,
            features: &fb,
            values: &vb,
        });
    }
    [a, b]
}

/// The plain reference: every product added to a dense f64 array, sample after sample.
fn reference(a: &CodeBatch, b: &CodeBatch, d_a: usize, d_b: usize) -> Vec<f64> {
    let mut sums = vec![0.0; d_a * d_b];
    for (x, y) in a.iter().zip(b.iter()) {
        for (&i, &u) in x.features.iter().zip(x.values) {
            for (&j, &v) in y.features.iter().zip(y.values) {
                sums[i as usize * d_b + j as usize] += u as f64 * v as f64;
            }
        }
    }
    sums
}

/// Fills an accumulator in `layout` on `threads` threads, in batches of `batch` samples.
fn fill(
    [a, b]: &[CodeBatch; 2],
    d: (usize, usize),
    layout: Layout,
    threads: usize,
    batch: usize,
) -> CoactivationAccumulator {
    let options = AccumulatorOptions::default().with_threads(threads);
    let mut acc = CoactivationAccumulator::with_options(d.0, d.1, 0, options);
    if layout == Layout::Dense {
        acc.densify();
    }
    let (mut pa, mut pb) = (CodeBatch::new(), CodeBatch::new());
    for (x, y) in a.iter().zip(b.iter()) {
        pa.push(x);
        pb.push(y);
        if pa.len() == batch {
            acc.add_batch(&pa, &pb);
            pa.clear();
            pb.clear();
        }
    }
    acc.add_batch(&pa, &pb);
    assert_eq!(acc.is_dense(), layout == Layout::Dense);
    acc
}

/// Every cross sum of `acc` equals `expected`'s bit for bit; a sparse `acc` holds exactly the
/// pairs that fired together.
fn assert_bits(acc: &CoactivationAccumulator, expected: &[f64], fired: &[bool], what: &str) {
    let (d_a, d_b) = (acc.source().d(), acc.target().d());
    for i in 0..d_a {
        for j in 0..d_b {
            let (got, want) = (acc.cross_sum(i, j), expected[i * d_b + j]);
            assert_eq!(got.to_bits(), want.to_bits(), "{what}: pair ({i}, {j})");
            if !acc.is_dense() {
                assert_eq!(
                    acc.holds(i, j),
                    fired[i * d_b + j],
                    "{what}: pair ({i}, {j})"
                );
            }
        }
    }
}

#[test]
fn threaded_fills_equal_one_sample_at_a_time_and_the_reference_bit_for_bit() {
    let (d_a, d_b) = (48, 40);
    for (popularity, seed) in [(Popularity::Zipf, 1), (Popularity::Uniform, 2)] {
        let data = codes(1500, d_a, d_b, popularity, seed);
        let [a, b] = &data;
        let expected = reference(a, b, d_a, d_b);
        let mut fired = vec![false; expected.len()];
        for (x, y) in a.iter().zip(b.iter()) {
            for &i in x.features {
                for &j in y.features {
                    fired[i as usize * d_b + j as usize] = true;
                }
            }
        }
        let mut one_by_one = CoactivationAccumulator::new(d_a, d_b);
        for (x, y) in a.iter().zip(b.iter()) {
            one_by_one.add(&x, &y);
        }
        assert_bits(&one_by_one, &expected, &fired, "add");
        let single = fill(&data, (d_a, d_b), Layout::Sparse, 1, 700);
        for layout in [Layout::Sparse, Layout::Dense] {
            for (threads, batch) in [(1, 1500), (2, 700), (3, 256), (8, 1500), (5, 1)] {
                let acc = fill(&data, (d_a, d_b), layout, threads, batch);
                let what = format!("{popularity:?}, {layout:?}, {threads} threads, batch {batch}");
                assert_bits(&acc, &expected, &fired, &what);
                assert_eq!(acc.source(), single.source(), "{what}");
                assert_eq!(acc.target(), single.target(), "{what}");
                assert_eq!(acc.samples(), 1500);
                if layout == Layout::Sparse {
                    assert_eq!(acc.pairs(), single.pairs(), "{what}");
                }
            }
        }
    }
}

#[test]
fn zipf_codes_have_popular_features() {
    let [a, _] = codes(2000, 200, 200, Popularity::Zipf, 3);
    let mut counts = vec![0usize; 200];
    a.iter()
        .flat_map(|c| c.features.to_vec())
        .for_each(|f| counts[f as usize] += 1);
    counts.sort_unstable_by(|x, y| y.cmp(x));
    // With s = 1 over 200 features the most popular is drawn ~100x as often as the rarest.
    assert!(counts[0] > 10 * counts[150].max(1), "{:?}", &counts[..5]);
}

#[test]
fn the_memory_budget_picks_the_layout() {
    // 512 x 256 pairs of f64: exactly 1 MiB.
    let (d_a, d_b, many) = (512, 256, 1 << 20);
    let budget = |memory_mib| AccumulatorOptions {
        memory_mib,
        threads: 1,
    };
    assert!(budget(1).dense_fits(d_a, d_b) && !budget(0).dense_fits(d_a, d_b));
    assert_eq!(budget(1).layout_for(d_a, d_b, many), Layout::Dense);
    assert_eq!(budget(0).layout_for(d_a, d_b, many), Layout::Sparse);
    // Too few updates to touch much of the array: sparse, whatever the budget.
    assert_eq!(budget(1024).layout_for(d_a, d_b, 1000), Layout::Sparse);
    // Tiny problems stay sparse.
    assert_eq!(budget(1024).layout_for(8, 8, many), Layout::Sparse);
    assert!(CoactivationAccumulator::with_options(d_a, d_b, many, budget(1)).is_dense());
    assert!(!CoactivationAccumulator::with_options(d_a, d_b, many, budget(0)).is_dense());

    // Sparse sums that outgrow the dense array turn dense only within the budget.
    let (mut a, mut b) = (CodeBatch::new(), CodeBatch::new());
    let all_a: Vec<u32> = (0..d_a as u32).collect();
    let all_b: Vec<u32> = (0..d_b as u32).collect();
    let (ones_a, ones_b) = (vec![1.0; d_a], vec![1.0; d_b]);
    a.push(SparseCode {
        sample_id: 0,
        features: &all_a,
        values: &ones_a,
    });
    b.push(SparseCode {
        sample_id: 0,
        features: &all_b,
        values: &ones_b,
    });
    for (memory_mib, dense) in [(1, true), (0, false)] {
        let mut acc = CoactivationAccumulator::with_options(d_a, d_b, 0, budget(memory_mib));
        acc.add_batch(&a, &b);
        assert_eq!(acc.is_dense(), dense, "{memory_mib} MiB");
        assert_eq!(acc.cross_sum(3, 5), 1.0);
    }
}
