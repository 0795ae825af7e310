//! [`SimilaritySums`] as bytes: between workers (a pair's sums over one shard) and in a pair's
//! saved state (`similarity.sums`). A magic, a version, the seed, the widths, then every count
//! and float64 in a fixed order (little-endian), zstd-compressed as a whole.

use std::io::{Read, Write};

use tch::{Device, Kind, Tensor};

use super::moments::{CrossMoments, Part};
use super::SimilaritySums;

const MAGIC: &[u8; 8] = b"SSSIMSUM";
/// The format's version: 2 added each layer's shift (version 1 summed about zero).
pub const VERSION: u32 = 2;

impl SimilaritySums {
    /// The sums as bytes [`SimilaritySums::from_bytes`] reads.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(MAGIC);
        raw.extend_from_slice(&VERSION.to_le_bytes());
        raw.extend_from_slice(&self.seed.to_le_bytes());
        for side in [&self.sources, &self.targets] {
            raw.extend_from_slice(&(side.len() as u64).to_le_bytes());
            for layer in side {
                raw.extend_from_slice(&(layer.width() as u64).to_le_bytes());
            }
        }
        for layer in self.sources.iter().chain(&self.targets) {
            match &layer.shift {
                Some(shift) => {
                    raw.push(1);
                    floats(&mut raw, shift);
                }
                None => raw.push(0),
            }
            for part in [&layer.fit, &layer.held] {
                raw.extend_from_slice(&part.n.to_le_bytes());
                floats(&mut raw, &part.sum);
                floats(&mut raw, &part.scatter);
            }
        }
        for cross in self.cross.iter().flatten() {
            floats(&mut raw, &cross.fit);
            floats(&mut raw, &cross.held);
        }
        let mut out = Vec::new();
        let mut encoder = zstd::Encoder::new(&mut out, 3).expect("zstd in memory");
        encoder.write_all(&raw).expect("writing to memory");
        encoder.finish().expect("writing to memory");
        out
    }

    /// Reads [`SimilaritySums::to_bytes`]'s bytes onto `device`; what is wrong, if they are not.
    pub fn from_bytes(bytes: &[u8], device: Device) -> Result<SimilaritySums, String> {
        let mut raw = Vec::new();
        zstd::Decoder::new(bytes)
            .and_then(|mut d| d.read_to_end(&mut raw))
            .map_err(|e| format!("not zstd-compressed similarity sums: {e}"))?;
        let mut r = Reader { raw: &raw, at: 0 };
        if r.take(8)? != MAGIC {
            return Err("not similarity sums (wrong magic)".into());
        }
        let version = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(format!(
                "similarity sums of version {version}; this saeshare reads {VERSION}"
            ));
        }
        let seed = r.u64()?;
        let mut widths = [Vec::new(), Vec::new()];
        for side in &mut widths {
            let layers = r.u64()? as usize;
            for _ in 0..layers {
                side.push(r.u64()? as usize);
            }
        }
        let mut sums = SimilaritySums::new(&widths[0], &widths[1], seed, device);
        for layer in sums.sources.iter_mut().chain(sums.targets.iter_mut()) {
            let d = layer.width() as i64;
            layer.shift = match r.take(1)?[0] {
                0 => None,
                1 => Some(r.tensor(&[d], device)?),
                other => return Err(format!("bad shift flag {other}")),
            };
            read_part(&mut r, &mut layer.fit, d, device)?;
            read_part(&mut r, &mut layer.held, d, device)?;
        }
        for (a, row) in sums.cross.iter_mut().enumerate() {
            for (b, cross) in row.iter_mut().enumerate() {
                let shape = [widths[0][a] as i64, widths[1][b] as i64];
                *cross = CrossMoments {
                    fit: r.tensor(&shape, device)?,
                    held: r.tensor(&shape, device)?,
                };
            }
        }
        if r.at != raw.len() {
            return Err(format!("{} bytes past the sums", raw.len() - r.at));
        }
        Ok(sums)
    }
}

fn read_part(r: &mut Reader, part: &mut Part, d: i64, device: Device) -> Result<(), String> {
    part.n = r.u64()?;
    part.sum = r.tensor(&[d], device)?;
    part.scatter = r.tensor(&[d, d], device)?;
    Ok(())
}

fn floats(out: &mut Vec<u8>, t: &Tensor) {
    let values = Vec::<f64>::try_from(
        t.to_device(Device::Cpu)
            .to_kind(Kind::Double)
            .flatten(0, -1),
    )
    .expect("a float64 tensor");
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

struct Reader<'a> {
    raw: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.raw.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.at))?;
        let bytes = &self.raw[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn tensor(&mut self, shape: &[i64], device: Device) -> Result<Tensor, String> {
        let count: i64 = shape.iter().product();
        let bytes = self.take(count as usize * 8)?;
        let values: Vec<f64> = (bytes.chunks_exact(8))
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(Tensor::from_slice(&values).view(shape).to_device(device))
    }
}
