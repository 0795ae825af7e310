//! The Rust path against the Python libraries, on tiny randomly initialised models of every
//! family (built and exported at test time, nothing downloaded): hidden states and pooled vectors
//! equal the untraced Python model's on the same input tensors, and batching does not change a
//! sample's pooled vector.

use crate::common;

use std::path::Path;

use saeshare::dataset::{EncodedImage, SampleBatch};
use saeshare::encoder::{pooling, Encoder, Modality};
use tch::{Device, Kind, Tensor};

const FAMILIES: [&str; 16] = [
    "bert",
    "mpnet",
    "deberta",
    "deberta-v2",
    "electra",
    "clip_text_model",
    "siglip_text_model",
    "clip_vision_model",
    "siglip_vision_model",
    "vit",
    "dinov2",
    "torchvision-resnet18",
    "timm-resnet18",
    "timm-vit",
    "open_clip-visual",
    "open_clip-text",
];

fn packages() -> &'static Path {
    common::tiny_packages()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn every_family_matches_its_python_library() {
    for family in FAMILIES {
        let dir = packages().join(family);
        let encoder = Encoder::load(&dir, Device::Cpu).unwrap_or_else(|e| panic!("{family}: {e}"));
        let reference: Vec<(String, Tensor)> =
            Tensor::read_safetensors(dir.join("reference.safetensors")).unwrap();
        let get = |name: &str| {
            reference
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
        };
        let (inputs, mask) = match encoder.manifest.modality {
            Modality::Text => {
                let mask = get("attention_mask").unwrap();
                (
                    vec![get("input_ids").unwrap(), mask.shallow_clone()],
                    Some(mask),
                )
            }
            Modality::Image => (vec![get("pixel_values").unwrap()], None),
        };
        let layers = encoder.forward(&inputs).unwrap();
        for (i, layer) in layers.iter().enumerate() {
            let hidden = get(&format!("layer.{i}")).unwrap();
            let diff = max_diff(layer, &hidden);
            assert!(
                diff <= 1e-4,
                "{family} layer {i}: hidden states differ by {diff}"
            );
            let pooled = pooling::pool(
                layer,
                encoder.manifest.outputs,
                encoder.manifest.default_pooling,
                mask.as_ref(),
                encoder.manifest.prefix_tokens,
            )
            .unwrap();
            let diff = max_diff(&pooled, &get(&format!("pooled.{i}")).unwrap());
            assert!(
                diff <= 1e-4,
                "{family} layer {i}: pooled vectors differ by {diff}"
            );
        }
    }
}

#[test]
fn a_batch_gives_the_same_pooled_vectors_as_one_sample_at_a_time() {
    let captions = [
        "a red apple",
        "two cats asleep on a very old green sofa by the window",
        "sun",
    ];
    let images: Vec<EncodedImage> = (0..3)
        .map(|i| EncodedImage(common::png(20 + 7 * i, 30, i as u8).into()))
        .collect();
    for family in [
        "bert",
        "deberta-v2",
        "clip_text_model",
        "siglip_text_model",
        "open_clip-text",
        "vit",
        "dinov2",
        "torchvision-resnet18",
    ] {
        let mut encoder = Encoder::load(&packages().join(family), Device::Cpu).unwrap();
        let layers: Vec<usize> = (0..encoder.manifest.layers.len()).collect();
        let pooling = encoder.manifest.default_pooling;
        let batch = |range: std::ops::Range<usize>| SampleBatch {
            shard: 0,
            sample_ids: range.clone().map(|i| i as u64).collect(),
            captions: captions[range.clone()]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            images: images[range].to_vec(),
            skipped: vec![],
        };
        let together = encoder.encode(&batch(0..3), &layers, pooling).unwrap();
        for i in 0..3 {
            let alone = encoder.encode(&batch(i..i + 1), &layers, pooling).unwrap();
            for ((_, all), (_, one)) in together.layers.iter().zip(&alone.layers) {
                let diff = max_diff(&all.narrow(0, i as i64, 1), one);
                assert!(
                    diff <= 1e-4,
                    "{family}: sample {i} differs by {diff} in a batch"
                );
            }
        }
    }
}

/// Paired datasets repeat inputs (a COCO image has five captions, an emoji caption two images):
/// a batch's identical inputs go through the model once, and every sample still gets its pooled
/// vector and its own token rows, as if it had been encoded with the distinct inputs alone.
#[test]
fn identical_inputs_run_once_and_each_sample_gets_their_rows() {
    let captions = ["a red apple", "sun", "two cats asleep on a sofa"];
    let images: Vec<EncodedImage> = (0..3)
        .map(|i| EncodedImage(common::png(20 + 7 * i, 30, i as u8).into()))
        .collect();
    // Samples 10..15 read inputs 0, 1, 0, 2, 0.
    let inputs = [0usize, 1, 0, 2, 0];
    let batch = |picks: &[usize]| SampleBatch {
        shard: 0,
        sample_ids: (10..10 + picks.len() as u64).collect(),
        captions: picks.iter().map(|&i| captions[i].to_string()).collect(),
        images: picks.iter().map(|&i| images[i].clone()).collect(),
        skipped: vec![],
    };
    let all_tokens = saeshare::encoder::TokenSelection::default();
    for family in ["bert", "vit", "torchvision-resnet18"] {
        let mut encoder = Encoder::load(&packages().join(family), Device::Cpu).unwrap();
        let layers: Vec<usize> = (0..encoder.manifest.layers.len()).collect();
        let pooling = encoder.manifest.default_pooling;
        let mut encode = |b: SampleBatch| {
            let mut out = Vec::new();
            encoder
                .encode_batches(
                    std::iter::once(Ok(b)),
                    8,
                    &layers,
                    pooling,
                    Some(&all_tokens),
                    |rows| {
                        out.push(rows);
                        Ok(())
                    },
                )
                .unwrap();
            assert_eq!(out.len(), 1, "{family}: one window");
            out.pop().unwrap()
        };
        let repeated = encode(batch(&inputs));
        let distinct = encode(batch(&[0, 1, 2]));
        assert_eq!(repeated.inputs, 3, "{family}: three distinct inputs");
        assert_eq!(repeated.sample_ids, (10..15).collect::<Vec<u64>>());
        for (l, (mine, theirs)) in repeated.layers.iter().zip(&distinct.layers).enumerate() {
            let width = theirs.len() / 3;
            for (s, &input) in inputs.iter().enumerate() {
                assert_eq!(
                    mine[s * width..(s + 1) * width],
                    theirs[input * width..(input + 1) * width],
                    "{family}: layer {l}, sample {s} is not input {input}'s"
                );
            }
            let tokens = |rows: &saeshare::encoder::TokenRows, sample: u32| -> Vec<f32> {
                let width = rows.values.len() / rows.rows();
                (rows.sample.iter().enumerate())
                    .filter(|(_, &s)| s == sample)
                    .flat_map(|(r, _)| rows.values[r * width..(r + 1) * width].to_vec())
                    .collect()
            };
            for (s, &input) in inputs.iter().enumerate() {
                let mine = tokens(&repeated.tokens[l], s as u32);
                assert!(!mine.is_empty());
                assert_eq!(
                    mine,
                    tokens(&distinct.tokens[l], input as u32),
                    "{family}: layer {l}, sample {s}'s token rows are not input {input}'s"
                );
            }
        }
    }
}

/// A trace records the device of every tensor the model makes: transformers' mask code traced
/// on the CPU made BERT packages fail on a GPU ("found at least two devices, cuda:0 and cpu").
/// No package may keep a fixed device in its graph; each reads its inputs' device instead.
#[test]
fn no_package_fixes_the_device_it_was_traced_on() {
    let script = r#"
import sys, torch
for path in sys.argv[1:]:
    graph = torch.jit.load(path, map_location="cpu").graph
    fixed = [n for n in graph.findAllNodes("prim::Constant") if isinstance(n.output().type(), torch._C.DeviceObjType)]
    follows = [n for n in graph.findAllNodes("prim::device")]
    print(path, len(fixed), len(follows))
"#;
    let models: Vec<_> = FAMILIES
        .iter()
        .map(|family| packages().join(family).join("model.pt"))
        .collect();
    let output = common::python()
        .args(["-c", script])
        .args(&models)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::stderr(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), FAMILIES.len(), "{stdout}");
    let mut following = 0;
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[1], "0", "a fixed device in {}", fields[0]);
        following += usize::from(fields[2] != "0");
    }
    // The text families make their masks on the device of their inputs.
    assert!(following >= 7, "{stdout}");
}

/// Captions are tokenized once per reader batch, each distinct caption once, and each model
/// batch padded from those tokens: the same ids, attention mask and special-token mask as the
/// `tokenizers` library pads, to the longest caption or to a fixed length, with the captions
/// cut at the maximum length counted, on any number of threads.
#[test]
fn captions_tokenized_once_and_padded_equal_the_tokenizers_own_padding() {
    use saeshare::encoder::text::TextTokenizer;
    use saeshare::encoder::Manifest;
    use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

    let package = common::tiny_packages().join("bert");
    let manifest = Manifest::read(&package).unwrap();
    let long = vec!["face"; 4 * manifest.text.as_ref().unwrap().max_length].join(" ");
    let captions: Vec<String> = [
        "a cat",
        "grinning face with big eyes",
        "",
        "a cat",
        &long,
        "tree",
    ]
    .map(String::from)
    .to_vec();
    let all: Vec<&str> = captions.iter().map(String::as_str).collect();
    for padding in ["longest", "max_length"] {
        let mut spec = manifest.text.clone().unwrap();
        spec.padding = padding.to_string();
        let mut reference = Tokenizer::from_file(package.join("tokenizer.json")).unwrap();
        reference.with_padding(Some(PaddingParams {
            strategy: match padding {
                "longest" => PaddingStrategy::BatchLongest,
                _ => PaddingStrategy::Fixed(spec.max_length),
            },
            pad_id: spec.pad_id,
            ..PaddingParams::default()
        }));
        let truncation = TruncationParams {
            max_length: spec.max_length,
            ..TruncationParams::default()
        };
        reference.with_truncation(Some(truncation)).unwrap();
        let encodings = reference.encode_batch(all.clone(), true).unwrap();
        let matrix = |get: &dyn Fn(&tokenizers::Encoding) -> &[u32]| {
            let rows: Vec<i64> = (encodings.iter())
                .flat_map(|e| get(e).iter().map(|&v| i64::from(v)))
                .collect();
            Tensor::from_slice(&rows).reshape([captions.len() as i64, -1])
        };
        let tokenizer = TextTokenizer::load(&package, &spec).unwrap();
        for threads in [1, 4] {
            let preparers = saeshare::encoder::Preparers::pool(threads);
            let padded = tokenizer
                .tokenize(&captions, &preparers)
                .unwrap()
                .padded(&all);
            assert_eq!(padded.truncated, 1, "{padding}, {threads} threads");
            let ours = padded.to_device(Device::Cpu);
            let what = format!("{padding}, {threads} threads");
            assert!(ours.ids.equal(&matrix(&|e| e.get_ids())), "ids, {what}");
            let mask = matrix(&|e| e.get_attention_mask());
            assert!(ours.mask.equal(&mask), "attention mask, {what}");
            let special = matrix(&|e| e.get_special_tokens_mask());
            assert!(ours.special.equal(&special), "special-token mask, {what}");
        }
    }
}
