//! How sure a wMPPC is: a Poisson bootstrap over the samples (docs/DESIGN.md, "Uncertainty").
//!
//! Replicate `r` counts sample `n` `w_r(n) ~ Poisson(1)` times, `w_r(n)` drawn from the seed and
//! the sample's id alone: the same weight whichever shard, batch or process holds the sample, so
//! replicate sums are sums like the pass's, exact and mergeable, and no encoder runs again. A
//! replicate's MPPC of feature `i` is the largest of its replicate correlations with its
//! candidates: its best partner over all samples and the next [`CANDIDATES`]` - 1` of largest
//! correlation. That is the one step that is not exact, where the best partner of a replicate
//! would be none of the feature's 8 best over all samples; a replicate moves a correlation by
//! about `1/sqrt(N)`, far less than the gaps it would have to close (candidates are pairs that
//! fired together: with codes that can be negative, a pair that never did is left out too).
//!
//! MPPC is a max, and a replicate, which holds about 63% of the distinct samples, finds larger
//! chance correlations than the full set: its values sit above the value by a bias, which on
//! the demo is several times their spread (N = 7,572, a floor of 0.14). Neither the replicates'
//! percentiles nor their reflection about the value (the basic bootstrap) would then hold the
//! value. The replicates are taken for their spread: moved by their mean's offset from the value
//! (reported as the bias), `v_r - mean + v`, whose 2.5% and 97.5% points are the interval and
//! whose share at or below the floor is the test against it. How far chance lifts the value is
//! the floor's to say, not the interval's.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::codes::CodeBatch;
use crate::stats::CoactivationAccumulator;

use super::compare::{keyed_values, Matches};
use super::mppc::for_each_held_correlation;
use super::FeatureMatch;

/// Target features a source feature's replicate MPPC is taken over.
pub const CANDIDATES: usize = 8;

/// The interval's coverage.
const COVERAGE: f64 = 0.95;

/// The bootstrap of one wMPPC row: its interval and where it stands against its floor.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Interval {
    pub low: Option<f64>,
    pub high: Option<f64>,
    /// The replicates' mean less the value.
    pub bias: Option<f64>,
    /// `(1 + #{v_r - mean + v <= floor}) / (1 + replicates)`; `None` without a floor.
    pub floor_p: Option<f64>,
}

/// The replicate values of every `wmppc` row (in table order), `[replicate][row]`, from the
/// aligned codes `kept` (sources first), the pass's accumulators and its matches.
pub(crate) fn replicate_values(
    kept: &[CodeBatch],
    accumulators: &[Vec<CoactivationAccumulator>],
    matches: &Matches,
    replicates: usize,
    seed: u64,
) -> Vec<Vec<Option<f64>>> {
    if replicates == 0 || kept.is_empty() || kept[0].is_empty() {
        return Vec::new();
    }
    let l_a = accumulators.len();
    let weights = poisson_weights(seed, kept[0].sample_ids(), replicates);
    let widths = (accumulators.iter().map(|row| row[0].source().d()))
        .chain(accumulators[0].iter().map(|acc| acc.target().d()));
    let moments: Vec<ReplicateMoments> = (kept.iter().zip(widths))
        .map(|(codes, d)| ReplicateMoments::of(codes, d, &weights, replicates))
        .collect();
    // `[source layer][target layer]`: each source feature's MPPC per replicate.
    let per_pair: Vec<Vec<Vec<f32>>> = (accumulators.iter().enumerate())
        .map(|(a, row)| {
            (row.iter().enumerate())
                .map(|(b, acc)| {
                    let candidates = Candidates::of(acc, &matches[a][b]);
                    let codes = (&kept[a], &kept[l_a + b]);
                    let sums = candidates.cross_sums(codes, &weights, replicates);
                    replicate_mppc(&candidates, &sums, &moments[a], &moments[l_a + b])
                })
                .collect()
        })
        .collect();
    (0..replicates)
        .map(|r| {
            let matches: Matches = (per_pair.iter().enumerate())
                .map(|(a, row)| {
                    let source = &moments[a];
                    (row.iter())
                        .map(|mppc| {
                            (0..source.d)
                                .map(|i| source.feature_match(i, r, mppc[i * replicates + r]))
                                .collect()
                        })
                        .collect()
                })
                .collect();
            keyed_values(&matches).into_iter().map(|(_, v)| v).collect()
        })
        .collect()
}

/// Each row's interval from the replicate values (`[replicate][row]`), its value and its floor.
pub(crate) fn intervals(
    replicates: &[Vec<Option<f64>>],
    values: &[Option<f64>],
    floors: &[Option<f64>],
) -> Vec<Interval> {
    (values.iter().enumerate())
        .map(|(row, value)| {
            let Some(value) = value else {
                return Interval::default();
            };
            let raw: Vec<f64> = replicates.iter().filter_map(|r| r[row]).collect();
            if raw.len() < 2 {
                return Interval::default();
            }
            let bias = raw.iter().sum::<f64>() / raw.len() as f64 - value;
            let mut v: Vec<f64> = raw.iter().map(|r| r - bias).collect();
            v.sort_unstable_by(f64::total_cmp);
            let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
            let tail = (1.0 - COVERAGE) / 2.0;
            let floor_p = floors.get(row).copied().flatten().map(|floor| {
                let below = v.iter().filter(|&&x| x <= floor).count();
                (1 + below) as f64 / (1 + v.len()) as f64
            });
            Interval {
                low: Some(at(tail)),
                high: Some(at(1.0 - tail)),
                bias: Some(bias),
                floor_p,
            }
        })
        .collect()
}

/// `w_r(n)` of every sample (row-major, `replicates` a sample): Poisson(1) draws from the seed
/// and the sample id, by inversion of the distribution function.
fn poisson_weights(seed: u64, ids: &[u64], replicates: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * replicates);
    for &id in ids {
        let mixed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ id;
        let mut rng = ChaCha8Rng::seed_from_u64(mixed);
        out.extend((0..replicates).map(|_| {
            let u: f64 = rng.random();
            let (mut k, mut p) = (0u8, (-1.0f64).exp());
            let mut cdf = p;
            while u > cdf && k < u8::MAX {
                k += 1;
                p /= k as f64;
                cdf += p;
            }
            k
        }));
    }
    out
}

/// One stream's weighted sums per replicate: `n_r`, and per feature `sum w x`, `sum w x^2`
/// (`[feature * replicates + r]`).
struct ReplicateMoments {
    d: usize,
    replicates: usize,
    n: Vec<f64>,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
}

impl ReplicateMoments {
    fn of(codes: &CodeBatch, d: usize, weights: &[u8], replicates: usize) -> ReplicateMoments {
        let mut m = ReplicateMoments {
            d,
            replicates,
            n: vec![0.0; replicates],
            sum: vec![0.0; d * replicates],
            sum_sq: vec![0.0; d * replicates],
        };
        for (code, w) in codes.iter().zip(weights.chunks_exact(replicates)) {
            for (n, &w) in m.n.iter_mut().zip(w) {
                *n += w as f64;
            }
            for (&i, &x) in code.features.iter().zip(code.values) {
                let (x, at) = (x as f64, i as usize * replicates);
                for (r, &w) in w.iter().enumerate() {
                    m.sum[at + r] += w as f64 * x;
                    m.sum_sq[at + r] += w as f64 * x * x;
                }
            }
        }
        m
    }

    /// `sqrt(n Sxx - Sx^2)` of feature `i` in replicate `r`, 0 when it never fires there or
    /// is constant (the rule of [`crate::stats::Moments::spread`]).
    fn spread(&self, i: usize, r: usize) -> f64 {
        let at = i * self.replicates + r;
        let second = self.n[r] * self.sum_sq[at];
        let var = second - self.sum[at] * self.sum[at];
        if self.sum_sq[at] == 0.0 || var <= 1e-9 * second {
            0.0
        } else {
            var.sqrt()
        }
    }

    fn sum(&self, i: usize, r: usize) -> f64 {
        self.sum[i * self.replicates + r]
    }

    /// Feature `i`'s match in replicate `r`, as [`super::mppc`] gives it: MPPC and weight 0
    /// when it is dead or constant there.
    fn feature_match(&self, i: usize, r: usize, rho: f32) -> FeatureMatch {
        match self.spread(i, r) > 0.0 {
            true => FeatureMatch {
                rho: rho as f64,
                best: Some(0),
                weight: self.sum(i, r),
            },
            false => FeatureMatch {
                rho: 0.0,
                best: None,
                weight: 0.0,
            },
        }
    }
}

/// Each source feature's candidates (compressed rows): its best partner first, then the
/// partners of next largest positive correlation.
struct Candidates {
    starts: Vec<usize>,
    targets: Vec<u32>,
    d_b: usize,
}

impl Candidates {
    fn of(acc: &CoactivationAccumulator, best: &[FeatureMatch]) -> Candidates {
        let d_a = acc.source().d();
        // Each row's best pairs that fired together, at most `CANDIDATES`, largest first, ties
        // by index: the same candidates whatever order the sums' tables are walked in.
        let mut by_source: Vec<Vec<(f64, u32)>> = vec![Vec::new(); d_a];
        for_each_held_correlation(acc, |i, j, rho| {
            let (row, j) = (&mut by_source[i], j as u32);
            let before = |x: &(f64, u32)| x.0 > rho || (x.0 == rho && x.1 < j);
            let at = row.partition_point(before);
            if at < CANDIDATES {
                row.insert(at, (rho, j));
                row.truncate(CANDIDATES);
            }
        });
        let mut starts = vec![0];
        let mut targets = Vec::new();
        for (i, partners) in by_source.into_iter().enumerate() {
            let first = best[i].best;
            targets.extend(first);
            let rest = (partners.into_iter().map(|(_, j)| j)).filter(|&j| Some(j) != first);
            let room = CANDIDATES - usize::from(first.is_some());
            targets.extend(rest.take(room));
            starts.push(targets.len());
        }
        Candidates {
            starts,
            targets,
            d_b: acc.target().d(),
        }
    }

    /// `sum w_r x_i y_j` of every candidate pair (`[candidate * replicates + r]`), the weights
    /// `replicates` a sample.
    fn cross_sums(
        &self,
        (source, target): (&CodeBatch, &CodeBatch),
        weights: &[u8],
        replicates: usize,
    ) -> Vec<f64> {
        let mut sums = vec![0.0; self.targets.len() * replicates];
        // Where each target feature sits in the sample's code, `u32::MAX` where absent.
        let mut slot = vec![u32::MAX; self.d_b];
        for (n, w) in weights.chunks_exact(replicates).enumerate() {
            let (x, y) = (source.get(n), target.get(n));
            for (k, &j) in y.features.iter().enumerate() {
                slot[j as usize] = k as u32;
            }
            for (&i, &xi) in x.features.iter().zip(x.values) {
                let span = self.starts[i as usize]..self.starts[i as usize + 1];
                for c in span {
                    let k = slot[self.targets[c] as usize];
                    if k != u32::MAX {
                        let xy = xi as f64 * y.values[k as usize] as f64;
                        let at = c * replicates;
                        for (r, &w) in w.iter().enumerate() {
                            sums[at + r] += w as f64 * xy;
                        }
                    }
                }
            }
            for &j in y.features {
                slot[j as usize] = u32::MAX;
            }
        }
        sums
    }
}

/// Each source feature's MPPC in each replicate (`[feature * replicates + r]`): the largest
/// correlation with its candidates, 0 with a dead or constant one (as [`super::mppc`]).
fn replicate_mppc(
    candidates: &Candidates,
    sums: &[f64],
    x: &ReplicateMoments,
    y: &ReplicateMoments,
) -> Vec<f32> {
    let replicates = x.replicates;
    let d_a = candidates.starts.len() - 1;
    let mut out = vec![0f32; d_a * replicates];
    for i in 0..d_a {
        let span = candidates.starts[i]..candidates.starts[i + 1];
        for r in 0..replicates {
            let sx = x.spread(i, r);
            let mut best = f64::NEG_INFINITY;
            for c in span.clone() {
                let j = candidates.targets[c] as usize;
                let sy = y.spread(j, r);
                let rho = if sx > 0.0 && sy > 0.0 {
                    let num = x.n[r] * sums[c * replicates + r] - x.sum(i, r) * y.sum(j, r);
                    (num / (sx * sy)).clamp(-1.0, 1.0)
                } else {
                    0.0
                };
                best = best.max(rho);
            }
            out[i * replicates + r] = if best.is_finite() { best as f32 } else { 0.0 };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// Sparse non-negative codes, `n` samples of `d` features, each firing on about a
    /// quarter of the samples; feature `j` of `partner` (where it has one) fires with feature
    /// `j` here, most of the time.
    fn codes(n: usize, d: usize, seed: u64, partner: Option<&[Vec<f32>]>) -> Vec<Vec<f32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|s| {
                (0..d)
                    .map(|j| match (j, partner) {
                        (j, Some(p)) if j < p[s].len() && p[s][j] > 0.0 && rng.random_bool(0.8) => {
                            p[s][j] + rng.random_range(0.0..0.5)
                        }
                        _ if rng.random_bool(0.25) => rng.random_range(0.1..2.0),
                        _ => 0.0,
                    })
                    .collect()
            })
            .collect()
    }

    fn batch(rows: &[Vec<f32>]) -> CodeBatch {
        let ids: Vec<u64> = (0..rows.len() as u64).map(|s| s * 5 + 2).collect();
        CodeBatch::from_dense(rows, &ids)
    }

    /// wMPPC of `a` against `b` with sample `n` counted `w[n]` times, every pair, in float64.
    fn weighted_wmppc(a: &[Vec<f32>], b: &[Vec<f32>], w: &[f64]) -> Option<f64> {
        let n: f64 = w.iter().sum();
        let moments = |rows: &[Vec<f32>], i: usize| {
            let (mut s, mut ss) = (0.0, 0.0);
            for (r, &wr) in rows.iter().zip(w) {
                s += wr * r[i] as f64;
                ss += wr * (r[i] as f64).powi(2);
            }
            let var = n * ss - s * s;
            (
                s,
                if ss == 0.0 || var <= 1e-9 * n * ss {
                    0.0
                } else {
                    var.sqrt()
                },
            )
        };
        let (mut num, mut den) = (0.0, 0.0);
        for i in 0..a[0].len() {
            let (sx, spx) = moments(a, i);
            if spx == 0.0 {
                continue;
            }
            let mut best = f64::NEG_INFINITY;
            for j in 0..b[0].len() {
                let (sy, spy) = moments(b, j);
                let rho = match spy > 0.0 {
                    true => {
                        let sxy: f64 = (a.iter().zip(b).zip(w))
                            .map(|((x, y), &wr)| wr * x[i] as f64 * y[j] as f64)
                            .sum();
                        ((n * sxy - sx * sy) / (spx * spy)).clamp(-1.0, 1.0)
                    }
                    false => 0.0,
                };
                best = best.max(rho);
            }
            num += sx * best;
            den += sx;
        }
        (den != 0.0).then(|| num / den)
    }

    fn accumulated(a: &[Vec<f32>], b: &[Vec<f32>]) -> CoactivationAccumulator {
        let mut acc = CoactivationAccumulator::new(a[0].len(), b[0].len());
        acc.add_batch(&batch(a), &batch(b));
        acc
    }

    #[test]
    fn replicates_are_the_wmppc_of_the_reweighed_samples_in_float64() {
        // A target of fewer features than candidates: every pair is a candidate, and each
        // replicate's value is exactly its reweighed wMPPC.
        let a = codes(400, 10, 1, None);
        let b = codes(400, CANDIDATES - 2, 2, Some(&a));
        let acc = accumulated(&a, &b);
        let matches: Matches = vec![vec![super::super::mppc(&acc)]];
        let kept = [batch(&a), batch(&b)];
        let values = replicate_values(&kept, &[vec![acc]], &matches, 20, 3);
        let weights = poisson_weights(3, kept[0].sample_ids(), 20);
        assert_eq!(values.len(), 20);
        for (r, value) in values.iter().enumerate() {
            let w: Vec<f64> = weights
                .iter()
                .skip(r)
                .step_by(20)
                .map(|&x| x as f64)
                .collect();
            let expected = weighted_wmppc(&a, &b, &w).unwrap();
            assert!(
                (value[0].unwrap() - expected).abs() < 1e-6,
                "replicate {r}: {value:?} vs {expected}"
            );
        }
    }

    #[test]
    fn the_interval_holds_the_value_and_narrows_as_samples_grow() {
        let width = |n: usize| {
            let a = codes(n, 16, 4, None);
            let b = codes(n, 24, 5, Some(&a));
            let acc = accumulated(&a, &b);
            let matches: Matches = vec![vec![super::super::mppc(&acc)]];
            let value = super::super::wmppc(&matches[0][0]).unwrap();
            let kept = [batch(&a), batch(&b)];
            let replicates = replicate_values(&kept, &[vec![acc]], &matches, 200, 6);
            let interval = intervals(&replicates, &[Some(value)], &[Some(value + 1.0)])[0];
            let (low, high) = (interval.low.unwrap(), interval.high.unwrap());
            assert!(low < value && value < high, "{low} {value} {high}");
            // A floor above every replicate: the test cannot tell the value from it.
            assert_eq!(interval.floor_p, Some(1.0));
            high - low
        };
        let ratio = width(3200) / width(800);
        // 1/sqrt(4) = 0.5, give or take the bootstrap's own noise.
        assert!((0.35..0.7).contains(&ratio), "{ratio}");
        // Moved to the value 0.65 (a bias of -0.1): 0.6 and 0.7, neither at or below 0.1.
        let above = intervals(
            &[vec![Some(0.5)], vec![Some(0.6)]],
            &[Some(0.65)],
            &[Some(0.1)],
        );
        assert_eq!(above[0].floor_p, Some(1.0 / 3.0));
        assert!((above[0].bias.unwrap() + 0.1).abs() < 1e-12);
        assert_eq!((above[0].low, above[0].high), (Some(0.6), Some(0.7)));
    }

    #[test]
    fn a_value_of_chance_correlations_is_not_told_from_its_floor() {
        // Independent codes: the value is all chance, and its replicates find more of it.
        let a = codes(1500, 16, 7, None);
        let b = codes(1500, 64, 8, None);
        let acc = accumulated(&a, &b);
        let matches: Matches = vec![vec![super::super::mppc(&acc)]];
        let value = super::super::wmppc(&matches[0][0]).unwrap();
        let kept = [batch(&a), batch(&b)];
        let replicates = replicate_values(&kept, &[vec![acc]], &matches, 200, 9);
        let raw: Vec<f64> = replicates.iter().filter_map(|r| r[0]).collect();
        let above = raw.iter().filter(|&&r| r > value).count();
        assert!(
            above > 150,
            "{above} of 200 replicates above the value {value}"
        );
        // A floor at the value itself (what permutations would give): no evidence above it,
        // and the interval about the value, not about the lifted replicates.
        let interval = intervals(&replicates, &[Some(value)], &[Some(value)])[0];
        assert!(interval.bias.unwrap() > 0.0, "{interval:?}");
        assert!(
            (0.3..0.7).contains(&interval.floor_p.unwrap()),
            "{interval:?}"
        );
        assert!(interval.low.unwrap() < value && value < interval.high.unwrap());
    }

    #[test]
    fn weights_are_poisson_one_and_depend_on_the_sample_id_alone() {
        let ids: Vec<u64> = (0..20_000).map(|i| i * 3 + 1).collect();
        let w = poisson_weights(7, &ids, 10);
        let mean = w.iter().map(|&x| x as f64).sum::<f64>() / w.len() as f64;
        let var = w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / w.len() as f64;
        assert!(
            (mean - 1.0).abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "{mean} {var}"
        );
        let zeros = w.iter().filter(|&&x| x == 0).count() as f64 / w.len() as f64;
        assert!((zeros - (-1.0f64).exp()).abs() < 0.01, "{zeros}");
        // The same sample, the same weights, in any order and company.
        let alone = poisson_weights(7, &ids[500..501], 10);
        assert_eq!(alone, w[5000..5010]);
        assert_ne!(poisson_weights(8, &ids[500..501], 10), alone);
    }
}
