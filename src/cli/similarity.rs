//! `saeshare similarity ACTS_A ACTS_B`: the representation measures of two activation files
//! (`saeshare encode` output), by the engine a study's compare pass runs.

use std::path::PathBuf;

use clap::Args;

use crate::similarity::{self, align_sides, read_side, Aligned, SimilarityOptions};
use crate::torch::DeviceSpec;

/// Arguments of `saeshare similarity`.
#[derive(Debug, Args)]
pub struct SimilarityArgs {
    /// The source's activations (pooled: one row per sample and layer).
    pub source: PathBuf,
    /// The target's activations, of the same samples.
    pub target: PathBuf,
    /// The source's layers to compare (default: every layer of the file).
    #[arg(long, num_args = 1..)]
    pub source_layers: Vec<String>,
    /// The target's layers to compare (default: every layer of the file).
    #[arg(long, num_args = 1..)]
    pub target_layers: Vec<String>,
    /// The source's name in the table (default: the encoder its file names).
    #[arg(long)]
    pub source_name: Option<String>,
    /// The target's name in the table.
    #[arg(long)]
    pub target_name: Option<String>,
    /// Permutations of the samples for each value's floor, of the encoder named second (0: none).
    #[arg(long, default_value_t = 5)]
    pub permutations: usize,
    /// Seed of the permutations, as `compare --seed`: equal seeds, equal permutations.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Size of the kNN measures' subsample.
    #[arg(long, default_value_t = SimilarityOptions::default().knn_samples)]
    pub knn_samples: usize,
    /// Neighbours of the kNN measures.
    #[arg(long, default_value_t = SimilarityOptions::default().knn_k)]
    pub knn_k: usize,
    /// Clip the subsample's values at this quantile of their absolute values (1: no clipping).
    #[arg(long, default_value_t = 0.95)]
    pub clip_quantile: f64,
    /// Leave the subsample's rows at their length (by default each is scaled to unit norm).
    #[arg(long)]
    pub no_normalize: bool,
    /// SVCCA keeps this many principal directions instead of those holding 99% of the variance.
    #[arg(long)]
    pub svcca_dims: Option<usize>,
    /// The ridge, relative to the mean variance of the predictor's features.
    #[arg(long, default_value_t = SimilarityOptions::default().ridge)]
    pub ridge: f64,
    /// Leave out (and count) samples missing from one file, instead of failing.
    #[arg(long)]
    pub drop_missing: bool,
    /// Where the float64 sums are taken: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// The table to write (similarity.parquet).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: SimilarityArgs) -> anyhow::Result<()> {
    let options = SimilarityOptions {
        knn_samples: args.knn_samples,
        knn_k: args.knn_k,
        clip_quantile: Some(args.clip_quantile),
        normalize: !args.no_normalize,
        svcca_dims: args.svcca_dims,
        ridge: args.ridge,
        ..SimilarityOptions::default()
    };
    if let Some(problem) = options.problem() {
        anyhow::bail!("{problem} (the flag of the same name)");
    }
    let device = args.device.check_available()?;
    let source = read_side(
        &args.source,
        &args.source_layers,
        args.source_name.as_deref(),
    )?;
    let target = read_side(
        &args.target,
        &args.target_layers,
        args.target_name.as_deref(),
    )?;
    let Aligned {
        ids,
        source: a,
        target: b,
        only_source,
        only_target,
        dropped,
    } = align_sides(source, target);
    let missing =
        (only_source.map(|id| (id, &args.target))).or(only_target.map(|id| (id, &args.source)));
    if let Some((id, from)) = missing {
        anyhow::ensure!(
            args.drop_missing,
            "sample_id {id} is missing from {} ({dropped} sample(s) are in one file only); compare \
             activations of the same samples, or pass --drop-missing to leave them out, counted",
            from.display()
        );
        tracing::warn!(dropped, "samples in one file only, left out");
    }
    anyhow::ensure!(
        ids.len() >= 4,
        "{} and {} share {} sample(s); the measures need at least 4",
        args.source.display(),
        args.target.display(),
        ids.len()
    );
    tracing::info!(
        samples = ids.len(),
        source_layers = a.layers.len(),
        target_layers = b.layers.len(),
        "measuring"
    );
    let spec = similarity::TableSpec {
        permutations: args.permutations,
        permutation_seed: args.seed,
        both_directions: false,
    };
    let rows = similarity::similarity(&ids, &a, &b, &options, spec, device);
    similarity::write_similarity(&args.out, &rows)?;
    println!(
        "{:<14} {:<14} {:<20} {:>9} {:>9}",
        "source layer", "target layer", "measure", "value", "floor"
    );
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
    for r in &rows {
        println!(
            "{:<14} {:<14} {:<20} {:>9} {:>9}",
            r.source_layer,
            r.target_layer,
            r.measure.name(),
            show(r.value),
            show(r.floor)
        );
    }
    println!(
        "{} samples ({} in the kNN subsample); {}",
        ids.len(),
        ids.len().min(options.knn_samples),
        args.out.display()
    );
    Ok(())
}
