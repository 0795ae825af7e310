//! The kNN family and kernel CKA on a fixed subsample of the samples, as the Platonic
//! Representation Hypothesis' `metrics.py` (Huh et al. 2024) computes them: mutual kNN, cycle
//! kNN, CKNNA and CKA of the inner-product kernel (biased and unbiased HSIC), each on vectors
//! prepared as its `measure_alignment.py` prepares them by default (clipped to the exact 95th
//! percentile of the absolute values, then L2-normalised).
//!
//! A layer's `m x m` kernel (`m` the subsample's size) is formed once, for its neighbours;
//! everything else is `O(m k)` on the neighbours or `O(m d_A d_B)` in feature space.

use tch::{Device, Kind, Tensor};

use super::{sample_hash, Measure, SimilarityOptions};

/// The positions (into `ids`) of the subsample: the `m` ids of smallest seeded hash. The same
/// ids for every encoder and every order of arrival, and a new shard's ids displace old ones
/// exactly as if all had come at once.
pub fn subsample(ids: &[u64], seed: u64, m: usize) -> Vec<usize> {
    let mut order: Vec<(u64, usize)> = (ids.iter().enumerate())
        .map(|(i, &id)| (sample_hash(seed, id), i))
        .collect();
    order.sort_unstable();
    let mut kept: Vec<usize> = order.into_iter().take(m).map(|(_, i)| i).collect();
    kept.sort_unstable();
    kept
}

/// One layer's rows on the subsample, prepared: clipped to `+- q`, `q` the exact `quantile` of the
/// absolute values (`sort(|x|)[floor(quantile * numel)]`, as `remove_outliers(exact=True)`), then
/// each row scaled to unit L2 norm. `rows`: `[m, d]` float64.
pub fn prepare(rows: &Tensor, options: &SimilarityOptions) -> Tensor {
    let mut rows = rows.shallow_clone();
    if let Some(q) = options.clip_quantile.filter(|&q| q < 1.0) {
        let flat = rows.abs().flatten(0, -1);
        let numel = flat.size()[0];
        let at = ((q * numel as f64) as i64).min(numel - 1);
        // The (at + 1)-th smallest, without sorting every value.
        let (limit, _) = flat.kthvalue(at + 1, 0, false);
        let limit = limit.double_value(&[]);
        rows = rows.clamp(-limit, limit);
    }
    if options.normalize {
        // As torch.nn.functional.normalize: a zero row stays zero.
        let norms = rows.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
        rows /= norms;
    }
    rows
}

/// A layer's subsample as the measures need it: each row's `k` nearest neighbours (itself
/// excluded) with their inner products, and what kernel CKA needs of the rows. Kernel CKA of
/// the inner-product kernel is taken in feature space (`trace(K H L H) = ||(HA)^T (HB)||_F^2`,
/// and the unbiased HSIC's sums from row sums and diagonals): exact, and no `m x m` product.
pub struct Neighbourhood {
    /// The rows centred on their mean, and the mean: rows that all point one way leave a
    /// centred kernel far smaller than the kernel, which centring the kernel itself would lose
    /// to rounding.
    centred: Tensor,
    mean: Tensor,
    /// `K_ii`, and the off-diagonal row sums of `K`: `a_i . sum_j a_j - K_ii`.
    diagonal: Tensor,
    row_sums: Tensor,
    /// `sum_{i != j} K_ij`.
    off_diagonal: f64,
    /// The biased and unbiased HSIC of the kernel with itself.
    hsic_self: (f64, f64),
    /// Per row, its neighbours and their inner products, nearest first.
    knn: Vec<Vec<(usize, f64)>>,
    /// CKNNA's similarity of the kernel with itself (its neighbours' kernel, unbiased HSIC).
    cknna_self: f64,
}

impl Neighbourhood {
    /// From prepared rows `[m, d]`.
    pub fn of(rows: &Tensor, k: usize) -> Neighbourhood {
        let m = rows.size()[0];
        let mean = rows.mean_dim([0i64].as_slice(), false, Kind::Double);
        let centred = rows - mean.unsqueeze(0);
        let diagonal = rows.square().sum_dim_intlist(1, false, Kind::Double);
        let total = rows.sum_dim_intlist(0, false, Kind::Double);
        let row_sums = rows.mv(&total) - &diagonal;
        let off_diagonal = value(&total.dot(&total)) - value(&diagonal.sum(Kind::Double));
        let knn = {
            // One `m x m` kernel at a time, for the neighbours only.
            let gram = rows.mm(&rows.tr());
            let masked = gram - Tensor::eye(m, (Kind::Double, rows.device())) * 1e300;
            let k = (k as i64).min(m - 1).max(1);
            let (values, indices) = masked.topk(k, 1, true, true);
            let values = Vec::<f64>::try_from(values.flatten(0, -1)).unwrap_or_default();
            let indices = Vec::<i64>::try_from(indices.flatten(0, -1)).unwrap_or_default();
            (0..m as usize)
                .map(|i| {
                    let at = i * k as usize..(i + 1) * k as usize;
                    (indices[at.clone()].iter().zip(&values[at]))
                        .map(|(&j, &v)| (j as usize, v))
                        .collect()
                })
                .collect::<Vec<Vec<(usize, f64)>>>()
        };
        let mut hood = Neighbourhood {
            centred,
            mean,
            diagonal,
            row_sums,
            off_diagonal,
            hsic_self: (0.0, 0.0),
            knn,
            cknna_self: 0.0,
        };
        let own = KernelProduct::of(&hood, &hood);
        hood.hsic_self = (own.hsic_biased(), own.hsic_unbiased(&hood, &hood));
        let own: Vec<Entry> = (hood.knn.iter().enumerate())
            .flat_map(|(i, row)| row.iter().map(move |&(j, v)| (i, j, v, v)))
            .collect();
        hood.cknna_self = masked_hsic_unbiased(m as usize, &own);
        hood
    }

    /// The same samples in the order `permutation` (`[m]` indices; row `i` is sample
    /// `permutation[i]`'s), as if the layer had seen the samples shuffled.
    pub fn permuted(&self, permutation: &[usize]) -> Neighbourhood {
        let index: Vec<i64> = permutation.iter().map(|&p| p as i64).collect();
        let index = Tensor::from_slice(&index).to_device(self.centred.device());
        let mut inverse = vec![0; permutation.len()];
        for (i, &p) in permutation.iter().enumerate() {
            inverse[p] = i;
        }
        Neighbourhood {
            centred: self.centred.index_select(0, &index),
            mean: self.mean.shallow_clone(),
            diagonal: self.diagonal.index_select(0, &index),
            row_sums: self.row_sums.index_select(0, &index),
            off_diagonal: self.off_diagonal,
            hsic_self: self.hsic_self,
            knn: (permutation.iter())
                .map(|&p| self.knn[p].iter().map(|&(j, v)| (inverse[j], v)).collect())
                .collect(),
            cknna_self: self.cknna_self,
        }
    }

    fn len(&self) -> usize {
        self.knn.len()
    }

    fn neighbours(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.knn[i].iter().map(|&(j, _)| j)
    }
}

fn value(t: &Tensor) -> f64 {
    t.double_value(&[])
}

/// An entry of two kernels kept to neighbours: `(i, j, K_ij, L_ij)`.
type Entry = (usize, usize, f64, f64);

/// Every kNN-family measure between two layers' neighbourhoods on the same samples:
/// `[forward, reverse]`, the reverse those of `b` against `a` (cycle kNN and CKNNA are not
/// symmetric), empty unless `reverse`.
pub fn measures(
    a: &Neighbourhood,
    b: &Neighbourhood,
    k: usize,
    reverse: bool,
) -> [Vec<(Measure, Option<f64>)>; 2] {
    let m = a.len();
    let k_used = a.knn.first().map_or(0, Vec::len);
    let shared: usize = (0..m)
        .map(|i| {
            a.neighbours(i)
                .filter(|&j| b.neighbours(i).any(|l| l == j))
                .count()
        })
        .sum();
    let mutual = finite(shared as f64 / (m * k_used) as f64);
    let product = KernelProduct::of(a, b);
    let kernel = cka(product.hsic_biased(), a.hsic_self.0, b.hsic_self.0);
    let unbiased = (m > 3)
        .then(|| cka(product.hsic_unbiased(a, b), a.hsic_self.1, b.hsic_self.1))
        .flatten();
    let table = |a: &Neighbourhood, b: &Neighbourhood| {
        vec![
            (Measure::MutualKnn, mutual),
            (Measure::CycleKnn, cycle(a, b)),
            (Measure::Cknna, (k >= 2).then(|| cknna(a, b)).flatten()),
            (Measure::KernelCka, kernel),
            (Measure::KernelCkaUnbiased, unbiased),
        ]
    };
    [table(a, b), if reverse { table(b, a) } else { Vec::new() }]
}

/// The share of samples `i` that are among the `a`-neighbours of one of their `b`-neighbours.
fn cycle(a: &Neighbourhood, b: &Neighbourhood) -> Option<f64> {
    let m = a.len();
    let cycled = (0..m)
        .filter(|&i| b.neighbours(i).any(|j| a.neighbours(j).any(|l| l == i)))
        .count();
    finite(cycled as f64 / m as f64)
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// CKA of two kernels from their HSICs, with `metrics.py`'s `1e-6` in the denominator so that
/// its numbers reproduce.
fn cka(kl: f64, kk: f64, ll: f64) -> Option<f64> {
    finite(kl / ((kk * ll).sqrt() + 1e-6))
}

/// What both HSICs of two inner-product kernels take of the rows: one product, `C = (HA)^T (HB)`
/// (`d_A x d_B`). `||A^T B||_F^2` follows from it, `A = HA + 1 mu_A^T` giving
/// `A^T B = C + m mu_A mu_B^T`.
struct KernelProduct {
    /// `||C||_F^2`: `trace(K H L H)`, the biased HSIC.
    centred: f64,
    /// `||A^T B||_F^2`: `sum_ij K_ij L_ij`.
    raw: f64,
}

impl KernelProduct {
    fn of(a: &Neighbourhood, b: &Neighbourhood) -> KernelProduct {
        let m = a.len() as f64;
        let c = a.centred.tr().mm(&b.centred);
        let centred = value(&c.square().sum(Kind::Double));
        let cross = value(&a.mean.dot(&c.mv(&b.mean)));
        let means = value(&a.mean.dot(&a.mean)) * value(&b.mean.dot(&b.mean));
        KernelProduct {
            centred,
            raw: centred + 2.0 * m * cross + m * m * means,
        }
    }

    fn hsic_biased(&self) -> f64 {
        self.centred
    }

    /// The unbiased HSIC of Song et al. (2012), as `metrics.py`'s `hsic_unbiased`: with `K~`,
    /// `L~` the kernels with zero diagonals, `(sum(K~ . L~^T) + sum(K~) sum(L~) / ((m-1)(m-2)) -
    /// 2 sum(K~ L~) / (m-2)) / (m(m-3))`; for inner-product kernels `sum(K~ . L~) = ||A^T
    /// B||_F^2 - sum_i K_ii L_ii` and `sum(K~ L~)` is the dot product of the off-diagonal row
    /// sums.
    fn hsic_unbiased(&self, a: &Neighbourhood, b: &Neighbourhood) -> f64 {
        let m = a.len() as f64;
        let trace_term = self.raw - value(&a.diagonal.dot(&b.diagonal));
        let sums = a.off_diagonal * b.off_diagonal / ((m - 1.0) * (m - 2.0));
        let product = value(&a.row_sums.dot(&b.row_sums));
        (trace_term + sums - 2.0 * product / (m - 2.0)) / (m * (m - 3.0))
    }
}

/// CKNNA with the unbiased HSIC of the kernels kept to mutual neighbours (`metrics.py`'s
/// `cknna(unbiased=True)`, its default).
fn cknna(a: &Neighbourhood, b: &Neighbourhood) -> Option<f64> {
    let entries: Vec<Entry> = (0..a.len())
        .flat_map(|i| {
            (a.knn[i].iter()).filter_map(move |&(j, kv)| {
                let lv = b.knn[i].iter().find(|&&(l, _)| l == j)?.1;
                Some((i, j, kv, lv))
            })
        })
        .collect();
    let kl = masked_hsic_unbiased(a.len(), &entries);
    finite(kl / ((a.cknna_self * b.cknna_self).sqrt() + 1e-6))
}

/// The unbiased HSIC of two `m x m` kernels that are zero but at `entries` (`(i, j, K_ij,
/// L_ij)`, off the diagonal), in `O(entries)`: `metrics.py`'s `hsic_unbiased` of the masked
/// kernels, whose masks (row-wise neighbours) are not symmetric.
fn masked_hsic_unbiased(m: usize, entries: &[Entry]) -> f64 {
    let m_f = m as f64;
    let at: std::collections::HashMap<(usize, usize), (f64, f64)> = entries
        .iter()
        .map(|&(i, j, k, l)| ((i, j), (k, l)))
        .collect();
    // sum_ij K_ij L_ji
    let trace_term: f64 = (entries.iter())
        .filter_map(|&(i, j, k, _)| at.get(&(j, i)).map(|&(_, l)| k * l))
        .sum();
    let (sum_k, sum_l) = entries
        .iter()
        .fold((0.0, 0.0), |(a, b), e| (a + e.2, b + e.3));
    // sum(K L) = sum_j colsum(K)_j rowsum(L)_j
    let (mut col_k, mut row_l) = (vec![0.0; m], vec![0.0; m]);
    for &(i, j, k, l) in entries {
        col_k[j] += k;
        row_l[i] += l;
    }
    let product: f64 = col_k.iter().zip(&row_l).map(|(c, r)| c * r).sum();
    (trace_term + sum_k * sum_l / ((m_f - 1.0) * (m_f - 2.0)) - 2.0 * product / (m_f - 2.0))
        / (m_f * (m_f - 3.0))
}

/// The subsample's rows of one layer as a float64 tensor: `values` row-major `[n, d]`, `kept`
/// the positions to take.
pub fn rows_at(values: &[f32], d: usize, kept: &[usize], device: Device) -> Tensor {
    let mut out = Vec::with_capacity(kept.len() * d);
    for &i in kept {
        out.extend_from_slice(&values[i * d..(i + 1) * d]);
    }
    Tensor::from_slice(&out)
        .view([kept.len() as i64, d as i64])
        .to_kind(Kind::Double)
        .to_device(device)
}
