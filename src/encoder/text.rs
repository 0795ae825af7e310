//! Tokenization with the package's `tokenizer.json`, padded and truncated as the model was
//! trained (the manifest says how), whatever the file itself was saved with.

use std::path::Path;

use tch::{Device, Tensor};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::manifest::TextSpec;
use super::EncoderError;

/// A tokenizer set up for one encoder.
#[derive(Clone)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    /// Captions cut at `max_length` so far.
    pub truncated: u64,
}

/// Token ids, attention mask and special-token mask of a batch, `[batch, tokens]` int64 each.
pub struct Tokens {
    pub ids: Tensor,
    pub mask: Tensor,
    /// 1 for the tokens the tokenizer adds (`[CLS]`, `[SEP]`, ...), on the CPU.
    pub special: Tensor,
}

impl TextTokenizer {
    pub fn load(package: &Path, spec: &TextSpec) -> Result<TextTokenizer, EncoderError> {
        let path = package.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| EncoderError::Package {
            package: package.to_path_buf(),
            problem: format!("tokenizer.json: {e}"),
        })?;
        let strategy = if spec.padding == "max_length" {
            PaddingStrategy::Fixed(spec.max_length)
        } else {
            PaddingStrategy::BatchLongest
        };
        let pad_token = tokenizer
            .id_to_token(spec.pad_id)
            .unwrap_or_else(|| "[PAD]".to_string());
        tokenizer.with_padding(Some(PaddingParams {
            strategy,
            pad_id: spec.pad_id,
            pad_token,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: spec.max_length,
                ..TruncationParams::default()
            }))
            .map_err(|e| EncoderError::Package {
                package: package.to_path_buf(),
                problem: format!("tokenizer.json: {e}"),
            })?;
        Ok(TextTokenizer {
            tokenizer,
            truncated: 0,
        })
    }

    /// The tokens each caption takes, special tokens included, cut at the maximum length.
    pub fn lengths(&self, captions: &[String]) -> Result<Vec<usize>, EncoderError> {
        let encodings = self
            .tokenizer
            .encode_batch(captions.to_vec(), true)
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        Ok((encodings.iter())
            .map(|e| e.get_attention_mask().iter().filter(|&&m| m != 0).count())
            .collect())
    }

    /// Tokenizes `captions` into tensors on `device`, counting captions that were cut.
    pub fn encode(&mut self, captions: &[String], device: Device) -> Result<Tokens, EncoderError> {
        let encodings = self
            .tokenizer
            .encode_batch(captions.to_vec(), true)
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        self.truncated += encodings
            .iter()
            .filter(|e| !e.get_overflowing().is_empty())
            .count() as u64;
        let rows = encodings.len() as i64;
        let ids: Vec<i64> = encodings
            .iter()
            .flat_map(|e| e.get_ids().iter().map(|&i| i as i64))
            .collect();
        let mask: Vec<i64> = encodings
            .iter()
            .flat_map(|e| e.get_attention_mask().iter().map(|&m| m as i64))
            .collect();
        let special: Vec<i64> = encodings
            .iter()
            .flat_map(|e| e.get_special_tokens_mask().iter().map(|&m| m as i64))
            .collect();
        Ok(Tokens {
            special: Tensor::from_slice(&special).reshape([rows, -1]),
            ids: Tensor::from_slice(&ids)
                .reshape([rows, -1])
                .to_device(device),
            mask: Tensor::from_slice(&mask)
                .reshape([rows, -1])
                .to_device(device),
        })
    }
}
