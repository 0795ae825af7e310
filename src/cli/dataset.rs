//! `saeshare dataset ...`

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::workers::WorkerFlags;
use crate::dataset::import::{
    self, CocoImport, CocoRows, EmojiBuild, FolderImport, HfImport, ImportReport, ImportTarget,
};

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Import a folder of images with a JSONL or CSV file of captions.
    ImportFolder {
        /// The folder holding the image files.
        #[arg(long)]
        images: PathBuf,
        /// A .jsonl file (one object per line) or a .csv file (with a header) naming each image
        /// file and its caption; other fields are kept as extra columns.
        #[arg(long)]
        captions: PathBuf,
        /// The field naming the image file, relative to --images.
        #[arg(long, default_value = "file")]
        file_field: String,
        /// The field holding the caption.
        #[arg(long, default_value = "caption")]
        caption_field: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Import COCO captions: an annotations JSON (e.g. captions_train2017.json) and its images.
    ImportCoco {
        #[arg(long)]
        annotations: PathBuf,
        #[arg(long)]
        images: PathBuf,
        /// A row is an image with its first caption, or an (image, caption) pair.
        #[arg(long, value_enum, default_value = "first-caption")]
        rows: CocoRows,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Import Parquet files written by Hugging Face `datasets` (struct<bytes, path> images).
    ImportHf {
        /// Parquet files, or folders of them.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// The image column.
        #[arg(long, default_value = "image")]
        image_column: String,
        /// The caption column: a string, or a list of strings.
        #[arg(long)]
        caption_column: String,
        /// With a list of captions: one row per caption instead of the first one only.
        #[arg(long)]
        all_captions: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Build the embedded default dataset: emoji images (Google Noto and Twitter Twemoji styles)
    /// captioned with their CLDR names and keywords, from the npm registry.
    BuildEmoji {
        /// Where the npm packages are kept between runs [default: $SAESHARE_CACHE/npm, or
        /// ~/.cache/saeshare/npm].
        #[arg(long)]
        cache: Option<PathBuf>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Stream a dataset through timely workers as a study reads it: rows/s, and a fingerprint of
    /// the rows read (with -n processes, run one per process and add up their rows).
    #[command(disable_help_flag = true)]
    Scan {
        /// The dataset folder.
        #[arg(required_unless_present = "hostfile")]
        dir: Option<PathBuf>,
        /// Read and decode the images too (otherwise only ids and captions are read).
        #[arg(long)]
        decode: bool,
        /// Rows per record batch.
        #[arg(long, default_value_t = 256)]
        batch_rows: usize,
        #[command(flatten)]
        workers: WorkerFlags,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Print help (-h is the hostfile here, as in timely).
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
    },
    /// Summarise a dataset: rows, shards, schema, size, sample rows, unreadable rows.
    Inspect {
        dir: PathBuf,
        /// How many sample rows to show.
        #[arg(long, default_value_t = 5)]
        show: usize,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The dataset folder to write.
    #[arg(long)]
    out: PathBuf,
    /// Rows per shard (at least 1).
    #[arg(long, default_value_t = 2048, value_parser = at_least_one)]
    shard_rows: usize,
    /// Add rows to the dataset already in --out (new shards, new sample ids).
    #[arg(long)]
    append: bool,
}

/// A count that must be at least 1.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("0 is not allowed: give 1 or more".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl From<TargetArgs> for ImportTarget {
    fn from(args: TargetArgs) -> Self {
        ImportTarget {
            out: args.out,
            shard_rows: args.shard_rows,
            append: args.append,
        }
    }
}

pub fn run(command: DatasetCommand) -> anyhow::Result<()> {
    let report = match command {
        DatasetCommand::ImportFolder {
            images,
            captions,
            file_field,
            caption_field,
            target,
        } => import::import_folder(
            &FolderImport {
                images,
                captions,
                file_field,
                caption_field,
            },
            &target.into(),
        )?,
        DatasetCommand::ImportCoco {
            annotations,
            images,
            rows,
            target,
        } => import::import_coco(
            &CocoImport {
                annotations,
                images,
                rows,
            },
            &target.into(),
        )?,
        DatasetCommand::ImportHf {
            inputs,
            image_column,
            caption_column,
            all_captions,
            target,
        } => import::import_hf(
            &HfImport {
                inputs,
                image_column,
                caption_column,
                all_captions,
            },
            &target.into(),
        )?,
        DatasetCommand::BuildEmoji { cache, target } => {
            let cache = cache.unwrap_or_else(|| crate::cache_dir().join("npm"));
            import::build_emoji(&EmojiBuild { cache }, &target.into())?
        }
        DatasetCommand::Scan {
            dir,
            decode,
            batch_rows,
            workers,
            json,
            help: _,
        } => {
            let Some(workers) = workers.args()? else {
                return super::workers::print_help(&["dataset", "scan"]);
            };
            let Some(dir) = dir else {
                anyhow::bail!("name the dataset folder to scan: saeshare dataset scan DIR ...");
            };
            let summary = crate::pipeline::scan(&dir, &workers, decode, batch_rows)?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!(
                    "process {} ({} worker(s)) read {} rows from {} shard(s) in {:.2} s: {:.0} rows/s; \
                     {} skipped rows, {} unreadable images",
                    summary.process,
                    summary.workers,
                    summary.rows,
                    summary.shards,
                    summary.seconds,
                    summary.rows as f64 / summary.seconds.max(1e-9),
                    summary.skipped_rows,
                    summary.unreadable_images
                );
            }
            return Ok(());
        }
        DatasetCommand::Inspect { dir, show, json } => {
            let summary = crate::dataset::inspect(&dir, show)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{summary}");
            }
            return Ok(());
        }
    };
    print_report(&report);
    Ok(())
}

fn print_report(report: &ImportReport) {
    print!("{report}");
}
