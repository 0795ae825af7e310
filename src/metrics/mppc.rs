//! Exact MPPC per feature from co-activation sums (docs/DESIGN.md, section 2, "Exact
//! correlations from sparse codes").
//!
//! For a pair that fired together the correlation comes from its cross sum. For a pair that
//! never did, `Sxy_ij = 0` and `rho_ij = -(Sx_i / sx_i) * (Sy_j / sy_j)`: a product of one number
//! per source feature and one per target feature. The best such `j` for feature `i` is therefore
//! the first one, in target features sorted by `Sy_j / sy_j`, that did not fire with `i`, which a
//! short walk finds. Every pair takes part in the max; none is skipped or approximated.

use crate::stats::{CoactivationAccumulator, Moments};

/// The best match of one source feature in a target layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeatureMatch {
    /// `MPPC_i = max_j rho_ij`, signed; 0 for a dead or constant source feature.
    pub rho: f64,
    /// The target feature reaching it (ties: the smallest index); `None` for a dead or constant
    /// source feature, or an empty target.
    pub best: Option<u32>,
    /// `S_i = sum_n f_i(n)`; 0 for a dead or constant feature.
    pub weight: f64,
}

/// Per-feature quantities of one side: `1 / sx` (0 when dead or constant) and `Sx / sx`.
struct Side<'a> {
    m: &'a Moments,
    inv_spread: Vec<f64>,
    ratio: Vec<f64>,
}

impl<'a> Side<'a> {
    fn new(m: &'a Moments) -> Self {
        let inv_spread: Vec<f64> = (0..m.d())
            .map(|i| match m.spread(i) {
                s if s > 0.0 => 1.0 / s,
                _ => 0.0,
            })
            .collect();
        let ratio = (0..m.d()).map(|i| m.sums()[i] * inv_spread[i]).collect();
        Side {
            m,
            inv_spread,
            ratio,
        }
    }

    fn live(&self, i: usize) -> bool {
        self.inv_spread[i] > 0.0
    }
}

fn better(candidate: (f64, usize), best: (f64, Option<u32>)) -> bool {
    match best.1 {
        None => true,
        Some(j) => candidate.0 > best.0 || (candidate.0 == best.0 && (candidate.1 as u32) < j),
    }
}

/// MPPC of every source feature of `acc` against its target features, with the best match.
/// Dense sums are scanned on the accumulator's threads ([`CoactivationAccumulator::options`]).
///
/// Dead and constant features have no correlation: `rho := 0` with every feature (docs/DESIGN.md, section 1), so a
/// dead or constant target feature is a candidate of value 0, and a dead or constant source
/// feature gets MPPC 0, no best match and weight 0.
pub fn mppc(acc: &CoactivationAccumulator) -> Vec<FeatureMatch> {
    let (a, b) = (Side::new(acc.source()), Side::new(acc.target()));
    let n = acc.samples() as f64;
    let (d_a, d_b) = (a.m.d(), b.m.d());
    let mut best: Vec<(f64, Option<u32>)> = vec![(f64::NEG_INFINITY, None); d_a];

    if let Some(cross) = acc.dense_cross() {
        return dense(&a, &b, n, cross, acc.options().threads);
    }

    // Dead or constant target features: rho = 0 for every source feature.
    if let Some(dead) = (0..d_b).find(|&j| !b.live(j)) {
        for (i, slot) in best.iter_mut().enumerate() {
            if a.live(i) {
                *slot = (0.0, Some(dead as u32));
            }
        }
    }

    // Pairs held by the accumulator: from their sums.
    let (sx, sy) = (a.m.sums(), b.m.sums());
    acc.for_each_pair(|i, j, sxy| {
        if a.live(i) && b.live(j) {
            let rho =
                ((n * sxy - sx[i] * sy[j]) * a.inv_spread[i] * b.inv_spread[j]).clamp(-1.0, 1.0);
            if better((rho, j), best[i]) {
                best[i] = (rho, Some(j as u32));
            }
        }
    });

    // Pairs that never fired together: rho = -ratio_a[i] * ratio_b[j].
    {
        let mut order: Vec<usize> = (0..d_b).filter(|&j| b.live(j)).collect();
        // Ascending ratio, then ascending index: the first unheld j maximises -a*b for a > 0
        // and, among equal values, has the smallest index.
        order.sort_unstable_by(|&x, &y| b.ratio[x].total_cmp(&b.ratio[y]).then(x.cmp(&y)));
        let mut descending: Option<Vec<usize>> = None;
        for i in (0..d_a).filter(|&i| a.live(i)) {
            let ra = a.ratio[i];
            let found = if ra > 0.0 {
                order.iter().copied().find(|&j| !acc.holds(i, j))
            } else if ra < 0.0 {
                // Codes with negative values only: walk from the largest ratio.
                let order = descending.get_or_insert_with(|| {
                    let mut o = order.clone();
                    o.sort_unstable_by(|&x, &y| b.ratio[y].total_cmp(&b.ratio[x]).then(x.cmp(&y)));
                    o
                });
                order.iter().copied().find(|&j| !acc.holds(i, j))
            } else {
                // Every unheld pair has rho = 0: the smallest unheld index.
                (0..d_b).find(|&j| b.live(j) && !acc.holds(i, j))
            };
            if let Some(j) = found {
                let rho = (-ra * b.ratio[j]).clamp(-1.0, 1.0);
                if better((rho, j), best[i]) {
                    best[i] = (rho, Some(j as u32));
                }
            }
        }
    }

    best.into_iter()
        .enumerate()
        .map(|(i, (rho, j))| FeatureMatch {
            rho: if j.is_some() { rho } else { 0.0 },
            best: j,
            weight: a.m.weight(i),
        })
        .collect()
}

/// Every pair of positive correlation, `(i, j, rho)`: the candidates of the one-to-one
/// matching ([`super::one_to_one`]). With codes that are never negative only pairs that fired
/// together correlate positively; where some feature's mean is negative, the pairs that never
/// did are searched too.
pub(crate) fn positive_correlations(acc: &CoactivationAccumulator) -> Vec<(u32, u32, f64)> {
    let mut out = Vec::new();
    let mut keep = |i: usize, j: usize, rho: f64| {
        if rho > 0.0 {
            out.push((i as u32, j as u32, rho.min(1.0)));
        }
    };
    for_each_held_correlation(acc, &mut keep);
    if acc.dense_cross().is_some() {
        return out;
    }
    let (a, b) = (Side::new(acc.source()), Side::new(acc.target()));
    let (d_a, d_b) = (a.m.d(), b.m.d());
    if a.ratio.iter().chain(&b.ratio).any(|&r| r < 0.0) {
        for i in (0..d_a).filter(|&i| a.live(i)) {
            for j in (0..d_b).filter(|&j| b.live(j) && !acc.holds(i, j)) {
                keep(i, j, -a.ratio[i] * b.ratio[j]);
            }
        }
    }
    out
}

/// `f(i, j, rho_ij)` for every pair of live features the accumulator holds (those that fired
/// together; every pair of dense sums).
pub(crate) fn for_each_held_correlation(
    acc: &CoactivationAccumulator,
    mut f: impl FnMut(usize, usize, f64),
) {
    let (a, b) = (Side::new(acc.source()), Side::new(acc.target()));
    let n = acc.samples() as f64;
    let (sx, sy) = (a.m.sums(), b.m.sums());
    let rho = |i: usize, j: usize, sxy: f64| {
        ((n * sxy - sx[i] * sy[j]) * a.inv_spread[i] * b.inv_spread[j]).clamp(-1.0, 1.0)
    };
    if let Some(cross) = acc.dense_cross() {
        let (d_a, d_b) = (a.m.d(), b.m.d());
        for i in (0..d_a).filter(|&i| a.live(i)) {
            for j in (0..d_b).filter(|&j| b.live(j)) {
                f(i, j, rho(i, j, cross[i * d_b + j]));
            }
        }
        return;
    }
    acc.for_each_pair(|i, j, sxy| {
        if a.live(i) && b.live(j) {
            f(i, j, rho(i, j, sxy));
        }
    });
}

/// MPPC from dense cross sums: every pair from its sums, one row at a time, the rows split
/// between the accumulator's threads. A dead or constant target has `1 / sy = 0`, hence
/// `rho = 0` as docs/DESIGN.md says, with no special case; scanning `j` upwards and replacing
/// only on a strictly larger value keeps the smallest index among ties.
fn dense(a: &Side<'_>, b: &Side<'_>, n: f64, cross: &[f64], threads: usize) -> Vec<FeatureMatch> {
    let d_a = a.m.d();
    let unmatched = FeatureMatch {
        rho: 0.0,
        best: None,
        weight: 0.0,
    };
    let mut matches = vec![unmatched; d_a];
    let rows_per_thread = d_a.div_ceil(threads.max(1)).max(1);
    let fill = |first: usize, part: &mut [FeatureMatch]| {
        for (r, slot) in part.iter_mut().enumerate() {
            *slot = dense_row(a, b, n, cross, first + r);
        }
    };
    std::thread::scope(|scope| {
        let mut parts = matches.chunks_mut(rows_per_thread).enumerate();
        let first = parts.next();
        for (c, part) in parts {
            let fill = &fill;
            scope.spawn(move || fill(c * rows_per_thread, part));
        }
        if let Some((_, part)) = first {
            fill(0, part);
        }
    });
    matches
}

/// The best match of source feature `i` among every target feature, from dense sums.
fn dense_row(a: &Side<'_>, b: &Side<'_>, n: f64, cross: &[f64], i: usize) -> FeatureMatch {
    let d_b = b.m.d();
    let sy = b.m.sums();
    let weight = a.m.weight(i);
    if !a.live(i) || d_b == 0 {
        return FeatureMatch {
            rho: 0.0,
            best: None,
            weight,
        };
    }
    let (sx, inv) = (a.m.sums()[i], a.inv_spread[i]);
    let row = &cross[i * d_b..(i + 1) * d_b];
    let (best, best_j) = first_largest(d_b, |start, rho| {
        let end = start + rho.len();
        let targets = (row[start..end].iter())
            .zip(&sy[start..end])
            .zip(&b.inv_spread[start..end]);
        for (r, ((&sxy, &sy), &inv_y)) in rho.iter_mut().zip(targets) {
            *r = (n * sxy - sx * sy) * inv * inv_y;
        }
    });
    FeatureMatch {
        rho: best.clamp(-1.0, 1.0),
        best: Some(best_j as u32),
        weight,
    }
}

/// Values [`first_largest`] computes at a time.
const ROW_CHUNK: usize = 64;

/// The largest of `len` values and its index, as a scan from index 0 that replaces only on a
/// strictly larger value keeps them (NaNs never win; among equal values, the first); `(-inf, 0)`
/// when none is above -inf. `fill(start, chunk)` computes the values from `start` into `chunk`.
/// By chunks, so that the compiler vectorises the arithmetic and each chunk's maximum; a chunk
/// is scanned for its index only when it beats the best so far.
fn first_largest(len: usize, mut fill: impl FnMut(usize, &mut [f64])) -> (f64, usize) {
    let (mut best, mut best_j) = (f64::NEG_INFINITY, 0);
    let mut buffer = [0f64; ROW_CHUNK];
    for start in (0..len).step_by(ROW_CHUNK) {
        let chunk = &mut buffer[..ROW_CHUNK.min(len - start)];
        fill(start, chunk);
        if chunk_max(chunk) > best {
            for (t, &v) in chunk.iter().enumerate() {
                if v > best {
                    (best, best_j) = (v, start + t);
                }
            }
        }
    }
    (best, best_j)
}

/// The largest value of `values` that is above every other by `>` (NaNs never are), or -inf.
fn chunk_max(values: &[f64]) -> f64 {
    let mut lanes = [f64::NEG_INFINITY; 8];
    let groups = values.chunks_exact(8);
    let rest = groups.remainder();
    for group in groups {
        for (lane, &v) in lanes.iter_mut().zip(group) {
            if v > *lane {
                *lane = v;
            }
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(rest) {
        if v > *lane {
            *lane = v;
        }
    }
    lanes
        .into_iter()
        .fold(f64::NEG_INFINITY, |m, v| if v > m { v } else { m })
}

/// The best match over several target layers (their union of features), with the index of the
/// layer it is in. Ties go to the earlier layer.
pub fn best_over_layers(per_layer: &[Vec<FeatureMatch>]) -> Vec<(FeatureMatch, Option<usize>)> {
    let Some(first) = per_layer.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| {
            let mut best: (FeatureMatch, Option<usize>) = (per_layer[0][i], None);
            for (layer, matches) in per_layer.iter().enumerate() {
                let m = matches[i];
                if m.best.is_some() && (best.1.is_none() || m.rho > best.0.rho) {
                    best = (m, Some(layer));
                }
            }
            best
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan [`first_largest`] stands for.
    fn scan(values: &[f64]) -> (f64, usize) {
        let (mut best, mut best_j) = (f64::NEG_INFINITY, 0);
        for (j, &v) in values.iter().enumerate() {
            if v > best {
                (best, best_j) = (v, j);
            }
        }
        (best, best_j)
    }

    #[test]
    fn the_chunked_search_finds_what_a_scan_finds_ties_nans_and_signed_zeros_included() {
        let special = [
            0.5,
            0.0,
            -0.0,
            f64::NAN,
            f64::NEG_INFINITY,
            f64::INFINITY,
            -0.5,
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for len in [0, 1, 7, 8, 9, 63, 64, 65, 127, 128, 129, 300] {
            for trial in 0..200 {
                // Mostly a few repeated values (ties), sometimes a special one or a fresh one.
                let values: Vec<f64> = (0..len)
                    .map(|_| match next() % 10 {
                        0 => special[(next() % special.len() as u64) as usize],
                        1 => (next() % 1000) as f64 / 1000.0 - 0.5,
                        r => [0.1, 0.2, 0.3, -0.2][(r % 4) as usize],
                    })
                    .collect();
                let found = first_largest(len, |start, chunk| {
                    chunk.copy_from_slice(&values[start..start + chunk.len()])
                });
                let (want, want_j) = scan(&values);
                assert_eq!(found.1, want_j, "length {len}, trial {trial}");
                assert_eq!(
                    found.0.to_bits(),
                    want.to_bits(),
                    "length {len}, trial {trial}"
                );
            }
        }
    }
}
