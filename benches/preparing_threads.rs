//! Tokenizing captions on several threads, with the threads allocating from glibc's one heap
//! (the binary's setting for every other thread) against mimalloc's per-thread heaps (what
//! saeshare's preparing threads use), side by side in one process with the binary's allocator.
//!
//! `cargo bench --bench preparing_threads` tokenizes 4,096 captions in batches of 256 on 1, 2, 4
//! and all cores with a BERT-style WordPiece tokenizer, and prints captions a second and the
//! ratio. Under `cargo test` it runs one small round as a smoke test.

use std::str::FromStr;
use std::time::Instant;

use saeshare::allocator::{keep_freed_memory_for_reuse, use_thread_heap, SplitAllocator};
use tokenizers::Tokenizer;

#[global_allocator]
static ALLOCATOR: SplitAllocator = SplitAllocator;

const WORDS: &[&str] = &[
    "a",
    "smiling",
    "face",
    "with",
    "heart",
    "shaped",
    "eyes",
    "and",
    "thumbs",
    "up",
    "sign",
    "flag",
    "of",
    "the",
    "united",
    "kingdom",
    "person",
    "raising",
    "both",
    "hands",
    "in",
    "celebration",
    "red",
    "apple",
    "crying",
    "cat",
    "rocket",
    "medium",
    "skin",
    "tone",
];

/// A BERT-style tokenizer (normaliser, pre-tokenizer, WordPiece, [CLS] ... [SEP]) over the
/// words above and every letter, so that a caption splits as a real vocabulary splits it.
fn tokenizer() -> Tokenizer {
    let mut vocab = serde_json::Map::new();
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"];
    let letters = ('a'..='z').map(|c| c.to_string());
    let pieces = ('a'..='z').map(|c| format!("##{c}"));
    let words = WORDS.iter().map(|w| w.to_string());
    let halves = WORDS.iter().map(|w| w[..w.len() / 2].to_string());
    let all = (specials.iter().map(|s| s.to_string()))
        .chain(letters)
        .chain(pieces)
        .chain(words)
        .chain(halves);
    for token in all {
        let id = vocab.len();
        vocab.entry(token).or_insert(id.into());
    }
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"),
                         special(3, "[SEP]")],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": null,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    });
    Tokenizer::from_str(&json.to_string()).expect("a valid tokenizer")
}

fn captions(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let words: Vec<&str> = (0..8 + i % 9)
                .map(|j| WORDS[(i * 7 + j * 13 + j * j) % WORDS.len()])
                .collect();
            format!("{} #{i}", words.join(" "))
        })
        .collect()
}

/// Seconds to tokenize `captions` in batches of 256, each batch split over `threads` threads.
fn tokenize(tokenizer: &Tokenizer, captions: &[String], threads: usize, heaps: bool) -> f64 {
    let start = Instant::now();
    let mut tokens = 0usize;
    for batch in captions.chunks(256) {
        let chunk = batch.len().div_ceil(threads);
        tokens += std::thread::scope(|scope| {
            let handles: Vec<_> = (batch.chunks(chunk))
                .map(|part| {
                    scope.spawn(move || {
                        if heaps {
                            use_thread_heap();
                        }
                        (part.iter())
                            .map(|c| tokenizer.encode(c.as_str(), true).unwrap().len())
                            .sum::<usize>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum::<usize>()
        });
    }
    assert!(tokens > captions.len() * 10, "every caption gives tokens");
    start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    keep_freed_memory_for_reuse();
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let (n, repeats) = if benchmarking { (4096, 7) } else { (256, 1) };
    let tokenizer = tokenizer();
    let captions = captions(n);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts = vec![1, 2, 4, cores];
    counts.sort_unstable();
    counts.dedup();
    println!("preparing_threads: {n} captions in batches of 256, median of {repeats} rounds");
    println!("  threads  one glibc heap  thread heaps  ratio   (captions/s)");
    for threads in counts {
        let (mut one_heap, mut thread_heaps) = (Vec::new(), Vec::new());
        // Interleaved, so that load from elsewhere on a shared machine hits both alike.
        for _ in 0..repeats {
            one_heap.push(tokenize(&tokenizer, &captions, threads, false));
            thread_heaps.push(tokenize(&tokenizer, &captions, threads, true));
        }
        let (one_heap, thread_heaps) = (median(one_heap), median(thread_heaps));
        println!(
            "  {threads:>7}  {:>14.0}  {:>12.0}  {:>5.2}x",
            n as f64 / one_heap,
            n as f64 / thread_heaps,
            one_heap / thread_heaps
        );
    }
}
