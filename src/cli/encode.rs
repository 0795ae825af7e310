//! `saeshare encode`

use std::path::PathBuf;

use clap::Args;

use crate::encoder::{encode_dataset, EncodeOptions, Pooling, Precision, TokenSelection};
use crate::torch::DeviceSpec;

#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// The encoder package (a folder made by `python -m saeshare_export`).
    #[arg(long)]
    encoder: PathBuf,
    /// The dataset folder.
    #[arg(long)]
    dataset: PathBuf,
    /// `all`, `last`, or a comma-separated list of layer names.
    #[arg(long, default_value = "all")]
    layers: String,
    /// How tokens become one vector per sample [default: the package's].
    #[arg(long, value_enum, conflicts_with = "tokens")]
    pooling: Option<Pooling>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Samples per forward pass; absent: a study's default (on a CPU 32 captions, or images of
    /// about 800,000 pixels a batch, 8 to 32: 16 at 224 px, 32 at 96 px; on a GPU 256).
    #[arg(long)]
    batch_size: Option<usize>,
    /// A convolutional network run on square images of this many pixels, resized without a
    /// crop, instead of its package's size (a study's `image_size`).
    #[arg(long)]
    image_size: Option<u32>,
    /// float32, or float16: mixed precision under CUDA autocast (a GPU only), faster on tensor
    /// cores and less exact (1e-5 to 3e-2 relative, by model: README, "GPUs").
    #[arg(long, default_value = "float32")]
    precision: Precision,
    /// Forward passes side by side on a CPU, each on its share of libtorch's threads (a study's
    /// `lanes`); absent: for an image encoder two of one thread each on 2 or 3 threads, else
    /// one (one for a text encoder, one on a GPU).
    #[arg(long)]
    lanes: Option<usize>,
    /// The activation file to write (FORMATS.md, "Activations").
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    tokens: TokenArgs,
}

/// Which token rows `--tokens` writes; the defaults are a study's `[fit]` defaults with
/// `fit_on = "tokens"`.
#[derive(Debug, Args)]
struct TokenArgs {
    /// Write token-level activations instead of pooled ones: one row per kept token (every
    /// non-padding token of a caption, every class, register and patch token of a ViT, every
    /// position of a CNN's feature map) per sample and layer, as a study with
    /// `fit_on = "tokens"` fits its SAEs on. `sae train` trains on them; `sae encode` refuses
    /// them (codes are one row per sample).
    #[arg(long)]
    tokens: bool,
    /// With --tokens: keep this many tokens per sample, drawn at random (seeded by
    /// --token-seed and the sample id), in position order [default: all of them].
    #[arg(long, value_name = "N", requires = "tokens", value_parser = clap::value_parser!(u64).range(1..))]
    tokens_per_sample: Option<u64>,
    /// With --tokens, text: leave out the tokenizer's special tokens ([CLS], [SEP], <s>, ...).
    #[arg(long, requires = "tokens")]
    no_special_tokens: bool,
    /// With --tokens, ViTs: leave out the class token.
    #[arg(long, requires = "tokens")]
    no_class_token: bool,
    /// With --tokens, ViTs: leave out the register tokens.
    #[arg(long, requires = "tokens")]
    no_register_tokens: bool,
    /// With --tokens: seeds the draw of --tokens-per-sample.
    #[arg(long, value_name = "S", default_value_t = 0, requires = "tokens")]
    token_seed: u64,
}

impl TokenArgs {
    /// The selection of token rows, `None` without --tokens.
    fn selection(&self) -> Option<TokenSelection> {
        let defaults = TokenSelection::default();
        self.tokens.then(|| TokenSelection {
            special_tokens: defaults.special_tokens && !self.no_special_tokens,
            class_token: defaults.class_token && !self.no_class_token,
            register_tokens: defaults.register_tokens && !self.no_register_tokens,
            per_sample: self
                .tokens_per_sample
                .map(|n| n as usize)
                .or(defaults.per_sample),
            seed: self.token_seed,
        })
    }
}

pub fn run(args: EncodeArgs) -> anyhow::Result<()> {
    let tokens = args.tokens.selection();
    let report = encode_dataset(&EncodeOptions {
        encoder: args.encoder,
        dataset: args.dataset,
        layers: args.layers,
        pooling: args.pooling,
        tokens,
        device: args.device.check_available()?,
        batch_size: args.batch_size,
        image_size: args.image_size,
        precision: args.precision,
        lanes: args.lanes,
        out: args.out,
    })?;
    let rows = match tokens {
        Some(_) => format!(" ({} token rows)", report.rows),
        None => String::new(),
    };
    println!(
        "encoded {} samples x {} layers{rows} in {:.1} s ({:.1} samples/s) into {}; {} skipped, {} captions truncated",
        report.samples,
        report.layers,
        report.seconds,
        report.samples as f64 / report.seconds.max(1e-9),
        report.out.display(),
        report.skipped,
        report.truncated_captions
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn selection(flags: &[&str]) -> Result<Option<TokenSelection>, clap::Error> {
        let args = ["saeshare", "encode", "--encoder", "e", "--dataset", "d"];
        let cli = Cli::try_parse_from(args.iter().chain(&["--out", "o"]).chain(flags))?;
        match cli.command {
            Command::Encode(args) => Ok(args.tokens.selection()),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn tokens_default_to_a_study_s_token_fit_and_each_flag_sets_its_setting() {
        assert_eq!(selection(&[]).unwrap(), None);
        assert_eq!(
            selection(&["--tokens"]).unwrap(),
            Some(TokenSelection::default())
        );
        let all = [
            "--tokens",
            "--tokens-per-sample",
            "3",
            "--no-special-tokens",
            "--no-class-token",
            "--no-register-tokens",
            "--token-seed",
            "9",
        ];
        assert_eq!(
            selection(&all).unwrap(),
            Some(TokenSelection {
                special_tokens: false,
                class_token: false,
                register_tokens: false,
                per_sample: Some(3),
                seed: 9,
            })
        );
        // The token flags need --tokens; a token file is not pooled.
        assert!(selection(&["--no-special-tokens"]).is_err());
        assert!(selection(&["--tokens-per-sample", "3"]).is_err());
        assert!(selection(&["--tokens", "--tokens-per-sample", "0"]).is_err());
        assert!(selection(&["--tokens", "--pooling", "mean"]).is_err());
    }
}
