//! How the library's enums are spelled on the command line: each flag value with its help line.
//! The library types stay plain; `#[arg(value_enum)]` parses them through these impls.

use clap::builder::PossibleValue;
use clap::ValueEnum;

use crate::dataset::import::CocoRows;
use crate::encoder::Pooling;
use crate::metrics::{Backend, Popularity};
use crate::sae::{DecoderBiasInit, ReadOut, SaeKind};

/// `impl ValueEnum for Type { Variant => "name" ("help")?, ... }`, in the order `--help` lists
/// the values.
macro_rules! value_enum {
    ($type:ty { $($variant:ident => $name:literal $(($help:literal))?),+ $(,)? }) => {
        impl ValueEnum for $type {
            fn value_variants<'a>() -> &'a [Self] {
                &[$(<$type>::$variant),+]
            }

            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(match self {
                    $(<$type>::$variant => PossibleValue::new($name)$(.help($help))?),+
                })
            }
        }
    };
}

value_enum!(SaeKind {
    Topk => "topk"
        ("`TopK(ReLU(pre))`: exactly k active latents per sample (the paper's SAEs)"),
    BatchTopk => "batch-topk"
        ("The top `k * batch` pre-activations of a whole batch while training; at inference a \
          learned threshold, so k active latents per sample on average"),
    Relu => "relu" ("`ReLU(pre)` with an L1 penalty on the codes"),
});

value_enum!(DecoderBiasInit {
    Mean => "mean",
    GeometricMedian => "geometric-median",
});

value_enum!(Pooling {
    Cls => "cls" ("The first token (a trained summary token: BERT's [CLS], ViT's class token)"),
    Eos => "eos"
        ("The last non-padding token (CLIP text: the end-of-text token, the only one that has \
          seen the whole caption under the causal mask)"),
    Last => "last" ("The final position, padding included (SigLIP text, trained padded to 64)"),
    Mean => "mean"
        ("The mean of the non-padding tokens, or of the patches (without class or register \
          tokens)"),
    Gap => "gap" ("Global average over the height and width of a CNN feature map"),
});

value_enum!(ReadOut {
    Code => "topk" ("What the SAE outputs: its TopK (BatchTopK, ReLU) code"),
    Relu => "relu"
        ("The dense `ReLU(W_enc (x - b_dec) + b_enc)` without TopK: the reference code's \
          read-out, to reproduce it"),
});

value_enum!(Backend {
    Auto => "auto" ("Sparse for TopK codes (files that declare `k`), dense otherwise"),
    Sparse => "sparse" ("`k_A * k_B` updates per sample"),
    Dense => "dense" ("Blocked matmuls through libtorch"),
});

value_enum!(CocoRows {
    FirstCaption => "first-caption"
        ("One row per image, with its first caption (lowest annotation id). The default: every \
          encoder sees each image once, so image features are not correlated with themselves \
          through repeated rows"),
    AllCaptions => "all-captions"
        ("One row per (image, caption) pair: each image appears once per caption"),
});

value_enum!(Popularity {
    Zipf => "zipf" ("Feature of rank r drawn with weight r^-s, as in real SAEs"),
    Uniform => "uniform" ("Every feature equally often"),
});

#[cfg(test)]
mod tests {
    use super::*;

    /// The names the CLI takes are the names study files and sae.json use.
    #[test]
    fn flag_values_are_the_serde_names() {
        fn check<T: ValueEnum + serde::Serialize>() {
            for value in T::value_variants() {
                let name = value.to_possible_value().unwrap().get_name().to_string();
                assert_eq!(serde_json::to_value(value).unwrap(), name);
            }
        }
        check::<SaeKind>();
        check::<DecoderBiasInit>();
        check::<Pooling>();
        check::<ReadOut>();
    }
}
