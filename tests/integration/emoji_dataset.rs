//! The embedded default dataset, built for real from the npm registry (cached after the first run).

use crate::common;

#[test]
fn build_emoji_gives_7572_readable_rows_with_cldr_captions() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("emoji");
    let built = common::saeshare(&["dataset", "build-emoji", "--out", out.to_str().unwrap()]);
    assert!(built.status.success(), "{}", common::stderr(&built));
    assert!(
        common::stdout(&built).contains("wrote 7572 rows"),
        "{}",
        common::stdout(&built)
    );

    let inspected = common::saeshare(&[
        "dataset",
        "inspect",
        out.to_str().unwrap(),
        "--json",
        "--show",
        "3",
    ]);
    assert!(inspected.status.success(), "{}", common::stderr(&inspected));
    let summary: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(summary["rows"], 7572);
    assert_eq!(summary["unreadable_rows"], 0);
    assert_eq!(summary["format_version"], "1");
    let first = &summary["samples"][0];
    assert_eq!(first["caption"], "grinning face: cheerful, cheery, face, grin, grinning, happy, laugh, nice, smile, smiling, teeth");
    assert!(first["image"].as_str().unwrap().starts_with("Png 64x64"));
    // Each emoji's two styles are neighbours: encoders run a caption once for both.
    let second = &summary["samples"][1];
    assert_eq!(second["caption"], first["caption"]);
}
