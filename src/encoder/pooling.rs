//! From a layer's tokens (or feature map) to one vector per sample.

use tch::{Kind, Tensor};

use super::manifest::{OutputKind, Pooling};

/// A pooling that does not fit the layer's output.
#[derive(Debug, thiserror::Error)]
pub enum PoolingError {
    #[error("{0:?} pooling needs tokens; a CNN's feature maps are pooled with gap")]
    NeedsTokens(Pooling),
    #[error("gap pooling is for CNN feature maps; use cls, eos, last or mean")]
    GapNeedsFeatureMaps,
    #[error("eos pooling needs an attention mask (text encoders)")]
    EosNeedsMask,
    /// The layer's output is not `[B,T,D]`.
    #[error(transparent)]
    Shape(#[from] tch::TchError),
}

/// Pools `hidden` (`[B,T,D]` tokens or `[B,C,H,W]` maps) to `[B,D]`. `mask` is the attention mask
/// of text (`[B,T]`, 1 for real tokens); `prefix` the class and register tokens of a ViT.
pub fn pool(
    hidden: &Tensor,
    outputs: OutputKind,
    pooling: Pooling,
    mask: Option<&Tensor>,
    prefix: usize,
) -> Result<Tensor, PoolingError> {
    match (outputs, pooling) {
        (OutputKind::FeatureMaps, Pooling::Gap) => {
            Ok(hidden.mean_dim([2i64, 3].as_slice(), false, Kind::Float))
        }
        (OutputKind::FeatureMaps, other) => Err(PoolingError::NeedsTokens(other)),
        (OutputKind::Tokens, Pooling::Gap) => Err(PoolingError::GapNeedsFeatureMaps),
        (OutputKind::Tokens, Pooling::Cls) => Ok(hidden.select(1, 0)),
        (OutputKind::Tokens, Pooling::Last) => Ok(hidden.select(1, -1)),
        (OutputKind::Tokens, Pooling::Eos) => {
            let mask = mask.ok_or(PoolingError::EosNeedsMask)?;
            let last =
                (mask.sum_dim_intlist([1i64].as_slice(), false, Kind::Int64) - 1).clamp_min(0);
            let (_, _, width) = hidden.size3()?;
            let index = last.view([-1, 1, 1]).expand([-1, 1, width], false);
            Ok(hidden.gather(1, &index, false).squeeze_dim(1))
        }
        (OutputKind::Tokens, Pooling::Mean) => match mask {
            Some(mask) => {
                let mask = mask.to_kind(hidden.kind()).unsqueeze(-1);
                let sum = (hidden * &mask).sum_dim_intlist([1i64].as_slice(), false, hidden.kind());
                let count = mask
                    .sum_dim_intlist([1i64].as_slice(), false, hidden.kind())
                    .clamp_min(1.0);
                Ok(sum / count)
            }
            None => {
                let tokens = hidden.size()[1];
                let patches = hidden.narrow(1, prefix as i64, tokens - prefix as i64);
                Ok(patches.mean_dim([1i64].as_slice(), false, hidden.kind()))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pooling_picks_what_it_says() {
        // Two samples of three tokens of width 1: values 1,2,3 and 4,5,6; the second padded after
        // its second token.
        let hidden = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.]).reshape([2, 3, 1]);
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0]).reshape([2, 3]);
        let run = |p, m: Option<&Tensor>, prefix| -> Vec<f32> {
            pool(&hidden, OutputKind::Tokens, p, m, prefix)
                .unwrap()
                .reshape([-1])
                .try_into()
                .unwrap()
        };
        assert_eq!(run(Pooling::Cls, Some(&mask), 0), vec![1., 4.]);
        assert_eq!(run(Pooling::Last, Some(&mask), 0), vec![3., 6.]);
        assert_eq!(run(Pooling::Eos, Some(&mask), 0), vec![3., 5.]);
        assert_eq!(run(Pooling::Mean, Some(&mask), 0), vec![2., 4.5]);
        assert_eq!(run(Pooling::Mean, None, 1), vec![2.5, 5.5]);
        let maps = Tensor::from_slice(&[1f32, 2., 3., 4.]).reshape([1, 1, 2, 2]);
        let gap: Vec<f32> = pool(&maps, OutputKind::FeatureMaps, Pooling::Gap, None, 0)
            .unwrap()
            .reshape([-1])
            .try_into()
            .unwrap();
        assert_eq!(gap, vec![2.5]);
        assert!(pool(&maps, OutputKind::FeatureMaps, Pooling::Cls, None, 0).is_err());
    }
}
