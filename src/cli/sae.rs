//! `saeshare sae ...`

use std::path::PathBuf;

use clap::Subcommand;

use crate::sae::{train_from_file, SaeConfig, TrainFileOptions};
use crate::torch::DeviceSpec;

#[derive(Debug, Subcommand)]
pub enum SaeCommand {
    /// Train an SAE on one layer of an activation file (as `saeshare encode` writes).
    Train {
        /// The activation file.
        #[arg(long)]
        activations: PathBuf,
        /// The layer to train on, as the file names it.
        #[arg(long)]
        layer: String,
        /// The SAE's folder: sae.safetensors, optimizer.safetensors, sae.json, checkpoints/.
        #[arg(long)]
        out: PathBuf,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
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
        config: SaeConfig,
    },
    /// Write the sparse codes of a trained SAE on one layer of an activation file:
    /// sample_id, feature, value, one row per active latent.
    Encode {
        /// The SAE's folder (as `sae train --out` wrote it).
        #[arg(long)]
        sae: PathBuf,
        #[arg(long)]
        activations: PathBuf,
        #[arg(long)]
        layer: String,
        /// The codes file to write; it must not exist.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
        /// Samples encoded at once.
        #[arg(long, default_value_t = 4096)]
        batch_rows: usize,
    },
}

pub fn run(command: SaeCommand) -> anyhow::Result<()> {
    match command {
        SaeCommand::Train {
            activations,
            layer,
            out,
            device,
            buffer_rows,
            checkpoint_every,
            resume,
            log_every,
            config,
        } => {
            let options = TrainFileOptions {
                activations,
                layer,
                out,
                device: device.check_available()?,
                buffer_rows,
                checkpoint_every,
                resume,
                log_every,
            };
            let report = train_from_file(&config, &options)?;
            println!(
                "SAE in {}: {} steps ({} this run), {} tokens",
                report.out.display(),
                report.steps,
                report.steps_run,
                report.tokens
            );
            if let Some(m) = report.last {
                println!(
                    "final: FVU {:.4}, MSE {:.4e}, L0 {:.1}, dead fraction {:.3}",
                    m.fvu, m.mse, m.l0, m.dead_fraction
                );
            }
            Ok(())
        }
        SaeCommand::Encode {
            sae,
            activations,
            layer,
            out,
            device,
            batch_rows,
        } => {
            let summary = crate::sae::encode_file(
                &sae,
                &activations,
                &layer,
                &out,
                device.check_available()?,
                batch_rows,
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
    }
}
