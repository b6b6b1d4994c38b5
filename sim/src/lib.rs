//! The whole Mirari cluster in one deterministic simulation.
//!
//! Coordinators are the real raft `Node`s with the real registry, on disks that keep only what
//! was written through them; the leader's duties are the real lease table and scheduler; agent
//! hosts run the real agent machine (`mirari_agent::machine`). Around them, everything is
//! simulated and driven by one seeded RNG and one virtual clock: the network (latency, loss,
//! hosts cut off), the disks, the instance processes (which outlive their agent and are fenced
//! by their "shims"), and a nemesis that crashes coordinators (some in the middle of a write)
//! and agents (some in the middle of acting), cuts hosts off, and freezes agents.
//!
//! After every step of 10 ms: no slot runs on two hosts at the same instant (the simulated
//! processes themselves), at most one leader per term, every placement fits its host on every
//! node. After healing: the cluster settles (every slot runs once, nothing else runs), every
//! node holds the same registry, and no acknowledged write was lost. A failure names its seed,
//! and the same seed replays the same run.
//!
//! - [`net`]: packets, latency, loss, cut-off hosts.
//! - [`coordinators`]: raft nodes plus what the coordinator service does for agents.
//! - [`agents`]: agent machines, their disks, calls and instance processes.
//! - [`world`]: the clock, the client, the nemesis and the checks.

pub mod agents;
pub mod coordinators;
pub mod net;
pub mod world;

pub use world::{Report, Scenario, World};
