//! The dedup window: the requests applied within the last [`DEDUP_WINDOW`] log entries and their
//! results, so a client's retry of a write whose answer it lost gets the same answer.
//!
//! A request is remembered by a 128-bit key, the start of its ID's digest, not by the ID: a
//! fixed 16 bytes whatever the client sent, held once in the results and once in the eviction
//! order. Two IDs share a key with odds of 2^-128 per pair.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ApplyResult;
use crate::digest::Digest;

/// How many log entries a request ID is remembered for.
pub const DEDUP_WINDOW: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RequestKey(u128);

impl RequestKey {
    fn of(request_id: &str) -> Self {
        let digest = Digest::of(request_id.as_bytes());
        Self(u128::from_le_bytes(digest.as_bytes()[..16].try_into().expect("16 bytes")))
    }
}

/// Requests applied within the window: key -> (the index that applied it, its result), and
/// the keys oldest first for eviction.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct RecentRequests {
    results: BTreeMap<RequestKey, (u64, ApplyResult)>,
    order: VecDeque<(u64, RequestKey)>,
}

impl RecentRequests {
    /// The result recorded for a request ID, if it was applied within the window.
    pub(super) fn get(&self, request_id: &str) -> Option<&ApplyResult> {
        self.results.get(&RequestKey::of(request_id)).map(|(_, result)| result)
    }

    /// Records the result of the request applied at `index` and forgets those that fell out of
    /// the window.
    pub(super) fn record(&mut self, index: u64, request_id: &str, result: ApplyResult) {
        self.push(index, RequestKey::of(request_id), result);
        while let Some(&(oldest, key)) = self.order.front() {
            if index.saturating_sub(oldest) < DEDUP_WINDOW {
                break;
            }
            self.order.pop_front();
            self.results.remove(&key);
        }
    }

    /// The window as snapshots before keys held it: request ID -> (index, result).
    pub(super) fn from_ids(by_id: BTreeMap<String, (u64, ApplyResult)>) -> Self {
        let mut by_index: Vec<(u64, RequestKey, ApplyResult)> =
            by_id.into_iter().map(|(id, (index, result))| (index, RequestKey::of(&id), result)).collect();
        by_index.sort_by_key(|(index, key, _)| (*index, *key));
        let mut recent = Self::default();
        for (index, key, result) in by_index {
            recent.push(index, key, result);
        }
        recent
    }

    /// Adds a request applied after every one held.
    fn push(&mut self, index: u64, key: RequestKey, result: ApplyResult) {
        self.results.insert(key, (index, result));
        self.order.push_back((index, key));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.results.len()
    }
}

/// One remembered request in a snapshot: its index, its key in hex, its result. Oldest first.
type Remembered = (u64, String, ApplyResult);

impl Serialize for RecentRequests {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.order.iter().filter_map(|(index, key)| {
            let (_, result) = self.results.get(key)?;
            Some((*index, hex::encode(key.0.to_le_bytes()), result))
        }))
    }
}

impl<'de> Deserialize<'de> for RecentRequests {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let remembered = Vec::<Remembered>::deserialize(deserializer)?;
        let mut recent = Self::default();
        for (index, key, result) in remembered {
            recent.push(index, parse_key(&key).map_err(serde::de::Error::custom)?, result);
        }
        Ok(recent)
    }
}

fn parse_key(hex_key: &str) -> Result<RequestKey, String> {
    let bytes: [u8; 16] = hex::decode(hex_key)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| format!("request key `{hex_key}` is not 32 hex digits"))?;
    Ok(RequestKey(u128::from_le_bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Outcome, Rejection};

    #[test]
    fn a_request_is_answered_with_its_result_until_it_leaves_the_window() {
        let mut recent = RecentRequests::default();
        recent.record(1, "first", Ok(Outcome::Done));
        recent.record(2, "second", Err(Rejection::UnknownApp("x".into())));
        assert_eq!(recent.get("first"), Some(&Ok(Outcome::Done)));
        assert_eq!(recent.get("other"), None);
        recent.record(1 + DEDUP_WINDOW, "third", Ok(Outcome::Unchanged));
        assert_eq!(recent.get("first"), None, "applied a whole window ago");
        assert_eq!(recent.get("second"), Some(&Err(Rejection::UnknownApp("x".into()))));
        assert_eq!(recent.len(), 2);
    }

    #[test]
    fn the_window_survives_a_snapshot_and_refuses_a_malformed_key() {
        let mut recent = RecentRequests::default();
        recent.record(5, "a", Ok(Outcome::Done));
        recent.record(6, "b", Ok(Outcome::Unchanged));
        let copy: RecentRequests = serde_json::from_str(&serde_json::to_string(&recent).unwrap()).unwrap();
        assert_eq!(copy, recent);

        let error = serde_json::from_str::<RecentRequests>(r#"[[1, "abc", {"Ok": "Done"}]]"#).unwrap_err();
        assert!(error.to_string().contains("request key `abc` is not 32 hex digits"), "{error}");
    }

    #[test]
    fn ids_kept_by_older_snapshots_become_keys_in_the_order_they_were_applied() {
        let by_id = BTreeMap::from([("z".to_owned(), (1, Ok(Outcome::Done))), ("a".to_owned(), (2, Ok(Outcome::Unchanged)))]);
        let mut recent = RecentRequests::from_ids(by_id);
        assert_eq!(recent.get("z"), Some(&Ok(Outcome::Done)));
        // "z" was applied first, so it is the first to leave.
        recent.record(1 + DEDUP_WINDOW, "c", Ok(Outcome::Done));
        assert_eq!((recent.get("z"), recent.get("a").is_some()), (None, true));
    }
}
