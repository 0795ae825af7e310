//! Top-activating examples of the features the report shows: one pass over each layer's codes
//! keeps, per wanted feature, its highest values and a bounded sample of all its values (for
//! the histogram); then one pass over the dataset fetches the captions and images of the
//! samples kept and writes their thumbnails.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::codes::CodesReader;
use crate::dataset::{Dataset, Projection, SampleBatch, ShardInfo, UnreadableImage};

/// A feature of one encoder's layer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FeatureKey {
    pub encoder: String,
    pub layer: String,
    pub feature: u32,
}

/// Values kept for the histogram of one feature, whatever the number of samples.
const RESERVOIR: usize = 20_000;

/// What the codes say of one feature.
#[derive(Clone, Debug, Default)]
pub struct FeatureActivity {
    /// (value, sample id), highest first.
    pub top: Vec<(f32, u64)>,
    /// Samples on which the feature is active.
    pub active: u64,
    /// Samples read.
    pub samples: u64,
    /// A uniform sample of the non-zero values (all of them while fewer than 20,000).
    pub values: Vec<f32>,
}

impl FeatureActivity {
    fn push(&mut self, value: f32, sample_id: u64, keep: usize, rng: &mut ChaCha8Rng) {
        self.active += 1;
        if self.values.len() < RESERVOIR {
            self.values.push(value);
        } else {
            let slot = rng.random_range(0..self.active);
            if (slot as usize) < RESERVOIR {
                self.values[slot as usize] = value;
            }
        }
        if self.top.len() < keep || value > self.top.last().map_or(f32::MIN, |t| t.0) {
            let at = self.top.partition_point(|t| t.0 >= value);
            self.top.insert(at, (value, sample_id));
            self.top.truncate(keep);
        }
    }
}

/// The activity of every wanted feature, and the layers whose codes were not found.
pub struct Activity {
    pub features: BTreeMap<FeatureKey, FeatureActivity>,
    pub missing_codes: Vec<PathBuf>,
}

/// Reads `run/codes/<encoder>/<layer>/` once per layer of `wanted`, keeping the `keep` highest
/// values of each feature. `shards` restricts the files read to the study's shards.
pub fn collect_activity(
    run: &Path,
    wanted: &BTreeSet<FeatureKey>,
    keep: usize,
    shards: Option<&[String]>,
) -> anyhow::Result<Activity> {
    let mut by_layer: BTreeMap<(&str, &str), HashMap<u32, FeatureActivity>> = BTreeMap::new();
    for key in wanted {
        by_layer
            .entry((&key.encoder, &key.layer))
            .or_default()
            .insert(key.feature, FeatureActivity::default());
    }
    let mut missing_codes = Vec::new();
    let mut features = BTreeMap::new();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let layers: Vec<_> = by_layer
        .into_iter()
        .map(|((encoder, layer), per_feature)| {
            let dir = crate::run_layout::RunLayout::new(run).codes_dir(encoder, layer);
            let files = codes_files(&dir, shards);
            (encoder, layer, dir, files, per_feature)
        })
        .collect();
    let total = layers.iter().map(|l| l.3.len() as u64).sum();
    let bar = crate::progress::bar(Some(total), "report: reading codes", "files");
    for (encoder, layer, dir, files, mut per_feature) in layers {
        if files.is_empty() {
            missing_codes.push(dir);
            continue;
        }
        let mut samples = 0u64;
        for file in files {
            bar.inc(1);
            let reader = CodesReader::open(&file)?;
            for batch in reader {
                let batch = batch?;
                samples += batch.len() as u64;
                for i in 0..batch.len() {
                    let code = batch.get(i);
                    for (f, &v) in code.features.iter().zip(code.values) {
                        if let Some(activity) = per_feature.get_mut(f) {
                            activity.push(v, code.sample_id, keep, &mut rng);
                        }
                    }
                }
            }
        }
        for (feature, mut activity) in per_feature {
            activity.samples = samples;
            let key = FeatureKey {
                encoder: encoder.to_string(),
                layer: layer.to_string(),
                feature,
            };
            features.insert(key, activity);
        }
    }
    bar.finish_and_clear();
    Ok(Activity {
        features,
        missing_codes,
    })
}

/// The codes files of a layer's folder: the study's shards where known, else every file.
fn codes_files(dir: &Path, shards: Option<&[String]>) -> Vec<PathBuf> {
    let mut files = crate::report::paths_in(dir);
    files.retain(|p| {
        let name = file_name_of(p);
        name.ends_with(".parquet")
            && !name.starts_with('.')
            && shards.is_none_or(|s| s.contains(&name))
    });
    files
}

/// The last component of `path` ("" when it has none).
fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A dataset row shown in the report.
#[derive(Clone, Debug)]
pub struct Sample {
    pub caption: String,
    /// The thumbnail's path relative to the report's folder; `None` when the image could not
    /// be read (the reason is logged and counted).
    pub thumbnail: Option<String>,
}

/// The samples found, and how many wanted ones were not.
#[derive(Default)]
pub struct Samples {
    pub rows: HashMap<u64, Sample>,
    pub unreadable_images: usize,
    pub not_found: usize,
}

/// The samples to fetch from a dataset, and where their thumbnails go.
pub struct SampleRequest<'a> {
    /// The dataset's folder.
    pub dataset: &'a Path,
    /// The study's shards, the only ones read; `None` reads every shard.
    pub shards: Option<&'a [String]>,
    /// The samples wanted.
    pub ids: &'a BTreeSet<u64>,
    /// The report's folder: thumbnails go into its `thumbs/`.
    pub report: &'a Path,
    /// Thumbnail size in pixels (the longer side).
    pub size: u32,
}

impl SampleRequest<'_> {
    /// The dataset's shards to read: the study's, whose id range can hold a wanted id.
    fn shards_to_read<'d>(&self, dataset: &'d Dataset) -> Vec<&'d ShardInfo> {
        let holds_some = |shard: &&ShardInfo| {
            let name = file_name_of(&shard.path);
            self.shards.is_none_or(|s| s.contains(&name))
                && shard
                    .id_range
                    .is_none_or(|(lo, hi)| self.ids.range(lo..=hi).next().is_some())
        };
        dataset.shards().iter().filter(holds_some).collect()
    }
}

/// Fetches the captions and images of the request's ids from its dataset (only the shards
/// that can hold one of them) and writes `thumbs/<id>.jpg` under its report folder.
pub fn fetch_samples(request: &SampleRequest) -> anyhow::Result<Samples> {
    let mut found = Samples::default();
    if request.ids.is_empty() {
        return Ok(found);
    }
    let dataset = Dataset::open(request.dataset)?;
    let thumbs = request.report.join("thumbs");
    std::fs::create_dir_all(&thumbs).with_context(|| format!("creating {}", thumbs.display()))?;
    let read = request.shards_to_read(&dataset);
    let bar = crate::progress::bar(
        Some(read.iter().map(|s| s.rows).sum()),
        "report: examples from the dataset",
        "rows",
    );
    for shard in read {
        for batch in shard.reader(Projection::ALL, 256)? {
            let batch = batch?;
            bar.inc((batch.len() + batch.skipped.len()) as u64);
            found.add_batch(request, &shard.path, &batch);
        }
    }
    bar.finish_and_clear();
    found.not_found = request
        .ids
        .iter()
        .filter(|id| !found.rows.contains_key(id))
        .count();
    Ok(found)
}

impl Samples {
    /// Adds the wanted rows of `batch`, read from the file `shard`, with their thumbnails.
    fn add_batch(&mut self, request: &SampleRequest, shard: &Path, batch: &SampleBatch) {
        for skipped in &batch.skipped {
            if request.ids.contains(&skipped.sample_id) {
                tracing::warn!(
                    "report: {} row {} (sample {}): {}; shown without its image",
                    skipped.file.display(),
                    skipped.row,
                    skipped.sample_id,
                    skipped.reason
                );
                self.unreadable_images += 1;
                let blank = Sample {
                    caption: String::new(),
                    thumbnail: None,
                };
                self.rows.insert(skipped.sample_id, blank);
            }
        }
        for (i, &id) in batch.sample_ids.iter().enumerate() {
            if request.ids.contains(&id) {
                let sample = Sample {
                    thumbnail: self.thumbnail(request, shard, id, &batch.images[i].0),
                    caption: batch.captions[i].clone(),
                };
                self.rows.insert(id, sample);
            }
        }
    }

    /// Writes sample `id`'s thumbnail: its path in the report, or `None` (logged and counted)
    /// when its image cannot be read.
    fn thumbnail(
        &mut self,
        request: &SampleRequest,
        shard: &Path,
        id: u64,
        image: &[u8],
    ) -> Option<String> {
        let file = format!("thumbs/{id}.jpg");
        match write_thumbnail(image, &request.report.join(&file), request.size) {
            Ok(()) => Some(file),
            Err(reason) => {
                tracing::warn!(
                    "report: {} sample {id}: {reason}; shown without its image",
                    shard.display()
                );
                self.unreadable_images += 1;
                None
            }
        }
    }
}

/// Why a sample is shown without its image.
#[derive(Debug, thiserror::Error)]
enum ThumbnailError {
    #[error(transparent)]
    Unreadable(#[from] UnreadableImage),
    #[error("thumbnail: {0}")]
    Encode(image::ImageError),
    #[error("{}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A JPEG of at most `size` pixels a side, transparency flattened on white.
fn write_thumbnail(bytes: &[u8], path: &Path, size: u32) -> Result<(), ThumbnailError> {
    let image = crate::dataset::decode_image(bytes)?;
    let small = image.thumbnail(size, size).to_rgba8();
    let mut rgb = image::RgbImage::new(small.width(), small.height());
    for (x, y, p) in small.enumerate_pixels() {
        let a = p[3] as f32 / 255.0;
        let blend = |c: u8| (c as f32 * a + 255.0 * (1.0 - a)).round() as u8;
        rgb.put_pixel(x, y, image::Rgb([blend(p[0]), blend(p[1]), blend(p[2])]));
    }
    let mut out = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&rgb)
        .map_err(ThumbnailError::Encode)?;
    std::fs::write(path, out.into_inner()).map_err(|source| ThumbnailError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_highest_values_in_order_and_counts_every_activation() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut a = FeatureActivity::default();
        let values = [0.5f32, 3.0, 1.0, 2.0, 0.1, 2.5];
        for (id, &v) in values.iter().enumerate() {
            a.push(v, id as u64, 3, &mut rng);
        }
        assert_eq!(a.top, vec![(3.0, 1), (2.5, 5), (2.0, 3)]);
        assert_eq!(a.active, 6);
        assert_eq!(a.values.len(), 6);
    }

    #[test]
    fn the_value_sample_stays_bounded() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut a = FeatureActivity::default();
        for id in 0..(RESERVOIR as u64 + 5000) {
            a.push(id as f32, id, 2, &mut rng);
        }
        assert_eq!(a.values.len(), RESERVOIR);
        assert_eq!(a.top[0].1, RESERVOIR as u64 + 4999);
        // A uniform sample: the last 5,000 of 25,000 values hold about a fifth of the slots.
        let late = a.values.iter().filter(|&&v| v >= RESERVOIR as f32).count();
        assert!(late > 2000 && late < 6000, "{late}");
    }
}
