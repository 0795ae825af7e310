//! `saeshare study ...`

use std::path::PathBuf;

use clap::Subcommand;

use crate::pipeline::Study;

#[derive(Debug, Subcommand)]
pub enum StudyCommand {
    /// Check a study file and say what it would run: encoders, layers, comparisons, queries.
    Check { file: PathBuf },
}

pub fn run(command: StudyCommand) -> anyhow::Result<()> {
    match command {
        StudyCommand::Check { file } => {
            let study = Study::read(&file)?;
            println!(
                "study {} ({}): dataset {}, output {}",
                study.name,
                file.display(),
                study.dataset.path.display(),
                study.output.display()
            );
            for (name, encoder) in &study.encoders {
                let sae = study.sae_for(name).map_err(anyhow::Error::msg)?;
                println!(
                    "  encoder {name}: {} layers={} device={} sae={:?} k={} expansion={}",
                    encoder.package.display(),
                    encoder.layers,
                    encoder.device,
                    sae.kind,
                    sae.k,
                    sae.expansion
                );
            }
            for c in &study.comparisons {
                let names = |v: &[toml::Spanned<String>]| {
                    v.iter()
                        .map(|s| s.get_ref().as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                println!(
                    "  compare {} -> {} ({} layers)",
                    names(&c.sources),
                    names(&c.targets),
                    c.layers
                );
            }
            for q in &study.sharedness {
                println!(
                    "  sharedness {}: features of {} shared with {} encoder(s), not with {}",
                    q.name,
                    q.model.get_ref(),
                    q.shared_with.len(),
                    q.not_shared_with.len()
                );
            }
            Ok(())
        }
    }
}
