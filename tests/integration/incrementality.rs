//! A property of the run folder: whatever sequence of changes a study goes through (shards
//! added, rewritten under their name or removed; encoders added or removed; runs killed with
//! SIGKILL and started again), the folder ends with the tables of a fresh run of the final
//! study.
//!
//! Every encoder imports its SAE (fitted once, by a fixture run), so that a fresh run has the
//! same SAEs as the incremental one whatever shards it sees: the property is about the codes,
//! the pair sums and the tables that the run folder keeps across runs. (SAEs refitted when
//! their shards change are tested in changed_data.rs.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use saeshare::metrics::summarize_matches;
use saeshare::metrics::tables::{read_mppc, read_wmppc};
use saeshare::similarity::read_similarity;

use crate::common;

/// The encoders a study may hold: name, tiny package, the layer its SAE is imported for.
const ENCODERS: [(&str, &str); 3] = [("bert", "bert"), ("dinov2", "dinov2"), ("vit", "vit")];
/// Emoji shards (by index) the sequences add, and those that replace a shard's content.
const ADDED: [usize; 4] = [11, 12, 13, 14];
const REPLACEMENTS: [usize; 2] = [41, 42];

/// The SAE of each encoder's last layer, fitted once on one shard: `(name, layer, folder)`.
fn imported_saes() -> &'static [(String, String, PathBuf)] {
    static SAES: OnceLock<Vec<(String, String, PathBuf)>> = OnceLock::new();
    SAES.get_or_init(|| {
        let dir = common::shared_fixture("incrementality-saes");
        let dataset = common::emoji_subset(&dir, &[10]);
        let names: Vec<&str> = ENCODERS.iter().map(|e| e.0).collect();
        let file = write_study(&dir, &dataset, "fit", &names, None);
        let output = run(&file);
        assert!(output.status.success(), "{}", common::stderr(&output));
        // Copied out of the run folder: a study refuses imports inside its own output.
        let mut saes = Vec::new();
        for (name, _) in ENCODERS {
            let fitted = dir.join("fit/saes").join(name);
            let layer = std::fs::read_dir(&fitted)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .find(|l| fitted.join(l).join("sae.json").is_file())
                .unwrap();
            let kept = dir.join("imported").join(name);
            std::fs::create_dir_all(&kept).unwrap();
            for file in ["sae.json", "sae.safetensors"] {
                std::fs::copy(fitted.join(&layer).join(file), kept.join(file)).unwrap();
            }
            saes.push((name.to_string(), layer, kept));
        }
        saes
    })
}

/// A study of `encoders`' last layers over `dataset` into `output`: every pair, one floor
/// permutation; with `imports`, each encoder's SAE imported.
fn write_study(
    dir: &Path,
    dataset: &Path,
    output: &str,
    encoders: &[&str],
    imports: Option<&[(String, String, PathBuf)]>,
) -> PathBuf {
    let mut text = format!(
        "name = \"incremental\"\noutput = \"{output}\"\ndataset = {{ path = \"{}\" }}\n\n\
         [sae]\nk = 4\nexpansion = 2\nsteps = 20\nbatch_size = 32\n\n\
         [baselines]\nfloor_permutations = 1\n\n\
         [[comparisons]]\nsources = [\"*\"]\ntargets = [\"*\"]\n",
        dataset.display()
    );
    for (name, package) in ENCODERS.iter().filter(|(n, _)| encoders.contains(n)) {
        text += &format!(
            "\n[encoders.{name}]\npackage = \"{}\"\nlayers = \"last\"\nbatch_size = 32\n",
            common::tiny_packages().join(package).display()
        );
        if let Some(imports) = imports {
            let (_, layer, path) = imports.iter().find(|(n, _, _)| n == name).unwrap();
            text += &format!("saes = {{ \"{layer}\" = \"{}\" }}\n", path.display());
        }
    }
    let path = dir.join(format!("{output}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn command(study: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_saeshare"));
    command
        .args(["--quiet", "run", study.to_str().unwrap(), "--no-report"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn run(study: &Path) -> std::process::Output {
    command(study).output().unwrap()
}

/// One change to the study between two runs.
#[derive(Clone, Debug)]
enum Change {
    AddShard,
    /// The dataset's shard at this position (mod its count) gets another shard's rows.
    ReplaceShard(usize),
    RemoveShard(usize),
    /// The encoder at this position of the pool joins (or leaves, if it is in).
    ToggleEncoder(usize),
    /// The next run is killed this many milliseconds after it starts, and run again later.
    Kill(u64),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        Just(Change::AddShard),
        (0..4usize).prop_map(Change::ReplaceShard),
        (0..4usize).prop_map(Change::RemoveShard),
        (0..3usize).prop_map(Change::ToggleEncoder),
        (300..4000u64).prop_map(Change::Kill),
    ]
}

/// The study as the changes leave it.
struct Study {
    dir: PathBuf,
    dataset: PathBuf,
    encoders: Vec<&'static str>,
    next_added: usize,
    next_replacement: usize,
}

impl Study {
    fn shards(&self) -> Vec<PathBuf> {
        let mut shards: Vec<PathBuf> = std::fs::read_dir(&self.dataset)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        shards.sort();
        shards
    }

    fn file(&self, output: &str) -> PathBuf {
        write_study(
            &self.dir,
            &self.dataset,
            output,
            &self.encoders,
            Some(imported_saes()),
        )
    }

    /// Applies `change`; returns the milliseconds after which to kill the next run, for a kill.
    fn apply(&mut self, change: &Change) -> Option<u64> {
        match *change {
            Change::AddShard if self.next_added < ADDED.len() => {
                let s = ADDED[self.next_added];
                self.next_added += 1;
                let name = format!("shard-{s:06}.parquet");
                std::fs::copy(common::emoji_shards().join(&name), self.dataset.join(&name))
                    .unwrap();
            }
            Change::ReplaceShard(at) if self.next_replacement < REPLACEMENTS.len() => {
                let shards = self.shards();
                let target = &shards[at % shards.len()];
                let s = REPLACEMENTS[self.next_replacement];
                self.next_replacement += 1;
                let from = common::emoji_shards().join(format!("shard-{s:06}.parquet"));
                std::fs::copy(from, target).unwrap();
            }
            Change::RemoveShard(at) => {
                let shards = self.shards();
                if shards.len() > 1 {
                    std::fs::remove_file(&shards[at % shards.len()]).unwrap();
                }
            }
            Change::ToggleEncoder(at) => {
                let name = ENCODERS[at].0;
                if let Some(i) = self.encoders.iter().position(|&e| e == name) {
                    if self.encoders.len() > 2 {
                        self.encoders.remove(i);
                    }
                } else {
                    self.encoders.push(name);
                }
            }
            Change::Kill(ms) => return Some(ms),
            _ => {}
        }
        None
    }
}

/// Asserts that two run folders hold the same wMPPC, MPPC and similarity rows, values within
/// 1e-9, and the same one-to-one matchings (each layer pair's count and total: two matchings
/// of equal total are both optimal, so sums that differ in the last bit may pick either).
fn assert_same_tables(a: &Path, b: &Path, history: &[Change]) {
    let summary = |dir: &Path| summarize_matches(&dir.join("matches.parquet")).unwrap();
    let (ma, mb) = (summary(a), summary(b));
    assert_eq!(ma.len(), mb.len(), "{history:?}");
    assert!(!ma.is_empty());
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(
            (
                &x.source,
                &x.target,
                &x.source_layer,
                &x.target_layer,
                x.matched
            ),
            (
                &y.source,
                &y.target,
                &y.source_layer,
                &y.target_layer,
                y.matched
            ),
            "{history:?}"
        );
        let total = |m: &saeshare::metrics::MatchSummary| m.mean_rho * m.matched as f64;
        assert!(
            (total(x) - total(y)).abs() <= 1e-9,
            "{history:?}: {x:?} vs {y:?}"
        );
    }
    let (sa, sb) = (
        read_similarity(&a.join("similarity.parquet")).unwrap(),
        read_similarity(&b.join("similarity.parquet")).unwrap(),
    );
    assert_eq!(sa.len(), sb.len(), "{history:?}");
    for (x, y) in sa.iter().zip(&sb) {
        assert_eq!(
            (&x.source, &x.target, x.measure, x.samples),
            (&y.source, &y.target, y.measure, y.samples),
            "{history:?}"
        );
        // The CCA family whitens each side down to directions of 1e-10 of its largest variance,
        // and a floor's correlations (samples permuted) cluster near 0, where PWCCA's canonical
        // directions are ill-conditioned: the order in which float64 sums were added moves them
        // in the 9th digit (seen: mean CCA 1.9e-9 on 0.38, a PWCCA floor 1.5e-9 on 0.255). A
        // wrong sum or a sample summed twice moves them by far more.
        use saeshare::similarity::Measure;
        let tol = match x.measure {
            Measure::CcaMean | Measure::Svcca | Measure::Pwcca => 1e-7,
            _ => 1e-9,
        };
        let close = |p: Option<f64>, q: Option<f64>| match (p, q) {
            (Some(p), Some(q)) => (p - q).abs() <= tol * p.abs().max(1.0),
            (p, q) => p == q,
        };
        assert!(
            close(x.value, y.value) && close(x.floor, y.floor),
            "{history:?}: {x:?} vs {y:?}"
        );
    }
    let (wa, wb) = (
        read_wmppc(&a.join("wmppc.parquet")).unwrap(),
        read_wmppc(&b.join("wmppc.parquet")).unwrap(),
    );
    assert_eq!(wa.len(), wb.len(), "{history:?}");
    for (x, y) in wa.iter().zip(&wb) {
        assert_eq!(
            (&x.source, &x.target, &x.source_layer, x.samples),
            (&y.source, &y.target, &y.source_layer, y.samples),
            "{history:?}"
        );
        let close = |p: Option<f64>, q: Option<f64>| match (p, q) {
            (Some(p), Some(q)) => (p - q).abs() <= 1e-9,
            (p, q) => p == q,
        };
        assert!(
            close(x.wmppc, y.wmppc) && close(x.baseline_floor, y.baseline_floor),
            "{history:?}: {x:?} vs {y:?}"
        );
        // The bootstrap reads every aligned code again: the same interval.
        assert!(
            close(x.ci_low, y.ci_low) && close(x.ci_high, y.ci_high),
            "{history:?}: {x:?} vs {y:?}"
        );
    }
    let (ma, mb) = (
        read_mppc(&a.join("mppc.parquet")).unwrap(),
        read_mppc(&b.join("mppc.parquet")).unwrap(),
    );
    assert_eq!(ma.len(), mb.len(), "{history:?}");
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(
            (&x.source, x.feature, &x.target),
            (&y.source, y.feature, &y.target)
        );
        assert!(
            (x.rho - y.rho).abs() <= 1e-9 && (x.weight - y.weight).abs() <= 1e-9,
            "{history:?}: {x:?} vs {y:?}"
        );
    }
}

/// The temporary files and folders of whole-file writes under `dir`.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && (name.ends_with(".tmp") || name.contains(".partial-")) {
            found.push(entry.path());
        } else if entry.file_type().unwrap().is_dir() {
            found.extend(temporaries(&entry.path()));
        }
    }
    found
}

proptest! {
    // Each case is several runs of the binary: few cases, no shrinking (a failure prints its
    // sequence of changes).
    #![proptest_config(ProptestConfig {
        cases: 3,
        max_shrink_iters: 0,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_sequence_of_changes_ends_as_a_fresh_run_of_the_final_study(
        changes in proptest::collection::vec(change(), 3..6)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let dataset = common::emoji_subset(dir.path(), &[20, 60]);
        let mut study = Study {
            dir: dir.path().to_path_buf(),
            dataset,
            encoders: vec!["bert", "dinov2"],
            next_added: 0,
            next_replacement: 0,
        };
        let first = run(&study.file("out"));
        prop_assert!(first.status.success(), "{}", common::stderr(&first));
        for change in &changes {
            let kill = study.apply(change);
            let file = study.file("out");
            match kill {
                Some(ms) => {
                    let mut child = command(&file).spawn().unwrap();
                    std::thread::sleep(Duration::from_millis(ms));
                    let _ = child.kill();
                    let _ = child.wait();
                }
                None => {
                    let output = run(&file);
                    prop_assert!(
                        output.status.success(),
                        "{changes:?}: {}",
                        common::stderr(&output)
                    );
                }
            }
        }
        // The last change may have been a kill: the folder is run once more, as a user would.
        let last = run(&study.file("out"));
        prop_assert!(last.status.success(), "{changes:?}: {}", common::stderr(&last));
        let fresh = run(&study.file("fresh"));
        prop_assert!(fresh.status.success(), "{}", common::stderr(&fresh));
        assert_same_tables(&dir.path().join("fresh"), &dir.path().join("out"), &changes);
        // Nothing a killed run was writing is left in the folder.
        let leftovers = temporaries(&dir.path().join("out"));
        prop_assert!(leftovers.is_empty(), "{changes:?}: {leftovers:?}");
    }
}
