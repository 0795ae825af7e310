//! The measures that are functions of the moments: linear CKA, the CCA family, Procrustes and
//! the ridge's predictivity. Each is computed from the centred sums exactly as from the centred
//! activations `X` (`n x d_x`) and `Y` (`n x d_y`) themselves, since each depends on the data only
//! through `X^T X`, `Y^T Y` and `X^T Y` (docs/DESIGN.md, "Representation similarity").

use tch::{Kind, Tensor};

use super::moments::{CrossMoments, LayerMoments};
use super::{Measure, SimilarityOptions};

/// A layer's moments made ready for the measures, once for every pair and permutation it is
/// in (a permutation of the other side's samples leaves them as they are): its centred sums
/// over every row, their principal directions (largest first) and its mean.
pub struct LayerPrep {
    centred: Tensor,
    mean: Tensor,
    n: u64,
    values: Vec<f64>,
    vectors: Tensor,
}

impl LayerPrep {
    pub fn of(m: &LayerMoments) -> LayerPrep {
        let total = m.total();
        LayerPrep::with_scatter(total.centred(), total.mean(), total.n)
    }

    /// The preparation of the rows `x` (`n x d`, float64) themselves.
    fn of_rows(x: &Tensor) -> LayerPrep {
        let mean = x.mean_dim([0i64].as_slice(), false, Kind::Double);
        let centred = x - mean.unsqueeze(0);
        LayerPrep::with_scatter(centred.tr().mm(&centred), mean, x.size()[0] as u64)
    }

    /// From the centred sums `sum (x - m)(x - m)^T`, the mean `m` and the row count.
    fn with_scatter(centred: Tensor, mean: Tensor, n: u64) -> LayerPrep {
        let (values, vectors) = match centred.f_linalg_eigh("L") {
            Ok((values, vectors)) => (
                Vec::<f64>::try_from(values.flip([0])).unwrap_or_default(),
                vectors.flip([1]),
            ),
            // A failed decomposition leaves the CCA family undefined, not the rest.
            Err(_) => (
                Vec::new(),
                Tensor::zeros([0], (Kind::Double, centred.device())),
            ),
        };
        LayerPrep {
            mean,
            n,
            centred,
            values,
            vectors,
        }
    }

    /// `W` (`d x r`) with `W^T S W = I` on the kept principal directions.
    fn whitener(&self, keep: Keep) -> Option<Tensor> {
        let largest = self.values.first().copied().unwrap_or(0.0);
        if largest <= 0.0 || !largest.is_finite() {
            return None;
        }
        let tol = (self.values.len() as f64 * f64::EPSILON).max(RANK_CUTOFF) * largest;
        let rank = self.values.iter().take_while(|&&x| x > tol).count();
        let r = match keep {
            Keep::Rank => rank,
            Keep::Dims(d) => d.clamp(1, rank),
            Keep::Variance(share) => {
                let total: f64 = self.values.iter().take(rank).sum();
                let mut acc = 0.0;
                let mut r = 0;
                while r < rank && acc < share * total {
                    acc += self.values[r];
                    r += 1;
                }
                r.max(1)
            }
        };
        let scale: Vec<f64> = self.values[..r].iter().map(|v| v.sqrt().recip()).collect();
        let scale = Tensor::from_slice(&scale).to_device(self.vectors.device());
        Some(self.vectors.narrow(1, 0, r as i64) * scale.unsqueeze(0))
    }
}

/// The centred cross sums of a layer pair over every row.
fn centred_cross(x: &LayerPrep, y: &LayerPrep, cross: &CrossMoments) -> Tensor {
    let raw = &cross.fit + &cross.held;
    let (sx, sy) = (&x.mean * x.n as f64, &y.mean * y.n as f64);
    CrossMoments::about(&raw, (&sx, &sy, x.n), &x.mean, &y.mean)
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
}

/// Finite or nothing: a measure of constant activations is undefined, not NaN.
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Every linear measure of the layer pair (`x` the source, `y` the target), with their
/// preparations: `[forward, reverse]`, the reverse the measures of `y` against `x` (the same but
/// for the ridge's two directions, swapped, and PWCCA between layers of equal widths, weighed by
/// the other side). `reverse` false leaves the reverse empty.
pub fn measures(
    (x, px): (&LayerMoments, &LayerPrep),
    (y, py): (&LayerMoments, &LayerPrep),
    cross: &CrossMoments,
    options: &SimilarityOptions,
    reverse: bool,
) -> [Vec<(Measure, Option<f64>)>; 2] {
    let xy = centred_cross(px, py, cross);
    let (dx, dy) = (px.centred.size()[0], py.centred.size()[0]);
    // PWCCA weighs the side with fewer features, the source when equal: with equal widths the
    // reverse weighs the other side, so both sides' directions are needed.
    let forward_side = if dx <= dy { Side::X } else { Side::Y };
    let both = reverse && dx == dy;
    let directions = [
        both || forward_side == Side::X,
        both || forward_side == Side::Y,
    ];
    let full = cca(px, py, &xy, Keep::Rank, directions);
    let reduced = cca(px, py, &xy, svcca_keep(options), [false, false]);
    let pwcca_by = |side: Side| full.as_ref().and_then(|c| pwcca(px, py, c, side));
    let forward_pwcca = pwcca_by(forward_side);
    let ridge = ridge_r2(x, y, &cross.fit, &cross.held, options.ridge);
    let ridge_reverse = ridge_r2(y, x, &cross.fit.tr(), &cross.held.tr(), options.ridge);
    let symmetric = [
        (Measure::LinearCka, linear_cka(px, py, &xy)),
        (Measure::CcaMean, full.as_ref().and_then(Cca::mean)),
        (Measure::Svcca, reduced.as_ref().and_then(Cca::mean)),
        (Measure::Procrustes, procrustes(px, py, &xy)),
    ];
    let table = |pw: Option<f64>, ridge: [Option<f64>; 2]| {
        let mut v = symmetric.to_vec();
        v.insert(3, (Measure::Pwcca, pw));
        v.push((Measure::RidgeR2, ridge[0]));
        v.push((Measure::RidgeR2Reverse, ridge[1]));
        v
    };
    let forward = table(forward_pwcca, [ridge, ridge_reverse]);
    let backward = match reverse {
        true => {
            let pw = if both {
                pwcca_by(Side::Y)
            } else {
                forward_pwcca
            };
            table(pw, [ridge_reverse, ridge])
        }
        false => Vec::new(),
    };
    [forward, backward]
}

/// SVCCA between paired rows, row `i` of `x` (`n x d_x`) with row `i` of `y` (`n x d_y`), and
/// again with `y`'s rows in each order of `orders` (index tensors of `n`): the reduction and
/// CCA of [`measures`]' SVCCA, `options` choosing the directions kept (at most `max_dims` a
/// side), from the rows instead of their moments. The rows whitened once, a reordering only
/// reorders `y`'s whitened rows, so each order costs one `n x r_x x r_y` product and an `r_x x
/// r_y` SVD. `None` where a side has no variance.
pub fn svcca_of_rows(
    x: &Tensor,
    y: &Tensor,
    options: &SimilarityOptions,
    max_dims: usize,
    orders: &[Tensor],
) -> Option<(f64, Vec<f64>)> {
    let keep = svcca_keep(options);
    let whitened = |rows: &Tensor| -> Option<Tensor> {
        let rows = rows.to_kind(Kind::Double);
        let prep = LayerPrep::of_rows(&rows);
        let w = prep.whitener(keep)?;
        let most = i64::try_from(max_dims.max(1)).unwrap_or(i64::MAX);
        let w = w.narrow(1, 0, w.size()[1].min(most));
        Some((rows - prep.mean.unsqueeze(0)).mm(&w))
    };
    let (zx, zy) = (whitened(x)?, whitened(y)?);
    // `zx^T zy` is `W_x^T S_xy W_y`, the matrix whose singular values [`cca`] takes.
    let mean_rho = |zy: &Tensor| -> Option<f64> {
        let s = zx.tr().mm(zy).f_svd(true, false).ok()?.1;
        let rho = Vec::<f64>::try_from(&s.clamp(0.0, 1.0)).ok()?;
        (!rho.is_empty()).then(|| rho.iter().sum::<f64>() / rho.len() as f64)
    };
    let value = mean_rho(&zy)?;
    let null = (orders.iter())
        .filter_map(|order| mean_rho(&zy.index_select(0, order)))
        .collect();
    Some((value, null))
}

fn svcca_keep(options: &SimilarityOptions) -> Keep {
    match options.svcca_dims {
        Some(d) => Keep::Dims(d),
        None => Keep::Variance(options.svcca_variance),
    }
}

/// Linear CKA in its feature-space form: `||S_xy||_F^2 / (||S_xx||_F ||S_yy||_F)` (Kornblith et
/// al. 2019, eq. 6 with the biased HSIC; the `1/(n-1)^2` factors cancel).
fn linear_cka(x: &LayerPrep, y: &LayerPrep, xy: &Tensor) -> Option<f64> {
    let num = scalar(&xy.square().sum(Kind::Double));
    let den = scalar(&x.centred.square().sum(Kind::Double)).sqrt()
        * scalar(&y.centred.square().sum(Kind::Double)).sqrt();
    finite(num / den)
}

/// The smallest variance, relative to the largest, of a direction the CCA family whitens.
/// Whitening multiplies a direction's rounding by `sqrt(largest / its variance)`: below this,
/// two orders of summation (a run and a run that added shards) would part in the ninth digit,
/// and such directions are below what float32 activations resolve anyway.
const RANK_CUTOFF: f64 = 1e-10;

/// Which directions of a side CCA keeps.
#[derive(Clone, Copy)]
enum Keep {
    /// Every direction of non-negligible variance: above [`RANK_CUTOFF`] of the largest (and
    /// `d * eps` of it, the pseudo-inverse's rule).
    Rank,
    /// The leading principal directions that keep this share of the variance (SVCCA).
    Variance(f64),
    /// The leading principal directions, this many.
    Dims(usize),
}

/// Canonical correlations, largest first, with what PWCCA weighs them by.
struct Cca {
    rho: Vec<f64>,
    /// The canonical directions of the side(s) asked for (`W_x U`, `W_y V`), `a_i^T S_xx a_i =
    /// 1`.
    x_directions: Option<Tensor>,
    y_directions: Option<Tensor>,
}

impl Cca {
    fn mean(&self) -> Option<f64> {
        (!self.rho.is_empty()).then(|| self.rho.iter().sum::<f64>() / self.rho.len() as f64)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    X,
    Y,
}

/// The canonical correlations of the directions `keep` keeps, and the canonical directions of
/// the sides `directions` asks for (`[x, y]`): the singular values and vectors of `M = W_x^T
/// S_xy W_y`. An SVD, not the eigenvalues of `M M^T`: those square the small correlations, and
/// a correlation near 0 taken back by a square root turns rounding in the 16th digit into a
/// difference in the 8th between a run and a run that added shards.
fn cca(
    x: &LayerPrep,
    y: &LayerPrep,
    xy: &Tensor,
    keep: Keep,
    directions: [bool; 2],
) -> Option<Cca> {
    let wx = x.whitener(keep)?;
    let wy = y.whitener(keep)?;
    let m = wx.tr().mm(xy).mm(&wy);
    // `Tensor::svd`, not `linalg_svd`: tch passes the latter a driver, which only CUDA takes.
    let (u, s, v) = m.f_svd(true, directions[0] || directions[1]).ok()?;
    // Rounding may take a correlation of perfectly related data a hair above 1.
    let rho = Vec::<f64>::try_from(&s.clamp(0.0, 1.0)).ok()?;
    Some(Cca {
        rho,
        x_directions: directions[0].then(|| wx.mm(&u)),
        y_directions: directions[1].then(|| wy.mm(&v)),
    })
}

/// Projection-weighted CCA (Morcos et al. 2018): the canonical correlations weighted by how much
/// of one side each canonical variate accounts for, `alpha_i = sum_j |<h_i, x_j>|` with `h_i = X
/// a_i` (unit norm) and `x_j` the centred feature columns; that is `sum_j |(S_xx a_i)_j|`. The
/// authors' code weighs the side with fewer features (the first when equal).
fn pwcca(x: &LayerPrep, y: &LayerPrep, cca: &Cca, side: Side) -> Option<f64> {
    let (s, directions) = match side {
        Side::X => (&x.centred, cca.x_directions.as_ref()?),
        Side::Y => (&y.centred, cca.y_directions.as_ref()?),
    };
    let weights = s.mm(directions).abs();
    let alpha = Vec::<f64>::try_from(weights.sum_dim_intlist(0, false, Kind::Double)).ok()?;
    let total: f64 = alpha.iter().sum();
    finite(alpha.iter().zip(&cca.rho).map(|(a, r)| a * r).sum::<f64>() / total)
}

/// The orthogonal Procrustes distance of the centred activations, each scaled to unit Frobenius
/// norm (Ding et al. 2021): `2 - 2 ||X^T Y||_* / (||X||_F ||Y||_F)`, 0 for activations equal
/// up to a rotation and a scale, at most 2.
fn procrustes(x: &LayerPrep, y: &LayerPrep, xy: &Tensor) -> Option<f64> {
    let (_, singular, _) = xy.f_svd(true, false).ok()?;
    let nuclear = scalar(&singular.sum(Kind::Double));
    let norms = (scalar(&x.centred.trace()) * scalar(&y.centred.trace())).sqrt();
    finite((2.0 - 2.0 * nuclear / norms).max(0.0))
}

/// How well a ridge regression from `x` fitted on the fitted part predicts `y` on the held-out
/// part: `1 - RSS / TSS` summed over `y`'s features (sklearn's `variance_weighted` R^2), with
/// `lambda = ridge * trace(S_xx) / d_x` (the ridge relative to the mean variance of `x`'s
/// features, so that it means the same at any scale).
fn ridge_r2(
    x: &LayerMoments,
    y: &LayerMoments,
    xy_fit: &Tensor,
    xy_held: &Tensor,
    ridge: f64,
) -> Option<f64> {
    if x.fit.n < 2 || x.held.n < 2 {
        return None;
    }
    let (mx, my) = (x.fit.mean(), y.fit.mean());
    let sxx = x.fit.centred();
    let sxy = CrossMoments::about(xy_fit, (&x.fit.sum, &y.fit.sum, x.fit.n), &mx, &my);
    let d = sxx.size()[0];
    let lambda = ridge * scalar(&sxx.trace()) / d as f64;
    let eye = Tensor::eye(d, (Kind::Double, sxx.device()));
    // Symmetric positive definite for any lambda > 0: a Cholesky factor solves it.
    let factor = (&sxx + eye * lambda).f_linalg_cholesky(false).ok()?;
    let b = sxy.f_cholesky_solve(&factor, false).ok()?;
    // The held-out rows about the fitted means, which the prediction `my + (x - mx) B` uses.
    let hxx = x.held.about(&mx);
    let hyy = y.held.about(&my);
    let hxy = CrossMoments::about(xy_held, (&x.held.sum, &y.held.sum, x.held.n), &mx, &my);
    let rss = scalar(&hyy.trace()) - 2.0 * scalar(&(&b * &hxy).sum(Kind::Double))
        + scalar(&(hxx.mm(&b) * &b).sum(Kind::Double));
    let tss = scalar(&y.held.centred().trace());
    finite(1.0 - rss / tss)
}
