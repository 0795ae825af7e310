//! The streaming reader: every row read exactly once, whatever the number of workers, in batches
//! of bounded size; shards written by the writer read back as written.

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use saeshare::dataset::{Dataset, DatasetWriter, NewRow, Projection, WriterOptions};
use saeshare::pipeline::shard_source;
use timely::dataflow::operators::Inspect;

/// Reads `dataset` with `peers` timely worker threads; returns (worker, shard, sample ids) per batch.
fn read_with_workers(
    dataset: Arc<Dataset>,
    peers: usize,
    batch_rows: usize,
) -> Vec<(usize, usize, Vec<u64>)> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    timely::execute(timely::Config::process(peers), move |worker| {
        let index = worker.index();
        let sink = sink.clone();
        let dataset = dataset.clone();
        let errors = worker.dataflow::<u64, _, _>(|scope| {
            let shards = saeshare::ids::ShardId::all(dataset.shards().len()).collect();
            let (stream, errors) =
                shard_source(scope, dataset, shards, Projection::TEXT, batch_rows);
            stream.inspect(move |batch| {
                sink.lock()
                    .unwrap()
                    .push((index, batch.shard, batch.sample_ids.clone()));
            });
            errors
        });
        while worker.step() {}
        assert!(errors.take().is_none());
    })
    .unwrap();
    Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
}

#[test]
fn every_row_is_read_exactly_once_by_any_number_of_workers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    common::write_dataset(&path, 1000, 90); // 12 shards, the last one short
    let dataset = Arc::new(Dataset::open(&path).unwrap());
    assert_eq!(dataset.shards().len(), 12);

    for peers in [1, 2, 3, 7] {
        let batches = read_with_workers(dataset.clone(), peers, 16);
        let mut ids: Vec<u64> = batches.iter().flat_map(|(_, _, ids)| ids.clone()).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..1000).collect::<Vec<u64>>(), "{peers} workers");
        for (worker, shard, ids) in &batches {
            assert_eq!(
                shard % peers,
                *worker,
                "shard {shard} read by worker {worker} of {peers}"
            );
            assert!(
                ids.len() <= 16,
                "a batch of {} rows exceeds the bound",
                ids.len()
            );
        }
    }
}

#[test]
fn text_readers_leave_images_on_disk_and_image_readers_get_them_encoded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    common::write_dataset(&path, 10, 10);
    let dataset = Dataset::open(&path).unwrap();
    let shard = &dataset.shards()[0];

    let text: Vec<_> = shard
        .reader(Projection::TEXT, 4)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(text
        .iter()
        .all(|b| b.images.is_empty() && b.captions.len() == b.len()));

    let all: Vec<_> = shard
        .reader(Projection::ALL, 4)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let images: Vec<_> = all.iter().flat_map(|b| b.images.clone()).collect();
    assert_eq!(images.len(), 10);
    assert_eq!(images[3].0.as_ref(), common::png(4, 4, 3).as_slice());
    assert_eq!(images[3].dimensions().unwrap(), (4, 4));
}

#[test]
fn append_adds_shards_and_ids_after_the_existing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    common::write_dataset(&path, 25, 10);
    let before: Vec<_> = Dataset::open(&path)
        .unwrap()
        .shards()
        .iter()
        .map(|s| s.path.clone())
        .collect();

    let mut writer = DatasetWriter::append(&path, WriterOptions::new(10, "more")).unwrap();
    for i in 0..5 {
        let id = writer
            .push(NewRow {
                image: common::png(4, 4, i),
                caption: format!("new {i}"),
                extra: vec![],
            })
            .unwrap();
        assert_eq!(id, 25 + i as u64);
    }
    let summary = writer.finish().unwrap();
    assert_eq!(summary.first_sample_id, 25);

    let dataset = Dataset::open(&path).unwrap();
    assert_eq!(dataset.rows(), 30);
    assert_eq!(dataset.shards().len(), 4);
    // Old shards are untouched and keep their place in the shard order.
    let after: Vec<_> = dataset.shards().iter().map(|s| s.path.clone()).collect();
    assert_eq!(&after[..3], &before[..]);
    dataset.check_unique_ids().unwrap();
}

#[test]
fn an_unfinished_dataset_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    {
        let mut writer = DatasetWriter::create(&path, WriterOptions::new(3, "test")).unwrap();
        for i in 0..7 {
            writer
                .push(NewRow {
                    image: common::png(2, 2, i),
                    caption: "c".into(),
                    extra: vec![],
                })
                .unwrap();
        }
        // Dropped without finish: an interrupted import.
    }
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "staging files left behind"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the shard and batch sizes, the rows come back as written, in order, each once.
    #[test]
    fn shards_read_back_as_written(
        captions in prop::collection::vec("[a-z ]{0,12}[a-z]", 1..120),
        shard_rows in 1usize..40,
        batch_rows in 1usize..30,
        extra in prop::collection::vec(prop::option::of("[a-z]{0,5}"), 120),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let options = WriterOptions::new(shard_rows, "prop").with_extra_columns(vec!["note".into()]);
        let mut writer = DatasetWriter::create(&path, options).unwrap();
        for (i, caption) in captions.iter().enumerate() {
            writer.push(NewRow {
                image: vec![i as u8 + 1; i % 7 + 1],
                caption: caption.clone(),
                extra: vec![extra[i].clone()],
            }).unwrap();
        }
        let summary = writer.finish().unwrap();
        prop_assert_eq!(summary.rows as usize, captions.len());
        prop_assert_eq!(summary.shards.len(), captions.len().div_ceil(shard_rows));

        let dataset = Dataset::open(&path).unwrap();
        let mut by_id = BTreeMap::new();
        for shard in dataset.shards() {
            prop_assert!(shard.rows as usize <= shard_rows);
            for batch in shard.reader(Projection::ALL, batch_rows).unwrap() {
                let batch = batch.unwrap();
                prop_assert!(batch.len() <= batch_rows);
                prop_assert!(batch.skipped.is_empty());
                for i in 0..batch.len() {
                    let previous = by_id.insert(
                        batch.sample_ids[i],
                        (batch.captions[i].clone(), batch.images[i].0.to_vec()),
                    );
                    prop_assert!(previous.is_none());
                }
            }
        }
        prop_assert_eq!(by_id.len(), captions.len());
        for (id, (caption, image)) in by_id {
            let i = id as usize;
            prop_assert_eq!(caption, captions[i].trim().to_string());
            prop_assert_eq!(image, vec![i as u8 + 1; i % 7 + 1]);
        }
    }
}

/// Two processes of two workers each, connected over localhost as timely connects machines:
/// together they read every row once (count, sum and sum of squares of the ids agree).
#[test]
fn two_processes_read_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    common::write_dataset(&path, 500, 40); // 13 shards over 4 workers
    let hostfile = common::hostfile(dir.path());

    let children: Vec<_> = (0..2)
        .map(|process| {
            std::process::Command::new(env!("CARGO_BIN_EXE_saeshare"))
                .args([
                    "--quiet",
                    "dataset",
                    "scan",
                    path.to_str().unwrap(),
                    "--json",
                    "-w",
                    "2",
                    "-n",
                    "2",
                ])
                .args(["-p", &process.to_string(), "-h", hostfile.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let summaries: Vec<saeshare::pipeline::ScanSummary> = children
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "{}", common::stderr(&output));
            // timely reports its connection progress on stdout; the summary is the last line.
            let stdout = common::stdout(&output);
            serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
        })
        .collect();
    let rows: u64 = summaries.iter().map(|s| s.rows).sum();
    let shards: usize = summaries.iter().map(|s| s.shards).sum();
    let sum = summaries.iter().fold(0u64, |a, s| a.wrapping_add(s.id_sum));
    let squares = summaries
        .iter()
        .fold(0u64, |a, s| a.wrapping_add(s.id_square_sum));
    assert_eq!((rows, shards), (500, 13));
    assert_eq!(sum, (0..500u64).sum::<u64>());
    assert_eq!(squares, (0..500u64).map(|i| i * i).sum::<u64>());
    // Both processes did part of the work.
    assert!(summaries.iter().all(|s| s.rows > 0));
}
