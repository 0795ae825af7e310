//! The study-wide outputs are updated by difference across runs: a run that changes nothing
//! rewrites no ranking, a new query is computed alone, a grown study's rankings equal a fresh
//! run's, a record that no longer matches `mppc.parquet` makes everything anew, and a ranking
//! changed on disk is written again.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::common;
use crate::pipeline::{run, study};

const QUERY: &str = "sharedness/dinov2-with-bert.parquet";
const SECOND: &str = "sharedness/bert-with-dinov2.parquet";

/// The file's inode: a table written again is a new file renamed into place.
fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

fn add_second_query(study_file: &Path) {
    let mut text = std::fs::read_to_string(study_file).unwrap();
    text += "\n[[sharedness]]\nname = \"bert-with-dinov2\"\nmodel = \"bert\"\nshared_with = [\"dinov2\"]\n";
    std::fs::write(study_file, text).unwrap();
}

#[test]
fn rankings_are_written_again_only_where_they_changed() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[14, 15, 54]);
    let grow = study(dir.path(), &dataset, "grow", &["bert", "dinov2"], 4);
    run(&grow, &[]);
    let out = dir.path().join("grow");
    let first = inode(&out.join(QUERY));

    // Nothing changed: the ranking is kept as it is.
    run(&grow, &[]);
    assert_eq!(
        inode(&out.join(QUERY)),
        first,
        "an unchanged ranking was rewritten"
    );

    // A new query is computed; the other ranking is kept.
    add_second_query(&grow);
    run(&grow, &[]);
    assert_eq!(inode(&out.join(QUERY)), first);
    assert!(out.join(SECOND).is_file());

    // A grown study (vit joins: the first query now excludes it) equals a fresh run, table for
    // table, byte for byte.
    let grown = study(dir.path(), &dataset, "grow", &["bert", "dinov2", "vit"], 4);
    add_second_query(&grown);
    run(&grown, &[]);
    assert_ne!(inode(&out.join(QUERY)), first, "the query names vit now");
    let fresh = study(dir.path(), &dataset, "fresh", &["bert", "dinov2", "vit"], 4);
    add_second_query(&fresh);
    run(&fresh, &[]);
    let fresh_out = dir.path().join("fresh");
    for table in [QUERY, SECOND, "mppc.parquet", "wmppc.parquet"] {
        assert_eq!(
            std::fs::read(out.join(table)).unwrap(),
            std::fs::read(fresh_out.join(table)).unwrap(),
            "{table}"
        );
    }

    // A changed mppc.parquet no longer matches the record: every ranking is made anew, equal.
    let before = std::fs::read(out.join(SECOND)).unwrap();
    let second = inode(&out.join(SECOND));
    let mut mppc = std::fs::read(out.join("mppc.parquet")).unwrap();
    mppc.push(0);
    std::fs::write(out.join("mppc.parquet"), mppc).unwrap();
    run(&grown, &[]);
    assert_ne!(inode(&out.join(SECOND)), second);
    assert_eq!(std::fs::read(out.join(SECOND)).unwrap(), before);

    // A ranking changed on disk is not the one recorded: written again, alone.
    let (first, second) = (inode(&out.join(QUERY)), inode(&out.join(SECOND)));
    let mut table = std::fs::read(out.join(SECOND)).unwrap();
    table.push(0);
    std::fs::write(out.join(SECOND), table).unwrap();
    run(&grown, &[]);
    assert_eq!(inode(&out.join(QUERY)), first);
    assert_ne!(inode(&out.join(SECOND)), second);
    assert_eq!(std::fs::read(out.join(SECOND)).unwrap(), before);
}
