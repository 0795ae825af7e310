//! The integration tests, as one test executable: each module is one area of the tool, tested
//! through its public library API or the `saeshare` binary. One executable rather than one per
//! file, because each links the whole crate and its dependencies: sixteen of them cost minutes
//! of linking and gigabytes of disk.

// The binary's allocator, so that library code runs here as it runs in `saeshare`.
#[global_allocator]
static ALLOCATOR: saeshare::allocator::SplitAllocator = saeshare::allocator::SplitAllocator;

mod align;
mod allocator;
mod baselines;
mod browser;
mod changed_data;
mod checks_before_work;
mod codes_and_accumulators;
mod common;
mod compare_state;
mod dataset_bad_input;
mod dataset_importers;
mod dataset_reader;
mod dense_codes;
mod device_check;
mod emoji_dataset;
mod encoder_bad_input;
mod encoder_parity;
mod encoder_preprocessing;
mod encoder_real;
mod encoder_real_images;
mod fit_passes;
mod incrementality;
mod launches;
mod metric_views;
mod one_to_one;
mod outputs_by_difference;
mod paper_shapes;
mod pipeline;
mod progress_lines;
mod report;
mod run_folder_faults;
mod sae_cli;
mod sae_ecosystem;
mod sae_imports;
mod sae_training;
mod scheduler;
mod similarity;
mod stats_reference;
mod study_files;
mod study_plan;
mod sums_budget;
mod token_activations;
mod token_fit;
