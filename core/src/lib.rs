//! Mirari's pure core: everything that decides, nothing that does.
//!
//! No tokio, no sockets, no files opened here (the config parser takes the text and the path
//! it came from). Time comes in as a value (the drivers read it from [`clock`]), collections
//! iterate in a defined order. The agent,
//! coordinator and CLI call into this crate and perform the effects it asks for.
//!
//! - [`ids`], [`digest`], [`target`]: the small value types every layer shares.
//! - [`artifact`]: what a target's artifact must look like (an `rpi` one is an arm64 Image).
//! - [`clock`]: the one place clocks are read, by the drivers at the edge.
//! - [`errors`]: an error and its causes in one line, for people and for wire statuses.
//! - [`config`]: `mirari.toml`, parsed and validated with file:line:column errors.
//! - [`spec`]: the desired state of one instance, derived from a config and a build.
//! - [`network`]: networks, address pools, MACs and instance interfaces.
//! - [`args`]: boot-argument templates (`{net.service.cidr}`), checked and filled.
//! - [`health`]: health checks and what their results mean.
//! - [`instance`]: observed state of an instance (lifecycle, exit status).
//! - [`lease`]: leases between agents and the coordinator leader: timing (the fencing margin)
//!   and the leader's table of renewals.
//! - [`limits`]: the largest sizes and counts accepted from the wire and from config files.
//! - [`provider`]: cloud providers beside hosts, and registry + what the cloud lists -> the
//!   launches and terminations the leader makes there.
//! - [`restart`]: what the restart policy says after an exit.
//! - [`reconcile`]: desired + observed instances -> the actions an agent must take.
//! - [`registry`]: the cluster registry, the state machine the coordinators replicate.
//! - [`discovery`]: the addresses that answer for an app (the coordinators' DNS).
//! - [`scheduler`]: registry + deployment -> a placement plan.
//! - [`retention`]: registry + time -> the ended instances the registry keeps no longer.
//! - [`rollout`]: registry + time -> the commands that replace instances slot by slot (rolling
//!   updates, canaries, automatic revert, drains).
//! - [`ring`]: the bounded byte ring that holds console output.
//! - [`rng`]: a seeded random number generator for simulations.

pub mod args;
pub mod artifact;
pub mod clock;
pub mod config;
pub mod digest;
pub mod discovery;
pub mod errors;
pub mod health;
pub mod ids;
pub mod instance;
pub mod lease;
pub mod limits;
pub mod network;
pub mod provider;
pub mod reconcile;
pub mod registry;
pub mod restart;
pub mod retention;
pub mod ring;
pub mod rng;
pub mod rollout;
pub mod scheduler;
pub mod spec;
pub mod target;
