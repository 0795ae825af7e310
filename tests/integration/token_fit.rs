//! SAEs fitted on every token (`fit_on = "tokens"`): padding never reaches an SAE, a sample's
//! token rows do not depend on its batch, and the fitted SAEs and every output are the same on
//! 1 worker, 4 workers and 2 processes.

use crate::common;
use crate::pipeline::{assert_same_outputs, run, run_in_two_processes, study};

use std::path::Path;

use saeshare::dataset::SampleBatch;
use saeshare::encoder::{EncodedRows, Encoder, TokenSelection};
use saeshare::sae::Sae;
use tch::Device;

const CAPTIONS: [&str; 4] = [
    "a red apple",
    "two cats asleep on a very old green sofa by the window",
    "sun",
    "a grinning face with big eyes",
];

fn captions() -> SampleBatch {
    SampleBatch {
        shard: 0,
        sample_ids: (10..14).collect(),
        captions: CAPTIONS.iter().map(|c| c.to_string()).collect(),
        images: Vec::new(),
        skipped: Vec::new(),
    }
}

/// The rows of `batch` through `package`, every layer, token rows as `selection` says.
fn token_rows(package: &str, batch: SampleBatch, selection: &TokenSelection) -> EncodedRows {
    let mut encoder = Encoder::load(&common::tiny_packages().join(package), Device::Cpu).unwrap();
    let layers: Vec<usize> = (0..encoder.manifest.layers.len()).collect();
    let pooling = encoder.manifest.default_pooling;
    let mut out = EncodedRows::empty(layers.len());
    encoder
        .encode_batches(
            std::iter::once(Ok(batch)),
            64,
            &layers,
            pooling,
            Some(selection),
            |rows| {
                out.append(&rows);
                Ok(())
            },
        )
        .unwrap();
    out
}

#[test]
fn padding_never_reaches_an_sae() {
    // The poisoned package is BERT with NaN at every padded position of every layer: four
    // captions of 3 to 13 tokens in one batch pad three of them.
    let all = TokenSelection::default();
    let poisoned = token_rows("bert-poisoned-padding", captions(), &all);
    let clean = token_rows("bert", captions(), &all);
    for (p, c) in poisoned.tokens.iter().zip(&clean.tokens) {
        assert!(
            p.values.iter().all(|v| v.is_finite()),
            "a padded row leaked"
        );
        assert_eq!(p.sample, c.sample);
        assert_eq!(p.position, c.position);
        let diff = (p.values.iter().zip(&c.values))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff == 0.0, "poisoned and clean rows differ by {diff}");
    }
    // [CLS] + words + [SEP] of each caption, nothing of the padding.
    let lengths: Vec<usize> = (0..4)
        .map(|s| clean.tokens[0].sample.iter().filter(|&&x| x == s).count())
        .collect();
    assert!(
        lengths.iter().all(|&n| n >= 3) && lengths[1] > lengths[0],
        "{lengths:?}"
    );
    let words = token_rows(
        "bert",
        captions(),
        &TokenSelection {
            special_tokens: false,
            ..all
        },
    );
    assert_eq!(words.tokens[0].rows(), clean.tokens[0].rows() - 2 * 4);

    // The control: where a pooling does read padding (the final position), the poison shows.
    let mut encoder = Encoder::load(
        &common::tiny_packages().join("bert-poisoned-padding"),
        Device::Cpu,
    )
    .unwrap();
    let last = encoder.encode(&captions(), &[0], saeshare::encoder::Pooling::Last);
    assert!(last.is_err(), "the poison does not reach the outputs");

    // And a study fitted on the poisoned package's tokens trains finite SAEs.
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[21]);
    let file = study(dir.path(), &dataset, "poisoned", &["bert", "vit"], 4);
    let text = std::fs::read_to_string(&file).unwrap().replace(
        &format!(
            "package = \"{}\"",
            common::tiny_packages().join("bert").display()
        ),
        &format!(
            "package = \"{}\"\nfit_on = \"tokens\"\npooling = \"cls\"",
            common::tiny_packages()
                .join("bert-poisoned-padding")
                .display()
        ),
    );
    std::fs::write(&file, text).unwrap();
    run(&file, &[]);
    for layer in ["1", "2"] {
        let (sae, meta) = Sae::load(
            &dir.path().join("poisoned/saes/bert").join(layer),
            Device::Cpu,
        )
        .unwrap();
        assert_eq!(meta.steps, 40);
        let mixed = meta.metrics.last().unwrap().samples_per_batch.unwrap();
        assert!(mixed > 20.0, "batches of 64 token rows mix {mixed} samples");
        for p in sae.parameters() {
            assert!(p.isfinite().all().int64_value(&[]) == 1);
        }
    }
}

#[test]
fn a_samples_token_rows_do_not_depend_on_its_batch() {
    let selection = TokenSelection {
        per_sample: Some(4),
        seed: 9,
        ..TokenSelection::default()
    };
    let together = token_rows("bert", captions(), &selection);
    for i in 0..4 {
        let mut alone = captions();
        alone.sample_ids = vec![alone.sample_ids[i]];
        alone.captions = vec![alone.captions[i].clone()];
        let alone = token_rows("bert", alone, &selection);
        for (all, one) in together.tokens.iter().zip(&alone.tokens) {
            let rows: Vec<usize> = (0..all.rows())
                .filter(|&r| all.sample[r] == i as u32)
                .collect();
            assert_eq!(rows.len(), one.rows());
            assert_eq!(
                rows.iter().map(|&r| all.position[r]).collect::<Vec<_>>(),
                one.position
            );
            let width = one.values.len() / one.rows();
            for (k, &r) in rows.iter().enumerate() {
                let a = &all.values[r * width..(r + 1) * width];
                let b = &one.values[k * width..(k + 1) * width];
                let diff = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(
                    diff <= 1e-4,
                    "sample {i}: token rows differ by {diff} in a batch"
                );
            }
        }
    }
}

/// `file` with bert fitted on every token, dinov2 on 5 patches a sample without its class token.
fn on_tokens(file: &Path) {
    let text = std::fs::read_to_string(file).unwrap();
    let text = text
        .replace(
            "[encoders.bert]\n",
            "[encoders.bert]\nfit_on = \"tokens\"\n",
        )
        .replace(
            "[encoders.dinov2]\n",
            "[encoders.dinov2]\nfit_on = \"tokens\"\ntokens_per_sample = 5\nclass_token = false\n",
        );
    std::fs::write(file, text).unwrap();
}

#[test]
fn token_fits_are_the_same_on_1_worker_4_workers_and_2_processes_with_or_without_step_threads() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[3, 43]);
    let encoders = ["bert", "dinov2"];
    let files: Vec<_> = ["one", "four", "two"]
        .iter()
        .map(|name| {
            let file = study(dir.path(), &dataset, name, &encoders, 4);
            on_tokens(&file);
            file
        })
        .collect();
    // The SAE steps on step threads (two of them on 4 workers, one in 2 processes) or on the
    // worker's thread (1 worker) take the same batches in the same order.
    for (file, threads) in files[1..].iter().zip([2, 1]) {
        let text = std::fs::read_to_string(file)
            .unwrap()
            .replace("[fit]\n", &format!("[fit]\nsae_threads = {threads}\n"));
        std::fs::write(file, text).unwrap();
    }
    let text = std::fs::read_to_string(&files[0]).unwrap();
    std::fs::write(
        &files[0],
        text.replace("[fit]\n", "[fit]\nsae_threads = 0\n"),
    )
    .unwrap();
    run(&files[0], &[]);
    run(&files[1], &["-w", "4"]);
    let hosts = common::hostfile(dir.path());
    run_in_two_processes(&files[2], &hosts, None);
    let sae = |run: &str, encoder: &str, layer: &str| {
        Sae::load(
            &dir.path().join(run).join("saes").join(encoder).join(layer),
            Device::Cpu,
        )
        .unwrap()
    };
    for (encoder, layer) in [("bert", "2"), ("dinov2", "1"), ("dinov2", "2")] {
        let (one, meta) = sae("one", encoder, layer);
        // Token rows, not one row per sample: batches of 64 rows hold several rows of some
        // samples (pooled rows would make every batch 64 distinct samples).
        let mixed = meta.metrics.last().unwrap().samples_per_batch.unwrap();
        assert!(mixed < 63.0 && mixed > 20.0, "{encoder} {layer}: {mixed}");
        for other in ["four", "two"] {
            let (sae, _) = sae(other, encoder, layer);
            for (a, b) in one.parameters().iter().zip(sae.parameters()) {
                let diff = (*a - b).abs().max().double_value(&[]);
                assert!(diff == 0.0, "{encoder} {layer}: {other} differs by {diff}");
            }
        }
    }
    assert_same_outputs(&dir.path().join("one"), &dir.path().join("four"), 1e-6);
    assert_same_outputs(&dir.path().join("one"), &dir.path().join("two"), 1e-6);
}

#[test]
fn the_reference_protocol_reads_dense_relu_codes_at_token_0_after_one_pass() {
    use saeshare::dataset::{Dataset, Projection};
    use tch::{Kind, Tensor};

    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[22]);
    let file = study(dir.path(), &dataset, "protocol", &["bert", "vit"], 4);
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "[fit]\nbuffer_rows = 256\n",
        "[fit]\nbuffer_rows = 256\nfit_on = \"tokens\"\nmax_passes = 1\n\n\
         [codes]\nread_out = \"relu\"\nposition = \"token0\"\n",
    );
    // 100 captions of a few tokens: far fewer rows than 400 steps of 64.
    let text = text.replace("steps = 40", "steps = 400");
    std::fs::write(&file, text).unwrap();
    run(&file, &[]);

    let sae_dir = dir.path().join("protocol/saes/bert/2");
    let (_, meta) = Sae::load(&sae_dir, Device::Cpu).unwrap();
    assert!(
        meta.steps > 0 && meta.steps < 400,
        "one pass over the token rows gives fewer steps than configured: {}",
        meta.steps
    );

    // The direct computation: ReLU((x - b_dec) W_enc + b_enc) at token 0, in float64.
    let weights = Tensor::read_safetensors(sae_dir.join("sae.safetensors")).unwrap();
    let get = |name: &str| {
        let (_, t) = weights.iter().find(|(n, _)| n == name).unwrap();
        t.to_kind(Kind::Double)
    };
    let opened = Dataset::open(&dataset).unwrap();
    let shard = &opened.shards()[0];
    let batch = shard
        .reader(Projection::TEXT, 1000)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let mut encoder = Encoder::load(&common::tiny_packages().join("bert"), Device::Cpu).unwrap();
    let layer = (encoder.manifest.layers.iter())
        .position(|l| l.name == "2")
        .unwrap();
    let pooled = encoder
        .encode(&batch, &[layer], saeshare::encoder::Pooling::Cls)
        .unwrap();
    let x = pooled.layers[0].1.to_kind(Kind::Double);
    let direct = ((x - get("b_dec")).mm(&get("W_enc")) + get("b_enc")).relu();
    let (samples, d_sae) = direct.size2().unwrap();

    let codes = dir
        .path()
        .join("protocol/codes/bert/2")
        .join(shard.path.file_name().unwrap());
    let mut read = vec![0f64; (samples * d_sae) as usize];
    let row_of: std::collections::HashMap<u64, usize> = batch
        .sample_ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    let mut entries = 0;
    for batch in saeshare::codes::CodesReader::open(&codes).unwrap() {
        for code in batch.unwrap().iter() {
            let row = row_of[&code.sample_id];
            for (&f, &v) in code.features.iter().zip(code.values) {
                read[row * d_sae as usize + f as usize] = f64::from(v);
                entries += 1;
            }
        }
    }
    // Codes this dense are stored one row per sample (FORMATS.md, "Dense codes").
    let file =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&codes).unwrap())
            .unwrap();
    let rows = parquet::file::reader::FileReader::metadata(&file)
        .file_metadata()
        .num_rows();
    assert_eq!(rows, samples);
    let read = Tensor::from_slice(&read).reshape([samples, d_sae]);
    let diff = (&read - &direct).abs().max().double_value(&[]);
    assert!(
        diff <= 1e-5,
        "the codes differ from the direct read-out by {diff}"
    );
    // Dense: more than k = 4 features a sample, every positive pre-activation.
    assert!(
        entries > 4 * samples as usize,
        "{entries} entries for {samples} samples"
    );
}

#[test]
fn bench_fit_gives_each_encoders_rates_and_the_same_saes_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[3]);
    let file = study(dir.path(), &dataset, "bench", &["bert", "dinov2"], 4);
    on_tokens(&file);
    let out = common::saeshare(&[
        "bench",
        "fit",
        file.to_str().unwrap(),
        "--samples",
        "80",
        "--encoders",
        "bert,dinov2",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let stdout = common::stdout(&out);
    for encoder in ["bert", "dinov2"] {
        let line = (stdout.lines())
            .find(|l| l.starts_with(encoder))
            .unwrap_or_else(|| panic!("no line for {encoder}:\n{stdout}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.last(), Some(&"yes"), "{line}");
        // Rows per layer: every token of 80 captions, or 5 patches of 80 images.
        let rows: u64 = fields[2].parse().unwrap();
        if encoder == "dinov2" {
            assert_eq!(rows, 400, "{line}");
        } else {
            assert!(rows > 160, "{line}");
        }
        let rates: Vec<f64> = fields[4..6].iter().map(|f| f.parse().unwrap()).collect();
        assert!(rates.iter().all(|r| r.is_finite() && *r > 0.0), "{line}");
    }
    let missing = common::saeshare(&["bench", "fit", file.to_str().unwrap(), "--encoders", "nope"]);
    assert!(!missing.status.success());
    assert!(
        common::stderr(&missing).contains("nope"),
        "{}",
        common::stderr(&missing)
    );
}

#[test]
fn bench_encoders_gives_the_forward_alone_beside_the_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[3]);
    let file = study(dir.path(), &dataset, "bench", &["bert", "dinov2"], 4);
    let args = [
        "bench",
        "encoders",
        file.to_str().unwrap(),
        "--samples",
        "40",
    ];
    let only = ["--batch-sizes", "4,8"];
    let out = common::saeshare(&[&args[..], &only[..]].concat());
    assert!(out.status.success(), "{}", common::stderr(&out));
    let stdout = common::stdout(&out);
    // An encoder's rows: its first, then one per other lane layout (indented).
    let rows_of = |name: &str| -> Vec<String> {
        (stdout.lines())
            .skip_while(|l| !l.starts_with(name))
            .take_while(|l| l.starts_with(name) || l.starts_with(' '))
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect()
    };
    for name in ["bert", "dinov2"] {
        let rows = rows_of(name);
        assert!(!rows.is_empty(), "no line for {name}:\n{stdout}");
        let mut layouts = Vec::new();
        for row in &rows {
            let fields: Vec<&str> = row.split_whitespace().collect();
            let at = usize::from(row.starts_with(name));
            let (lanes, threads) = fields[at].split_once('x').unwrap();
            let layout: (usize, usize) = (lanes.parse().unwrap(), threads.parse().unwrap());
            assert!(layout.0 >= 1 && layout.1 >= 1, "{row}");
            layouts.push(layout);
            // Two forward rates, one a batch size.
            let rates: Vec<f64> = (fields[at + 1..at + 3].iter())
                .map(|f| f.parse().unwrap())
                .collect();
            assert!(rates.iter().all(|r| r.is_finite() && *r > 0.0), "{row}");
        }
        // First every thread on one lane, then the encoding's lanes where it has several.
        assert_eq!(layouts[0].0, 1, "{stdout}");
        assert!(
            layouts.len() <= 2 && layouts.iter().skip(1).all(|l| l.0 >= 2),
            "{stdout}"
        );
        // The encoding, and its share of the best forward, on the row of its own layout: the
        // last.
        let encoding: Vec<&String> = rows.iter().filter(|r| r.contains("% (best b=")).collect();
        assert_eq!(encoding.len(), 1, "{stdout}");
        assert!(encoding[0] == rows.last().unwrap(), "{stdout}");
    }
    // Captions run on one lane unless the study asks for more.
    assert_eq!(rows_of("bert").len(), 1, "{stdout}");
    // The helper thread's work alone for each encoder, then the padding its batches compute:
    // some for the captions (40 samples sorted in batches of 4), none for images.
    let stage_row = |name: &str| -> Vec<String> {
        (stdout.lines())
            .find(|l| l.starts_with(name) && l.contains(" inputs/s "))
            .unwrap_or_else(|| panic!("no stage line for {name}:\n{stdout}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let padding = stage_row("bert").last().unwrap().clone();
    let share: f64 = padding.trim_end_matches('%').parse().unwrap();
    assert!(
        padding.ends_with('%') && (0.0..100.0).contains(&share),
        "{stdout}"
    );
    assert_eq!(stage_row("dinov2").last().unwrap(), "-", "{stdout}");
    // The captions' model batches timed again by the forward alone; images have no such line.
    let on_batches = |name: &str| {
        let prefix = format!("{name}: the forward alone on the encoding's batch shapes: ");
        stdout.lines().find_map(|l| l.strip_prefix(&prefix))
    };
    let line = on_batches("bert").unwrap_or_else(|| panic!("no batch shapes line:\n{stdout}"));
    let rate: f64 = line.split_whitespace().next().unwrap().parse().unwrap();
    assert!(rate.is_finite() && rate > 0.0, "{line}");
    assert!(line.ends_with("% of it"), "{line}");
    assert!(on_batches("dinov2").is_none(), "{stdout}");
}
