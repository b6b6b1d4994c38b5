//! configure and build, on the machine that holds the app's sources.
//!
//! Everything here is synchronous and reports progress through a [`BuildEvent`] callback, so the
//! CLI can print it and an agent can stream it.
//!
//! - [`project`]: the app directory, its `mirari.toml` and its `_mirari/` output directory.
//! - [`requirements`]: checking and installing what the build needs.
//! - [`archive`]: deterministic tar archives of a directory.
//! - [`images`]: baking file directories into deterministic read-only tar images.
//! - [`bundle`]: an app's sources as one content-addressed archive, to build elsewhere.
//! - [`cache`]: which builds can be reused: keys of bundle, config, target and toolchain.
//! - [`disk_image`]: a kvm kernel, its boot arguments and file images as a BIOS-bootable disk.
//! - [`driver`]: running the `command` or `mirage` build for one target.
//! - [`manifest`]: what configure and build produced (digests per target), read by `run`.
//! - [`process`]: running a command with its output streamed as progress.

pub mod archive;
pub mod bundle;
pub mod cache;
pub mod disk_image;
pub mod driver;
pub mod images;
pub mod manifest;
pub mod process;
pub mod project;
pub mod requirements;

/// Progress of a long operation, for a person to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// Step `index` of `total` begins.
    Step { index: usize, total: usize, what: String },
    /// A line printed by a command the build runs.
    Output(String),
}
