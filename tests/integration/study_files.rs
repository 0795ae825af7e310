//! Every study file shipped in pipelines/ parses and refers only to encoders it defines.

use crate::common;

#[test]
fn every_shipped_study_file_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let output = common::saeshare(&["study", "check", path.to_str().unwrap()]);
            // The reference studies parse and are checked; they cannot run here, which check
            // says (and exits 1 for): their COCO dataset is not on this machine.
            let cannot_run = common::stdout(&output).contains("it cannot run until these exist");
            assert!(
                output.status.success() || (output.status.code() == Some(1) && cannot_run),
                "{}: {}",
                path.display(),
                common::stderr(&output)
            );
            checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "demo.toml",
            "paper-shape-scaled.toml",
            "paper-shape.toml",
            "reference-b.toml",
            "reference-l.toml",
            "reference-protocol-b.toml"
        ]
    );
    let reference = common::saeshare(&[
        "study",
        "check",
        dir.join("reference-b.toml").to_str().unwrap(),
    ]);
    let text = common::stdout(&reference);
    assert_eq!(text.matches("  encoder ").count(), 10, "{text}");
    assert!(
        text.contains("sharedness clip-vision-shared-with-text-only"),
        "{text}"
    );
}
