//! From an SAE to sparse codes, one way for every caller: [`Sae::sample_codes`] turns rows of
//! activations into each sample's features and values, [`codes_meta`] says what a codes file of
//! the SAE holds. `saeshare sae encode` ([`encode_file`]) and the pipeline's compare pass both
//! use them (FORMATS.md, "Sparse codes").

use std::path::Path;

use anyhow::Context;
use tch::{Device, Tensor};

use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::code::Code;
use super::config::{SaeConfig, SaeKind};
use super::formats::SaeFormat;
use super::load::{load, LoadOptions, LoadedSae};
use super::model::Sae;
use crate::activations::{read_meta, LayerReader};
use crate::codes::{CodesMeta, CodesSummary, CodesWriter};

/// One sample's code: its features and their values.
pub type SampleCode = (Vec<u32>, Vec<f32>);

/// Which values of an SAE are read as a sample's features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReadOut {
    /// What the SAE outputs: its TopK (or BatchTopK, or ReLU) code.
    #[default]
    #[serde(rename = "topk")]
    Code,
    /// The dense pre-activations `ReLU(W_enc (x - b_dec) + b_enc)` without the TopK: the
    /// reference code's read-out, kept to reproduce it. Its codes are dense.
    #[serde(rename = "relu")]
    Relu,
}

/// What a codes file of an SAE with `config` and `d_sae` features on `encoder`'s `layer`, read
/// out as `read_out` says, says about itself: TopK codes carry their `k`; BatchTopK, ReLU and
/// ReLU read-out codes are dense.
pub fn codes_meta(
    config: &SaeConfig,
    encoder: &str,
    layer: &str,
    d_sae: usize,
    read_out: ReadOut,
) -> CodesMeta {
    if codes_have_k(config.kind, read_out) {
        CodesMeta::topk(encoder, layer, d_sae as u32, config.k as u32)
    } else {
        CodesMeta::dense(encoder, layer, d_sae as u32)
    }
}

/// Whether an SAE of `kind` read out as `read_out` gives at most `k` active latents a sample:
/// a TopK SAE's own codes. Every other read-out is unbounded, stored one row per sample when
/// dense enough and summed by dense products.
pub fn codes_have_k(kind: SaeKind, read_out: ReadOut) -> bool {
    kind == SaeKind::Topk && read_out == ReadOut::Code
}

impl Sae {
    /// The codes of `samples` rows of activations (`rows`, row-major, on the CPU), read out as
    /// `read_out` says: for each sample, in order, its active features and their values.
    pub fn sample_codes(&self, rows: &[f32], samples: usize, read_out: ReadOut) -> Vec<SampleCode> {
        let mut codes = vec![(Vec::new(), Vec::new()); samples];
        if samples == 0 {
            return codes;
        }
        let x = Tensor::from_slice(rows)
            .reshape([samples as i64, -1])
            .to_device(self.device());
        let code = match read_out {
            ReadOut::Code => self.encode(&x),
            ReadOut::Relu => Code::Dense(tch::no_grad(|| self.pre_activations(&x))),
        };
        let (rows, latents, values) = code.triples();
        for ((row, latent), value) in rows.into_iter().zip(latents).zip(values) {
            let code = &mut codes[row as usize];
            code.0.push(latent as u32);
            code.1.push(value);
        }
        codes
    }
}

/// How [`encode_file`] encodes: on which device, how many samples at once, which values.
#[derive(Clone, Copy, Debug)]
pub struct EncodeSettings {
    pub device: Device,
    pub batch_rows: usize,
    pub read_out: ReadOut,
}

/// Encodes `layer` of `activations` with the SAE in `sae_dir` (any format [`load`] reads) into
/// the codes file `out`.
pub fn encode_file(
    sae_dir: &Path,
    options: &LoadOptions,
    activations: &Path,
    layer: &str,
    out: &Path,
    settings: EncodeSettings,
) -> anyhow::Result<CodesSummary> {
    let EncodeSettings {
        device,
        batch_rows,
        read_out,
    } = settings;
    let file_meta = read_meta(activations)?;
    anyhow::ensure!(
        file_meta.tokens.is_none(),
        "{}: a token-level activation file (one row per token, from `saeshare encode --tokens`); \
         `sae encode` writes one code per sample, so it needs pooled activations: encode the \
         dataset again without --tokens",
        activations.display()
    );
    let LoadedSae { sae, description } = load(sae_dir, device, options)?;
    let reader = LayerReader::open(activations, layer, batch_rows)?;
    anyhow::ensure!(
        reader.width() == description.d_in,
        "{}: layer {layer} has width {}, but the SAE in {} ({}) takes inputs of width {}",
        activations.display(),
        reader.width(),
        sae_dir.display(),
        description.format,
        description.d_in
    );
    // saeshare's SAEs name the encoder and layer they were fitted on; an SAE from another tool
    // encodes the activations of the file's encoder.
    let (encoder, label) = match description.format {
        SaeFormat::Saeshare => {
            let meta = checkpoint::read_meta(sae_dir)?;
            if meta.source.layer != layer {
                tracing::warn!(
                    "the SAE in {} was trained on layer {}, and encodes layer {layer} here",
                    sae_dir.display(),
                    meta.source.layer
                );
            }
            let label = format!("{} (seed {})", sae_dir.display(), meta.config.seed);
            (meta.source.encoder, label)
        }
        format => (
            file_meta.encoder.clone(),
            format!(
                "{} ({format} {})",
                sae_dir.display(),
                description.architecture
            ),
        ),
    };
    let codes_meta =
        codes_meta(&sae.config, &encoder, layer, description.d_sae, read_out).with_sae(label);
    let mut writer = CodesWriter::create(out, codes_meta)?;

    let bar = crate::progress::bar(None, "encoding", "samples");
    // Codes stream straight to the file while sample ids increase, as `saeshare encode` writes
    // them; a file in another order is gathered and sorted first (k entries per sample).
    let mut last: Option<u64> = None;
    let mut unsorted: Vec<(u64, SampleCode)> = Vec::new();
    for batch in reader {
        let batch = batch?;
        let codes = sae.sample_codes(&batch.values, batch.rows(), read_out);
        for (id, code) in batch.sample_ids.iter().copied().zip(codes) {
            let in_order = unsorted.is_empty() && last.is_none_or(|l| id > l);
            if in_order {
                last = Some(id);
                writer.push(id, &code.0, &code.1)?;
            } else {
                unsorted.push((id, code));
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
            let (id, (features, values)) = code;
            writer.push(id, &features, &values).with_context(|| {
                format!("{}: sample_id {id} appears twice", activations.display())
            })?;
        }
    }
    bar.finish_and_clear();
    Ok(writer.finish()?)
}
