//! `mirari-coordinator`: the raft-replicated registry of the cluster.
//!
//! - [`consensus`]: the raft node, its log storage and state machine (no I/O besides the disk).
//! - [`driver`]: the task that owns the raft node, and the handle the rest uses.
//! - [`transport`]: raft messages to peers over gRPC.
//! - [`service`]: the peer and coordinator gRPC services.
//! - [`server`]: putting it together: `run(config, listener, shutdown)`.

pub mod consensus;
pub mod driver;
pub mod server;
pub mod service;
pub mod transport;
