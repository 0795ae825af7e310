//! Tokenization with the package's `tokenizer.json`, padded and truncated as the model was
//! trained (the manifest says how), whatever the file itself was saved with.
//!
//! A reader batch's captions are tokenized once, each distinct caption once, on the helper
//! thread ([`TextTokenizer::tokenize`]): their lengths group them into batches, and each model
//! batch is padded from the same tokens ([`BatchTokens::padded`]) as `tokenizers` pads.

use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Tensor};
use tokenizers::{Tokenizer, TruncationParams};

use super::manifest::TextSpec;
use super::preparers::Preparers;
use super::EncoderError;

/// A tokenizer set up for one encoder; never changed once loaded, so the helper thread shares
/// the encoder's.
pub struct TextTokenizer {
    /// Truncating at the model's maximum length, never padding (done per model batch).
    tokenizer: Tokenizer,
    /// `Some(n)`: every batch padded to `n` tokens; `None`: to its longest caption.
    fixed_length: Option<usize>,
    pad_id: u32,
}

/// One caption's tokens, cut at the maximum length, not padded.
#[derive(Clone, Debug)]
struct CaptionTokens {
    ids: Vec<u32>,
    special: Vec<u32>,
    truncated: bool,
}

/// The captions of a reader batch, tokenized: each distinct caption once.
pub struct BatchTokens<'a> {
    tokenizer: &'a TextTokenizer,
    of: HashMap<&'a str, CaptionTokens>,
}

/// A model batch's tokens, padded, on the CPU: `[rows x width]` each, row-major.
pub struct PaddedTokens {
    ids: Vec<i64>,
    mask: Vec<i64>,
    special: Vec<i64>,
    rows: usize,
    width: usize,
    /// Captions of these rows cut at the maximum length.
    pub truncated: u64,
}

/// Token ids, attention mask and special-token mask of a batch, `[batch, tokens]` int64 each.
pub struct Tokens {
    pub ids: Tensor,
    pub mask: Tensor,
    /// 1 for the tokens the tokenizer adds (`[CLS]`, `[SEP]`, ...) and for padding, on the CPU.
    pub special: Tensor,
}

impl TextTokenizer {
    pub fn load(package: &Path, spec: &TextSpec) -> Result<TextTokenizer, EncoderError> {
        let path = package.join("tokenizer.json");
        let problem = |e: tokenizers::Error| EncoderError::Package {
            package: package.to_path_buf(),
            problem: format!("tokenizer.json: {e}"),
        };
        let mut tokenizer = Tokenizer::from_file(&path).map_err(problem)?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: spec.max_length,
                ..TruncationParams::default()
            }))
            .map_err(problem)?;
        Ok(TextTokenizer {
            tokenizer,
            fixed_length: (spec.padding == "max_length").then_some(spec.max_length),
            pad_id: spec.pad_id,
        })
    }

    /// Tokenizes `captions`, each distinct caption once, on `preparers` (the helper thread
    /// beside a model on the CPU, every core feeding a GPU).
    pub fn tokenize<'a>(
        &'a self,
        captions: &'a [String],
        preparers: &Preparers,
    ) -> Result<BatchTokens<'a>, EncoderError> {
        let mut distinct: Vec<&str> = captions.iter().map(String::as_str).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let tokenized = preparers.map(&distinct, |&caption| {
            let e = (self.tokenizer.encode(caption, true))
                .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
            let tokens = CaptionTokens {
                ids: e.get_ids().to_vec(),
                special: e.get_special_tokens_mask().to_vec(),
                truncated: !e.get_overflowing().is_empty(),
            };
            Ok((caption, tokens))
        });
        let of = tokenized
            .into_iter()
            .collect::<Result<HashMap<_, _>, EncoderError>>()?;
        Ok(BatchTokens {
            tokenizer: self,
            of,
        })
    }

    /// The tokens each caption takes, special tokens included, cut at the maximum length.
    pub fn lengths(&self, captions: &[String]) -> Result<Vec<usize>, EncoderError> {
        Ok(self
            .tokenize(captions, &Preparers::here())?
            .lengths(captions))
    }

    /// Tokenizes `captions` into one padded batch of tensors on `device`.
    pub fn encode(&self, captions: &[String], device: Device) -> Result<Tokens, EncoderError> {
        let all: Vec<&str> = captions.iter().map(String::as_str).collect();
        Ok(self
            .tokenize(captions, &Preparers::here())?
            .padded(&all)
            .to_device(device))
    }
}

impl BatchTokens<'_> {
    /// The tokens each of `captions` (captions of the tokenized batch) takes.
    pub fn lengths(&self, captions: &[String]) -> Vec<usize> {
        captions
            .iter()
            .map(|c| self.of[c.as_str()].ids.len())
            .collect()
    }

    /// `captions` (of the tokenized batch) as a model batch: padded on the right to the longest
    /// or to the fixed length, with the pad id, attention 0 and special-token mask 1, as
    /// `tokenizers` pads.
    pub fn padded(&self, captions: &[&str]) -> PaddedTokens {
        let rows: Vec<&CaptionTokens> = captions.iter().map(|c| &self.of[c]).collect();
        let longest = rows.iter().map(|t| t.ids.len()).max().unwrap_or(0);
        let width = self.tokenizer.fixed_length.unwrap_or(longest).max(longest);
        let mut padded = PaddedTokens {
            ids: Vec::with_capacity(rows.len() * width),
            mask: Vec::with_capacity(rows.len() * width),
            special: Vec::with_capacity(rows.len() * width),
            rows: rows.len(),
            width,
            truncated: rows.iter().filter(|t| t.truncated).count() as u64,
        };
        let pad = i64::from(self.tokenizer.pad_id);
        for t in rows {
            let n = t.ids.len();
            padded.ids.extend(t.ids.iter().map(|&i| i64::from(i)));
            padded.ids.extend(std::iter::repeat_n(pad, width - n));
            padded.mask.extend(std::iter::repeat_n(1, n));
            padded.mask.extend(std::iter::repeat_n(0, width - n));
            padded
                .special
                .extend(t.special.iter().map(|&s| i64::from(s)));
            padded.special.extend(std::iter::repeat_n(1, width - n));
        }
        padded
    }
}

impl PaddedTokens {
    /// The rows of the batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Rows (captions), and the length they are padded to.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.width)
    }

    /// Of those, the padding.
    pub fn padding(&self) -> usize {
        self.mask.iter().filter(|&&m| m == 0).count()
    }

    /// As tensors: ids and mask on `device`, the special-token mask on the CPU.
    pub fn to_device(self, device: Device) -> Tokens {
        let shape = [self.rows as i64, self.width as i64];
        let tensor = |values: Vec<i64>| Tensor::from_slice(&values).reshape(shape);
        Tokens {
            ids: tensor(self.ids).to_device(device),
            mask: tensor(self.mask).to_device(device),
            special: tensor(self.special),
        }
    }
}
