//! Measuring a study's rates on this machine (`saeshare study plan --calibrate`): a short fit
//! of each encoder on the study's first samples, as `saeshare bench fit` runs it, and the
//! compare on synthetic codes at the study's widths, as `bench stats` and `bench dense` run it.

use super::cost::{rates_key, CompareRates, EncoderRates, Rates};
use super::Plan;

/// Measures the rates of the study in `study`'s encoders (those of `plan` not measured yet, or
/// all with `again`) with a short fit of each on the study's first samples, as `saeshare bench
/// fit` does, and adds them to `rates`. The samples: enough for one batch of every pooled fit,
/// and at least 256.
pub fn calibrate(
    study: &std::path::Path,
    parsed: &crate::pipeline::Study,
    plan: &Plan,
    rates: &mut Rates,
    again: bool,
) -> anyhow::Result<()> {
    if again {
        // Every entry the plan's encoders would use, under any name.
        let keys: std::collections::BTreeSet<String> =
            plan.named_encoders().map(|(_, e)| rates_key(e)).collect();
        rates.encoders.retain(|_, (key, _)| !keys.contains(key));
    }
    let mut keys = std::collections::BTreeSet::new();
    let todo: Vec<String> = (plan.named_encoders())
        .filter(|(_, e)| e.fits_any() && rates.of(e).is_none())
        .filter(|(_, e)| keys.insert(rates_key(e)))
        .map(|(_, e)| e.name.clone())
        .collect();
    if !todo.is_empty() {
        calibrate_encoders(study, parsed, plan, rates, &todo)?;
    }
    let stale = |c: &super::cost::CompareRates| {
        c.dense_flops.is_none()
            || (plan.study.similarity.enabled && c.similarity_pair_seconds.is_none())
    };
    if again || rates.compare.is_none_or(|c| stale(&c)) {
        rates.compare = Some(calibrate_compare(plan)?);
    }
    rates.machine = Rates::this_machine();
    Ok(())
}

/// Rates of the encoders `todo` of `plan`, from a short `bench fit` of each.
fn calibrate_encoders(
    study: &std::path::Path,
    parsed: &crate::pipeline::Study,
    plan: &Plan,
    rates: &mut Rates,
    todo: &[String],
) -> anyhow::Result<()> {
    let pooled_batch = (plan.encoders.iter())
        .filter(|e| matches!(e.fit_rows, super::FitRows::Pooled))
        .map(|e| e.sae.batch_size)
        .max()
        .unwrap_or(0);
    let samples = (pooled_batch.max(256) as u64).min(plan.dataset.rows()) as usize;
    tracing::info!(
        "calibrating {} encoder(s) on {samples} samples: {}",
        todo.len(),
        todo.join(", ")
    );
    for figure in crate::pipeline::bench_fit_of(parsed.clone(), study, samples, todo, 0)? {
        let Some(e) = plan.encoders.iter().find(|e| e.name == figure.encoder) else {
            continue;
        };
        let rows = figure.rows_per_layer.max(1) as f64;
        let measured = EncoderRates {
            samples_per_second: figure.samples as f64 / figure.encode_seconds.max(1e-9),
            rows_per_sample: rows / figure.samples.max(1) as f64,
            sae_seconds_per_row: figure.sae_seconds / (rows * figure.layers.max(1) as f64),
        };
        rates
            .encoders
            .insert(e.name.clone(), (rates_key(e), measured));
    }
    Ok(())
}

/// The compare pass's rates: `compare` on synthetic codes of the study's largest k at its
/// widest SAE and at a quarter of that width, over at most 8,192 samples and half as many (the
/// fastest of three runs each), fitted for the time per update and per cell.
fn calibrate_compare(plan: &Plan) -> anyhow::Result<CompareRates> {
    let (widest, k) = (plan.encoders.iter())
        .flat_map(|e| {
            e.layer_ids()
                .map(move |l| (e.layer_width(l) * e.sae.expansion, e.sae.k))
        })
        .max()
        .unwrap_or((1024, 32));
    let k = k.max(1);
    let samples = (plan.dataset.rows() as usize).clamp(1024, 8192);
    let timed = |samples: usize, features: usize| -> anyhow::Result<f64> {
        let options = crate::metrics::BenchOptions {
            samples,
            features,
            k,
            popularity: crate::metrics::Popularity::Zipf,
            zipf_exponent: 1.0,
            dense_reference: false,
            repeats: 3,
            seed: 0,
            accumulator: crate::stats::AccumulatorOptions {
                memory_mib: plan.study.stats.memory_mib,
                threads: plan.study.stats.threads,
            },
            codes_dir: None,
        };
        let report = crate::metrics::bench_stats(&options)?;
        Ok(report
            .sparse_seconds
            .iter()
            .cloned()
            .fold(f64::MAX, f64::min))
    };
    // Two widths at two sample counts, so that the updates (N k^2) and the cells (d^2) vary
    // apart: two widths at one N left the split to the noise of a difference.
    let narrow = (widest / 4).max(k * 2);
    let mut points = Vec::new();
    for n in [samples / 2, samples] {
        for d in [narrow, widest] {
            points.push(((n * k * k) as f64, (d * d) as f64, timed(n, d)?));
        }
    }
    let (per_update, per_cell) = fit_two_rates(&points);
    let similarity = similarity_rates(plan);
    let dense = crate::metrics::bench_dense(&crate::metrics::DenseBenchOptions {
        samples: 2048,
        features: widest.min(2048),
        block: 2048,
        repeats: 2,
        seed: 0,
        device: tch::Device::Cpu,
        check: false,
        values: crate::codes::DenseValues::Float32,
    })?;
    let fastest = dense
        .compare_seconds
        .iter()
        .cloned()
        .fold(f64::MAX, f64::min);
    Ok(CompareRates {
        per_update,
        per_cell,
        dense_flops: Some(dense.flops / fastest.max(1e-9)),
        similarity_flops: Some(similarity.flops),
        similarity_pair_seconds: Some(similarity.pair_seconds),
        similarity_width: Some(similarity.width),
    })
}

/// What the representation measures take on this machine.
struct SimilarityRates {
    flops: f64,
    pair_seconds: f64,
    width: usize,
}

/// The representation measures' rates: `similarity::sum_sides` and `similarity::tabulate` (one
/// permutation) on 2,048 random rows of two layers at the study's widest read-out (at most
/// 1,536), the faster of two runs each.
fn similarity_rates(plan: &Plan) -> SimilarityRates {
    use rand::{Rng, SeedableRng};
    let width = (plan.encoders.iter())
        .flat_map(|e| e.layer_ids().map(move |l| e.layer_width(l)))
        .max()
        .unwrap_or(768)
        .min(1536);
    let n = 2048;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let side = |name: &str, rng: &mut rand_chacha::ChaCha8Rng| crate::similarity::SideRows {
        encoder: name.into(),
        layers: vec![crate::similarity::LayerRows {
            name: "0".into(),
            width,
            values: (0..n * width)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect(),
        }],
    };
    let (a, b) = (side("a", &mut rng), side("b", &mut rng));
    let ids: Vec<u64> = (0..n as u64).collect();
    let fastest = |f: &dyn Fn()| {
        (0..2)
            .map(|_| {
                let start = std::time::Instant::now();
                f();
                start.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
            .max(1e-9)
    };
    let device = tch::Device::Cpu;
    let options = plan.study.similarity.clone();
    let spec = crate::similarity::TableSpec {
        permutations: 1,
        permutation_seed: 0,
        both_directions: false,
    };
    let sums = crate::similarity::sum_sides(&ids, &a, &b, 0, device);
    let moments = fastest(&|| {
        crate::similarity::sum_sides(&ids, &a, &b, 0, device);
    });
    let tabulate = fastest(&|| {
        crate::similarity::tabulate(&sums, &ids, &a, &b, &options, spec, device);
    });
    SimilarityRates {
        flops: 2.0 * n as f64 * 3.0 * (width * width) as f64 / moments,
        // The permutation's cross sums (about 1.2 of the three products) are the moments'
        // part of the tabulation; the rest is two runs' decompositions and kNN family.
        pair_seconds: ((tabulate - moments * 0.4) / 2.0).max(0.0),
        width,
    }
}

/// The non-negative `(a, b)` that best fit `t = a u + b c` to `(u, c, t)` points, in least
/// squares; where the best fit has a negative rate, that rate is 0 and the other is fitted
/// alone.
fn fit_two_rates(points: &[(f64, f64, f64)]) -> (f64, f64) {
    let sum = |f: &dyn Fn(&(f64, f64, f64)) -> f64| points.iter().map(f).sum::<f64>();
    let (uu, cc, uc) = (
        sum(&|p| p.0 * p.0),
        sum(&|p| p.1 * p.1),
        sum(&|p| p.0 * p.1),
    );
    let (ut, ct) = (sum(&|p| p.0 * p.2), sum(&|p| p.1 * p.2));
    let det = uu * cc - uc * uc;
    let alone_u = if uu > 0.0 { (ut / uu).max(0.0) } else { 0.0 };
    let alone_c = if cc > 0.0 { (ct / cc).max(0.0) } else { 0.0 };
    if det.abs() <= f64::EPSILON * uu * cc {
        return (alone_u, 0.0);
    }
    let a = (ut * cc - ct * uc) / det;
    let b = (ct * uu - ut * uc) / det;
    match (a >= 0.0, b >= 0.0) {
        (true, true) => (a, b),
        (false, _) => (0.0, alone_c),
        (true, false) => (alone_u, 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::fit_two_rates;

    #[test]
    fn two_rates_are_recovered_and_never_negative() {
        let (a, b) = (3e-9, 2e-10);
        let points: Vec<(f64, f64, f64)> = [(1e6, 1e6), (2e6, 1e6), (1e6, 4e7), (2e6, 4e7)]
            .iter()
            .map(|&(u, c)| (u, c, a * u + b * c))
            .collect();
        let (fa, fb) = fit_two_rates(&points);
        assert!(
            (fa - a).abs() < 1e-6 * a && (fb - b).abs() < 1e-6 * b,
            "{fa} {fb}"
        );
        // Times that fall as the cells grow: no negative rate per cell.
        let falling = [(1e6, 1e6, 2.0), (1e6, 4e7, 1.0)];
        let (fa, fb) = fit_two_rates(&falling);
        assert!(fa > 0.0 && fb == 0.0, "{fa} {fb}");
    }
}
