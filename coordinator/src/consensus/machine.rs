//! The replicated state machine: the registry, the addresses of the raft members, and the
//! cluster's identity.
//!
//! Snapshot data is versioned: `MIRSNAP\0`, a little-endian `u16` format number, then the
//! payload. Formats 1 and 2's payload is the machine as JSON; format 2's registry keeps its
//! dedup window by request key, where format 1's kept the request IDs (a release that reads
//! only format 1 says so rather than failing on the missing field). Data without the header is
//! format 0, the bare JSON of the first releases. Every format ever written stays readable, so a node
//! upgraded in place starts from the snapshot its previous version left.

use std::collections::BTreeMap;

use mirari_core::registry::Registry;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"MIRSNAP\0";
/// The format this version writes.
pub const SNAPSHOT_FORMAT: u16 = 2;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub registry: Registry,
    /// Raft node ID -> the address of its coordinator API, from applied membership changes.
    pub members: BTreeMap<u64, String>,
    /// Made when the cluster is bootstrapped; every peer message carries it, so a node never
    /// takes another cluster's messages (or a data directory of another cluster its peers').
    /// `None` only in data from before cluster IDs existed.
    #[serde(default)]
    pub cluster_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "the snapshot is in format {0}, which this version does not know (it reads formats up to {SNAPSHOT_FORMAT}): \
         was the data written by a newer Mirari?"
    )]
    UnknownFormat(u16),
    #[error("the snapshot header is truncated")]
    Truncated,
    #[error("the snapshot (format {format}) does not decode")]
    Json {
        format: u16,
        #[source]
        source: serde_json::Error,
    },
}

impl Machine {
    /// The state as snapshot data, in [`SNAPSHOT_FORMAT`].
    pub fn encode(&self) -> Vec<u8> {
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
        serde_json::to_writer(&mut data, self).expect("the state machine serializes");
        data
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let (format, payload) = match bytes.strip_prefix(MAGIC.as_slice()) {
            Some(rest) => {
                let (version, payload) = rest.split_first_chunk::<2>().ok_or(SnapshotError::Truncated)?;
                (u16::from_le_bytes(*version), payload)
            }
            None => (0, bytes),
        };
        let mut machine: Self = match format {
            0..=2 => serde_json::from_slice(payload).map_err(|source| SnapshotError::Json { format, source })?,
            other => return Err(SnapshotError::UnknownFormat(other)),
        };
        machine.registry.rebuild_derived();
        machine.registry.set_serial_base(serial_base(machine.cluster_id.as_deref()));
        Ok(machine)
    }
}

/// Where a cluster's instance ID serials start: from its ID, so every replica agrees and two
/// clusters differ (0 for data from before cluster IDs existed).
pub fn serial_base(cluster_id: Option<&str>) -> u64 {
    cluster_id.map_or(0, |id| {
        let digest = mirari_core::digest::Digest::of(id.as_bytes());
        u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirari_core::ids::InstanceId;
    use mirari_core::instance::Phase;
    use mirari_core::registry::HostId;

    #[test]
    fn each_cluster_mints_instance_ids_of_its_own() {
        let first_id = |cluster: &str| {
            let machine = Machine { cluster_id: Some(cluster.into()), ..Machine::default() };
            Machine::decode(&machine.encode()).unwrap().registry.fresh_ids().next().unwrap()
        };
        assert_eq!(first_id("a"), first_id("a"), "every replica of a cluster mints the same");
        assert_ne!(first_id("a"), first_id("b"));
    }

    #[test]
    fn reads_a_snapshot_written_by_the_first_format() {
        // Written by the release before snapshots had a header: bare JSON, no cluster ID.
        let machine = Machine::decode(include_bytes!("../../tests/fixtures/snapshot-v0.json")).unwrap();
        assert_eq!(machine.members.len(), 2);
        assert_eq!(machine.cluster_id, None);
        let registry = &machine.registry;
        assert_eq!(registry.host(&HostId("h1".into())).unwrap().capacity.memory_mib, 4096);
        let running = registry.instance(InstanceId::from_u64(0xabc)).unwrap();
        assert_eq!((running.observed, running.restarts), (Phase::Running, 1));
        assert_eq!(
            registry.slot_filler("hello", "0.1.0", 1),
            Some(InstanceId::from_u64(0xdef)),
            "derived indexes rebuilt"
        );
        assert!(registry.remembers("r3"), "the dedup window, kept by request ID then, is kept by key now");
        // Written again, it round-trips through the current format.
        let again = Machine::decode(&machine.encode()).unwrap();
        assert_eq!(again, machine);
    }

    #[test]
    fn refuses_a_format_from_the_future() {
        let mut data = Machine::default().encode();
        data[MAGIC.len()..MAGIC.len() + 2].copy_from_slice(&9u16.to_le_bytes());
        let error = Machine::decode(&data).unwrap_err().to_string();
        assert!(error.starts_with("the snapshot is in format 9, which this version does not know"), "{error}");
    }
}
