//! `saeshare sae encode`: the sparse codes of a trained SAE on one layer of an activation file,
//! written as a codes file (FORMATS.md, "Sparse codes").

use std::path::Path;

use anyhow::Context;
use tch::{Device, Tensor};

use super::config::SaeKind;
use super::model::Sae;
use crate::activations::LayerReader;
use crate::codes::{CodesMeta, CodesSummary, CodesWriter};

/// One sample's code: its features and their values.
type SampleCode = (u64, Vec<u32>, Vec<f32>);

/// Encodes `layer` of `activations` with the SAE in `sae_dir` into the codes file `out`.
pub fn encode_file(
    sae_dir: &Path,
    activations: &Path,
    layer: &str,
    out: &Path,
    device: Device,
    batch_rows: usize,
) -> anyhow::Result<CodesSummary> {
    let (sae, meta) = Sae::load(sae_dir, device)?;
    let reader = LayerReader::open(activations, layer, batch_rows)?;
    anyhow::ensure!(
        reader.width() == meta.d_in,
        "{}: layer {layer} has width {}, but the SAE in {} was trained on width {}",
        activations.display(),
        reader.width(),
        sae_dir.display(),
        meta.d_in
    );
    if meta.source.layer != layer {
        tracing::warn!(
            "the SAE in {} was trained on layer {}, and encodes layer {layer} here",
            sae_dir.display(),
            meta.source.layer
        );
    }
    let codes_meta = match meta.config.kind {
        SaeKind::Topk => CodesMeta::topk(
            &meta.source.encoder,
            layer,
            meta.d_sae as u32,
            meta.config.k as u32,
        ),
        SaeKind::BatchTopk | SaeKind::Relu => {
            CodesMeta::dense(&meta.source.encoder, layer, meta.d_sae as u32)
        }
    }
    .with_sae(format!("{} (seed {})", sae_dir.display(), meta.config.seed));
    let mut writer = CodesWriter::create(out, codes_meta)?;

    let bar = crate::progress::bar(None, "encoding", "samples");
    // Codes stream straight to the file while sample ids increase, as `saeshare encode` writes
    // them; a file in another order is gathered and sorted first (k entries per sample).
    let mut last: Option<u64> = None;
    let mut unsorted: Vec<SampleCode> = Vec::new();
    for batch in reader {
        let batch = batch?;
        let x = Tensor::from_slice(&batch.values)
            .reshape([batch.rows() as i64, meta.d_in as i64])
            .to_device(device);
        let (rows, latents, values) = sae.encode(&x).triples();
        for code in group_by_row(&batch.sample_ids, &rows, &latents, &values) {
            let in_order = unsorted.is_empty() && last.is_none_or(|l| code.0 > l);
            if in_order {
                last = Some(code.0);
                writer.push(code.0, &code.1, &code.2)?;
            } else {
                unsorted.push(code);
            }
        }
        bar.inc(batch.rows() as u64);
    }
    if !unsorted.is_empty() {
        tracing::info!(
            "{}: sample ids are not in increasing order; sorting {} codes before writing",
            activations.display(),
            unsorted.len()
        );
        unsorted.sort_by_key(|c| c.0);
        for code in unsorted {
            writer.push(code.0, &code.1, &code.2).with_context(|| {
                format!(
                    "{}: sample_id {} appears twice",
                    activations.display(),
                    code.0
                )
            })?;
        }
    }
    bar.finish_and_clear();
    Ok(writer.finish()?)
}

/// Splits `(row, latent, value)` triples (rows in order) into one code per sample.
fn group_by_row(ids: &[u64], rows: &[i64], latents: &[i64], values: &[f32]) -> Vec<SampleCode> {
    let mut codes: Vec<SampleCode> = ids.iter().map(|&id| (id, Vec::new(), Vec::new())).collect();
    for ((&row, &latent), &value) in rows.iter().zip(latents).zip(values) {
        let code = &mut codes[row as usize];
        code.1.push(latent as u32);
        code.2.push(value);
    }
    codes
}
