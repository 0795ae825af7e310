//! The importers on small inputs of each kind, checked row by row.

use crate::common;

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Int32Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
    StructArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields};
use saeshare::dataset::import::{
    import_coco, import_hf, CocoImport, CocoRows, HfImport, ImportTarget,
};
use saeshare::dataset::{Dataset, Projection, SampleBatch};

fn read_all(dir: &std::path::Path) -> SampleBatch {
    let dataset = Dataset::open(dir).unwrap();
    dataset.check_unique_ids().unwrap();
    let mut all = SampleBatch::default();
    for shard in dataset.shards() {
        for batch in shard.reader(Projection::ALL, 64).unwrap() {
            let batch = batch.unwrap();
            all.sample_ids.extend(batch.sample_ids);
            all.captions.extend(batch.captions);
            all.images.extend(batch.images);
            all.skipped.extend(batch.skipped);
        }
    }
    all
}

fn coco_fixture(dir: &std::path::Path) -> std::path::PathBuf {
    let images = dir.join("val2017");
    std::fs::create_dir(&images).unwrap();
    for id in [1u8, 2, 3] {
        std::fs::write(images.join(format!("{id:012}.jpg")), common::png(6, 6, id)).unwrap();
    }
    // Image 4 has captions but no file; image 5 has a file entry but no caption.
    let annotations = serde_json::json!({
        "info": {}, "licenses": [],
        "images": [
            {"id": 3, "file_name": "000000000003.jpg", "width": 6, "height": 6},
            {"id": 1, "file_name": "000000000001.jpg", "width": 6, "height": 6},
            {"id": 2, "file_name": "000000000002.jpg", "width": 6, "height": 6},
            {"id": 4, "file_name": "000000000004.jpg", "width": 6, "height": 6},
            {"id": 5, "file_name": "000000000005.jpg", "width": 6, "height": 6}
        ],
        "annotations": [
            {"id": 12, "image_id": 1, "caption": "A second caption for one."},
            {"id": 11, "image_id": 1, "caption": "A dog runs on the beach."},
            {"id": 21, "image_id": 2, "caption": "  "},
            {"id": 22, "image_id": 2, "caption": "Two cats on a sofa."},
            {"id": 31, "image_id": 3, "caption": "A red bus."},
            {"id": 41, "image_id": 4, "caption": "Lost image."}
        ]
    });
    let path = dir.join("captions_val2017.json");
    std::fs::write(&path, annotations.to_string()).unwrap();
    path
}

#[test]
fn coco_rows_are_images_with_their_first_caption_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let annotations = coco_fixture(dir.path());
    let spec = CocoImport {
        annotations,
        images: dir.path().join("val2017"),
        rows: CocoRows::FirstCaption,
    };
    let out = dir.path().join("first");
    let report = import_coco(
        &spec,
        &ImportTarget {
            out: out.clone(),
            shard_rows: 2,
            append: false,
        },
    )
    .unwrap();
    assert_eq!(report.rows, 3);
    assert_eq!(report.skipped.get("image file not found"), Some(&1));
    assert_eq!(report.skipped.get("image without a caption"), Some(&1));

    let rows = read_all(&out);
    assert_eq!(rows.sample_ids, vec![0, 1, 2]);
    // In image id order; image 2's first caption is blank, so its first real one is used.
    assert_eq!(
        rows.captions,
        vec![
            "A dog runs on the beach.",
            "Two cats on a sofa.",
            "A red bus."
        ]
    );
    assert_eq!(rows.images[1].0.as_ref(), common::png(6, 6, 2).as_slice());
}

#[test]
fn coco_all_captions_gives_one_row_per_image_caption_pair() {
    let dir = tempfile::tempdir().unwrap();
    let annotations = coco_fixture(dir.path());
    let spec = CocoImport {
        annotations,
        images: dir.path().join("val2017"),
        rows: CocoRows::AllCaptions,
    };
    let out = dir.path().join("all");
    let report = import_coco(
        &spec,
        &ImportTarget {
            out: out.clone(),
            shard_rows: 100,
            append: false,
        },
    )
    .unwrap();
    assert_eq!(report.rows, 4);
    assert_eq!(report.skipped.get("empty caption"), Some(&1));
    let rows = read_all(&out);
    assert_eq!(
        rows.captions,
        vec![
            "A dog runs on the beach.",
            "A second caption for one.",
            "Two cats on a sofa.",
            "A red bus."
        ]
    );
    assert_eq!(rows.images[0], rows.images[1]);
}

/// A file as Hugging Face `datasets` writes it: `image: struct<bytes, path>`, captions as a list.
fn hf_fixture(path: &std::path::Path) {
    let images: Vec<Option<Vec<u8>>> = vec![
        Some(common::png(5, 5, 1)),
        None,
        Some(common::png(5, 5, 3)),
        Some(common::png(5, 5, 4)),
    ];
    let bytes = BinaryArray::from(images.iter().map(|i| i.as_deref()).collect::<Vec<_>>());
    let paths = StringArray::from(vec![Some("a.png"), None, Some("c.png"), Some("d.png")]);
    let fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let image = StructArray::new(
        fields,
        vec![Arc::new(bytes) as ArrayRef, Arc::new(paths)],
        Some(NullBuffer::from(vec![true, false, true, true])),
    );
    let mut sentences = ListBuilder::new(StringBuilder::new());
    for row in [
        vec!["first of a", "second of a"],
        vec!["b"],
        vec![],
        vec!["", "only real one of d"],
    ] {
        for s in row {
            sentences.values().append_value(s);
        }
        sentences.append(true);
    }
    let batch = RecordBatch::try_from_iter(vec![
        ("image", Arc::new(image) as ArrayRef),
        ("sentences", Arc::new(sentences.finish()) as ArrayRef),
        (
            "cocoid",
            Arc::new(Int32Array::from(vec![7, 8, 9, 10])) as ArrayRef,
        ),
    ])
    .unwrap();
    common::write_parquet(path, batch);
}

#[test]
fn hugging_face_parquet_with_image_structs_and_caption_lists() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("train-00000-of-00001.parquet");
    hf_fixture(&input);
    let spec = HfImport {
        inputs: vec![dir.path().to_path_buf()],
        image_column: "image".into(),
        caption_column: "sentences".into(),
        all_captions: false,
    };
    let out = dir.path().join("out");
    let report = import_hf(
        &spec,
        &ImportTarget {
            out: out.clone(),
            shard_rows: 10,
            append: false,
        },
    )
    .unwrap();
    assert_eq!(report.rows, 2);
    assert_eq!(report.skipped.get("missing image"), Some(&1));
    assert_eq!(report.skipped.get("missing caption"), Some(&1));
    let rows = read_all(&out);
    assert_eq!(rows.captions, vec!["first of a", "only real one of d"]);
    assert_eq!(rows.images[1].0.as_ref(), common::png(5, 5, 4).as_slice());

    let all = dir.path().join("all");
    let spec = HfImport {
        all_captions: true,
        ..spec
    };
    import_hf(
        &spec,
        &ImportTarget {
            out: all.clone(),
            shard_rows: 10,
            append: false,
        },
    )
    .unwrap();
    assert_eq!(
        read_all(&all).captions,
        vec!["first of a", "second of a", "only real one of d"]
    );

    // The HF file itself is a readable dataset once it has sample ids; and a wrong caption
    // column is named with the columns there are.
    let wrong = HfImport {
        caption_column: "caption".into(),
        ..spec
    };
    let err = import_hf(
        &wrong,
        &ImportTarget {
            out: dir.path().join("x"),
            shard_rows: 10,
            append: false,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("train-00000-of-00001.parquet") && err.contains("sentences"),
        "{err}"
    );
}
