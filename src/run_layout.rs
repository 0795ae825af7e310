//! Where everything lives in a run folder: the one place that spells its paths. The pipeline
//! writes through it and the report reads through it; FORMATS.md ("Study outputs") describes
//! the same layout for other tools.
//!
//! Names given to it (encoders, layers, queries, pair keys) have passed [`crate::names`], so
//! each is one plain path component.

use std::path::{Path, PathBuf};

/// The study record's file name in a run folder.
pub const STUDY_RECORD_FILE: &str = "study.json";

/// The layout of one run folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunLayout {
    root: PathBuf,
}

impl RunLayout {
    /// The layout of the run folder `root`.
    pub fn new(root: impl Into<PathBuf>) -> RunLayout {
        RunLayout { root: root.into() }
    }

    /// The run folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `saes/`: every fitted SAE.
    pub fn saes(&self) -> PathBuf {
        self.root.join("saes")
    }

    /// `saes/<encoder>/`: an encoder's SAEs, one folder per layer.
    pub fn encoder_saes(&self, encoder: &str) -> PathBuf {
        self.saes().join(encoder)
    }

    /// `saes/<encoder>/<layer>/`: one SAE checkpoint.
    pub fn sae_dir(&self, encoder: &str, layer: &str) -> PathBuf {
        self.encoder_saes(encoder).join(layer)
    }

    /// `codes/`: the codes store.
    pub fn codes(&self) -> PathBuf {
        self.root.join("codes")
    }

    /// `codes/<encoder>/<layer>/`: an encoder layer's codes, one file per dataset shard.
    pub fn codes_dir(&self, encoder: &str, layer: &str) -> PathBuf {
        self.codes().join(encoder).join(layer)
    }

    /// `codes/<encoder>/<layer>/<shard file>`.
    pub fn codes_file(&self, encoder: &str, layer: &str, shard_file: &str) -> PathBuf {
        self.codes_dir(encoder, layer).join(shard_file)
    }

    /// `activations/`: the optional activation cache, scratch that a later run may delete.
    pub fn activations(&self) -> PathBuf {
        self.root.join("activations")
    }

    /// `activations/<encoder>/<shard file>`.
    pub fn activations_file(&self, encoder: &str, shard_file: &str) -> PathBuf {
        self.activations().join(encoder).join(shard_file)
    }

    /// `readouts/`: each encoder's rows at the read-out position (one per sample and layer),
    /// one file per shard, as the "Activations" format: the record the representation
    /// measures are computed from, kept with the codes.
    pub fn readouts_file(&self, encoder: &str, shard_file: &str) -> PathBuf {
        self.root.join("readouts").join(encoder).join(shard_file)
    }

    /// `pairs/`: one folder per compared pair.
    pub fn pairs(&self) -> PathBuf {
        self.root.join("pairs")
    }

    /// `pairs/<key>/`: a pair's sums and tables.
    pub fn pair_dir(&self, key: &str) -> PathBuf {
        self.pairs().join(key)
    }

    /// `sharedness/`: one ranking per query.
    pub fn sharedness(&self) -> PathBuf {
        self.root.join("sharedness")
    }

    /// `sharedness/<query>.parquet`.
    pub fn sharedness_table(&self, query: &str) -> PathBuf {
        self.sharedness().join(format!("{query}.parquet"))
    }

    /// `wmppc.parquet`: the study's wMPPC table.
    pub fn wmppc(&self) -> PathBuf {
        self.root.join(crate::metrics::tables::WMPPC_FILE)
    }

    /// `mppc.parquet`: the study's MPPC table.
    pub fn mppc(&self) -> PathBuf {
        self.root.join(crate::metrics::tables::MPPC_FILE)
    }

    /// `matches.parquet`: the one-to-one feature matches of every compared layer pair.
    pub fn matches(&self) -> PathBuf {
        self.root.join(crate::metrics::MATCHES_FILE)
    }

    /// `decoders.parquet`: the decoder geometry of every compared layer pair.
    pub fn decoders(&self) -> PathBuf {
        self.root.join(crate::metrics::DECODERS_FILE)
    }

    /// `similarity.parquet`: the representation measures of every compared layer pair.
    pub fn similarity(&self) -> PathBuf {
        self.root.join(crate::similarity::SIMILARITY_FILE)
    }

    /// `outputs.json`: what the last study-wide outputs were made of (their queries, and the
    /// `mppc.parquet` they read), so that the next run updates them by difference.
    pub fn outputs_record(&self) -> PathBuf {
        self.root.join("outputs.json")
    }

    /// `shard-contents.json`: the SHA-256 of each shard of the dataset, with the size and
    /// modification time it was hashed at (a cache: a shard is hashed again when they change).
    pub fn shard_contents(&self) -> PathBuf {
        self.root.join("shard-contents.json")
    }

    /// `units/`: the records of finished work.
    pub fn units(&self) -> PathBuf {
        self.root.join("units")
    }

    /// `study.json`: the resolved study, written when a run starts.
    pub fn study_record(&self) -> PathBuf {
        self.root.join(STUDY_RECORD_FILE)
    }

    /// `last-run.json`: what the last run did.
    pub fn last_run(&self) -> PathBuf {
        self.root.join("last-run.json")
    }

    /// The folders that hold nothing but what saeshare writes. Anything else in a run folder
    /// (a dataset built into it, packages exported there) is not the run's to clear.
    pub fn own_folders(&self) -> Vec<PathBuf> {
        vec![
            self.saes(),
            self.codes(),
            self.activations(),
            self.pairs(),
            self.sharedness(),
            self.units(),
            self.report(),
        ]
    }

    /// The files a run writes at the top of its folder.
    pub fn own_files(&self) -> Vec<PathBuf> {
        vec![
            self.wmppc(),
            self.mppc(),
            self.outputs_record(),
            self.study_record(),
            self.last_run(),
            self.shard_contents(),
        ]
    }

    /// `report/`: the HTML report.
    pub fn report(&self) -> PathBuf {
        self.root.join("report")
    }
}
