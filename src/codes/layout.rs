//! The two ways a codes file lays out its rows, and how a writer picks one.
//!
//! - Sparse (version 1): one row per active latent, `sample_id, feature, value`. TopK codes are
//!   always sparse: `k` of `d_sae` latents.
//! - Dense (version 2): one row per sample, `sample_id, values` with `values` a fixed-size list
//!   of `d_sae` float32. The codes of an SAE read out without TopK (`read_out = "relu"` on a
//!   TopK SAE) have a large share of their latents active; one row per latent would spend a
//!   sample id and a feature index on each, about three times the bytes of the values alone.
//!
//! A writer of codes without `k` holds its first [`DECIDING_SAMPLES`] samples, then picks the
//! layout from their share of active latents ([`prefers_dense`]).

use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};

use super::keys;

/// Samples a writer of codes without `k` holds before it picks the layout.
pub(crate) const DECIDING_SAMPLES: usize = 256;

/// Bytes of values per row group of a dense file: bounds what the writer and a reader hold at
/// once (a 6,144-feature SAE: 682 samples a group).
const DENSE_GROUP_BYTES: usize = 16 << 20;

/// The float type of a dense file's values.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DenseValues {
    /// Exactly what the SAE gives.
    #[default]
    Float32,
    /// About half the bytes of float32 on disk, each value rounded to 11 significant bits (at
    /// most 4.9e-4 of it; below 6.1e-5, float16's subnormals, at most 3e-8, and values under
    /// 3e-8 become 0). Read back as float32.
    Float16,
}

impl DenseValues {
    fn data_type(self) -> DataType {
        match self {
            DenseValues::Float32 => DataType::Float32,
            DenseValues::Float16 => DataType::Float16,
        }
    }
}

/// How a codes file lays out its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodesLayout {
    /// One row per active latent (format version 1).
    Sparse,
    /// One row per sample holding all `d_sae` values (format version 2).
    Dense,
}

impl CodesLayout {
    /// The format version a file of this layout declares: readers of version 1 still read
    /// every sparse file.
    pub(crate) fn version(self) -> u32 {
        match self {
            CodesLayout::Sparse => 1,
            CodesLayout::Dense => 2,
        }
    }

    /// The value of [`keys::LAYOUT`], absent for sparse files.
    pub(crate) fn key(self) -> Option<&'static str> {
        match self {
            CodesLayout::Sparse => None,
            CodesLayout::Dense => Some("dense"),
        }
    }
}

/// Whether codes with `active` active latents over `samples` samples of a `d_sae`-feature SAE
/// take fewer bytes one row per sample: past one active latent in eight, the sample id and
/// feature index a sparse row spends on each latent cost more than the zeros of a dense row,
/// which zstd folds away.
pub(crate) fn prefers_dense(active: usize, samples: usize, d_sae: u32) -> bool {
    samples > 0 && active * 8 > samples * d_sae as usize
}

/// Rows of a dense file per row group.
pub(crate) fn dense_group_rows(d_sae: u32) -> usize {
    (DENSE_GROUP_BYTES / (4 * d_sae.max(1) as usize)).max(1)
}

/// The schema of a dense file: `sample_id`, then `values`, `d_sae` floats per row.
pub(crate) fn dense_schema(d_sae: u32, values: DenseValues) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(keys::SAMPLE_ID, DataType::UInt64, false),
        Field::new(
            keys::VALUES,
            DataType::FixedSizeList(dense_item(values), d_sae as i32),
            false,
        ),
    ]))
}

fn dense_item(values: DenseValues) -> Arc<Field> {
    Arc::new(Field::new("item", values.data_type(), false))
}

/// A dense row group as Arrow columns: `ids.len()` rows of `d_sae` values each, stored as
/// `kind`.
pub(crate) fn dense_columns(
    ids: Vec<u64>,
    values: Vec<f32>,
    d_sae: u32,
    kind: DenseValues,
) -> Result<Vec<ArrayRef>, arrow::error::ArrowError> {
    debug_assert_eq!(ids.len() * d_sae as usize, values.len());
    let mut flat: ArrayRef = Arc::new(Float32Array::from(values));
    if kind != DenseValues::Float32 {
        flat = arrow::compute::cast(&flat, &kind.data_type())?;
    }
    let values = FixedSizeListArray::try_new(dense_item(kind), d_sae as i32, flat, None)?;
    Ok(vec![Arc::new(UInt64Array::from(ids)), Arc::new(values)])
}

/// Writer properties of a codes file: zstd, row groups of `group_rows`. (Splitting a dense
/// file's floats by byte, Parquet's BYTE_STREAM_SPLIT, made half-active ReLU codes larger, not
/// smaller: their mantissas are noise, and zstd finds the zeros as they are.)
pub(crate) fn properties(group_rows: usize) -> WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_max_row_group_row_count(Some(group_rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_is_chosen_past_one_active_latent_in_eight() {
        assert!(!prefers_dense(32 * 100, 100, 6144));
        assert!(!prefers_dense(768 * 100, 100, 6144));
        assert!(prefers_dense(769 * 100, 100, 6144));
        assert!(!prefers_dense(0, 0, 6144));
        assert_eq!(dense_group_rows(6144), 682);
        assert_eq!(dense_group_rows(u32::MAX), 1);
    }
}
