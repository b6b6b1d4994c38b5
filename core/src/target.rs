//! Build and deployment targets: which backend runs an artifact.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A target names both what an application is built for and the agent backend that runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A native executable supervised as a process.
    Unix,
    /// A multiboot kernel booted by QEMU (KVM-accelerated where KVM works, else TCG).
    Kvm,
    /// A PVH or PV kernel started as a Xen domain through `xl`.
    Xen,
    /// A kernel started by FreeBSD's bhyve.
    Freebsd,
    /// An arm64 kernel booted by U-Boot: a Raspberry Pi, or QEMU's arm64 machines.
    Rpi,
    /// A JavaScript bundle run by node.
    Js,
}

impl Target {
    pub const ALL: [Target; 6] = [Target::Unix, Target::Kvm, Target::Xen, Target::Freebsd, Target::Rpi, Target::Js];

    pub const fn name(self) -> &'static str {
        match self {
            Target::Unix => "unix",
            Target::Kvm => "kvm",
            Target::Xen => "xen",
            Target::Freebsd => "freebsd",
            Target::Rpi => "rpi",
            Target::Js => "js",
        }
    }

    /// Whether this target's backend gives instances network interfaces (`[[network]]`).
    /// bhyve's taps are set up with FreeBSD's ifconfig, which the agent does not speak yet; the
    /// rpi boards' only NIC carries their netboot.
    pub const fn has_interfaces(self) -> bool {
        !matches!(self, Target::Freebsd | Target::Rpi)
    }

    /// The known names, comma separated, for error messages.
    pub fn known_names() -> String {
        Self::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown target `{0}`; known targets: {known}", known = Target::known_names())]
pub struct UnknownTarget(pub String);

impl FromStr for Target {
    type Err = UnknownTarget;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|t| t.name() == text).ok_or_else(|| UnknownTarget(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_names_and_lists_them_otherwise() {
        assert_eq!("kvm".parse(), Ok(Target::Kvm));
        let err = "hvt".parse::<Target>().unwrap_err();
        assert_eq!(err.to_string(), "unknown target `hvt`; known targets: unix, kvm, xen, freebsd, rpi, js");
    }
}
