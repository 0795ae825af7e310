//! The zip archive of `torch.save`: entries stored uncompressed, zip64 end records always.

use std::collections::HashMap;

use super::{damaged, PickleError};

/// Zip entry name -> its bytes, or `None` when compressed, encrypted or cut short.
pub(super) type Entries<'a> = HashMap<String, Option<&'a [u8]>>;

/// The little-endian unsigned integer of `n` bytes at `at`, if the bytes are there.
pub(super) fn uint(b: &[u8], at: usize, n: usize) -> Option<usize> {
    let s = b.get(at..at.checked_add(n)?)?;
    usize::try_from(s.iter().rev().fold(0u64, |a, &x| a << 8 | u64::from(x))).ok()
}

pub(super) fn unzip(bytes: &[u8]) -> Result<Entries<'_>, PickleError> {
    let bad = || damaged("the zip directory is damaged or truncated");
    let at = |p: usize, n: usize| uint(bytes, p, n).ok_or_else(bad);
    let sig = |p: usize, s: usize| uint(bytes, p, 4) == Some(s);
    // The end record lies in the last 22 + 65535 bytes (it may carry a comment).
    let tail = bytes.len().saturating_sub(22 + 0xffff)..=bytes.len().saturating_sub(22);
    let Some(eocd) = tail.rev().find(|&p| sig(p, 0x0605_4b50)) else {
        return Err(damaged(if bytes.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
            "this is torch.save's legacy pre-1.6 format; re-save it with PyTorch >= 1.6"
        } else {
            "no zip end record (the file is truncated, or not written by torch.save)"
        }));
    };
    let (mut count, mut cd_size, mut cd_offset) =
        (at(eocd + 10, 2)?, at(eocd + 12, 4)?, at(eocd + 16, 4)?);
    let mut cd_end = eocd;
    // A zip64 end record (56 bytes) and its locator (20) precede the classic end record.
    if eocd >= 76 && sig(eocd - 20, 0x0706_4b50) && sig(eocd - 76, 0x0606_4b50) {
        cd_end = eocd - 76;
        (count, cd_size, cd_offset) = (
            at(cd_end + 32, 8)?,
            at(cd_end + 40, 8)?,
            at(cd_end + 48, 8)?,
        );
    }
    // Bytes before the zip (saev's JSON line) shift every recorded offset by the same amount.
    let mut p = cd_end.checked_sub(cd_size).ok_or_else(bad)?;
    let base = p.checked_sub(cd_offset).ok_or_else(bad)?;
    let mut entries = HashMap::new();
    for _ in 0..count {
        if !sig(p, 0x0201_4b50) {
            return Err(bad());
        }
        let (n, x, c) = (at(p + 28, 2)?, at(p + 30, 2)?, at(p + 32, 2)?);
        let name = bytes.get(p + 46..p + 46 + n).ok_or_else(bad)?;
        let extra = bytes.get(p + 46 + n..p + 46 + n + x).ok_or_else(bad)?;
        let fields = [at(p + 24, 4)?, at(p + 20, 4)?, at(p + 42, 4)?];
        let [_, size, local] = widen(extra, fields).ok_or_else(bad)?;
        let stored = at(p + 10, 2)? == 0 && at(p + 8, 2)? & 1 == 0; // method "stored", unencrypted
        let data = stored.then(|| local_data(bytes, base.checked_add(local)?, size));
        entries.insert(String::from_utf8_lossy(name).into_owned(), data.flatten());
        p += 46 + n + x + c;
    }
    Ok(entries)
}

/// Replaces the directory fields that overflowed 32 bits (uncompressed size, compressed size,
/// local header offset, in this order) with their values from the zip64 extra field.
pub(super) fn widen(mut extra: &[u8], mut fields: [usize; 3]) -> Option<[usize; 3]> {
    let mut wide: &[u8] = &[];
    while let (Some(id), Some(len)) = (uint(extra, 0, 2), uint(extra, 2, 2)) {
        (wide, extra) = (
            extra.get(4..4 + len).filter(|_| id == 1).unwrap_or(wide),
            extra.get(4 + len..)?,
        );
    }
    let mut wide = wide.chunks_exact(8).map(|c| uint(c, 0, 8));
    for f in fields.iter_mut().filter(|f| **f == 0xffff_ffff) {
        *f = wide.next()??;
    }
    Some(fields)
}

/// The data after a local header, whose extra field differs from the directory's (torch pads it
/// to align tensor data).
pub(super) fn local_data(b: &[u8], header: usize, size: usize) -> Option<&[u8]> {
    // The signature check first: it also keeps `header` inside `b`, so the sums cannot overflow.
    (uint(b, header, 4)? == 0x0403_4b50).then_some(())?;
    let start = header + 30 + uint(b, header + 26, 2)? + uint(b, header + 28, 2)?;
    b.get(start..start.checked_add(size)?)
}

/// The entry `name`, or `None` when the archive has none.
pub(super) fn entry<'a>(zip: &Entries<'a>, name: &str) -> Result<Option<&'a [u8]>, PickleError> {
    match zip.get(name) {
        Some(None) => Err(damaged(format!(
            "entry `{name}` is compressed or truncated"
        ))),
        found => Ok(found.copied().flatten()),
    }
}
