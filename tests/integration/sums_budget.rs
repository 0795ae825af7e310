//! The pairs' saved sums are a cache within a disk budget (`[stats] keep_sums_mib`), the codes
//! store the record: a study that keeps no sums gives the tables of one that keeps them all,
//! after shards are added and after an encoder joins, and a run with nothing new does nothing.

use std::path::Path;

use crate::common;
use crate::pipeline::{assert_same_outputs, run, study};

/// The study `name` over `dataset` with `encoders`, keeping `keep_sums_mib` of sums.
fn budgeted(
    dir: &Path,
    dataset: &Path,
    name: &str,
    encoders: &[&str],
    mib: u64,
) -> std::path::PathBuf {
    let file = study(dir, dataset, name, encoders, 4);
    let text =
        std::fs::read_to_string(&file).unwrap() + &format!("\n[stats]\nkeep_sums_mib = {mib}\n");
    std::fs::write(&file, text).unwrap();
    file
}

fn states(output: &Path) -> usize {
    let mut count = 0;
    for pair in std::fs::read_dir(output.join("pairs")).unwrap() {
        for entry in std::fs::read_dir(pair.unwrap().path()).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            count += usize::from(name.starts_with("state-"));
        }
    }
    count
}

fn last_run(output: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(output.join("last-run.json")).unwrap()).unwrap()
}

#[test]
fn tables_without_kept_sums_equal_tables_with_them_as_the_study_grows() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[20]);
    let steps: [(&[&str], Option<usize>); 3] = [
        (&["bert", "dinov2"], None),
        // Shards added.
        (&["bert", "dinov2"], Some(60)),
        // An encoder added.
        (&["bert", "dinov2", "vit"], None),
    ];
    for (encoders, shard) in steps {
        if let Some(s) = shard {
            let name = format!("shard-{s:06}.parquet");
            std::fs::copy(common::emoji_shards().join(&name), dataset.join(&name)).unwrap();
        }
        let kept = budgeted(dir.path(), &dataset, "kept", encoders, 1024);
        let none = budgeted(dir.path(), &dataset, "none", encoders, 0);
        run(&kept, &["--no-report"]);
        run(&none, &["--no-report"]);
        assert_same_outputs(&dir.path().join("kept"), &dir.path().join("none"), 1e-9);
        assert!(states(&dir.path().join("kept")) > 0);
        assert_eq!(states(&dir.path().join("none")), 0);
    }
    // Nothing new: the pairs without sums are not summed again.
    let none = budgeted(dir.path(), &dataset, "none", &["bert", "dinov2", "vit"], 0);
    run(&none, &["--no-report"]);
    let last = last_run(&dir.path().join("none"));
    assert_eq!(last["pairs_updated"], serde_json::json!([]), "{last}");
    assert_eq!(last["codes_units"], 0, "{last}");
}
