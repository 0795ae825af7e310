//! The checks of a study file that read no other file: names, references between tables and
//! settings, each failing with the line it is about. `saeshare study check` and `saeshare run`
//! make the same checks, so a study that checks clean is not refused by `run` for anything
//! written in it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::names::{check_name, NameError};
use crate::pipeline::study::{Study, StudyError};
use crate::torch::DeviceSpec;

/// Where the tables of a study file are, for the errors about them. Read from the same text as
/// [`Study`]; keys this does not name are ignored here (the typed pass refuses unknown ones).
#[derive(Debug, Deserialize)]
pub(in crate::pipeline) struct StudyLines {
    #[serde(default)]
    sae: Option<Spanned<toml::Value>>,
    #[serde(default)]
    dataset: Option<Spanned<toml::Value>>,
    #[serde(default)]
    fit: Option<Spanned<toml::Value>>,
    #[serde(default)]
    baselines: Option<Spanned<toml::Value>>,
    #[serde(default)]
    stats: Option<Spanned<toml::Value>>,
    #[serde(default)]
    similarity: Option<Spanned<toml::Value>>,
    #[serde(default)]
    encoders: BTreeMap<String, Spanned<EncoderLines>>,
    #[serde(default)]
    comparisons: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    sharedness: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    output: Option<Spanned<toml::Value>>,
}

impl StudyLines {
    /// The line of each `[encoders.NAME]` table, by `line_of` a span.
    pub(in crate::pipeline) fn encoder_lines(
        &self,
        line_of: impl Fn(Range<usize>) -> usize,
    ) -> BTreeMap<String, usize> {
        (self.encoders.iter())
            .map(|(name, table)| (name.clone(), line_of(table.span())))
            .collect()
    }
}

#[derive(Debug, Deserialize)]
struct EncoderLines {
    #[serde(default)]
    sae: Option<Spanned<toml::Value>>,
    #[serde(default)]
    layers: Option<Spanned<toml::Value>>,
    #[serde(default)]
    batch_size: Option<Spanned<toml::Value>>,
    #[serde(default)]
    device: Option<Spanned<toml::Value>>,
    #[serde(default)]
    precision: Option<Spanned<toml::Value>>,
    lanes: Option<Spanned<toml::Value>>,
}

/// The largest mixing buffer a study may ask for, in MiB and in rows.
const MAX_BUFFER_MIB: usize = 1 << 20;
const MAX_BUFFER_ROWS: usize = 1 << 32;
/// The most SAE step threads a worker may ask for.
const MAX_SAE_THREADS: usize = 64;

type At<'a> = &'a dyn Fn(Option<Range<usize>>, String) -> StudyError;

fn span<T>(value: &Option<Spanned<T>>) -> Option<Range<usize>> {
    value.as_ref().map(Spanned::span)
}

/// Every check of `study` that needs no file but the study's own text.
pub(in crate::pipeline) fn check(
    study: &Study,
    lines: &StudyLines,
    at: At,
) -> Result<(), StudyError> {
    // Names first: a bad name explains every error about the tables that refer to it.
    for name in study.encoders.keys() {
        let line = lines.encoders.get(name).map(Spanned::span);
        check_name(name).map_err(|e| at(line, format!("[encoders]: encoder name {e}")))?;
    }
    check_references(study, at)?;
    check_dataset(study, lines, at)?;
    if study.output.as_os_str().is_empty() {
        return Err(at(
            span(&lines.output),
            "output is empty: name the folder the run writes to".into(),
        ));
    }
    study
        .sae
        .validate_settings()
        .map_err(|e| at(span(&lines.sae), format!("[sae]: {e}")))?;
    if study.fit.buffer_rows == 0 || study.fit.buffer_mib == Some(0) {
        return Err(at(
            span(&lines.fit),
            "[fit]: the mixing buffer (buffer_rows, buffer_mib) must hold at least 1 row".into(),
        ));
    }
    if study.fit.buffer_mib.is_some_and(|mib| mib > MAX_BUFFER_MIB)
        || study.fit.buffer_rows > MAX_BUFFER_ROWS
    {
        return Err(at(
            span(&lines.fit),
            format!(
                "[fit]: a mixing buffer lives in memory, one per SAE: buffer_mib at most \
                 {MAX_BUFFER_MIB} (1 TiB), buffer_rows at most {MAX_BUFFER_ROWS}"
            ),
        ));
    }
    if study.fit.sae_threads.is_some_and(|n| n > MAX_SAE_THREADS) {
        return Err(at(
            span(&lines.fit),
            format!(
                "[fit]: sae_threads is per worker, at most {MAX_SAE_THREADS}: one or two \
                 threads keep a GPU's SAEs busy (`saeshare bench fit` measures it)"
            ),
        ));
    }
    if study
        .fit
        .memory_gib
        .is_some_and(|g| !(g > 0.0 && g.is_finite()))
    {
        return Err(at(
            span(&lines.fit),
            "[fit]: memory_gib must be a positive number of GiB (leave it out to fit every encoder in one pass)"
                .into(),
        ));
    }
    if study.fit.max_passes == Some(0) {
        return Err(at(
            span(&lines.fit),
            "[fit]: max_passes must be at least 1 (leave it out for as many as the steps need)"
                .into(),
        ));
    }
    if study.stats.threads == 0 {
        return Err(at(
            span(&lines.stats),
            "[stats]: threads must be at least 1".into(),
        ));
    }
    if let Some(problem) = study.similarity.problem() {
        return Err(at(
            span(&lines.similarity),
            format!("[similarity]: {problem}"),
        ));
    }
    if study.fit.tokens_per_sample == Some(0) {
        return Err(at(
            span(&lines.fit),
            "[fit]: tokens_per_sample must be at least 1 (leave it out for every token)".into(),
        ));
    }
    for (name, spec) in &study.encoders {
        if spec.tokens_per_sample == Some(0) {
            return Err(at(
                lines.encoders.get(name).map(Spanned::span),
                format!("[encoders.{name}]: tokens_per_sample must be at least 1 (leave it out for every token)"),
            ));
        }
    }
    if study.encoders.is_empty() {
        return Err(at(
            None,
            "the study names no encoder: add an [encoders.NAME] table".into(),
        ));
    }
    for name in study.encoders.keys() {
        check_encoder(study, name, lines, at)?;
    }
    check_comparisons(study, lines, at)?;
    check_ceiling(study, lines, at)?;
    check_queries(study, lines, at)
}

/// With a ceiling, each source encoder gets an SAE set per ceiling seed, `<encoder>.ceiling`
/// (then `.ceiling3`, ...), each seed its own and not the encoder's.
fn check_ceiling(study: &Study, lines: &StudyLines, at: At) -> Result<(), StudyError> {
    let seeds = study.baselines.all_ceiling_seeds();
    if let Some(twice) =
        (seeds.iter().enumerate()).find_map(|(i, s)| seeds[..i].contains(s).then_some(s))
    {
        return Err(at(
            span(&lines.baselines),
            format!("[baselines] the ceiling seed {twice} is given twice; each ceiling SAE set needs a seed of its own"),
        ));
    }
    let sources = study.encoders.keys().filter(|name| {
        study.comparisons.iter().any(|c| {
            c.sources
                .iter()
                .any(|s| s.get_ref() == "*" || s.get_ref() == *name)
        })
    });
    for name in sources {
        for (set, &seed) in seeds.iter().enumerate() {
            let twin = crate::names::ceiling_set_name(name, set);
            if study.encoders.contains_key(&twin) {
                return Err(at(
                    span(&lines.baselines),
                    format!(
                        "an encoder is named {twin:?}, the name of the ceiling's SAEs of {name:?} with seed {seed}; rename it"
                    ),
                ));
            }
            let own = study.sae_for(name).map(|c| c.seed).unwrap_or_default();
            if own == seed {
                return Err(at(
                    span(&lines.baselines),
                    format!(
                        "[baselines] ceiling seed {seed} is the SAE seed of {name:?}; the ceiling needs another"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Every encoder a comparison or a query names is defined.
fn check_references(study: &Study, at: At) -> Result<(), StudyError> {
    let known = |name: &Spanned<String>| -> Result<(), StudyError> {
        if name.get_ref() == "*" || study.encoders.contains_key(name.get_ref()) {
            return Ok(());
        }
        let defined: Vec<&str> = study.encoders.keys().map(String::as_str).collect();
        Err(at(
            Some(name.span()),
            format!(
                "no encoder {:?} in [encoders]; the study defines {}",
                name.get_ref(),
                defined.join(", ")
            ),
        ))
    };
    for comparison in &study.comparisons {
        comparison
            .sources
            .iter()
            .chain(&comparison.targets)
            .try_for_each(known)?;
    }
    for query in &study.sharedness {
        std::iter::once(&query.model)
            .chain(&query.shared_with)
            .chain(&query.not_shared_with)
            .try_for_each(known)?;
    }
    Ok(())
}

fn check_dataset(study: &Study, lines: &StudyLines, at: At) -> Result<(), StudyError> {
    let line = span(&lines.dataset);
    if let Some(shards) = &study.dataset.shards {
        if shards.is_empty() {
            return Err(at(
                line,
                "dataset.shards is empty: list shard positions, or leave the key out to use every shard"
                    .into(),
            ));
        }
        let mut seen = BTreeSet::new();
        if let Some(twice) = shards.iter().find(|s| !seen.insert(**s)) {
            return Err(at(
                line,
                format!("dataset.shards lists shard {twice} twice"),
            ));
        }
    }
    if study.dataset.shard_rows.is_some() && study.dataset.builtin.is_none() {
        return Err(at(
            line,
            "dataset.shard_rows sizes the shards of an embedded dataset (builtin = \"emoji\"); a folder's shards are as it was written".into(),
        ));
    }
    if study.dataset.shard_rows == Some(0) {
        return Err(at(line, "dataset.shard_rows must be at least 1".into()));
    }
    match study.dataset.builtin.as_deref() {
        None | Some("emoji") => Ok(()),
        Some(other) => Err(at(
            line,
            format!("dataset builtin {other:?}: the only embedded dataset is \"emoji\""),
        )),
    }
}

fn check_encoder(study: &Study, name: &str, lines: &StudyLines, at: At) -> Result<(), StudyError> {
    let encoder = &study.encoders[name];
    let own = lines.encoders.get(name);
    let line = own.map(Spanned::span);
    let key = |pick: fn(&EncoderLines) -> Option<Range<usize>>| {
        own.and_then(|l| pick(l.get_ref())).or(line.clone())
    };
    let sae_line = key(|l| span(&l.sae));
    let config = study
        .sae_for(name)
        .map_err(|e| at(sae_line.clone(), format!("[encoders.{name}.sae]: {e}")))?;
    config
        .validate_settings()
        .map_err(|e| at(sae_line, format!("[encoders.{name}] SAE: {e}")))?;
    if encoder.batch_size == Some(0) {
        return Err(at(
            key(|l| span(&l.batch_size)),
            format!("[encoders.{name}]: batch_size must be at least 1"),
        ));
    }
    if let Some(shape) = &encoder.shape {
        check_name(shape).map_err(|e| at(line.clone(), format!("[encoders.{name}]: shape {e}")))?;
    }
    let device = encoder
        .device
        .parse::<DeviceSpec>()
        .map_err(|e| at(key(|l| span(&l.device)), format!("[encoders.{name}]: {e}")))?;
    if let Some(problem) = (encoder.precision).and_then(|p| p.refused_on(device.0)) {
        return Err(at(
            key(|l| span(&l.precision)),
            format!("[encoders.{name}]: {problem}"),
        ));
    }
    let lanes_problem = match encoder.lanes {
        Some(0) => Some("lanes must be at least 1".to_string()),
        Some(n) if n > 1 && device.0.is_cuda() => Some(format!(
            "lanes = {n} is for a CPU: a GPU runs one forward pass at a time (leave lanes out)"
        )),
        _ => None,
    };
    if let Some(problem) = lanes_problem {
        return Err(at(
            key(|l| span(&l.lanes)),
            format!("[encoders.{name}]: {problem}"),
        ));
    }
    check_layer_selection(&encoder.layers).map_err(|e| {
        at(
            key(|l| span(&l.layers)),
            format!("[encoders.{name}] layers: {e}"),
        )
    })
}

/// An encoder's `layers` that name no list of layers.
#[derive(Debug, thiserror::Error)]
enum LayerSelectionError {
    #[error("{selection:?} has an empty layer name: write \"all\", \"last\" or names separated by commas")]
    EmptyName { selection: String },
    #[error("layer {0}")]
    BadName(NameError),
    #[error("{selection:?} names layer {name:?} twice")]
    Twice { selection: String, name: String },
}

/// `all`, `last`, or a list of distinct layer names (checked against the package later).
fn check_layer_selection(selection: &str) -> Result<(), LayerSelectionError> {
    if matches!(selection, "all" | "last") {
        return Ok(());
    }
    let mut seen = BTreeSet::new();
    for name in selection.split(',').map(str::trim) {
        if name.is_empty() {
            return Err(LayerSelectionError::EmptyName {
                selection: selection.to_string(),
            });
        }
        check_name(name).map_err(LayerSelectionError::BadName)?;
        if !seen.insert(name) {
            return Err(LayerSelectionError::Twice {
                selection: selection.to_string(),
                name: name.to_string(),
            });
        }
    }
    Ok(())
}

fn check_comparisons(study: &Study, lines: &StudyLines, at: At) -> Result<(), StudyError> {
    for (i, comparison) in study.comparisons.iter().enumerate() {
        let line = lines.comparisons.get(i).map(Spanned::span);
        if comparison.sources.is_empty() || comparison.targets.is_empty() {
            return Err(at(
                line,
                "[[comparisons]]: sources and targets each need at least one encoder (or \"*\")"
                    .into(),
            ));
        }
        if !matches!(comparison.layers.as_str(), "last" | "all") {
            return Err(at(
                line,
                format!(
                    "[[comparisons]] layers {:?}: use \"last\" or \"all\"",
                    comparison.layers
                ),
            ));
        }
        let names = |side: &[Spanned<String>]| -> BTreeSet<String> {
            study
                .encoders
                .keys()
                .filter(|n| side.iter().any(|s| s.get_ref() == "*" || s.get_ref() == *n))
                .cloned()
                .collect()
        };
        let (sources, targets) = (names(&comparison.sources), names(&comparison.targets));
        if sources.iter().all(|s| targets.iter().all(|t| t == s)) {
            return Err(at(
                line,
                "[[comparisons]] compares no pair: an encoder is never compared with itself".into(),
            ));
        }
    }
    Ok(())
}

/// Whether some comparison of the study compares `source` with `target`.
fn compared(study: &Study, source: &str, target: &str) -> bool {
    let names = |side: &[Spanned<String>], name: &str| {
        side.iter()
            .any(|s| s.get_ref() == "*" || s.get_ref() == name)
    };
    source != target
        && study
            .comparisons
            .iter()
            .any(|c| names(&c.sources, source) && names(&c.targets, target))
}

fn check_queries(study: &Study, lines: &StudyLines, at: At) -> Result<(), StudyError> {
    let mut names = BTreeSet::new();
    for (i, query) in study.sharedness.iter().enumerate() {
        let line = lines.sharedness.get(i).map(Spanned::span);
        let name = &query.name;
        check_name(name).map_err(|e| at(line.clone(), format!("[[sharedness]] name {e}")))?;
        if !names.insert(name.as_str()) {
            return Err(at(
                line,
                format!("[[sharedness]]: two queries are named {name:?}; each needs its own name"),
            ));
        }
        let fail = |problem: String| Err(at(line.clone(), format!("query {name}: {problem}")));
        if query.top == 0 {
            return fail("top must be at least 1".into());
        }
        if query.shared_with.is_empty() {
            return fail("shared_with is empty: name at least one encoder".into());
        }
        let model = query.model.get_ref();
        let (shared, not_shared): (Vec<&String>, Vec<&String>) = (
            query.shared_with.iter().map(Spanned::get_ref).collect(),
            query.not_shared_with.iter().map(Spanned::get_ref).collect(),
        );
        for other in shared.iter().chain(&not_shared) {
            if *other == "*" {
                return fail(
                    "\"*\" is not allowed in a query: name the encoders of each group".into(),
                );
            }
            if *other == model {
                return fail(format!(
                    "{model:?} is the query's model; it cannot be in its own groups"
                ));
            }
        }
        if let Some(both) = shared.iter().find(|m| not_shared.contains(m)) {
            return fail(format!("{both:?} is both shared_with and not_shared_with"));
        }
        if let Some(missing) = shared
            .iter()
            .chain(&not_shared)
            .find(|other| !compared(study, model, other))
        {
            return fail(format!(
                "no [[comparisons]] compares {model} with {missing}; add one with sources = [\"{model}\"] and \
                 targets = [\"{missing}\"] (or \"*\")"
            ));
        }
    }
    Ok(())
}
