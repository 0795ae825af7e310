//! Short digests that name what a unit of work depends on.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// A short hex digest (96 bits of SHA-256) of anything serialisable: its JSON form.
pub fn fingerprint(value: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(value).expect("plain data serialises");
    let digest = Sha256::digest(&bytes);
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}
