//! saeshare's key-value metadata in a Parquet file, where every reader looks for it.
//!
//! The keys go in the file's footer (what `pyarrow.parquet.read_metadata(...).metadata` and
//! saeshare's readers read) and in the Arrow schema stored beside them under `ARROW:schema`
//! (what `pyarrow.parquet.read_table(...).schema.metadata` shows), with one more key,
//! `PANDAS_ATTRS`, holding them as a JSON object: pandas' `read_parquet` makes it the frame's
//! `attrs`. The schema is written when the file is finished, so keys known only then (a codes
//! file's sample count) are in both places.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use arrow::datatypes::Schema;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::arrow::{encode_arrow_schema, ArrowWriter, ARROW_SCHEMA_META_KEY};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

/// The key pandas restores `DataFrame.attrs` from.
pub const PANDAS_ATTRS_KEY: &str = "PANDAS_ATTRS";

/// Writer options that leave the stored Arrow schema to [`finish_metadata`].
pub fn writer_options(properties: WriterProperties) -> ArrowWriterOptions {
    ArrowWriterOptions::new()
        .with_properties(properties)
        .with_skip_arrow_metadata(true)
}

/// Appends `late` keys to the footer, then the Arrow schema carrying every key (`early`, given
/// to the writer's properties, and `late`). Call once, just before closing the writer.
pub fn finish_metadata<W: Write + Send>(
    writer: &mut ArrowWriter<W>,
    schema: &Schema,
    early: &[KeyValue],
    late: &[KeyValue],
) {
    for kv in late {
        writer.append_key_value_metadata(kv.clone());
    }
    let keys: BTreeMap<String, String> = early
        .iter()
        .chain(late)
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect();
    let attrs = serde_json::to_string(&keys).expect("strings serialise");
    let mut metadata: HashMap<String, String> = keys.into_iter().collect();
    metadata.insert(PANDAS_ATTRS_KEY.to_string(), attrs);
    let with_metadata = schema.clone().with_metadata(metadata);
    writer.append_key_value_metadata(KeyValue::new(
        ARROW_SCHEMA_META_KEY.to_string(),
        encode_arrow_schema(&with_metadata),
    ));
}
