//! Supervised processes: how the `unix` and `kvm` backends keep instances alive across agent
//! restarts.
//!
//! The agent does not parent instances directly: it starts a small shim (`mirari-agent shim`,
//! in its own process group) that parents the instance's process, holds its console in a
//! bounded ring, serves that console on a Unix socket, and records the exit status in the
//! instance directory when the process ends. If the agent is killed, the shim and instance keep
//! running; the restarted agent finds them from the files in the instance directory. This is
//! the conmon/containerd-shim model, reduced to what Mirari needs.
//!
//! - [`protocol`]: the files and socket a shim leaves in the instance directory.
//! - [`proc`]: process identity (pid plus start time), so a reused pid is never mistaken.
//! - [`shim`]: the shim process itself.
//! - [`client`]: the agent side: start a shim, stream its console, learn how it ended.
//! - [`fence`]: the fencing deadline file cluster shims enforce even when the agent is dead.

pub mod client;
pub mod fence;
pub mod proc;
pub mod protocol;
pub mod shim;
