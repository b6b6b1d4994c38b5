//! `mirari-agent`: runs instances on one host.
//!
//! - [`runtime`]: instance records, the reconcile loop, start/watch/stop tasks, recovery.
//! - [`backends`]: the `Backend` trait and the `unix` and `kvm` backends.
//! - [`cluster`]: joining coordinators: lease, assignments, reports, fencing.
//! - [`builder`]: builds run here on the cluster's behalf.
//! - [`supervisor`]: the shim that parents instance processes so they outlive agent restarts.
//! - [`state`]: the durable instance records (redb).
//! - [`console`]: per-instance bounded console buffers.
//! - [`service`]: the gRPC service over the runtime.
//! - [`daemon`]: runtime + API + cluster link, as the binary and `mirari dev` run them.
//! - [`metrics`]: the `mirari_agent_*` series served on `--http-listen`.
//! - [`paths`]: default locations of the state directory and socket.

pub mod backends;
pub mod builder;
pub mod cluster;
pub mod console;
pub mod daemon;
pub mod machine;
pub mod metrics;
pub mod network;
pub mod paths;
pub mod probe;
pub mod runtime;
pub mod service;
pub mod state;
pub mod supervisor;
