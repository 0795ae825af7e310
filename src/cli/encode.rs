//! `saeshare encode`

use std::path::PathBuf;

use clap::Args;

use crate::encoder::{encode_dataset, EncodeOptions, Pooling};
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
    #[arg(long, value_enum)]
    pooling: Option<Pooling>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Samples per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// The activation file to write (FORMATS.md, "Activations").
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: EncodeArgs) -> anyhow::Result<()> {
    let report = encode_dataset(&EncodeOptions {
        encoder: args.encoder,
        dataset: args.dataset,
        layers: args.layers,
        pooling: args.pooling,
        device: args.device.check_available()?,
        batch_size: args.batch_size,
        out: args.out,
    })?;
    println!(
        "encoded {} samples x {} layers in {:.1} s ({:.1} samples/s) into {}; {} skipped, {} captions truncated",
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
