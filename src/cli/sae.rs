//! `saeshare sae ...`

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::sae::{
    train_from_file, DecoderBiasInit, EncodeSettings, LoadOptions, ReadOut, SaeConfig, SaeKind,
    SaevScaling, TrainFileOptions,
};
use crate::torch::DeviceSpec;

#[derive(Debug, Subcommand)]
pub enum SaeCommand {
    /// Train an SAE on one layer of an activation file (as `saeshare encode` writes).
    #[command(
        mut_arg("activations", |a| a.help("The activation file")),
        mut_arg("layer", |a| a.help("The layer to train on, as the file names it").required(true)),
        mut_arg("out", |a| a.help(
            "The SAE's folder: sae.safetensors, optimizer.safetensors, sae.json, checkpoints/"
        )),
        mut_arg("device", |a| a.help("cpu, cuda or cuda:N")),
    )]
    Train {
        #[command(flatten)]
        input: LayerArgs,
        /// Rows (tokens) the mixing buffer holds.
        #[arg(long, default_value_t = 65_536)]
        buffer_rows: usize,
        /// Steps between checkpoints (0: only the final SAE).
        #[arg(long, default_value_t = 0)]
        checkpoint_every: usize,
        /// Continue from the newest checkpoint in --out.
        #[arg(long)]
        resume: bool,
        /// Steps between recorded and logged metrics.
        #[arg(long, default_value_t = 50)]
        log_every: usize,
        #[command(flatten)]
        config: SaeArgs,
    },
    /// Write the sparse codes of a trained SAE on one layer of an activation file:
    /// sample_id, feature, value, one row per active latent.
    #[command(
        mut_arg("activations", |a| a.help(
            "The activation file (pooled, as `saeshare encode` without --tokens writes)"
        )),
        mut_arg("layer", |a| a.help(
            "The layer to encode, as the file names it (default: the layer a saeshare SAE \
             records it was trained on)"
        )),
        mut_arg("out", |a| a.help("The codes file to write; it must not exist")),
        mut_arg("device", |a| a.help("cpu, cuda or cuda:N")),
    )]
    Encode {
        /// The SAE: saeshare's folder (as `sae train --out` wrote it), SAELens' or sparsify's
        /// folder, or saev's checkpoint file (the format is detected; `sae inspect` shows it).
        #[arg(long)]
        sae: PathBuf,
        #[command(flatten)]
        input: LayerArgs,
        /// Samples encoded at once.
        #[arg(long, default_value_t = 4096)]
        batch_rows: usize,
        /// Which values are the features.
        #[arg(long, value_enum, default_value = "topk")]
        read_out: ReadOut,
        /// saev SAEs only: the mean activation saev subtracted (`torch.save`d, as saev's
        /// `scale_mean` file), or `false` where the SAE was trained without it.
        #[arg(long)]
        scale_mean: Option<SaevScaling>,
        /// saev SAEs only: the scalar saev divided activations by (its `scale_norm` file), or
        /// `false`.
        #[arg(long)]
        scale_norm: Option<SaevScaling>,
    },
    /// Print what an SAE folder or file holds: format (saeshare, SAELens, sparsify, saev),
    /// architecture, d_in, d_sae, k, what it was trained on, its input normalisation and tensors.
    Inspect {
        /// The SAE's folder (or a saev checkpoint file).
        path: PathBuf,
    },
}

/// The flags both subcommands share: one layer of an activation file, where the result goes,
/// and the device. Each subcommand gives them its own help.
#[derive(Debug, Args)]
pub struct LayerArgs {
    #[arg(long)]
    activations: PathBuf,
    #[arg(long)]
    layer: Option<String>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

/// The `sae train` flags of [`SaeConfig`], with its defaults.
#[derive(Debug, Args)]
pub struct SaeArgs {
    /// The SAE variant.
    #[arg(long, value_enum, default_value_t = SaeConfig::default().kind)]
    kind: SaeKind,
    /// Active latents per sample (TopK, BatchTopK).
    #[arg(long, default_value_t = SaeConfig::default().k)]
    k: usize,
    /// Latents per input dimension: d_sae = expansion x d_in.
    #[arg(long, default_value_t = SaeConfig::default().expansion)]
    expansion: usize,
    /// L1 coefficient (ReLU variant only). The loss is normalised (fraction of variance
    /// unexplained), so this weighs the mean L1 of a code against that fraction.
    #[arg(long, default_value_t = SaeConfig::default().l1_coefficient)]
    l1_coefficient: f64,
    /// Peak learning rate of Adam.
    #[arg(long, default_value_t = SaeConfig::default().lr)]
    lr: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    #[arg(long, default_value_t = SaeConfig::default().warmup_steps)]
    warmup_steps: usize,
    /// Fraction of the steps, at the end, over which the rate decays linearly to 0.
    #[arg(long, default_value_t = SaeConfig::default().decay_fraction)]
    decay_fraction: f64,
    /// Training steps in all.
    #[arg(long, default_value_t = SaeConfig::default().steps)]
    steps: usize,
    /// Samples (tokens) per step.
    #[arg(long, default_value_t = SaeConfig::default().batch_size)]
    batch_size: usize,
    /// Largest global gradient norm; larger gradients are scaled down.
    #[arg(long, default_value_t = SaeConfig::default().grad_clip)]
    grad_clip: f64,
    /// Dead latents used by the AuxK loss (0 turns it off).
    #[arg(long, default_value_t = SaeConfig::default().aux_k)]
    aux_k: usize,
    /// Weight of the AuxK loss.
    #[arg(long, default_value_t = SaeConfig::default().aux_coefficient)]
    aux_coefficient: f64,
    /// A latent silent for this many tokens is dead (AuxK, dead fraction).
    #[arg(long, default_value_t = SaeConfig::default().dead_after_tokens)]
    dead_after_tokens: u64,
    #[arg(long, value_enum, default_value_t = SaeConfig::default().b_dec_init)]
    b_dec_init: DecoderBiasInit,
    /// Seed of the weights' initialisation and of the data order.
    #[arg(long, default_value_t = SaeConfig::default().seed)]
    seed: u64,
}

impl From<SaeArgs> for SaeConfig {
    fn from(args: SaeArgs) -> Self {
        SaeConfig {
            kind: args.kind,
            k: args.k,
            expansion: args.expansion,
            l1_coefficient: args.l1_coefficient,
            lr: args.lr,
            warmup_steps: args.warmup_steps,
            decay_fraction: args.decay_fraction,
            steps: args.steps,
            batch_size: args.batch_size,
            grad_clip: args.grad_clip,
            aux_k: args.aux_k,
            aux_coefficient: args.aux_coefficient,
            dead_after_tokens: args.dead_after_tokens,
            b_dec_init: args.b_dec_init,
            seed: args.seed,
        }
    }
}

/// The layer a saeshare SAE records it was trained on; other formats do not record one.
fn recorded_layer(sae: &std::path::Path) -> anyhow::Result<String> {
    match crate::sae::read_meta(sae) {
        Ok(meta) if !meta.source.layer.is_empty() => Ok(meta.source.layer),
        // A saeshare SAE whose sae.json cannot be read: that is the error to fix.
        Err(error) if sae.join("sae.json").is_file() => Err(error.into()),
        _ => anyhow::bail!(
            "{}: the SAE records no layer it was trained on (only saeshare's SAEs do); name the \
             layer of the activation file with --layer",
            sae.display()
        ),
    }
}

pub fn run(command: SaeCommand) -> anyhow::Result<()> {
    match command {
        SaeCommand::Train {
            input,
            buffer_rows,
            checkpoint_every,
            resume,
            log_every,
            config,
        } => {
            let options = TrainFileOptions {
                device: input.device.check_available()?,
                activations: input.activations,
                layer: input.layer.expect("clap requires --layer for train"),
                out: input.out,
                buffer_rows,
                checkpoint_every,
                resume,
                log_every,
            };
            let config_dead_after = config.dead_after_tokens;
            let report = train_from_file(&config.into(), &options)?;
            println!(
                "SAE in {}: {} steps ({} this run), {} tokens",
                report.out.display(),
                report.steps,
                report.steps_run,
                report.tokens
            );
            if let Some(m) = report.last {
                println!(
                    "final: FVU {:.4}, MSE {:.4e}, L0 {:.1}, dead fraction {:.3}, never fired {:.3}",
                    m.fvu,
                    m.mse,
                    m.l0,
                    m.dead_fraction,
                    m.never_fired.unwrap_or(0.0)
                );
                if report.tokens < config_dead_after {
                    println!(
                        "(dead_after_tokens is {config_dead_after}, longer than the {} tokens \
                         of the fit: no latent could count as dead; `never fired` counts the \
                         latents that did not fire once)",
                        report.tokens
                    );
                }
            }
            Ok(())
        }
        SaeCommand::Encode {
            sae,
            input,
            batch_rows,
            read_out,
            scale_mean,
            scale_norm,
        } => {
            let options = LoadOptions {
                saev_scale_mean: scale_mean,
                saev_scale_norm: scale_norm,
            };
            let settings = EncodeSettings {
                device: input.device.check_available()?,
                batch_rows,
                read_out,
            };
            let layer = match input.layer {
                Some(layer) => layer,
                None => recorded_layer(&sae)?,
            };
            let summary = crate::sae::encode_file(
                &sae,
                &options,
                &input.activations,
                &layer,
                &input.out,
                settings,
            )?;
            println!(
                "wrote the codes of {} samples ({} active latents, {:.2} per sample) to {}",
                summary.samples,
                summary.active,
                summary.active as f64 / summary.samples.max(1) as f64,
                summary.path.display()
            );
            Ok(())
        }
        SaeCommand::Inspect { path } => {
            print!("{}", crate::sae::formats::describe(&path)?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::{Cli, Command};

    fn train_config(flags: &[&str]) -> SaeConfig {
        let args = [
            "saeshare",
            "sae",
            "train",
            "--activations",
            "a",
            "--layer",
            "l",
        ];
        let cli = Cli::parse_from(args.iter().chain(&["--out", "o"]).chain(flags));
        match cli.command {
            Command::Sae(SaeCommand::Train { config, .. }) => config.into(),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_flags_default_to_the_library_defaults_and_set_each_setting() {
        Cli::command().debug_assert();
        assert_eq!(train_config(&[]), SaeConfig::default());
        let config = train_config(&["--kind", "batch-topk", "--b-dec-init", "mean", "--k", "8"]);
        assert_eq!(
            (config.kind, config.b_dec_init, config.k),
            (SaeKind::BatchTopk, DecoderBiasInit::Mean, 8)
        );
    }
}
