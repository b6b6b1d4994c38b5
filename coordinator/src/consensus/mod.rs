//! Consensus: raft-rs driven the way its `five_mem_node` example drives it.
//!
//! - [`node`]: one raft node and its state machine, with no threads, timers or sockets.
//! - [`machine`]: the state machine: the registry and the members' addresses.
//! - [`storage`]: the raft log raft reads, in memory, written through a durable backing.
//! - [`redb_store`]: that backing on disk, with checksums.
//! - [`logger`]: raft-rs's slog records into `tracing`.
//!
//! raft-rs's own types (`eraftpb`) stay inside this module tree; on the wire raft messages are
//! opaque bytes.

pub mod logger;
pub mod machine;
pub mod node;
pub mod redb_store;
pub mod storage;

pub use raft::eraftpb::Message as RaftMessage;

/// Encodes a raft message for the wire.
pub fn encode_message(message: &RaftMessage) -> Vec<u8> {
    protobuf::Message::write_to_bytes(message).expect("raft messages encode")
}

pub fn decode_message(bytes: &[u8]) -> Result<RaftMessage, protobuf::ProtobufError> {
    protobuf::Message::parse_from_bytes(bytes)
}
