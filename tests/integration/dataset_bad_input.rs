//! Bad input gets a clear error naming the file (and row or column), or a counted, logged skip.

use crate::common;

use std::sync::Arc;

use arrow::array::{BinaryArray, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use saeshare::dataset::import::{import_coco, CocoImport, CocoRows, ImportTarget};
use saeshare::dataset::{
    inspect, Dataset, DatasetError, DatasetWriter, NewRow, Projection, WriterOptions,
};
use saeshare::file_error::FileError;

fn target(out: &std::path::Path) -> ImportTarget {
    ImportTarget {
        out: out.to_path_buf(),
        shard_rows: 4,
        append: false,
    }
}

/// Ten PNGs, one of them corrupt, and a JSONL file captioning all ten.
fn folder_with_one_corrupt_png(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let images = dir.join("images");
    std::fs::create_dir(&images).unwrap();
    let mut lines = String::new();
    for i in 0..10u8 {
        let name = format!("img{i}.png");
        let bytes = if i == 6 {
            common::truncated_png()
        } else {
            common::png(8, 8, i)
        };
        std::fs::write(images.join(&name), bytes).unwrap();
        lines.push_str(&format!(
            "{{\"file\": \"{name}\", \"caption\": \"picture {i}\", \"n\": {i}}}\n"
        ));
    }
    let captions = dir.join("captions.jsonl");
    std::fs::write(&captions, lines).unwrap();
    (images, captions)
}

#[test]
fn a_corrupt_png_among_ten_is_imported_counted_and_reported_by_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let (images, captions) = folder_with_one_corrupt_png(dir.path());
    let out = dir.path().join("data");

    let import = common::saeshare(&[
        "dataset",
        "import-folder",
        "--images",
        images.to_str().unwrap(),
        "--captions",
        captions.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--shard-rows",
        "4",
    ]);
    assert!(import.status.success(), "{}", common::stderr(&import));
    let report = common::stdout(&import);
    assert!(report.contains("wrote 10 rows"), "{report}");
    assert!(report.contains("unreadable images: 1"), "{report}");
    // The warning names the input file and the sample id it got.
    let log = common::stderr(&import);
    assert!(
        log.contains("img6.png") && log.contains("sample_id 6"),
        "{log}"
    );

    let inspected = common::saeshare(&["dataset", "inspect", out.to_str().unwrap(), "--json"]);
    assert!(inspected.status.success(), "{}", common::stderr(&inspected));
    let summary: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(summary["rows"], 10);
    assert_eq!(summary["unreadable_rows"], 1);
    let example = summary["unreadable_examples"][0].as_str().unwrap();
    assert!(
        example.contains("shard-000001.parquet") && example.contains("sample_id 6"),
        "{example}"
    );
    // The extra field of the JSONL lines is kept as a column.
    assert!(
        summary["schema"].to_string().contains("\"n\""),
        "{}",
        summary["schema"]
    );
}

#[test]
fn lines_without_a_caption_or_an_image_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for i in 0..4u8 {
        std::fs::write(images.join(format!("{i}.png")), common::png(4, 4, i)).unwrap();
    }
    let captions = dir.path().join("captions.csv");
    std::fs::write(
        &captions,
        "file,caption,source\n0.png,a cat,web\n1.png,,web\n2.png,   ,web\nmissing.png,a dog,web\n3.png,a bird,web\n",
    )
    .unwrap();
    let out = dir.path().join("data");
    let output = common::saeshare(&[
        "dataset",
        "import-folder",
        "--images",
        images.to_str().unwrap(),
        "--captions",
        captions.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    let report = common::stdout(&output);
    assert!(report.contains("wrote 2 rows"), "{report}");
    assert!(report.contains("skipped 2: empty caption"), "{report}");
    assert!(
        report.contains("skipped 1: image file not found"),
        "{report}"
    );
    let log = common::stderr(&output);
    assert!(
        log.contains("captions.csv:3") && log.contains("captions.csv:5"),
        "{log}"
    );
}

#[test]
fn shards_with_empty_or_missing_captions_skip_those_rows_with_file_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::UInt64, false),
        Field::new("image", DataType::Binary, true),
        Field::new("caption", DataType::Utf8, true),
    ]));
    let png = common::png(4, 4, 0);
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt64Array::from(vec![10, 11, 12, 13])),
            Arc::new(BinaryArray::from(vec![
                Some(png.as_slice()),
                Some(png.as_slice()),
                None,
                Some(png.as_slice()),
            ])),
            Arc::new(StringArray::from(vec![
                Some("fine"),
                Some(" "),
                Some("no image"),
                None,
            ])),
        ],
    )
    .unwrap();
    common::write_parquet(&dir.path().join("part.parquet"), batch);

    let dataset = Dataset::open(dir.path()).unwrap();
    let batch = dataset.shards()[0]
        .reader(Projection::ALL, 100)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(batch.sample_ids, vec![10]);
    let skipped: Vec<_> = batch
        .skipped
        .iter()
        .map(|s| (s.row, s.sample_id, s.reason.as_str()))
        .collect();
    assert_eq!(
        skipped,
        vec![
            (1, 11, "the caption is empty"),
            (2, 12, "the image is missing"),
            (3, 13, "the caption is missing")
        ]
    );
    assert!(batch.skipped[0].file.ends_with("part.parquet"));
    assert_eq!(inspect(dir.path(), 0).unwrap().unreadable_rows, 3);
}

#[test]
fn a_wrong_schema_is_an_error_naming_the_file_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::Int64, false),
        Field::new("image", DataType::Binary, false),
        Field::new("caption", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(BinaryArray::from(vec![b"x".as_slice()])),
            Arc::new(StringArray::from(vec!["c"])),
        ],
    )
    .unwrap();
    common::write_parquet(&dir.path().join("bad.parquet"), batch);

    let err = Dataset::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, DatasetError::File(FileError::WrongColumn { column, .. }) if column == "sample_id"),
        "{err}"
    );
    let output = common::saeshare(&["dataset", "inspect", dir.path().to_str().unwrap()]);
    assert!(!output.status.success());
    let message = common::stderr(&output);
    assert!(
        message.contains("bad.parquet")
            && message.contains("sample_id")
            && message.contains("Int64"),
        "{message}"
    );

    std::fs::write(dir.path().join("bad.parquet"), b"not parquet at all").unwrap();
    let err = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("bad.parquet") && err.contains("not a readable Parquet file"),
        "{err}"
    );
}

#[test]
fn duplicate_sample_ids_across_shards_are_an_error_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    common::write_dataset(&dir.path().join("a"), 6, 3);
    common::write_dataset(&dir.path().join("b"), 3, 3);
    let merged = dir.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    std::fs::copy(
        dir.path().join("a/shard-000000.parquet"),
        merged.join("shard-000000.parquet"),
    )
    .unwrap();
    std::fs::copy(
        dir.path().join("a/shard-000001.parquet"),
        merged.join("shard-000001.parquet"),
    )
    .unwrap();
    // ids 0..3 again, under another name.
    std::fs::copy(
        dir.path().join("b/shard-000000.parquet"),
        merged.join("shard-000002.parquet"),
    )
    .unwrap();

    match Dataset::open(&merged).unwrap().check_unique_ids() {
        Err(DatasetError::DuplicateSampleId { id, first, second }) => {
            assert!(id < 3);
            assert!(first.ends_with("shard-000000.parquet"), "{first:?}");
            assert!(second.ends_with("shard-000002.parquet"), "{second:?}");
        }
        other => panic!("expected a duplicate sample id error, got {other:?}"),
    }
    let output = common::saeshare(&["dataset", "inspect", merged.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(common::stderr(&output).contains("appears twice"));
}

#[test]
fn empty_and_missing_folders_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let err = Dataset::open(dir.path()).unwrap_err();
    assert!(matches!(err, DatasetError::Empty { .. }));
    assert!(err.to_string().contains("import-folder"), "{err}");

    let missing = dir.path().join("nowhere");
    assert!(
        matches!(Dataset::open(&missing).unwrap_err(), DatasetError::NotFound { path } if path == missing)
    );
}

#[test]
fn a_missing_annotation_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let spec = CocoImport {
        annotations: dir.path().join("captions_train2017.json"),
        images: dir.path().to_path_buf(),
        rows: CocoRows::FirstCaption,
    };
    let err = import_coco(&spec, &target(&dir.path().join("out"))).unwrap_err();
    assert!(
        err.to_string()
            .contains("captions_train2017.json: no such file"),
        "{err}"
    );
    assert!(!dir.path().join("out").exists());
}

#[test]
fn importing_into_a_dataset_that_exists_asks_for_append() {
    let dir = tempfile::tempdir().unwrap();
    let (images, captions) = folder_with_one_corrupt_png(dir.path());
    let out = dir.path().join("data");
    common::write_dataset(&out, 3, 3);
    let args = |append: bool| {
        let mut args = vec![
            "dataset",
            "import-folder",
            "--images",
            images.to_str().unwrap(),
            "--captions",
            captions.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        if append {
            args.push("--append");
        }
        args
    };
    let refused = common::saeshare(&args(false));
    assert!(!refused.status.success());
    assert!(common::stderr(&refused).contains("--append"));

    let appended = common::saeshare(&args(true));
    assert!(appended.status.success(), "{}", common::stderr(&appended));
    assert!(common::stdout(&appended).contains("sample ids from 3"));
    assert_eq!(Dataset::open(&out).unwrap().rows(), 13);
}

#[test]
fn an_import_that_skips_every_line_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("0.png"), common::png(4, 4, 0)).unwrap();
    let captions = dir.path().join("captions.csv");
    std::fs::write(&captions, "file,caption\nmissing.png,a dog\n0.png,\n").unwrap();
    let out = dir.path().join("data");
    let import = |extra: &[&str]| {
        let mut args = vec![
            "dataset",
            "import-folder",
            "--images",
            images.to_str().unwrap(),
            "--captions",
            captions.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        common::saeshare(&args)
    };
    let output = import(&[]);
    let err = common::stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("nothing was imported"), "{err}");
    assert!(err.contains("1 image file not found"), "{err}");
    assert!(!out.exists(), "an empty dataset was left");

    // Appended to an existing dataset: an error too, and the dataset is as it was.
    common::write_dataset(&out, 3, 3);
    let output = import(&["--append"]);
    assert_eq!(output.status.code(), Some(1), "{}", common::stderr(&output));
    assert_eq!(Dataset::open(&out).unwrap().shards().len(), 1);

    // No shard of 0 rows.
    let output = import(&["--shard-rows", "0"]);
    let err = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--shard-rows") && err.contains("0 is not allowed"),
        "{err}"
    );
}

#[test]
fn a_dataset_path_that_is_a_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shards.parquet");
    std::fs::write(&file, b"not a folder").unwrap();
    let err = Dataset::open(&file).unwrap_err();
    assert!(matches!(err, DatasetError::NotAFolder { .. }), "{err}");
    assert!(
        err.to_string().contains("a file, not a dataset folder"),
        "{err}"
    );
}

#[test]
fn an_append_that_fails_half_way_adds_no_shard() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    common::write_dataset(&out, 3, 3);
    let options = WriterOptions::new(2, "test");
    let mut writer = DatasetWriter::append(&out, options).unwrap();
    for i in 0..5u8 {
        writer
            .push(NewRow {
                image: common::png(4, 4, i),
                caption: format!("row {i}"),
                extra: Vec::new(),
            })
            .unwrap();
    }
    // Two shards of the append are complete; the import fails before `finish` (a full disk, a
    // read error): nothing of it is in the dataset, not even a temporary file.
    drop(writer);
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["shard-000000.parquet".to_string()]);
    assert_eq!(Dataset::open(&out).unwrap().rows(), 3);
}
