//! `saeshare report`: the report of a study run, opened in headless Chromium as a person would
//! open it from disk: no console error, one heatmap cell per encoder pair with the values of
//! the tables, images that load, sortable tables; screenshots of each page are saved in
//! `target/tmp/report-screenshots/`. A folder without tables gets an error naming the table and
//! the command that makes it; a half-finished run gives a partial report of what exists.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use saeshare::metrics::tables::read_wmppc;
use saeshare::metrics::Aggregation;
use saeshare::similarity::{read_similarity, Measure};

use crate::browser::{find_chromium, Browser};

use crate::common;
use crate::pipeline;

const ENCODERS: [&str; 4] = ["bert", "clip-text", "dinov2", "vit"];

/// One finished study of the four tiny encoders (its report written by `saeshare run`), shared
/// by the tests of this module.
fn finished_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = common::shared_fixture("report-run");
        let dataset = common::emoji_subset(&dir, &[16, 17, 56, 57]);
        let study = pipeline::study(&dir, &dataset, "shown", &ENCODERS, 4);
        let stdout = pipeline::run(&study, &[]);
        let output = dir.join("shown");
        let index = output.join("report").join("index.html");
        assert!(
            stdout.contains(&format!("report: {}", index.display())),
            "{stdout}"
        );
        assert!(
            stdout.contains("wMPPC") && stdout.contains("\nfloor"),
            "the matrix as text: {stdout}"
        );
        output
    })
}

fn chromium() -> Browser {
    let path = find_chromium().expect(
        "no Chromium on PATH (set $CHROMIUM): scripts/test.sh installs Debian's chromium package",
    );
    Browser::launch(&path)
}

fn url(path: &Path) -> String {
    format!("file://{}", path.canonicalize().unwrap().display())
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report-screenshots")
}

#[test]
fn the_report_opens_in_chromium_with_the_matrix_rankings_and_feature_pages() {
    let run = finished_run();
    let report = run.join("report");
    let mut browser = chromium();

    // The index: the matrix as a heatmap with one cell per ordered pair, and as a table.
    let load = browser.open(&url(&report.join("index.html")));
    assert!(load.errors.is_empty(), "index.html: {:?}", load.errors);
    let n = ENCODERS.len() as u64;
    let cells = browser.eval("document.querySelectorAll('#wmppc-matrix rect.cell').length");
    assert_eq!(
        cells.as_u64(),
        Some(n * (n - 1)),
        "one cell per encoder pair"
    );
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#wmppc-table tbody tr').length")
            .as_u64(),
        Some(n * (n - 1))
    );
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#wmppc-matrix-legend, .legend').length > 0")
            .as_bool(),
        Some(true),
        "the colour scale has a legend"
    );
    // The table's values are the study's (last layers), and a click on a header sorts by it.
    let rows = read_wmppc(&run.join("wmppc.parquet")).unwrap();
    let shown = browser.eval(
        "Array.from(document.querySelectorAll('#wmppc-table tbody tr')).map(r => [r.cells[0].textContent, r.cells[1].textContent, r.cells[2].textContent, r.cells[3].textContent, parseFloat(r.cells[4].textContent)])",
    );
    for row in shown.as_array().unwrap() {
        let text = |i: usize| row[i].as_str().unwrap();
        let expected = rows
            .iter()
            .find(|r| {
                r.aggregation == Aggregation::Layer
                    && (r.source.as_str(), r.target.as_str()) == (text(0), text(1))
                    && (r.source_layer.as_str(), r.target_layer.as_str()) == (text(2), text(3))
            })
            .unwrap_or_else(|| panic!("{row} is not in wmppc.parquet"));
        let value = row[4].as_f64().unwrap();
        assert!((value - expected.wmppc.unwrap()).abs() < 1e-4, "{row}");
    }
    let sorted = browser.eval(
        "document.querySelectorAll('#wmppc-table th')[4].click(); Array.from(document.querySelectorAll('#wmppc-table tbody tr')).map(r => parseFloat(r.cells[4].textContent))",
    );
    let sorted: Vec<f64> = sorted
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(sorted.windows(2).all(|w| w[0] <= w[1]), "{sorted:?}");
    // dinov2 x bert on all layers: a layer x layer heatmap.
    let layer_cells =
        browser.eval("document.querySelectorAll('#layers-dinov2__bert rect.cell').length");
    assert!(layer_cells.as_u64().unwrap() >= 4, "{layer_cells}");
    // The query's features in five bins of specificity among H, with their count, the mean
    // over all of them and the floor.
    let bins = browser.eval(
        "Array.from(document.querySelectorAll('#specificity-bins tbody tr')).map(r => r.cells[1].textContent)",
    );
    let bins: Vec<&str> = (bins.as_array().unwrap().iter())
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(bins.len(), 7, "five bins, the mean, the floor: {bins:?}");
    let counted: usize = (bins[..5].iter())
        .map(|c| {
            c.rsplit('(')
                .next()
                .unwrap()
                .trim_end_matches(')')
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert!(counted > 0, "{bins:?}");
    browser.screenshot(&screenshots().join("index.png"));

    // The sharedness ranking, with Delta's distribution and links to feature pages.
    let load = browser.open(&url(&report.join("sharedness/dinov2-with-bert.html")));
    assert!(load.errors.is_empty(), "sharedness: {:?}", load.errors);
    let ranked = browser.eval("document.querySelectorAll('#ranking tbody tr').length");
    assert!(ranked.as_u64().unwrap() >= 1, "{ranked}");
    let histogram =
        browser.eval("document.querySelectorAll('#delta-distribution rect.bar').length");
    assert!(histogram.as_u64().unwrap() >= 1, "{histogram}");
    let bins = browser.eval("document.querySelectorAll('#specificity-bins tbody tr').length");
    assert_eq!(bins.as_u64(), Some(7), "the query's specificity bins");
    let feature = browser.eval("document.querySelector('#ranking tbody a').href");
    browser.screenshot(&screenshots().join("sharedness.png"));

    // The top feature's page: thumbnails that load, captions, histogram, matches.
    let load = browser.open(feature.as_str().unwrap());
    assert!(load.errors.is_empty(), "{feature}: {:?}", load.errors);
    let images =
        browser.eval("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)");
    let images = images.as_array().unwrap();
    assert!(!images.is_empty(), "the feature page shows images");
    assert!(
        images.iter().all(|loaded| loaded.as_bool() == Some(true)),
        "every image loads: {images:?}"
    );
    let captions = browser.eval("document.querySelectorAll('#top-captions li').length");
    assert!(captions.as_u64().unwrap() >= 1);
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#histogram svg').length")
            .as_u64(),
        Some(1)
    );
    // dinov2 was compared with the three other encoders.
    let matches = browser.eval("document.querySelectorAll('#matches .match').length");
    assert_eq!(matches.as_u64(), Some(n - 1));
    browser.screenshot(&screenshots().join("feature.png"));

    // Training curves: FVU, L0 and dead fraction for each encoder.
    let load = browser.open(&url(&report.join("training.html")));
    assert!(load.errors.is_empty(), "training: {:?}", load.errors);
    let charts = browser.eval("document.querySelectorAll('svg.lines').length");
    assert_eq!(charts.as_u64(), Some(3 * n));
    browser.screenshot(&screenshots().join("training.png"));

    // Self-contained: nothing is fetched from the network.
    for page in walk(&report) {
        if page.extension().is_some_and(|e| e == "html") {
            let text = std::fs::read_to_string(&page).unwrap();
            // Only the SVG namespace may name a URL.
            let namespaces = text
                .matches(r#"xmlns="http://www.w3.org/2000/svg""#)
                .count();
            assert_eq!(
                text.matches("http://").count(),
                namespaces,
                "{}",
                page.display()
            );
            assert!(!text.contains("https://"), "{}", page.display());
        }
    }
    // Thumbnails are small files next to the pages, not the dataset's images.
    let thumbs: Vec<PathBuf> = walk(&report.join("thumbs"));
    assert!(!thumbs.is_empty());
    for thumb in thumbs {
        let image = image::open(&thumb).unwrap();
        assert!(
            image.width() <= 128 && image.height() <= 128,
            "{}",
            thumb.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_folder_without_tables_names_the_missing_table_and_the_command_that_makes_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = common::saeshare(&["report", dir.path().to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = common::stderr(&output);
    assert!(stderr.contains("wmppc.parquet"), "{stderr}");
    assert!(stderr.contains("saeshare run STUDY.toml"), "{stderr}");

    let missing = dir.path().join("nowhere");
    let output = common::saeshare(&["report", missing.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(common::stderr(&output).contains("no such folder"));
}

#[test]
fn a_half_finished_run_gives_a_partial_report_of_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let half = dir.path().join("half");
    copy_dir(finished_run(), &half);
    // As if the run had stopped after some pairs, before its outputs stage.
    for file in ["wmppc.parquet", "mppc.parquet", "similarity.parquet"] {
        std::fs::remove_file(half.join(file)).unwrap();
    }
    std::fs::remove_dir_all(half.join("sharedness")).unwrap();
    std::fs::remove_dir_all(half.join("pairs").join("vit__bert")).unwrap();
    std::fs::remove_dir_all(half.join("report")).unwrap();

    let output = common::saeshare(&["report", half.to_str().unwrap()]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    let stdout = common::stdout(&output);
    assert!(stdout.contains("partial report"), "{stdout}");
    assert!(stdout.contains("wmppc.parquet is missing"), "{stdout}");
    assert!(
        stdout.contains("pair vit__bert has no wMPPC yet"),
        "{stdout}"
    );
    assert!(
        stdout.contains("dinov2-with-bert.parquet is missing"),
        "{stdout}"
    );

    let index = std::fs::read_to_string(half.join("report/index.html")).unwrap();
    assert!(index.contains(r#"id="partial""#));
    let n = ENCODERS.len();
    assert_eq!(
        cells_of(&index, r#"<svg id="wmppc-matrix""#),
        n * (n - 1) - 1,
        "every finished pair is drawn"
    );
    // The representation measures of the finished pairs, from their own tables: bert__vit
    // holds vit__bert's too (a pair and its mirror are one computation).
    assert_eq!(
        cells_of(&index, r#"<svg id="similarity-matrix-linear_cka""#),
        n * (n - 1)
    );
    assert!(index.contains("pending"));
    // The ranking is computed from the pairs' mppc rows, and its feature pages exist.
    assert!(half
        .join("report/sharedness/dinov2-with-bert.html")
        .is_file());
    assert!(half.join("report/features/dinov2").is_dir());
}

/// Valued cells of the layer x layer heatmaps of an index page.
/// The valued cells of the heatmaps whose `<svg` tag starts with `start`.
fn cells_of(index: &str, start: &str) -> usize {
    index
        .split(start)
        .skip(1)
        .map(|svg| {
            svg.split("</svg>")
                .next()
                .unwrap()
                .matches(r#"class="cell""#)
                .count()
        })
        .sum()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn the_report_never_replaces_a_folder_that_is_not_a_report() {
    let run = finished_run();
    let report = |out: &Path| {
        common::saeshare(&[
            "report",
            run.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    // The run folder itself, or a folder holding it.
    for out in [run, run.parent().unwrap()] {
        let output = report(out);
        assert!(!output.status.success());
        assert!(
            common::stderr(&output).contains("would replace the run folder"),
            "{}",
            common::stderr(&output)
        );
    }
    assert!(run.join("wmppc.parquet").is_file() && run.join("codes").is_dir());
    // A folder of other files.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let output = report(dir.path());
    assert!(!output.status.success());
    assert!(common::stderr(&output).contains("is not a saeshare report"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
        "mine"
    );
    // An earlier report is replaced whole.
    let out = dir.path().join("report");
    assert!(report(&out).status.success());
    std::fs::write(out.join("stale.html"), "old").unwrap();
    assert!(report(&out).status.success());
    assert!(out.join("index.html").is_file() && !out.join("stale.html").exists());
}

#[test]
fn the_report_shows_the_representation_measures_beside_wmppc() {
    let run = finished_run();
    let rows = read_similarity(&run.join("similarity.parquet")).unwrap();
    let mut browser = chromium();
    let load = browser.open(&url(&run.join("report").join("index.html")));
    assert!(load.errors.is_empty(), "index.html: {:?}", load.errors);

    // A selector of every measure beside wMPPC; wMPPC's matrix shows first.
    let options = browser
        .eval("Array.from(document.querySelectorAll('#measure-select option')).map(o => o.value)");
    let mut expected = vec!["wmppc".to_string()];
    expected.extend(Measure::ALL.iter().map(|m| m.name().to_string()));
    let options: Vec<String> = (options.as_array().unwrap().iter())
        .map(|o| o.as_str().unwrap().to_string())
        .collect();
    assert_eq!(options, expected);
    let display = |measure: &str| {
        format!("getComputedStyle(document.querySelector('.measure-view[data-measure=\"{measure}\"]')).display")
    };
    assert_eq!(browser.eval(&display("linear_cka")).as_str(), Some("none"));

    // Choosing linear CKA shows its matrix in wMPPC's place, one cell per ordered pair, each
    // cell's value the table's.
    browser.eval("var s = document.getElementById('measure-select'); s.value = 'linear_cka'; s.dispatchEvent(new Event('change')); 0");
    assert_eq!(browser.eval(&display("wmppc")).as_str(), Some("none"));
    assert_ne!(browser.eval(&display("linear_cka")).as_str(), Some("none"));
    let n = ENCODERS.len() as u64;
    let shown = browser.eval(
        "Array.from(document.querySelectorAll('#similarity-matrix-linear_cka g')).filter(g => g.querySelector('rect.cell')).map(g => [g.querySelector('title').textContent, parseFloat(g.querySelector('text').textContent)])",
    );
    let shown = shown.as_array().unwrap();
    assert_eq!(shown.len() as u64, n * (n - 1), "one cell per ordered pair");
    for cell in shown {
        let title = cell[0].as_str().unwrap();
        let row = rows
            .iter()
            .find(|r| {
                r.measure == Measure::LinearCka
                    && title.starts_with(&format!(
                        "{} {} → {} {}:",
                        r.source, r.source_layer, r.target, r.target_layer
                    ))
            })
            .unwrap_or_else(|| panic!("{title}: not in similarity.parquet"));
        let value = cell[1].as_f64().unwrap();
        assert!(
            (value - row.value.unwrap()).abs() < 1e-3,
            "{title}: {value}"
        );
    }

    // The classic layer x layer CKA beside the all-layers pair's wMPPC heatmap.
    let cka_cells =
        browser.eval("document.querySelectorAll('svg[id^=\"cka-layers-\"] rect.cell').length");
    let all_layers = rows
        .iter()
        .filter(|r| r.measure == Measure::LinearCka && r.source == "dinov2" && r.target == "bert")
        .count();
    assert!(all_layers > 1, "dinov2 x bert is compared on all layers");
    assert_eq!(cka_cells.as_u64(), Some(all_layers as u64));

    // wMPPC against CKA and mutual kNN, with a sentence on how far they agree.
    let scatters = browser.eval(
        "Array.from(document.querySelectorAll('#similarity-views svg')).map(s => s.querySelectorAll('circle.point').length)",
    );
    let scatters: Vec<u64> = (scatters.as_array().unwrap().iter())
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(scatters.len(), 2, "{scatters:?}");
    assert!(scatters.iter().all(|&p| p >= n * (n - 1)), "{scatters:?}");
    let text = browser.eval("document.body.textContent");
    assert!(
        text.as_str()
            .unwrap()
            .contains("wMPPC and linear_cka order the pairs with a Spearman correlation of"),
        "the agreement is said"
    );
}
