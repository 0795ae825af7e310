//! Reading the rows of a dense codes file (one row per sample, `values` a fixed-size list of
//! `d_sae` floats): its schema checked, its columns in the format's types.

use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Float32Type, UInt64Type};
use arrow::record_batch::RecordBatch;

use super::{keys, Result};
use crate::file_error::FileError;

/// Finds `sample_id` and `values` by name and checks their types: any integer type for the id,
/// a fixed-size list of exactly `d_sae` floats of any width for the values. Returns their
/// positions.
pub(super) fn check_schema(
    path: &Path,
    schema: &arrow::datatypes::Schema,
    d_sae: u32,
) -> Result<Vec<usize>> {
    let find = |name: &str, wanted: &str| {
        schema.index_of(name).map_err(|_| {
            FileError::wrong_schema(
                path,
                format!("column `{name}` ({wanted}) is missing from a dense codes file"),
            )
        })
    };
    let id = find(keys::SAMPLE_ID, "uint64")?;
    let found = schema.field(id).data_type();
    if !found.is_integer() {
        let problem = format!("column `{}` must be uint64, found {found}", keys::SAMPLE_ID);
        return Err(FileError::wrong_schema(path, problem).into());
    }
    let values = find(keys::VALUES, "fixed_size_list<float32>")?;
    match schema.field(values).data_type() {
        DataType::FixedSizeList(item, size)
            if item.data_type().is_floating() && *size as i64 == d_sae as i64 => {}
        found => {
            let problem = format!(
                "column `{}` must be a fixed-size list of {d_sae} floats (d_sae), found {found}",
                keys::VALUES
            );
            return Err(FileError::wrong_schema(path, problem).into());
        }
    }
    Ok(vec![id, values])
}

/// One decoded batch of a dense file, in the format's types.
pub(super) struct DenseRows {
    ids: ArrayRef,
    lists: FixedSizeListArray,
    values: ArrayRef,
    d_sae: usize,
}

impl DenseRows {
    /// The batch's `sample_id` and `values` columns (in that order, as projected) converted to
    /// uint64 and float32; a value that does not convert (a negative id) is an error.
    pub fn new(path: &Path, batch: &RecordBatch, d_sae: u32) -> Result<Self> {
        let options = CastOptions {
            safe: false,
            ..CastOptions::default()
        };
        let cast = |column: &ArrayRef, to: &DataType| -> Result<ArrayRef> {
            if column.data_type() == to {
                Ok(column.clone())
            } else {
                Ok(cast_with_options(column, to, &options).map_err(FileError::arrow(path))?)
            }
        };
        let ids = cast(batch.column(0), &DataType::UInt64)?;
        let lists = batch.column(1).as_fixed_size_list().clone();
        let values = cast(lists.values(), &DataType::Float32)?;
        Ok(DenseRows {
            ids,
            lists,
            values,
            d_sae: d_sae as usize,
        })
    }

    /// Row `r`'s sample id, `None` when null.
    pub fn id(&self, r: usize) -> Option<u64> {
        let ids = self.ids.as_primitive::<UInt64Type>();
        ids.is_valid(r).then(|| ids.value(r))
    }

    /// Row `r`'s `d_sae` values, `None` when the list or one of its values is null.
    pub fn values(&self, r: usize) -> Option<&[f32]> {
        if self.lists.is_null(r) {
            return None;
        }
        let start = self.lists.value_offset_at(r);
        let range = start..start + self.d_sae;
        if self.values.null_count() > 0 && range.clone().any(|i| self.values.is_null(i)) {
            return None;
        }
        Some(&self.values.as_primitive::<Float32Type>().values()[range])
    }
}
