//! The rows of the comparison tables (FORMATS.md, "Comparison tables"): what `compare` gives,
//! the pipeline's pairs write and the report reads.

/// Which average a `wmppc` row holds.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Aggregation {
    /// One source layer against one target layer.
    Layer,
    /// One source layer against the union of the features of all target layers.
    Union,
    /// All layers, the reference's way: the `Union` values of the source layers averaged with
    /// weights = number of features per layer.
    MeanOverLayers,
    /// All layers: one S-weighted average over all features of all source layers (MPPC over
    /// the union of target layers).
    AllFeatures,
}

impl Aggregation {
    /// The name written in the `aggregation` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Layer => "layer",
            Aggregation::Union => "union",
            Aggregation::MeanOverLayers => "mean_over_layers",
            Aggregation::AllFeatures => "all_features",
        }
    }

    /// The aggregation named `name` in the `aggregation` column.
    pub fn parse(name: &str) -> Option<Aggregation> {
        [
            Aggregation::Layer,
            Aggregation::Union,
            Aggregation::MeanOverLayers,
            Aggregation::AllFeatures,
        ]
        .into_iter()
        .find(|a| a.as_str() == name)
    }
}

/// The layer name standing for "all layers" in the `*_layer` columns.
pub const ALL_LAYERS: &str = "*";

/// One row of the `mppc` table: a source feature and its best match in a target layer
/// (`target_layer` = `*`: in the union of all target layers, `best_layer` saying which).
#[derive(Clone, Debug, PartialEq)]
pub struct MppcRow {
    /// Source model (encoder name).
    pub source: String,
    /// Source layer.
    pub source_layer: String,
    /// Source feature.
    pub feature: u32,
    /// Target model.
    pub target: String,
    /// Target layer, or `*` for the union of all target layers.
    pub target_layer: String,
    /// Best matching target feature; `None` for a dead or constant source feature.
    pub best_feature: Option<u32>,
    /// The layer of `best_feature`.
    pub best_layer: Option<String>,
    /// `MPPC_i`, signed.
    pub rho: f64,
    /// `S_i`.
    pub weight: f64,
}

/// One row of the `wmppc` table.
#[derive(Clone, Debug, PartialEq)]
pub struct WmppcRow {
    /// Source model.
    pub source: String,
    /// Target model.
    pub target: String,
    /// Source layer, or `*`.
    pub source_layer: String,
    /// Target layer, or `*`.
    pub target_layer: String,
    /// Which average.
    pub aggregation: Aggregation,
    /// The value; `None` when every source feature is dead or constant.
    pub wmppc: Option<f64>,
    /// Mean of the value over target permutations.
    pub baseline_floor: Option<f64>,
    /// Sample standard deviation of the value over permutations (needs two).
    pub baseline_floor_std: Option<f64>,
    /// The value against a second SAE of the source encoder and layer (the mean over several,
    /// one per ceiling seed).
    pub baseline_ceiling: Option<f64>,
    /// Sample standard deviation of the ceiling over its seeds (needs two).
    pub baseline_ceiling_std: Option<f64>,
    /// Aligned samples `N`.
    pub samples: u64,
    /// The value's 95% bootstrap interval over samples ([`super::bootstrap`]).
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// The bootstrap replicates' mean less the value: how much more chance correlation a
    /// replicate, with fewer distinct samples, finds.
    pub bootstrap_bias: Option<f64>,
    /// The bootstrap's test against the floor: the share of replicates at or below it.
    pub floor_p: Option<f64>,
}

/// One row of the `features` table: the moments of one feature over the compared samples.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureRow {
    /// The model (encoder name).
    pub encoder: String,
    /// The layer.
    pub layer: String,
    /// The feature.
    pub feature: u32,
    /// Samples on which it is active.
    pub count: u64,
    /// `sum_n f_i(n)`.
    pub sum: f64,
    /// `sum_n f_i(n)^2`.
    pub sum_sq: f64,
    /// Samples `N` the sums run over.
    pub samples: u64,
}
