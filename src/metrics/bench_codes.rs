//! Synthetic TopK codes for `saeshare bench stats` (and the accumulator's tests): pairs of
//! aligned codes with real matches, features drawn uniformly or with the skewed popularity of
//! real SAE features.

use rand::seq::index::sample;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How often each feature of synthetic codes fires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Popularity {
    /// Every feature equally often.
    Uniform,
    /// The feature of popularity rank `r` (from 1) is drawn with weight `r^-s`, as in real SAEs
    /// where a few features fire on most samples and most features rarely; ranks are shuffled
    /// over the feature indices (popular features are not the low ones).
    #[default]
    Zipf,
}

/// Draws features of one SAE by popularity.
struct FeatureDraw {
    d: usize,
    /// Zipf: cumulative weights by rank, and the feature of each rank.
    zipf: Option<(Vec<f64>, Vec<u32>)>,
}

impl FeatureDraw {
    fn new(d: usize, popularity: Popularity, exponent: f64, rng: &mut ChaCha8Rng) -> Self {
        let zipf = (popularity == Popularity::Zipf && d > 0).then(|| {
            let mut total = 0.0;
            let cumulative: Vec<f64> = (1..=d)
                .map(|r| {
                    total += (r as f64).powf(-exponent);
                    total
                })
                .collect();
            let mut features: Vec<u32> = (0..d as u32).collect();
            features.shuffle(rng);
            (cumulative, features)
        });
        FeatureDraw { d, zipf }
    }

    /// `k` distinct features (at most `d`), appended to `out`, which may already hold some that
    /// are not drawn again.
    fn draw(&self, rng: &mut ChaCha8Rng, k: usize, out: &mut Vec<u32>) {
        let target = (out.len() + k).min(self.d);
        match &self.zipf {
            None if out.is_empty() => {
                out.extend(sample(rng, self.d, target).into_iter().map(|f| f as u32));
            }
            None => self.fill_uniform(rng, target, out),
            Some((cumulative, features)) => {
                let total = cumulative[self.d - 1];
                // Popular features are drawn again and again; past a bound (k close to d,
                // steep exponents) the rest are drawn uniformly rather than wait for them.
                for _ in 0..64 * target {
                    if out.len() == target {
                        return;
                    }
                    let u = rng.random::<f64>() * total;
                    let rank = cumulative.partition_point(|&c| c <= u).min(self.d - 1);
                    let f = features[rank];
                    if !out.contains(&f) {
                        out.push(f);
                    }
                }
                self.fill_uniform(rng, target, out);
            }
        }
    }

    fn fill_uniform(&self, rng: &mut ChaCha8Rng, target: usize, out: &mut Vec<u32>) {
        while out.len() < target {
            let f = rng.random_range(0..self.d as u32);
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
}

/// Aligned pairs of synthetic TopK codes of `d` features each, from a seed: the source draws
/// `k` features by popularity; the target copies half of the source's latents (shifted by one
/// feature, so real matches exist) and draws the rest by its own popularity. Values are
/// uniform in [0.01, 4).
pub(crate) struct SyntheticCodes {
    rng: ChaCha8Rng,
    k: usize,
    d: usize,
    source: FeatureDraw,
    target: FeatureDraw,
}

/// One synthetic sample of both sides: features (strictly increasing) and values.
#[derive(Clone, Debug, Default)]
pub(crate) struct SyntheticPair {
    pub source_features: Vec<u32>,
    pub source_values: Vec<f32>,
    pub target_features: Vec<u32>,
    pub target_values: Vec<f32>,
}

impl SyntheticCodes {
    /// Codes of `d` features with `k` active, drawn with `popularity` (Zipf exponent
    /// `exponent`) from `seed`.
    pub fn new(d: usize, k: usize, popularity: Popularity, exponent: f64, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let source = FeatureDraw::new(d, popularity, exponent, &mut rng);
        let target = FeatureDraw::new(d, popularity, exponent, &mut rng);
        SyntheticCodes {
            rng,
            k: k.min(d),
            d,
            source,
            target,
        }
    }

    /// The next sample, written into `pair`.
    pub fn next_into(&mut self, pair: &mut SyntheticPair) {
        let (k, rng) = (self.k, &mut self.rng);
        pair.source_features.clear();
        self.source.draw(rng, k, &mut pair.source_features);
        pair.target_features.clear();
        let d = self.d as u32;
        pair.target_features.extend(
            (pair.source_features.iter())
                .take(k / 2)
                .map(|&f| (f + 1) % d),
        );
        let copied = pair.target_features.len();
        self.target.draw(rng, k - copied, &mut pair.target_features);
        for (features, values) in [
            (&mut pair.source_features, &mut pair.source_values),
            (&mut pair.target_features, &mut pair.target_values),
        ] {
            features.sort_unstable();
            values.clear();
            values.extend((0..features.len()).map(|_| rng.random_range(0.01f32..4.0)));
        }
    }
}
