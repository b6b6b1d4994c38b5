//! `mirari-coordinator`: the raft-replicated registry of the cluster.
//!
//! - [`consensus`]: the raft node, its log storage and state machine (no I/O besides the disk).
//! - [`driver`]: the task that owns the raft node, and the handle the rest uses.
//! - [`host_changes`]: wakes the watchers of a host's assignments when they changed.
//! - [`dns`]: service discovery over DNS (`APP.service.mirari.`) from the applied registry.
//! - [`transport`]: raft messages to peers over gRPC.
//! - [`service`]: the peer and coordinator gRPC services.
//! - [`leader`]: the leader's duties: agent leases, declaring hosts down, scheduling.
//! - [`providers`]: the leader's duty at cloud providers: a machine per instance there, launched
//!   from a disk image of the app, and what those machines do, reported.
//! - [`blobs`]: blobs stored on a majority of coordinators.
//! - [`agents`]: builds on agents, and consoles proxied from them.
//! - [`status`]: the cluster status the CLI shows.
//! - [`events`]: the window of applied events the event stream reads.
//! - [`metrics`]: the `mirari_coordinator_*` series served on `--http-listen`.
//! - [`web`]: the web console beside `/metrics` on a loopback `--http-listen`.
//! - [`server`]: putting it together: `run(config, listener, shutdown)`.

pub mod agents;
pub mod blobs;
pub mod consensus;
pub mod dns;
pub mod driver;
pub mod events;
pub mod host_changes;
pub mod leader;
pub mod metrics;
pub mod providers;
pub mod server;
pub mod service;
pub mod status;
pub mod transport;
pub mod web;
