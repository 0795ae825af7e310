//! Saving and loading accumulators, so a later run adds shards to what earlier runs counted.
//!
//! The file is a zstd stream of little-endian fields: magic `SAESHARE-COACT`, a version, the
//! feature counts, both moments, then the cross sums (sorted pairs, or the dense array). Pairs
//! are sorted by key so that equal accumulators give equal files.

use std::fs;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use super::coactivation::Cross;
use super::sparse_rows::{RowMap, SparseRows};
use super::{CoactivationAccumulator, Moments, StatsError};
use crate::atomic::{self, AtomicFile};
use crate::file_error::FileError;

const MAGIC: &[u8; 14] = b"SAESHARE-COACT";
const VERSION: u32 = 1;

impl CoactivationAccumulator {
    /// Writes the accumulator to `path` atomically (temporary file, then rename), replacing an
    /// older state of the same accumulator.
    pub fn save(&self, path: &Path) -> Result<(), StatsError> {
        let dir = atomic::folder_of(path);
        fs::create_dir_all(dir).map_err(FileError::io(dir))?;
        let file = AtomicFile::create(path).map_err(FileError::io(dir))?;
        let mut out = zstd::Encoder::new(BufWriter::new(file), 3).map_err(FileError::io(path))?;
        self.write_to(&mut out).map_err(FileError::io(path))?;
        let file = out
            .finish()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .map_err(FileError::io(path))?;
        file.commit().map_err(FileError::io(path))?;
        Ok(())
    }

    /// Reads an accumulator written by [`save`](Self::save).
    pub fn load(path: &Path) -> Result<CoactivationAccumulator, StatsError> {
        let file = fs::File::open(path).map_err(FileError::io(path))?;
        let mut input = zstd::Decoder::new(file).map_err(FileError::io(path))?;
        read_from(&mut input).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
                StatsError::Corrupt {
                    path: path.to_path_buf(),
                    problem: e.to_string(),
                }
            }
            _ => FileError::io(path)(e).into(),
        })
    }

    /// The accumulator as bytes (the file's layout, uncompressed), to ship it between workers.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("writing to memory");
        out
    }

    /// Reads bytes written by [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(mut bytes: &[u8]) -> Result<CoactivationAccumulator, StatsError> {
        read_from(&mut bytes).map_err(|e| StatsError::Corrupt {
            path: "<bytes from another worker>".into(),
            problem: e.to_string(),
        })
    }

    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        write_moments(out, &self.source)?;
        write_moments(out, &self.target)?;
        match &self.cross {
            Cross::Sparse(rows) => {
                out.write_all(&[0])?;
                let d_b = self.target.d() as u64;
                // Row by row, each sorted by target feature: the pairs in key order.
                let mut pairs: Vec<(u64, f64)> = Vec::with_capacity(rows.pairs());
                for i in 0..self.source.d() {
                    let start = pairs.len();
                    let first = i as u64 * d_b;
                    pairs.extend(rows.row(i).iter().map(|(&j, &s)| (first + j as u64, s)));
                    pairs[start..].sort_unstable_by_key(|p| p.0);
                }
                out.write_all(&(pairs.len() as u64).to_le_bytes())?;
                // Keys as deltas: small numbers that zstd packs far better than raw keys.
                let mut previous = 0u64;
                for &(key, _) in &pairs {
                    out.write_all(&(key - previous).to_le_bytes())?;
                    previous = key;
                }
                for &(_, value) in &pairs {
                    out.write_all(&value.to_le_bytes())?;
                }
            }
            Cross::Dense(values) => {
                out.write_all(&[1])?;
                write_f64s(out, values)?;
            }
        }
        Ok(())
    }
}

fn invalid(problem: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, problem)
}

fn read_from(input: &mut impl Read) -> std::io::Result<CoactivationAccumulator> {
    let mut magic = [0u8; 14];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a saeshare accumulator file".into()));
    }
    let version = read_u32(input)?;
    if version != VERSION {
        return Err(invalid(format!(
            "accumulator format version {version}; this saeshare reads version {VERSION}"
        )));
    }
    let source = read_moments(input)?;
    let target = read_moments(input)?;
    if source.samples() != target.samples() {
        return Err(invalid(
            "the two streams disagree on the sample count".into(),
        ));
    }
    let (d_a, d_b) = (source.d() as u64, target.d() as u64);
    let cells = d_a
        .checked_mul(d_b)
        .ok_or_else(|| invalid("feature counts overflow".into()))?;
    let mut tag = [0u8];
    input.read_exact(&mut tag)?;
    let cross = match tag[0] {
        0 => {
            let n = read_u64(input)?;
            if n > cells {
                return Err(invalid(format!("{n} pairs for {d_a}x{d_b} features")));
            }
            let mut keys = Vec::with_capacity(n as usize);
            let mut key = 0u64;
            for _ in 0..n {
                key = key
                    .checked_add(read_u64(input)?)
                    .filter(|&k| k < cells)
                    .ok_or_else(|| invalid("a pair key is out of range".into()))?;
                keys.push(key);
            }
            // Keys are sorted: each row's pairs are consecutive, and its table is sized once.
            let mut rows: Vec<RowMap> = Vec::with_capacity(d_a as usize);
            let mut at = 0;
            for i in 0..d_a {
                let end = at + keys[at..].partition_point(|&k| k / d_b == i);
                let mut row = RowMap::with_capacity_and_hasher(end - at, Default::default());
                for &key in &keys[at..end] {
                    row.insert((key % d_b) as u32, read_f64(input)?);
                }
                rows.push(row);
                at = end;
            }
            Cross::Sparse(SparseRows::from_rows(rows))
        }
        1 => Cross::Dense(read_f64s(input, cells as usize)?),
        other => return Err(invalid(format!("unknown cross-sum layout {other}"))),
    };
    let mut rest = [0u8];
    if input.read(&mut rest)? != 0 {
        return Err(invalid("trailing bytes after the accumulator".into()));
    }
    Ok(CoactivationAccumulator {
        source,
        target,
        cross,
        options: Default::default(),
    })
}

fn write_moments(out: &mut impl Write, m: &Moments) -> std::io::Result<()> {
    out.write_all(&(m.d() as u64).to_le_bytes())?;
    out.write_all(&m.samples().to_le_bytes())?;
    for c in m.counts() {
        out.write_all(&c.to_le_bytes())?;
    }
    write_f64s(out, m.sums())?;
    write_f64s(out, m.sums_sq())
}

fn read_moments(input: &mut impl Read) -> std::io::Result<Moments> {
    let d = read_u64(input)?;
    if d > u32::MAX as u64 {
        return Err(invalid(format!("{d} features")));
    }
    let samples = read_u64(input)?;
    let count = (0..d)
        .map(|_| read_u64(input))
        .collect::<Result<Vec<_>, _>>()?;
    let sum = read_f64s(input, d as usize)?;
    let sum_sq = read_f64s(input, d as usize)?;
    Ok(Moments::from_parts(samples, count, sum, sum_sq))
}

fn write_f64s(out: &mut impl Write, values: &[f64]) -> std::io::Result<()> {
    for v in values {
        out.write_all(&v.to_le_bytes())?;
    }
    Ok(())
}

fn read_f64s(input: &mut impl Read, n: usize) -> std::io::Result<Vec<f64>> {
    (0..n).map(|_| read_f64(input)).collect()
}

fn read_u32(input: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    input.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(input: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    input.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_f64(input: &mut impl Read) -> std::io::Result<f64> {
    Ok(f64::from_bits(read_u64(input)?))
}
