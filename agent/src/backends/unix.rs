//! The `unix` backend: the artifact is a native executable, supervised as a process
//! ([`super::process`]); its boot arguments are its argv.

use std::collections::BTreeMap;
use std::ffi::OsString;

use async_trait::async_trait;
use mirari_core::target::Target;

use super::process::{ProcessBackend, Program};
use super::{Fingerprint, Launch};
use crate::supervisor::client::ShimLauncher;

/// The artifact runs itself.
#[derive(Debug, Clone)]
pub struct Native;

pub type UnixBackend = ProcessBackend<Native>;

impl UnixBackend {
    pub fn new(launcher: ShimLauncher) -> Self {
        Self::with_program(launcher, Native)
    }
}

#[async_trait]
impl Program for Native {
    const TARGET: Target = Target::Unix;

    async fn fingerprint(&self) -> Fingerprint {
        let mut attributes = BTreeMap::new();
        if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
            attributes.insert("kernel".into(), release.trim().to_owned());
        }
        attributes.insert("arch".into(), std::env::consts::ARCH.into());
        Fingerprint { target: Self::TARGET, unavailable: None, attributes }
    }

    fn command(&self, launch: &Launch) -> Vec<OsString> {
        vec![launch.artifact.clone().into()]
    }
}
