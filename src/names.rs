//! The one rule for names that become paths in a run folder: encoder, layer and query names.
//!
//! A run folder holds days of GPU work, and saeshare builds paths from names a study file or an
//! encoder package gives it (`saes/<encoder>/<layer>`, `pairs/<source>__<target>`,
//! `sharedness/<query>.parquet`). So a name is one plain path component: it starts with a
//! letter or digit, holds only letters, digits, `.`, `_` and `-`, and is at most 100 bytes. That
//! rules out `.`, `..`, separators, absolute paths, hidden files and empty names. A name also
//! never holds `__` nor ends with `_`: `__` joins the two encoders of a pair folder, and with
//! this rule `source__target` and `source__target__all` read back one way only.

/// The longest name, in bytes: far below any file system's component limit, with room for the
/// suffixes saeshare adds (`.ceiling`, `.parquet`, `__all`).
pub const MAX_NAME_BYTES: usize = 100;

/// What joins the two encoders of a pair's folder name; never inside a name.
pub const PAIR_SEPARATOR: &str = "__";

/// A name that breaks the rule: the name and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} cannot name a folder: {reason}")]
pub struct NameError {
    pub name: String,
    pub reason: &'static str,
}

/// Checks `name` against the rule (the module docs say why it is what it is).
pub fn check_name(name: &str) -> Result<(), NameError> {
    let fail = |reason| {
        Err(NameError {
            name: name.to_string(),
            reason,
        })
    };
    let Some(first) = name.chars().next() else {
        return fail("it is empty");
    };
    if !first.is_ascii_alphanumeric() {
        return fail("start it with a letter or a digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return fail("use only letters, digits, '.', '_' and '-'");
    }
    if name.len() > MAX_NAME_BYTES {
        return fail("it is longer than 100 characters");
    }
    if name.contains(PAIR_SEPARATOR) || name.ends_with('_') {
        return fail("'__' joins the two encoders of a pair folder: use no '__' and no final '_'");
    }
    Ok(())
}

/// The folder name of the pair `source` -> `target` (`__all` added for all layers). Distinct
/// pairs of valid names never share a folder name.
pub fn pair_key(source: &str, target: &str, all_layers: bool) -> String {
    let mut key = format!("{source}{PAIR_SEPARATOR}{target}");
    if all_layers {
        key.push_str(PAIR_SEPARATOR);
        key.push_str("all");
    }
    key
}

/// The encoder name of `base`'s ceiling SAE set `set` (0 for the first ceiling seed):
/// `<base>.ceiling`, then `<base>.ceiling3`, `<base>.ceiling4`, ... (the base's own SAEs being the
/// first set).
pub fn ceiling_set_name(base: &str, set: usize) -> String {
    match set {
        0 => format!("{base}.ceiling"),
        _ => format!("{base}.ceiling{}", set + 2),
    }
}

/// Which of `base`'s ceiling SAE sets the encoder `name` is ([`ceiling_set_name`] read back);
/// `None` for any other encoder.
pub fn ceiling_set_of(base: &str, name: &str) -> Option<usize> {
    match name.strip_prefix(base)?.strip_prefix(".ceiling")? {
        "" => Some(0),
        k => k.parse::<usize>().ok().filter(|&k| k >= 3).map(|k| k - 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_ceiling_set_name_reads_back_as_its_set() {
        for set in 0..4 {
            assert_eq!(
                ceiling_set_of("bert", &ceiling_set_name("bert", set)),
                Some(set)
            );
        }
        assert_eq!(ceiling_set_name("bert", 1), "bert.ceiling3");
        for other in ["bert", "dinov2.ceiling", "bert.ceilingx", "bert.ceiling2"] {
            assert_eq!(ceiling_set_of("bert", other), None, "{other}");
        }
    }

    #[test]
    fn names_that_would_escape_or_collide_are_refused() {
        for bad in [
            "", ".", "..", "../x", "a/b", "/abs", "a\\b", ".hidden", "-flag", "_x", "a__b", "a_",
            "ü", "a b", "a\0b",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "bert",
            "all-MiniLM-L6-v2",
            "features.18",
            "encoder.layer_11",
            "0",
        ] {
            check_name(good).unwrap();
        }
        assert!(check_name(&"a".repeat(101)).is_err());
    }

    proptest! {
        /// Pair keys of valid names are distinct: the reason for the no-`__` rule.
        #[test]
        fn pair_keys_of_valid_names_never_collide(
            a in "[a-z0-9][a-z0-9._-]{0,6}", b in "[a-z0-9][a-z0-9._-]{0,6}",
            c in "[a-z0-9][a-z0-9._-]{0,6}", d in "[a-z0-9][a-z0-9._-]{0,6}",
            all_ab: bool, all_cd: bool,
        ) {
            for n in [&a, &b, &c, &d] {
                prop_assume!(check_name(n).is_ok());
            }
            prop_assume!((&a, &b, all_ab) != (&c, &d, all_cd));
            prop_assert_ne!(pair_key(&a, &b, all_ab), pair_key(&c, &d, all_cd));
        }
    }
}
