//! Instance identifiers.
//!
//! An instance ID is 64 bits shown as 16 lowercase hex digits. Whoever mints one checks it
//! against every ID it has ever minted, so IDs are never reused. The local agent (`mirari run`)
//! draws its IDs from a random source. A cluster's leader mints the n-th ID of the cluster from
//! the cluster's own base plus n ([`InstanceId::from_serial`]): a bijection that scatters the
//! digits, so the registry knows every ID it ever minted from one counter, however many
//! instances came and went, and two clusters mint different IDs. People may
//! type any unique prefix of an ID, as with git hashes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(u64);

impl InstanceId {
    pub const fn from_u64(raw: u64) -> Self {
        Self(raw)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The ID minted `serial`-th: `serial` times an odd constant, modulo 2^64, so consecutive
    /// serials differ in their leading digits and every serial has its own ID.
    pub const fn from_serial(serial: u64) -> Self {
        Self(serial.wrapping_mul(SCATTER))
    }

    /// The serial this ID was minted from (every ID has one: the mapping is a bijection).
    pub const fn serial(self) -> u64 {
        self.0.wrapping_mul(UNSCATTER)
    }
}

/// The 64-bit golden ratio, odd, so multiplying by it permutes the u64s.
const SCATTER: u64 = 0x9e37_79b9_7f4a_7c15;
/// Its inverse modulo 2^64.
const UNSCATTER: u64 = inverse_mod_2_64(SCATTER);

/// Newton's iteration for the inverse of an odd number modulo 2^64: `x = odd` is right in its
/// low 3 bits, and each step doubles the bits that are right.
const fn inverse_mod_2_64(odd: u64) -> u64 {
    let mut x = odd;
    let mut step = 0;
    while step < 5 {
        x = x.wrapping_mul(2u64.wrapping_sub(odd.wrapping_mul(x)));
        step += 1;
    }
    x
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({self})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an instance ID: expected 16 hexadecimal digits such as 3f9a2c1d0b7e6a54")]
pub struct ParseInstanceIdError {
    text: String,
}

impl FromStr for InstanceId {
    type Err = ParseInstanceIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseInstanceIdError { text: text.to_owned() };
        if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(error());
        }
        u64::from_str_radix(text, 16).map(Self).map_err(|_| error())
    }
}

impl TryFrom<String> for InstanceId {
    type Error = ParseInstanceIdError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<InstanceId> for String {
    fn from(id: InstanceId) -> Self {
        id.to_string()
    }
}

/// Why a typed ID prefix did not name exactly one instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveIdError {
    #[error("no instance ID starts with `{0}`")]
    NotFound(String),
    #[error("`{prefix}` is ambiguous: it starts {count} instance IDs; type more digits")]
    Ambiguous { prefix: String, count: usize },
}

/// Resolves what a person typed (a full ID or a unique prefix) against known IDs.
pub fn resolve_prefix(prefix: &str, known: impl IntoIterator<Item = InstanceId>) -> Result<InstanceId, ResolveIdError> {
    let wanted = prefix.to_ascii_lowercase();
    let matches: Vec<InstanceId> = known.into_iter().filter(|id| id.to_string().starts_with(&wanted)).collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(ResolveIdError::NotFound(prefix.to_owned())),
        many => Err(ResolveIdError::Ambiguous { prefix: prefix.to_owned(), count: many.len() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let id = InstanceId::from_u64(0x3f9a_2c1d_0b7e_6a54);
        assert_eq!(id.to_string(), "3f9a2c1d0b7e6a54");
        assert_eq!("3f9a2c1d0b7e6a54".parse::<InstanceId>(), Ok(id));
        assert_eq!(InstanceId::from_u64(1).to_string(), "0000000000000001");
    }

    #[test]
    fn serials_map_to_scattered_ids_and_back() {
        assert_eq!(SCATTER.wrapping_mul(UNSCATTER), 1);
        for serial in [0, 1, 2, 3, 1_000_000, u64::MAX] {
            assert_eq!(InstanceId::from_serial(serial).serial(), serial);
        }
        assert_eq!(InstanceId::from_u64(0x3f9a_2c1d_0b7e_6a54).serial().wrapping_mul(SCATTER), 0x3f9a_2c1d_0b7e_6a54);
        let leading: std::collections::BTreeSet<char> =
            (1..=16).map(|serial| InstanceId::from_serial(serial).to_string().remove(0)).collect();
        assert!(leading.len() >= 12, "consecutive IDs start with different digits: {leading:?}");
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in ["", "xyz", "3f9a2c1d0b7e6a5", "3f9a2c1d0b7e6a54f", "+f9a2c1d0b7e6a54"] {
            assert!(bad.parse::<InstanceId>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn resolves_unique_prefixes_only() {
        let a = InstanceId::from_u64(0xaaaa_0000_0000_0001);
        let b = InstanceId::from_u64(0xaaab_0000_0000_0002);
        assert_eq!(resolve_prefix("aaaa", [a, b]), Ok(a));
        assert_eq!(resolve_prefix("AAAB", [a, b]), Ok(b));
        assert_eq!(resolve_prefix("aaa", [a, b]), Err(ResolveIdError::Ambiguous { prefix: "aaa".into(), count: 2 }));
        assert_eq!(resolve_prefix("b", [a, b]), Err(ResolveIdError::NotFound("b".into())));
    }
}
