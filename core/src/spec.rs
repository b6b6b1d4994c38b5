//! Desired state: the run policy from a config and the spec of one instance.
//!
//! `Config` is what a person wrote; a `Spec` is what Mirari will make true. An [`InstanceSpec`]
//! carries everything a backend needs to start an instance, with artifacts named by digest so
//! any host can fetch and verify them.

use serde::{Deserialize, Serialize};

use crate::args::{self, InstanceContext};
use crate::digest::Digest;
use crate::health::HealthCheck;
use crate::ids::InstanceId;
use crate::network::Interface;
use crate::target::Target;

/// Which QEMU accelerator the `kvm` target asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// Hardware virtualization through `/dev/kvm`; fails if KVM is unusable.
    Kvm,
    /// QEMU's software emulation; slow but works everywhere.
    Tcg,
    /// KVM where `/dev/kvm` works, TCG otherwise.
    #[default]
    Auto,
}

impl Accelerator {
    pub const fn name(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
            Accelerator::Auto => "auto",
        }
    }
}

/// What happens when an instance exits without being asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Leave it exited.
    Never,
    /// Restart after a non-zero exit or a crash, at most `limit` times in a row.
    OnFailure { limit: u32 },
    /// Restart after any exit, with back-off, until someone stops it.
    Always,
}

impl RestartPolicy {
    pub const DEFAULT_FAILURE_LIMIT: u32 = 5;
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy::OnFailure { limit: Self::DEFAULT_FAILURE_LIMIT }
    }
}

/// How instances of an application run: the `[run]` section of `mirari.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPolicy {
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Boot arguments, passed to a kernel as its command line or to a process as its argv.
    /// Network settings belong here, never compiled into the image. In a version, templates
    /// ([`crate::args`]); in an instance's spec, filled in.
    pub boot_args: Vec<String>,
    pub restart: RestartPolicy,
    pub accelerator: Accelerator,
    /// How long a graceful stop may take before the instance is forced off.
    pub stop_timeout_secs: u32,
    /// The networks of the app's interfaces, in order (`[[network]]`).
    #[serde(default)]
    pub networks: Vec<String>,
    /// `[health]`: how the agent tells a healthy instance from a hung one.
    #[serde(default)]
    pub health: Option<HealthCheck>,
}

impl Default for RunPolicy {
    fn default() -> Self {
        Self {
            memory_mib: 64,
            vcpus: 1,
            boot_args: Vec::new(),
            restart: RestartPolicy::default(),
            accelerator: Accelerator::default(),
            stop_timeout_secs: 10,
            networks: Vec::new(),
            health: None,
        }
    }
}

/// A read-only file image attached to an instance, in the order the app declared it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileImageRef {
    pub name: String,
    pub digest: Digest,
}

/// Everything needed to start one instance, on any host that has the blobs it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub app: String,
    pub version: String,
    pub target: Target,
    pub artifact: Digest,
    pub files: Vec<FileImageRef>,
    pub run: RunPolicy,
    /// The instance's interfaces, one per network of `run.networks`, as placed.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
}

impl InstanceSpec {
    /// This spec for one instance: its interfaces, and its boot arguments filled in.
    pub fn for_instance(mut self, id: InstanceId, slot: u32, interfaces: Vec<Interface>) -> Self {
        if args::has_placeholders(&self.run.boot_args) {
            self.run.boot_args = args::render(
                &self.run.boot_args,
                InstanceContext { id, slot, version: &self.version, interfaces: &interfaces },
            );
        }
        self.interfaces = interfaces;
        self
    }
}
