//! The baselines and the comparison's other readings in a study, against the one-shot commands
//! on the same SAEs: the ceiling over several seeds, the bootstrap interval, the one-to-one
//! matches with their co-firing, the decoder geometry, and the report's tables of them.

use std::path::Path;

use saeshare::metrics::tables::read_wmppc;

use crate::common;
use crate::pipeline::{run, study};

#[test]
fn the_ceiling_equals_compare_ceiling_on_sae_train_codes() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = common::emoji_subset(dir.path(), &[15, 55]);
    let piped = study(dir.path(), &dataset, "piped", &["bert", "dinov2"], 4);
    let text = std::fs::read_to_string(&piped).unwrap();
    std::fs::write(
        &piped,
        text.replace(
            "floor_permutations = 2",
            "floor_permutations = 0\nceiling_seed = 7\nceiling_seeds = [9]",
        ),
    )
    .unwrap();
    let printed = run(&piped, &[]);
    // No floor here (no permutations), so no normalised score either.
    assert!(
        printed.contains("wMPPC") && printed.contains("\nceiling"),
        "{printed}"
    );
    assert!(
        !printed.contains("\nfloor") && !printed.contains("normalised"),
        "{printed}"
    );

    // The same SAEs by the file-based commands: activations, SAEs of seeds 0, 7 and 9, codes.
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let ok = |args: &[&str]| {
        let output = common::saeshare(args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            common::stderr(&output)
        );
    };
    for encoder in ["bert", "dinov2"] {
        let package = common::tiny_packages().join(encoder);
        #[rustfmt::skip]
        ok(&["encode", "--encoder", package.to_str().unwrap(), "--dataset", dataset.to_str().unwrap(),
             "--layers", "2", "--batch-size", "32", "--out", &path(&format!("{encoder}.parquet"))]);
    }
    for (encoder, seed) in [("bert", "0"), ("bert", "7"), ("bert", "9"), ("dinov2", "0")] {
        let sae = path(&format!("sae-{encoder}-{seed}"));
        let acts = path(&format!("{encoder}.parquet"));
        #[rustfmt::skip]
        ok(&["sae", "train", "--activations", &acts, "--layer", "2", "--out", &sae, "--k", "4",
             "--expansion", "2", "--steps", "40", "--batch-size", "64", "--lr", "1e-3",
             "--warmup-steps", "5", "--aux-k", "8", "--buffer-rows", "256", "--seed", seed]);
        #[rustfmt::skip]
        ok(&["sae", "encode", "--sae", &sae, "--activations", &acts, "--layer", "2",
             "--out", &path(&format!("codes-{encoder}-{seed}.parquet"))]);
    }
    #[rustfmt::skip]
    ok(&["compare", "--source", &path("codes-bert-0.parquet"), "--target", &path("codes-dinov2-0.parquet"),
         "--ceiling", &path("codes-bert-7.parquet"), "--baselines", "0", "--bootstrap", "100",
         "--out", &path("cmp")]);

    // The second ceiling seed, by itself.
    #[rustfmt::skip]
    ok(&["compare", "--source", &path("codes-bert-0.parquet"), "--target", &path("codes-dinov2-0.parquet"),
         "--ceiling", &path("codes-bert-9.parquet"), "--baselines", "0", "--out", &path("cmp9")]);
    let theirs = read_wmppc(&dir.path().join("cmp/wmppc.parquet")).unwrap();
    let theirs9 = read_wmppc(&dir.path().join("cmp9/wmppc.parquet")).unwrap();
    let ours = read_wmppc(&dir.path().join("piped/wmppc.parquet")).unwrap();
    // `compare` names the models as their packages do (tiny-bert): one pair, one layer pair.
    let layer_row = |rows: Vec<saeshare::metrics::WmppcRow>, source: &str| {
        rows.into_iter()
            .find(|r| {
                r.aggregation == saeshare::metrics::Aggregation::Layer
                    && r.source.ends_with(source)
                    && r.target.ends_with("dinov2")
            })
            .unwrap()
    };
    let (ours, theirs) = (layer_row(ours, "bert"), layer_row(theirs, "bert"));
    let theirs9 = layer_row(theirs9, "bert");
    // The study's ceiling is the mean over its two seeds, with their spread.
    let (a, b7, b9) = (
        ours.baseline_ceiling.unwrap(),
        theirs.baseline_ceiling.unwrap(),
        theirs9.baseline_ceiling.unwrap(),
    );
    let b = (b7 + b9) / 2.0;
    assert!(
        (a - b).abs() <= 1e-6,
        "ceiling {a} vs the mean of compare --ceiling's {b7} and {b9}"
    );
    let sd = ours.baseline_ceiling_std.unwrap();
    assert!((sd - (b7 - b9).abs() / 2f64.sqrt()).abs() <= 1e-6, "{sd}");
    assert!((ours.wmppc.unwrap() - theirs.wmppc.unwrap()).abs() <= 1e-6);
    // The bootstrap (the study's default 100 replicates, seed 0): the same interval both ways,
    // about the value.
    let interval = |r: &saeshare::metrics::WmppcRow| (r.ci_low.unwrap(), r.ci_high.unwrap());
    let ((low, high), (their_low, their_high)) = (interval(&ours), interval(&theirs));
    assert!((low - their_low).abs() <= 1e-6 && (high - their_high).abs() <= 1e-6);
    assert!(
        low < ours.wmppc.unwrap() && ours.wmppc.unwrap() < high,
        "{ours:?}"
    );
    assert!(
        ours.bootstrap_bias.is_some() && ours.floor_p.is_none(),
        "no floor, no test"
    );
    assert!(
        b > ours.wmppc.unwrap(),
        "the ceiling {b} is above the value"
    );

    // One-to-one matches: the study's, per pair and for the study, are `compare`'s on the same
    // codes, and the ceiling pair's say how many features the second seed shares.
    let matches = |path: &str| saeshare::metrics::read_matches(&dir.path().join(path)).unwrap();
    let (theirs, study) = (
        matches("cmp/matches.parquet"),
        matches("piped/matches.parquet"),
    );
    let ours: Vec<_> = (study.iter())
        .filter(|m| m.source == "bert" && m.target == "dinov2")
        .collect();
    assert!(!theirs.is_empty());
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(&theirs) {
        assert_eq!(
            (o.source_feature, o.target_feature),
            (t.source_feature, t.target_feature)
        );
        assert!(
            (o.rho - t.rho).abs() <= 1e-9 && o.rho > 0.0 && o.rho <= 1.0,
            "{o:?} vs {t:?}"
        );
        // Both kept the codes (the bootstrap): the same co-firing rate.
        let (oj, tj) = (o.jaccard.unwrap(), t.jaccard.unwrap());
        assert!(
            (oj - tj).abs() <= 1e-12 && (0.0..=1.0).contains(&oj),
            "{o:?} vs {t:?}"
        );
    }
    assert_eq!(
        matches("piped/pairs/bert__dinov2/matches.parquet").len(),
        ours.len()
    );
    // Each layer against the same layer of its second SAEs, one to one.
    let seeds: Vec<_> = (study.iter())
        .filter(|m| m.target == "bert.ceiling")
        .collect();
    let mut partners: Vec<_> = (seeds.iter())
        .map(|m| (&m.source_layer, &m.target_layer, m.target_feature))
        .collect();
    partners.sort_unstable();
    partners.dedup();
    assert!(seeds.iter().all(|m| m.source_layer == m.target_layer));
    assert!(
        study.iter().any(|m| m.target == "bert.ceiling3"),
        "the third SAE set's matches"
    );
    assert!(
        !seeds.is_empty() && partners.len() == seeds.len(),
        "one to one: {} rows, {} distinct",
        seeds.len(),
        partners.len()
    );

    // The decoder geometry: the ceiling pair's layer matched by decoder cosine as the library
    // matches the file-based SAEs' decoders, and each pair's count of the pairs SVCCA reads.
    let geometry =
        saeshare::metrics::read_decoders(&dir.path().join("piped/decoders.parquet")).unwrap();
    let decoder = |name: &str| {
        let (sae, _) = saeshare::sae::Sae::load(Path::new(&path(name)), tch::Device::Cpu).unwrap();
        sae.w_dec.detach()
    };
    let by_cosine =
        saeshare::metrics::cosine_matches(&decoder("sae-bert-0"), &decoder("sae-bert-7"));
    let at =
        saeshare::metrics::SHARED_AT.map(|t| by_cosine.iter().filter(|m| m.2 >= t).count() as u32);
    let seeds_row = (geometry.iter())
        .find(|g| g.source == "bert" && g.target == "bert.ceiling")
        .unwrap();
    assert_eq!(
        seeds_row.geometry.cosine,
        Some((by_cosine.len() as u32, at))
    );
    assert!(!by_cosine.is_empty());
    let pair_row = (geometry.iter())
        .find(|g| g.source == "bert" && g.target == "dinov2")
        .unwrap();
    assert_eq!(pair_row.geometry.cosine, None, "two models share no space");
    let paired = ours
        .iter()
        .filter(|m| m.rho >= saeshare::metrics::PAIRED_AT)
        .count();
    assert_eq!(pair_row.geometry.paired as usize, paired);
    assert_eq!(
        pair_row.geometry.svcca.is_some(),
        paired >= saeshare::metrics::MIN_PAIRS
    );

    // The report draws the ceiling under its value; it reads `compare`'s folder too.
    let index = std::fs::read_to_string(dir.path().join("piped/report/index.html")).unwrap();
    assert!(index.contains(&format!("ceiling {a:.3}")), "{index}");
    // And the matches: the pair's count, and the second seed's row.
    let table = index.split(r#"id="one-to-one-matches""#).nth(1).unwrap();
    let table = table.split("</table>").next().unwrap();
    assert!(
        table.contains("second seed") && table.contains("seed 3"),
        "{table}"
    );
    assert!(
        table.contains("cos ≥ 0.5") && table.contains("decoder SVCCA"),
        "{table}"
    );
    assert!(table.contains(&format!(">{} (", ours.len())), "{table}");
    let output = common::saeshare(&["report", &path("cmp")]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    let index = std::fs::read_to_string(dir.path().join("cmp/report/index.html")).unwrap();
    let matrix = index.split("</svg>").next().unwrap();
    assert_eq!(
        matrix.matches(r#"class="cell""#).count(),
        1,
        "one pair compared"
    );
    assert!(
        index.contains(&format!("ceiling {b7:.3}")),
        "compare's own ceiling"
    );
}
