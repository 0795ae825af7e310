//! The engine: moments summed block by block, the measures and their floors. The one-shot
//! `saeshare similarity` and the study's compare pass both drive it.

use tch::{Device, Kind, Tensor};

use super::knn::{self, Neighbourhood};
use super::linear::LayerPrep;
use super::moments::{is_held_out, CrossMoments, LayerMoments, Part};
use super::{linear, Measure, SimilarityOptions, SimilarityRow};
use crate::metrics::{spread, target_permutations};

/// Each layer pair's values, `[source layer][target layer]`, in [`Measure::ALL`]'s order (the
/// linear or the kNN family's part), `[forward, reverse]`.
type LayerPairValues = Vec<Vec<[Vec<(Measure, Option<f64>)>; 2]>>;

/// Rows summed at a time: a block's float64 copy is `rows x width x 8` bytes.
const BLOCK_ROWS: usize = 4096;

/// One layer's read-out rows, in the side's sample order: `values` is `samples x width`.
#[derive(Clone, Debug)]
pub struct LayerRows {
    pub name: String,
    pub width: usize,
    pub values: Vec<f32>,
}

/// One encoder's read-out rows of the layers compared, aligned with the other side's.
#[derive(Clone, Debug, Default)]
pub struct SideRows {
    pub encoder: String,
    pub layers: Vec<LayerRows>,
}

impl SideRows {
    fn values(&self) -> Vec<&[f32]> {
        self.layers.iter().map(|l| l.values.as_slice()).collect()
    }

    fn widths(&self) -> Vec<usize> {
        self.layers.iter().map(|l| l.width).collect()
    }
}

/// The moments of a comparison: every source layer, every target layer, every layer pair.
#[derive(Debug)]
pub struct SimilaritySums {
    pub sources: Vec<LayerMoments>,
    pub targets: Vec<LayerMoments>,
    /// `[source layer][target layer]`.
    pub cross: Vec<Vec<CrossMoments>>,
    pub(super) seed: u64,
    device: Device,
}

impl SimilaritySums {
    /// Empty sums of layers of these widths; `seed` picks the held-out samples.
    pub fn new(source: &[usize], target: &[usize], seed: u64, device: Device) -> SimilaritySums {
        SimilaritySums {
            sources: source
                .iter()
                .map(|&d| LayerMoments::new(d, device))
                .collect(),
            targets: target
                .iter()
                .map(|&d| LayerMoments::new(d, device))
                .collect(),
            cross: (source.iter())
                .map(|&a| (target.iter().map(|&b| CrossMoments::new(a, b, device))).collect())
                .collect(),
            seed,
            device,
        }
    }

    /// Adds aligned rows: sample `ids[i]` is row `i` of every layer (`[ids.len() x width]`).
    pub fn add(&mut self, ids: &[u64], sources: &[&[f32]], targets: &[&[f32]]) {
        let (fit, held): (Vec<i64>, Vec<i64>) =
            (0..ids.len() as i64).partition(|&i| !is_held_out(self.seed, ids[i as usize]));
        let index = |v: &[i64]| Tensor::from_slice(v).to_device(self.device);
        let (fit, held) = (index(&fit), index(&held));
        let device = self.device;
        let split = |values: &[f32], layer: &mut LayerMoments| {
            let rows = Tensor::from_slice(values)
                .view([ids.len() as i64, -1])
                .to_device(device)
                .to_kind(Kind::Double);
            let rows = layer.shifted(&rows);
            (rows.index_select(0, &fit), rows.index_select(0, &held))
        };
        let xs: Vec<(Tensor, Tensor)> = (sources.iter().zip(self.sources.iter_mut()))
            .map(|(v, m)| split(v, m))
            .collect();
        let ys: Vec<(Tensor, Tensor)> = (targets.iter().zip(self.targets.iter_mut()))
            .map(|(v, m)| split(v, m))
            .collect();
        for (m, (f, h)) in self.sources.iter_mut().zip(&xs) {
            m.add(f, h);
        }
        for (m, (f, h)) in self.targets.iter_mut().zip(&ys) {
            m.add(f, h);
        }
        for (row, (xf, xh)) in self.cross.iter_mut().zip(&xs) {
            for (c, (yf, yh)) in row.iter_mut().zip(&ys) {
                c.add((xf, xh), (yf, yh));
            }
        }
    }

    /// Adds another part's sums (other shards) of the same layers.
    pub fn merge(&mut self, other: &SimilaritySums) {
        // The cross sums move by both layers' shifts, with `other`'s layer sums as they are.
        let dx: Vec<Tensor> = (self.sources.iter_mut().zip(&other.sources))
            .map(|(a, b)| a.delta(b))
            .collect();
        let dy: Vec<Tensor> = (self.targets.iter_mut().zip(&other.targets))
            .map(|(a, b)| a.delta(b))
            .collect();
        for (i, (ra, rb)) in self.cross.iter_mut().zip(&other.cross).enumerate() {
            for (j, (a, b)) in ra.iter_mut().zip(rb).enumerate() {
                let layers = (&other.sources[i], &other.targets[j]);
                a.merge(b, (&dx[i], &dy[j]), layers);
            }
        }
        for ((a, b), d) in self.sources.iter_mut().zip(&other.sources).zip(&dx) {
            a.merge(b, d);
        }
        for ((a, b), d) in self.targets.iter_mut().zip(&other.targets).zip(&dy) {
            a.merge(b, d);
        }
    }

    /// The same sums with the sides swapped.
    fn transposed(&self) -> SimilaritySums {
        let cross = (0..self.targets.len())
            .map(|b| {
                (self.cross.iter())
                    .map(|row| CrossMoments {
                        fit: row[b].fit.tr(),
                        held: row[b].held.tr(),
                    })
                    .collect()
            })
            .collect();
        SimilaritySums {
            sources: self
                .targets
                .iter()
                .map(LayerMoments::shallow_clone)
                .collect(),
            targets: self
                .sources
                .iter()
                .map(LayerMoments::shallow_clone)
                .collect(),
            cross,
            seed: self.seed,
            device: self.device,
        }
    }

    /// Every layer pair's linear measures, `[a][b]`, with the layers' preparations; the
    /// reverse too when asked.
    fn all_linear(
        &self,
        (prep_a, prep_b): (&[LayerPrep], &[LayerPrep]),
        options: &SimilarityOptions,
        reverse: bool,
    ) -> LayerPairValues {
        (0..self.sources.len())
            .map(|a| {
                (0..self.targets.len())
                    .map(|b| {
                        let x = (&self.sources[a], &prep_a[a]);
                        let y = (&self.targets[b], &prep_b[b]);
                        linear::measures(x, y, &self.cross[a][b], options, reverse)
                    })
                    .collect()
            })
            .collect()
    }

    /// The sums of the same rows with the target's samples in the order `permutation` (source
    /// sample `i` meets target sample `permutation[i]`): only what a permutation changes is
    /// summed again, the cross sums and the target's held-out part (the held-out samples are
    /// the source's).
    fn permuted(
        &self,
        ids: &[u64],
        rows: (&[&[f32]], &[&[f32]]),
        permutation: &[usize],
    ) -> SimilaritySums {
        let (va, vb) = rows;
        let mut targets: Vec<Part> = (self.targets.iter())
            .map(|t| Part::new(t.width(), self.device))
            .collect();
        let mut cross: Vec<Vec<(Tensor, Tensor)>> = (self.cross.iter())
            .map(|row| {
                (row.iter())
                    .map(|c| (c.fit.zeros_like(), c.held.zeros_like()))
                    .collect()
            })
            .collect();
        for start in (0..ids.len()).step_by(BLOCK_ROWS) {
            let end = (start + BLOCK_ROWS).min(ids.len());
            let held: Vec<i64> = (start..end)
                .filter(|&i| is_held_out(self.seed, ids[i]))
                .map(|i| (i - start) as i64)
                .collect();
            let held = Tensor::from_slice(&held).to_device(self.device);
            let tensor = |values: Vec<f32>, rows: usize| {
                Tensor::from_slice(&values)
                    .view([rows as i64, -1])
                    .to_device(self.device)
                    .to_kind(Kind::Double)
            };
            // In each layer's frame: less its shift.
            let shifted = |rows: Tensor, m: &LayerMoments| match &m.shift {
                Some(shift) => rows - shift.unsqueeze(0),
                None => rows,
            };
            let xs: Vec<Tensor> = (va.iter().zip(&self.sources))
                .map(|(v, m)| {
                    let d = m.width();
                    shifted(tensor(v[start * d..end * d].to_vec(), end - start), m)
                })
                .collect();
            let ys: Vec<Tensor> = (vb.iter().zip(&self.targets))
                .map(|(v, m)| {
                    let d = m.width();
                    let rows = (permutation[start..end].iter())
                        .flat_map(|&p| v[p * d..(p + 1) * d].iter().copied())
                        .collect();
                    shifted(tensor(rows, end - start), m)
                })
                .collect();
            for (part, y) in targets.iter_mut().zip(&ys) {
                part.add(&y.index_select(0, &held));
            }
            for (row, x) in cross.iter_mut().zip(&xs) {
                let x_held = x.index_select(0, &held);
                for ((total, held_sum), y) in row.iter_mut().zip(&ys) {
                    let _ = total.addmm_(&x.tr(), y);
                    let _ = held_sum.addmm_(&x_held.tr(), &y.index_select(0, &held));
                }
            }
        }
        let targets = (self.targets.iter().zip(targets))
            .map(|(t, held)| LayerMoments {
                fit: t.total().minus(&held),
                held,
                shift: t.shift.as_ref().map(Tensor::shallow_clone),
            })
            .collect();
        let cross = (cross.into_iter())
            .map(|row| {
                (row.into_iter())
                    .map(|(total, held)| CrossMoments {
                        fit: total - &held,
                        held,
                    })
                    .collect()
            })
            .collect();
        SimilaritySums {
            sources: self
                .sources
                .iter()
                .map(LayerMoments::shallow_clone)
                .collect(),
            targets,
            cross,
            seed: self.seed,
            device: self.device,
        }
    }
}

/// Sums the moments of aligned rows, block by block.
fn sum_rows(
    ids: &[u64],
    source: &[&[f32]],
    target: &[&[f32]],
    widths: (&[usize], &[usize]),
    seed: u64,
    device: Device,
) -> SimilaritySums {
    let mut sums = SimilaritySums::new(widths.0, widths.1, seed, device);
    for start in (0..ids.len()).step_by(BLOCK_ROWS) {
        let end = (start + BLOCK_ROWS).min(ids.len());
        let slice = |values: &[&[f32]], widths: &[usize]| -> Vec<Vec<f32>> {
            (values.iter().zip(widths))
                .map(|(v, &d)| v[start * d..end * d].to_vec())
                .collect()
        };
        let (s, t) = (slice(source, widths.0), slice(target, widths.1));
        let s: Vec<&[f32]> = s.iter().map(Vec::as_slice).collect();
        let t: Vec<&[f32]> = t.iter().map(Vec::as_slice).collect();
        sums.add(&ids[start..end], &s, &t);
    }
    sums
}

/// What a table holds besides the values: the floors' permutations and which directions.
#[derive(Clone, Copy, Debug)]
pub struct TableSpec {
    /// Permutations of the samples for each value's floor (0: none).
    pub permutations: usize,
    /// Their seed: equal seeds, the permutations of the wMPPC floor.
    pub permutation_seed: u64,
    /// Whether the table holds the target against the source too (a study's pair whose mirror is
    /// compared: one pass gives both).
    pub both_directions: bool,
}

/// Every measure of every source layer against every target layer, with floors: one row per
/// layer pair and measure, source layers outer, measures in [`Measure::ALL`]'s order. `ids` are
/// the samples of the rows, aligned on both sides.
pub fn similarity(
    ids: &[u64],
    source: &SideRows,
    target: &SideRows,
    options: &SimilarityOptions,
    spec: TableSpec,
    device: Device,
) -> Vec<SimilarityRow> {
    let sums = sum_sides(ids, source, target, options.seed, device);
    tabulate(&sums, ids, source, target, options, spec, device)
}

/// The moments of aligned rows; `seed` picks the held-out samples.
pub fn sum_sides(
    ids: &[u64],
    source: &SideRows,
    target: &SideRows,
    seed: u64,
    device: Device,
) -> SimilaritySums {
    let (wa, wb) = (source.widths(), target.widths());
    sum_rows(
        ids,
        &source.values(),
        &target.values(),
        (&wa, &wb),
        seed,
        device,
    )
}

/// The table's rows from `sums` (the moments over every sample, however they were summed: at
/// once, or shard by shard over runs) and the rows they were summed from (for the floors'
/// permutations and the kNN subsample).
///
/// Every measure is computed with the sides in the order of their encoders' names, so that a
/// pair and its mirror share one computation: the floors permute the samples of the encoder
/// named second. A symmetric measure's chance level is the same whichever side is permuted;
/// the asymmetric ones (the ridge, PWCCA between equal widths, cycle kNN, CKNNA) are computed in
/// both directions from the same runs.
pub fn tabulate(
    sums: &SimilaritySums,
    ids: &[u64],
    source: &SideRows,
    target: &SideRows,
    options: &SimilarityOptions,
    spec: TableSpec,
    device: Device,
) -> Vec<SimilarityRow> {
    let floors = (spec.permutations, spec.permutation_seed);
    if target.encoder < source.encoder {
        let want = [spec.both_directions, true];
        let swapped = sums.transposed();
        let [backward, forward] = tabulate_in_order(
            &swapped,
            ids,
            (target, source),
            options,
            floors,
            want,
            device,
        );
        return forward.into_iter().chain(backward).collect();
    }
    let want = [true, spec.both_directions];
    let [forward, backward] =
        tabulate_in_order(sums, ids, (source, target), options, floors, want, device);
    forward.into_iter().chain(backward).collect()
}

/// [`tabulate`] with the sides as given: `[forward rows, reverse rows]`, each if `want`ed.
fn tabulate_in_order(
    sums: &SimilaritySums,
    ids: &[u64],
    (source, target): (&SideRows, &SideRows),
    options: &SimilarityOptions,
    (permutations, permutation_seed): (usize, u64),
    want: [bool; 2],
    device: Device,
) -> [Vec<SimilarityRow>; 2] {
    let reverse = want[1];
    let (wa, wb) = (source.widths(), target.widths());
    let (va, vb) = (source.values(), target.values());
    let n = ids.len();
    // Each layer's preparation serves every pair and permutation it is in.
    let prep_a: Vec<LayerPrep> = sums.sources.iter().map(LayerPrep::of).collect();
    let prep_b: Vec<LayerPrep> = sums.targets.iter().map(LayerPrep::of).collect();
    let linear = sums.all_linear((&prep_a, &prep_b), options, reverse);

    // The kNN family on the subsample, prepared once per layer.
    let kept = knn::subsample(ids, options.seed, options.knn_samples);
    let m = kept.len();
    let prepared = |v: &[&[f32]], w: &[usize]| -> Vec<Tensor> {
        (v.iter().zip(w))
            .map(|(v, &d)| knn::prepare(&knn::rows_at(v, d, &kept, device), options))
            .collect()
    };
    let (pa, pb) = (prepared(&va, &wa), prepared(&vb, &wb));
    let hood = |p: &[Tensor]| -> Vec<Neighbourhood> {
        p.iter()
            .map(|t| Neighbourhood::of(t, options.knn_k))
            .collect()
    };
    let (ha, hb) = (hood(&pa), hood(&pb));
    let knn_values = |hb: &[Neighbourhood]| -> LayerPairValues {
        (ha.iter())
            .map(|a| {
                hb.iter()
                    .map(|b| knn::measures(a, b, options.knn_k, reverse))
                    .collect()
            })
            .collect()
    };
    let knn_now = knn_values(&hb);

    // Floors: the target's samples permuted, every measure again; the kNN family's over the
    // subsample's own permutations.
    let mut linear_runs = Vec::new();
    for permutation in target_permutations(permutation_seed, n).take(permutations) {
        let shuffled = sums.permuted(ids, (&va, &vb), &permutation);
        linear_runs.push(shuffled.all_linear((&prep_a, &prep_b), options, reverse));
    }
    let mut knn_runs = Vec::new();
    for permutation in target_permutations(permutation_seed, m).take(permutations) {
        let shuffled: Vec<Neighbourhood> = hb.iter().map(|h| h.permuted(&permutation)).collect();
        knn_runs.push(knn_values(&shuffled));
    }

    let rows_of = |direction: usize| -> Vec<SimilarityRow> {
        let mut rows = Vec::new();
        let (from, to) = match direction {
            0 => (source, target),
            _ => (target, source),
        };
        for (i, lf) in from.layers.iter().enumerate() {
            for (j, lt) in to.layers.iter().enumerate() {
                let (a, b) = if direction == 0 { (i, j) } else { (j, i) };
                let linear_now = &linear[a][b][direction];
                let now = linear_now.iter().chain(&knn_now[a][b][direction]);
                for (k, &(measure, value)) in now.enumerate() {
                    let runs: Vec<Option<f64>> = if measure.on_subsample() {
                        let at = k - linear_now.len();
                        knn_runs.iter().map(|r| r[a][b][direction][at].1).collect()
                    } else {
                        linear_runs
                            .iter()
                            .map(|r| r[a][b][direction][k].1)
                            .collect()
                    };
                    let (floor, floor_std) = spread(runs.into_iter());
                    rows.push(SimilarityRow {
                        source: from.encoder.clone(),
                        target: to.encoder.clone(),
                        source_layer: lf.name.clone(),
                        target_layer: lt.name.clone(),
                        measure,
                        value,
                        floor,
                        floor_std,
                        samples: if measure.on_subsample() { m } else { n } as u64,
                    });
                }
            }
        }
        rows
    };
    [0, 1].map(|d| if want[d] { rows_of(d) } else { Vec::new() })
}
