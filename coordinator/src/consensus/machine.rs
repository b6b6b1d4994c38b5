//! The replicated state machine: the registry plus the addresses of the raft members.

use std::collections::BTreeMap;

use mirari_core::registry::Registry;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub registry: Registry,
    /// Raft node ID -> the address of its coordinator API, from applied membership changes.
    pub members: BTreeMap<u64, String>,
}

impl Machine {
    /// The state as snapshot data.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the state machine serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let mut machine: Self = serde_json::from_slice(bytes)?;
        machine.registry.rebuild_derived();
        Ok(machine)
    }
}
