//! From a layer's output to the rows an SAE trained on every token sees: every non-padding
//! token of a caption, every patch (and the class and register tokens) of a ViT, every spatial
//! position of a CNN's feature map.
//!
//! Which positions are kept is decided on the CPU from the attention mask, the tokenizer's
//! special-token mask and the manifest, never from the activations, so padding cannot reach an
//! SAE whatever the model computes there. The draw of `per_sample` positions depends only on the
//! seed, the sample id and the sample's number of kept positions: the same sample gives the same
//! rows in any batch, on any worker, in `saeshare encode --tokens` and in a study.

use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::manifest::OutputKind;

/// Which positions of a layer become SAE rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenSelection {
    /// Text: the tokenizer's special tokens (`[CLS]`, `[SEP]`, `<s>`, `</s>`, ...).
    pub special_tokens: bool,
    /// ViT: the class token (the first of the manifest's prefix tokens).
    pub class_token: bool,
    /// ViT: the register tokens (the prefix tokens after the class token).
    pub register_tokens: bool,
    /// Keep this many positions per sample, drawn at random (all of them when `None`).
    pub per_sample: Option<usize>,
    /// Seeds the draw of `per_sample`.
    pub seed: u64,
}

impl Default for TokenSelection {
    fn default() -> Self {
        TokenSelection {
            special_tokens: true,
            class_token: true,
            register_tokens: true,
            per_sample: None,
            seed: 0,
        }
    }
}

/// Token rows of one layer for a batch: `values` is `[rows x width]` row-major; row `r` is
/// position `position[r]` of the batch's sample `sample[r]` (an index into its sample ids).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenRows {
    pub values: Vec<f32>,
    pub sample: Vec<u32>,
    pub position: Vec<u32>,
}

impl TokenRows {
    pub fn rows(&self) -> usize {
        self.sample.len()
    }

    /// Adds `other`'s rows after these, its samples counted from `sample_offset`.
    pub fn append(&mut self, other: &TokenRows, sample_offset: u32) {
        self.values.extend_from_slice(&other.values);
        self.sample
            .extend(other.sample.iter().map(|s| s + sample_offset));
        self.position.extend_from_slice(&other.position);
    }
}

/// What a batch's model inputs say about its positions, beside the layer outputs.
pub struct PositionMasks<'a> {
    /// Text: `[B,T]`, 1 for real tokens.
    pub attention: Option<&'a Tensor>,
    /// Text: `[B,T]`, 1 for the tokenizer's special tokens.
    pub special: Option<&'a Tensor>,
    /// ViT: the class and register tokens before the patches.
    pub prefix: usize,
}

/// A batch's samples and, for each, the row of the model's input (and output) it reads:
/// samples with identical inputs share one.
pub struct BatchSamples<'a> {
    pub ids: &'a [u64],
    pub input_rows: &'a [usize],
}

/// The token rows of one layer's output `hidden` (`[B,T,D]` tokens or `[B,C,H,W]` maps, a row
/// per input) for `samples`, as `selection` says: each sample draws its own positions.
pub fn token_rows(
    hidden: &Tensor,
    outputs: OutputKind,
    masks: &PositionMasks,
    selection: &TokenSelection,
    samples: &BatchSamples,
) -> Result<TokenRows, tch::TchError> {
    let hidden = match outputs {
        // [B,C,H,W] -> [B,H*W,C]: a position of the map is a row.
        OutputKind::FeatureMaps => {
            let (b, c, _, _) = hidden.size4()?;
            hidden.flatten(2, 3).transpose(1, 2).reshape([b, -1, c])
        }
        OutputKind::Tokens => hidden.shallow_clone(),
    };
    let (_, tokens, width) = hidden.size3()?;
    let attention = masks.attention.map(to_vec).transpose()?;
    let special = masks.special.map(to_vec).transpose()?;
    let mut rows = TokenRows::default();
    let mut flat = Vec::new();
    for (s, (&sample_id, &b)) in samples.ids.iter().zip(samples.input_rows).enumerate() {
        let at = |mask: &Option<Vec<i64>>, t: usize| {
            mask.as_ref().map(|m| m[b * tokens as usize + t] != 0)
        };
        let mut kept: Vec<u32> = (0..tokens as usize)
            .filter(|&t| at(&attention, t).unwrap_or(true))
            .filter(|&t| selection.special_tokens || !at(&special, t).unwrap_or(false))
            .filter(|&t| match outputs {
                OutputKind::FeatureMaps => true,
                OutputKind::Tokens if t >= masks.prefix => true,
                OutputKind::Tokens if t == 0 => selection.class_token,
                OutputKind::Tokens => selection.register_tokens,
            })
            .map(|t| t as u32)
            .collect();
        if let Some(n) = selection.per_sample {
            kept = draw(kept, n, selection.seed, sample_id);
        }
        for t in kept {
            rows.sample.push(s as u32);
            rows.position.push(t);
            flat.push(b as i64 * tokens + i64::from(t));
        }
    }
    if flat.is_empty() {
        return Ok(rows);
    }
    let index = Tensor::from_slice(&flat).to_device(hidden.device());
    let picked = hidden
        .reshape([-1, width])
        .index_select(0, &index)
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu);
    rows.values = Vec::<f32>::try_from(picked.reshape([-1]))?;
    Ok(rows)
}

fn to_vec(mask: &Tensor) -> Result<Vec<i64>, tch::TchError> {
    Vec::<i64>::try_from(
        mask.to_kind(Kind::Int64)
            .to_device(tch::Device::Cpu)
            .reshape([-1]),
    )
}

/// `n` of `kept` at random, in position order: a pure function of the seed, the sample and
/// its positions.
fn draw(kept: Vec<u32>, n: usize, seed: u64, sample_id: u64) -> Vec<u32> {
    if kept.len() <= n {
        return kept;
    }
    let mixed = seed ^ sample_id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mixed);
    let mut chosen: Vec<u32> = rand::seq::index::sample(&mut rng, kept.len(), n)
        .into_iter()
        .map(|i| kept[i])
        .collect();
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples `ids` reading inputs 0 and 1.
    fn two_samples(ids: &[u64; 2]) -> BatchSamples<'_> {
        BatchSamples {
            ids,
            input_rows: &[0, 1],
        }
    }

    fn no_masks() -> PositionMasks<'static> {
        PositionMasks {
            attention: None,
            special: None,
            prefix: 0,
        }
    }

    /// Two positions a sample, drawn with seed 3.
    fn two_a_sample() -> TokenSelection {
        TokenSelection {
            per_sample: Some(2),
            seed: 3,
            ..TokenSelection::default()
        }
    }

    fn hidden() -> Tensor {
        // Two samples of four tokens of width 1: values 0..3 and 10..13.
        Tensor::from_slice(&[0f32, 1., 2., 3., 10., 11., 12., 13.]).reshape([2, 4, 1])
    }

    #[test]
    fn padding_never_becomes_a_row_and_special_tokens_are_a_choice() {
        let attention = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 0]).reshape([2, 4]);
        let special = Tensor::from_slice(&[1i64, 0, 0, 1, 1, 0, 1, 0]).reshape([2, 4]);
        let masks = PositionMasks {
            attention: Some(&attention),
            special: Some(&special),
            prefix: 0,
        };
        let all = TokenSelection::default();
        let rows = token_rows(
            &hidden(),
            OutputKind::Tokens,
            &masks,
            &all,
            &two_samples(&[5, 6]),
        )
        .unwrap();
        assert_eq!(rows.values, vec![0., 1., 2., 3., 10., 11., 12.]);
        assert_eq!(rows.sample, vec![0, 0, 0, 0, 1, 1, 1]);
        let words = TokenSelection {
            special_tokens: false,
            ..all
        };
        let rows = token_rows(
            &hidden(),
            OutputKind::Tokens,
            &masks,
            &words,
            &two_samples(&[5, 6]),
        )
        .unwrap();
        assert_eq!(rows.values, vec![1., 2., 11.]);
        assert_eq!(rows.position, vec![1, 2, 1]);
    }

    #[test]
    fn class_and_register_tokens_are_choices_and_maps_give_every_position() {
        let masks = PositionMasks {
            attention: None,
            special: None,
            prefix: 2,
        };
        let patches = TokenSelection {
            class_token: false,
            register_tokens: false,
            ..TokenSelection::default()
        };
        let rows = token_rows(
            &hidden(),
            OutputKind::Tokens,
            &masks,
            &patches,
            &two_samples(&[0, 1]),
        )
        .unwrap();
        assert_eq!(rows.values, vec![2., 3., 12., 13.]);
        let class = TokenSelection {
            class_token: true,
            ..patches
        };
        let rows = token_rows(
            &hidden(),
            OutputKind::Tokens,
            &masks,
            &class,
            &two_samples(&[0, 1]),
        )
        .unwrap();
        assert_eq!(rows.values, vec![0., 2., 3., 10., 12., 13.]);
        // A [1,2,2,2] map: channels (a, b) at four positions.
        let maps = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6., 7., 8.]).reshape([1, 2, 2, 2]);
        let none = PositionMasks { prefix: 0, ..masks };
        let rows = token_rows(
            &maps,
            OutputKind::FeatureMaps,
            &none,
            &TokenSelection::default(),
            &BatchSamples {
                ids: &[9],
                input_rows: &[0],
            },
        )
        .unwrap();
        assert_eq!(rows.values, vec![1., 5., 2., 6., 3., 7., 4., 8.]);
        assert_eq!(rows.position, vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_thinned_sample_draws_the_same_positions_in_any_batch() {
        let (masks, two) = (no_masks(), two_a_sample());
        let both = token_rows(
            &hidden(),
            OutputKind::Tokens,
            &masks,
            &two,
            &two_samples(&[40, 41]),
        )
        .unwrap();
        assert_eq!(both.rows(), 4);
        let alone = token_rows(
            &hidden().narrow(0, 1, 1),
            OutputKind::Tokens,
            &masks,
            &two,
            &BatchSamples {
                ids: &[41],
                input_rows: &[0],
            },
        )
        .unwrap();
        assert_eq!(alone.values, both.values[2..].to_vec());
        let draws: std::collections::HashSet<Vec<u32>> = (0..50)
            .map(|id| draw((0..10).collect(), 3, 3, id))
            .collect();
        assert!(draws.len() > 10, "the draw ignores the sample");
    }

    #[test]
    fn samples_sharing_an_input_read_its_rows_and_draw_their_own_positions() {
        let (masks, two) = (no_masks(), two_a_sample());
        // Samples 40 and 41 both read input 1 (values 10..13); 7 reads input 0.
        let shared = BatchSamples {
            ids: &[40, 7, 41],
            input_rows: &[1, 0, 1],
        };
        let rows = token_rows(&hidden(), OutputKind::Tokens, &masks, &two, &shared).unwrap();
        assert_eq!(rows.sample, vec![0, 0, 1, 1, 2, 2]);
        let own = token_rows(
            &hidden(),
            OutputKind::Tokens,
            &masks,
            &two,
            &two_samples(&[7, 41]),
        )
        .unwrap();
        let own_40 = token_rows(
            &hidden(),
            OutputKind::Tokens,
            &masks,
            &two,
            &BatchSamples {
                ids: &[40],
                input_rows: &[1],
            },
        )
        .unwrap();
        assert_eq!(rows.values[..2], own_40.values[..]);
        assert_eq!(rows.values[2..], own.values[..]);
        assert!(rows.values[..2].iter().all(|v| *v >= 10.0));
    }
}
