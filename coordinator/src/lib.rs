//! `mirari-coordinator`: the raft-replicated registry of the cluster.
//!
//! - [`consensus`]: the raft node, its log storage and state machine (no I/O besides the disk).

pub mod consensus;
