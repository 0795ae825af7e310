//! Read-out rows from activation files, and two sides aligned on the samples they share: what
//! the one-shot command and the study's compare pass both feed the engine.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{LayerRows, SideRows};
use crate::activations::{read_meta, LayerReader};

/// The layers `layers` (every layer of the file when empty) of a pooled activation file, every
/// row in file order, with the sample of each row; `name` the side's name (default: the
/// encoder the file names). Every layer must hold the same samples, each once.
pub fn read_side(
    path: &Path,
    layers: &[String],
    name: Option<&str>,
) -> anyhow::Result<(Vec<u64>, SideRows)> {
    let meta = read_meta(path)?;
    anyhow::ensure!(
        meta.tokens.is_none(),
        "{}: a token-level file; the measures compare one row per sample (encode without --tokens)",
        path.display()
    );
    let names: Vec<String> = if layers.is_empty() {
        meta.meta.layers.iter().map(|l| l.name.clone()).collect()
    } else {
        layers.to_vec()
    };
    let mut ids: Option<Vec<u64>> = None;
    let mut side = SideRows {
        encoder: name.map_or_else(|| meta.meta.encoder.clone(), str::to_string),
        layers: Vec::new(),
    };
    for layer in &names {
        let mut reader = LayerReader::open(path, layer, 4096)?;
        let width = reader.width();
        let (mut these, mut values) = (Vec::new(), Vec::new());
        for batch in &mut reader {
            let batch = batch?;
            these.extend(batch.sample_ids);
            values.extend(batch.values);
        }
        match &ids {
            None => ids = Some(these),
            Some(first) if *first != these => anyhow::bail!(
                "{}: layer {layer:?} holds other samples than layer {:?} (or in another order); \
                 every layer of a file must hold the same samples",
                path.display(),
                names[0]
            ),
            Some(_) => {}
        }
        side.layers.push(LayerRows {
            name: layer.clone(),
            width,
            values,
        });
    }
    let ids = ids.unwrap_or_default();
    let mut seen = HashSet::new();
    if let Some(id) = ids.iter().find(|&&id| !seen.insert(id)) {
        anyhow::bail!(
            "{}: sample_id {id} appears twice in a layer",
            path.display()
        );
    }
    Ok((ids, side))
}

/// Two sides on the samples both hold, in sample id order.
pub struct Aligned {
    pub ids: Vec<u64>,
    pub source: SideRows,
    pub target: SideRows,
    /// A sample only the source holds (if any), and how many samples only one side holds.
    pub only_source: Option<u64>,
    pub only_target: Option<u64>,
    pub dropped: usize,
}

/// Aligns `source` and `target` (each with the samples of its rows) on their common samples.
pub fn align_sides(
    (ids_a, source): (Vec<u64>, SideRows),
    (ids_b, target): (Vec<u64>, SideRows),
) -> Aligned {
    let at_a: HashMap<u64, usize> = ids_a.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let at_b: HashMap<u64, usize> = ids_b.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let only_source = ids_a.iter().copied().find(|id| !at_b.contains_key(id));
    let only_target = ids_b.iter().copied().find(|id| !at_a.contains_key(id));
    let mut ids: Vec<u64> = ids_a
        .iter()
        .copied()
        .filter(|id| at_b.contains_key(id))
        .collect();
    ids.sort_unstable();
    let dropped = ids_a.len() + ids_b.len() - 2 * ids.len();
    let reorder = |side: SideRows, at: &HashMap<u64, usize>| SideRows {
        encoder: side.encoder,
        layers: (side.layers.into_iter())
            .map(|l| LayerRows {
                values: (ids.iter())
                    .flat_map(|id| {
                        let i = at[id];
                        l.values[i * l.width..(i + 1) * l.width].iter().copied()
                    })
                    .collect(),
                ..l
            })
            .collect(),
    };
    let (source, target) = (reorder(source, &at_a), reorder(target, &at_b));
    Aligned {
        ids,
        source,
        target,
        only_source,
        only_target,
        dropped,
    }
}

impl SideRows {
    /// Appends `other`'s rows (the same layers, other samples).
    pub fn extend(&mut self, other: SideRows) {
        if self.layers.is_empty() {
            *self = other;
            return;
        }
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            mine.values.extend(theirs.values);
        }
    }
}
