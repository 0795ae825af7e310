//! Tests of the study file: its defaults, overrides, and the lines its errors name.

use std::path::Path;

use super::study::*;
use crate::sae::SaeConfig;

const STUDY: &str = r#"
name = "t"
output = "out"
dataset = { path = "data/emoji", builtin = "emoji" }

[sae]
k = 16

[encoders.a]
package = "enc/a"
layers = "last"

[encoders.b]
package = "enc/b"
sae = { k = 8, expansion = 4 }

[[comparisons]]
sources = ["*"]
targets = ["*"]

[[sharedness]]
name = "a-with-b"
model = "a"
shared_with = ["b"]
"#;

#[test]
fn a_study_parses_with_defaults_and_overrides() {
    let study = Study::parse(Path::new("s.toml"), STUDY).unwrap();
    assert_eq!(study.encoders.len(), 2);
    assert_eq!(study.sae_for("a").unwrap().k, 16);
    let b = study.sae_for("b").unwrap();
    assert_eq!(
        (b.k, b.expansion, b.batch_size),
        (8, 4, SaeConfig::default().batch_size)
    );
    assert_eq!(study.encoders["b"].layers, "all");
    assert_eq!(study.baselines.floor_permutations, 3);
}

#[test]
fn the_stats_table_defaults_to_one_thread_and_refuses_none() {
    let study = Study::parse(Path::new("s.toml"), STUDY).unwrap();
    let default = (crate::stats::DEFAULT_MEMORY_MIB, 1);
    assert_eq!((study.stats.memory_mib, study.stats.threads), default);
    let set = format!("{STUDY}\n[stats]\nmemory_mib = 64\nthreads = 2\n");
    let study = Study::parse(Path::new("s.toml"), &set).unwrap();
    assert_eq!((study.stats.memory_mib, study.stats.threads), (64, 2));
    let none = format!("{STUDY}\n[stats]\nthreads = 0\n");
    let err = Study::parse(Path::new("s.toml"), &none).unwrap_err();
    assert!(err.line > 24 && err.problem.contains("threads"), "{err}");
}

#[test]
fn float16_is_refused_on_the_cpu_at_its_line_and_taken_on_a_gpu() {
    let on_cpu = STUDY.replace(
        "layers = \"last\"",
        "layers = \"last\"\nprecision = \"float16\"",
    );
    let err = Study::parse(Path::new("s.toml"), &on_cpu).unwrap_err();
    assert_eq!(err.line, 12, "{err}");
    assert!(
        err.problem.contains("[encoders.a]") && err.problem.contains("GPU only"),
        "{err}"
    );
    let on_gpu = on_cpu.replace("precision", "device = \"cuda\"\nprecision");
    let study = Study::parse(Path::new("s.toml"), &on_gpu).unwrap();
    let precision = study.encoders["a"].precision;
    assert_eq!(precision, Some(crate::encoder::Precision::Float16));
    let unknown = on_gpu.replace("\"float16\"", "\"half\"");
    let err = Study::parse(Path::new("s.toml"), &unknown).unwrap_err();
    assert!(err.problem.contains("half"), "{err}");
}

#[test]
fn default_batches_hold_32_captions_or_about_800_000_pixels_on_a_cpu() {
    let cpu = tch::Device::Cpu;
    assert_eq!(default_batch_size(cpu, None), 32);
    assert_eq!(default_batch_size(cpu, Some([224, 224])), 16);
    assert_eq!(default_batch_size(cpu, Some([96, 96])), 32);
    assert_eq!(default_batch_size(cpu, Some([16, 16])), 32);
    assert_eq!(default_batch_size(cpu, Some([384, 384])), 8);
    assert_eq!(default_batch_size(cpu, Some([4096, 4096])), 8);
    assert_eq!(default_batch_size(cpu, Some([256, 256])), 8);
    assert_eq!(
        default_batch_size(tch::Device::Cuda(0), Some([96, 96])),
        256
    );
}

#[test]
fn lanes_of_0_or_several_on_a_gpu_are_refused_at_their_line() {
    let with = |lanes: &str, device: &str| {
        STUDY.replace(
            "layers = \"last\"",
            &format!("layers = \"last\"\n{device}lanes = {lanes}"),
        )
    };
    let study = Study::parse(Path::new("s.toml"), &with("3", "")).unwrap();
    assert_eq!(study.encoders["a"].lanes, Some(3));
    let err = Study::parse(Path::new("s.toml"), &with("0", "")).unwrap_err();
    assert_eq!(err.line, 12, "{err}");
    assert!(
        err.problem
            .contains("[encoders.a]: lanes must be at least 1"),
        "{err}"
    );
    let gpu = with("2", "device = \"cuda\"\n");
    let err = Study::parse(Path::new("s.toml"), &gpu).unwrap_err();
    assert_eq!(err.line, 13, "{err}");
    assert!(err.problem.contains("for a CPU"), "{err}");
    let one = Study::parse(Path::new("s.toml"), &with("1", "device = \"cuda\"\n")).unwrap();
    assert_eq!(one.encoders["a"].lanes, Some(1));
}

#[test]
fn unknown_keys_and_missing_encoders_name_the_line() {
    let typo = STUDY.replace("layers = \"last\"", "layer = \"last\"");
    let err = Study::parse(Path::new("s.toml"), &typo).unwrap_err();
    assert_eq!(err.line, 11, "{err}");
    assert!(
        err.to_string().starts_with("s.toml:11:") && err.to_string().contains("layer"),
        "{err}"
    );

    let missing = STUDY.replace("shared_with = [\"b\"]", "shared_with = [\"c\"]");
    let err = Study::parse(Path::new("s.toml"), &missing).unwrap_err();
    assert_eq!(err.line, 24, "{err}");
    assert!(err.problem.contains("no encoder \"c\""), "{err}");

    let bad_override = STUDY.replace("k = 8,", "kk = 8,");
    assert!(Study::parse(Path::new("s.toml"), &bad_override)
        .unwrap_err()
        .problem
        .contains("kk"));
}

#[test]
fn ceiling_seeds_are_the_seed_then_the_list_each_once_and_none_the_saes_own() {
    let with = |baselines: &str| format!("{STUDY}\n[baselines]\n{baselines}\n");
    let study = Study::parse(
        Path::new("s.toml"),
        &with("ceiling_seed = 1\nceiling_seeds = [2, 3]"),
    )
    .unwrap();
    assert_eq!(study.baselines.all_ceiling_seeds(), [1, 2, 3]);
    let list = Study::parse(Path::new("s.toml"), &with("ceiling_seeds = [5]")).unwrap();
    assert_eq!(list.baselines.all_ceiling_seeds(), [5]);

    let twice = with("ceiling_seed = 2\nceiling_seeds = [3, 2]");
    let err = Study::parse(Path::new("s.toml"), &twice).unwrap_err();
    assert!(
        err.line >= 25 && err.problem.contains("seed 2 is given twice"),
        "{err}"
    );
    // The SAEs' own seed (0 by default) cannot be a ceiling's.
    let own = with("ceiling_seeds = [4, 0]");
    let err = Study::parse(Path::new("s.toml"), &own).unwrap_err();
    assert!(
        err.problem.contains("ceiling seed 0 is the SAE seed"),
        "{err}"
    );
}
