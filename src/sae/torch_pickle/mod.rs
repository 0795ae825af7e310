//! Reads the tensors of a file written by Python's `torch.save` (the zip format of PyTorch >= 1.6)
//! without libtorch: a state dict (dict or `OrderedDict` of name -> tensor or `nn.Parameter`) or a
//! single tensor.
//!
//! The zip may follow other bytes in the same file (a saev checkpoint starts with one JSON line):
//! the archive's own directory tells where it starts, so callers pass the whole file.
//!
//! The object pickle inside is evaluated by a restricted machine that knows only the callables
//! torch.save emits for plain tensors; every other global is refused by name, so a downloaded
//! file can make this code build tensors and nothing else. Every size in the file is checked
//! against the bytes present before it is used, and malformed input yields an error, never a panic.

use std::collections::HashSet;

use unpickle::{unpickle, TensorRef, V};
use zip::{entry, unzip, Entries};

mod unpickle;
mod zip;

/// A tensor read from a checkpoint, converted to `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    /// The element type the file stores; `values` were converted from it.
    pub dtype: StoredDtype,
    /// Dimensions, outermost first; empty for a 0-dimensional tensor.
    pub shape: Vec<usize>,
    /// Elements in row-major order, gathered from views, so always contiguous. F16, BF16 and
    /// the small integer types convert exactly; F64, I32 and I64 round to the nearest `f32`.
    pub values: Vec<f32>,
}

/// Element types the reader understands: those torch.save pickles as a typed storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    /// `torch.float64` (`DoubleStorage`).
    F64,
    /// `torch.float32` (`FloatStorage`).
    F32,
    /// `torch.float16` (`HalfStorage`).
    F16,
    /// `torch.bfloat16` (`BFloat16Storage`).
    BF16,
    /// `torch.int64` (`LongStorage`).
    I64,
    /// `torch.int32` (`IntStorage`).
    I32,
    /// `torch.int16` (`ShortStorage`).
    I16,
    /// `torch.int8` (`CharStorage`).
    I8,
    /// `torch.uint8` (`ByteStorage`).
    U8,
    /// `torch.bool` (`BoolStorage`), read as 0.0 or 1.0.
    Bool,
}

/// Why a checkpoint cannot be read; the caller adds the file path.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    /// Not a zip archive as torch.save writes one, or a damaged or truncated one.
    #[error("not a readable torch.save archive: {0}")]
    Archive(String),
    /// The object pickle (`data.pkl`) is damaged, or shaped unlike anything torch.save writes.
    #[error("the checkpoint's object pickle is malformed: {0}")]
    Pickle(String),
    /// The pickle names a Python callable outside the allow-list. Nothing was executed.
    #[error(
        "the checkpoint refers to `{0}`, which a file of plain tensors never needs, so it is \
         refused (only tensors, parameters and dicts of them are read: save `model.state_dict()`, \
         not the model)"
    )]
    ForbiddenGlobal(String),
    /// Valid for PyTorch, but outside what this reader supports.
    #[error("unsupported checkpoint content: {0}")]
    Unsupported(String),
    /// A tensor's declared layout does not fit the bytes stored for it.
    #[error("{}: {problem}", tensor_label(.name))]
    Tensor {
        /// The state-dict key, or empty for a lone tensor.
        name: String,
        /// What does not fit.
        problem: String,
    },
}

fn tensor_label(name: &str) -> String {
    match name {
        "" => "the tensor".into(),
        _ => format!("tensor `{name}`"),
    }
}

fn malformed(m: impl Into<String>) -> PickleError {
    PickleError::Pickle(m.into())
}
fn unsupported(m: impl Into<String>) -> PickleError {
    PickleError::Unsupported(m.into())
}
fn damaged(m: impl Into<String>) -> PickleError {
    PickleError::Archive(m.into())
}

/// Reads a state dict: every entry must be a tensor. Entries keep the order the file stores.
pub fn read_state_dict(bytes: &[u8]) -> Result<Vec<(String, StoredTensor)>, PickleError> {
    let (zip, root) = load(bytes)?;
    let V::Dict(items, _) = root else {
        let kind = root.kind();
        return Err(unsupported(format!("the file holds a {kind}, not a dict")));
    };
    let (mut budget, mut seen) = (output_budget(bytes), HashSet::new());
    let mut out = Vec::with_capacity(items.len());
    for (key, value) in items.iter() {
        let V::Str(key) = key else {
            return Err(unsupported(format!("a dict key is a {}", key.kind())));
        };
        if !seen.insert(key.clone()) {
            return Err(malformed(format!("the key `{key}` appears twice")));
        }
        let V::Tensor(t) = value else {
            let kind = value.kind();
            return Err(unsupported(format!("entry `{key}` is a {kind}")));
        };
        out.push((key.to_string(), materialize(t, &zip, &mut budget, key)?));
    }
    Ok(out)
}

/// Reads a file that holds a single tensor (`torch.save(tensor, path)`).
pub fn read_tensor(bytes: &[u8]) -> Result<StoredTensor, PickleError> {
    match load(bytes)? {
        (zip, V::Tensor(t)) => materialize(&t, &zip, &mut output_budget(bytes), ""),
        (_, other) => {
            let kind = other.kind();
            Err(unsupported(format!(
                "the file holds a {kind}, not a tensor"
            )))
        }
    }
}

/// Views may repeat a storage's elements (stride 0) or share it, so output can exceed the file;
/// this cap (16x the file in bytes) keeps a small hostile file from demanding terabytes.
fn output_budget(bytes: &[u8]) -> usize {
    bytes.len().saturating_mul(4)
}

fn load(bytes: &[u8]) -> Result<(Entries<'_>, V), PickleError> {
    let zip = unzip(bytes)?;
    // The folder inside the archive is named after the file stem (or "archive"), so match by shape.
    let mut pickles = zip.keys().filter_map(|k| {
        k.strip_suffix("data.pkl")
            .filter(|p| p.ends_with('/') && p.matches('/').count() == 1)
    });
    let (Some(prefix), None) = (pickles.next(), pickles.next()) else {
        return Err(damaged("it has no single `<name>/data.pkl` entry"));
    };
    let prefix = prefix.to_string();
    let zip: Entries = zip
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.into(), v)))
        .collect();
    match entry(&zip, "byteorder")? {
        None | Some(b"little") => {}
        Some(b"big") => return Err(unsupported("big-endian tensor data")),
        Some(_) => return Err(damaged("unrecognised `byteorder` entry")),
    }
    let root = unpickle(entry(&zip, "data.pkl")?.unwrap_or_default())?;
    Ok((zip, root))
}

fn materialize(
    t: &TensorRef,
    zip: &Entries,
    budget: &mut usize,
    name: &str,
) -> Result<StoredTensor, PickleError> {
    let fail = |problem: String| PickleError::Tensor {
        name: name.to_owned(),
        problem,
    };
    let (s, elem) = (&t.storage, t.storage.dtype.size());
    let key = &s.key;
    let Some(raw) = entry(zip, &format!("data/{key}"))? else {
        return Err(fail(format!(
            "its data `data/{key}` is missing from the archive"
        )));
    };
    if s.numel > raw.len() / elem {
        let (n, len) = (s.numel, raw.len());
        return Err(fail(format!(
            "its storage of {n} elements has only {len} bytes"
        )));
    }
    let numel = t
        .dims
        .iter()
        .try_fold(1, |a: usize, &(d, _)| a.checked_mul(d));
    let Some(numel) = numel.filter(|&n| n <= *budget) else {
        let shape = t.shape();
        return Err(fail(format!(
            "its shape {shape:?} is implausibly large for the file"
        )));
    };
    *budget -= numel;
    // The last element sits at offset + sum((size - 1) * stride); the check bounds every read.
    let last = t.dims.iter().try_fold(t.offset, |a, &(d, st)| {
        d.checked_sub(1)?.checked_mul(st)?.checked_add(a)
    });
    if numel > 0 && last.is_none_or(|l| l >= s.numel) {
        let (off, shape, n) = (t.offset, t.shape(), s.numel);
        let strides: Vec<usize> = t.dims.iter().map(|&(_, st)| st).collect();
        return Err(fail(format!(
            "offset {off} with shape {shape:?} and strides {strides:?} reaches past its storage \
             of {n} elements"
        )));
    }
    let decode = s.dtype.decoder();
    let (mut values, mut index, mut pos) =
        (Vec::with_capacity(numel), vec![0; t.dims.len()], t.offset);
    for _ in 0..numel {
        values.push(decode(&raw[pos * elem..(pos + 1) * elem]));
        // Odometer over the indices: step the innermost dimension, carry into outer ones.
        for (i, &(d, st)) in index.iter_mut().zip(&t.dims).rev() {
            // Wrapping: past the last index of a size-1 dimension the stride is unchecked.
            (*i, pos) = (*i + 1, pos.wrapping_add(st));
            if *i < d {
                break;
            }
            (*i, pos) = (0, pos.wrapping_sub(st.wrapping_mul(d)));
        }
    }
    Ok(StoredTensor {
        dtype: s.dtype,
        shape: t.shape(),
        values,
    })
}

impl StoredDtype {
    fn from_storage(class: &str) -> Option<Self> {
        Some(match class {
            "DoubleStorage" => Self::F64,
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    /// Each decoder receives exactly `size()` little-endian bytes.
    fn decoder(self) -> fn(&[u8]) -> f32 {
        match self {
            Self::F64 => |b| f64::from_le_bytes(arr(b)) as f32,
            Self::F32 => |b| f32::from_le_bytes(arr(b)),
            Self::F16 => |b| f16_to_f32(u16::from_le_bytes(arr(b))),
            Self::BF16 => |b| f32::from_bits(u32::from(u16::from_le_bytes(arr(b))) << 16),
            Self::I64 => |b| i64::from_le_bytes(arr(b)) as f32,
            Self::I32 => |b| i32::from_le_bytes(arr(b)) as f32,
            Self::I16 => |b| f32::from(i16::from_le_bytes(arr(b))),
            Self::I8 => |b| f32::from(b[0] as i8),
            Self::U8 => |b| f32::from(b[0]),
            Self::Bool => |b| f32::from(u8::from(b[0] != 0)),
        }
    }
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// Exact IEEE half -> single conversion (Rust's `f16` is not stable yet).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let (exp, man) = (u32::from(h >> 10) & 0x1f, u32::from(h) & 0x3ff);
    match exp {
        // Subnormal (or zero): man * 2^-24, exact in f32; the sign is applied to keep -0.0.
        0 => f32::from_bits(sign | (man as f32 * f32::from_bits(0x3380_0000)).to_bits()),
        0x1f => f32::from_bits(sign | 0x7f80_0000 | man << 13),
        _ => f32::from_bits(sign | (exp + 112) << 23 | man << 13),
    }
}

#[cfg(test)]
mod tests;
