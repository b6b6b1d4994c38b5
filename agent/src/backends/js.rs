//! The `js` backend: the artifact is a JavaScript bundle (the example's is OCaml compiled by
//! js_of_ocaml) that `node` runs as a supervised process ([`super::process`]):
//! `node BUNDLE BOOT_ARGS...`, with the unix backend's environment, console, stop and network
//! namespace. The bundle's own exit code is the instance's exit status.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use async_trait::async_trait;
use mirari_core::target::Target;

use super::process::{ProcessBackend, Program};
use super::{Fingerprint, Launch, version_output};
use crate::supervisor::client::ShimLauncher;

/// Bundles run under node.
#[derive(Debug, Clone)]
pub struct Node {
    node: PathBuf,
}

pub type JsBackend = ProcessBackend<Node>;

impl JsBackend {
    /// Runs bundles with the `node` on the agent's PATH.
    pub fn new(launcher: ShimLauncher) -> Self {
        Self::with_program(launcher, Node { node: "node".into() })
    }

    /// Uses another node (tests point it at a missing file to see the fingerprint refuse).
    pub fn with_node(mut self, node: impl Into<PathBuf>) -> Self {
        self.program_mut().node = node.into();
        self
    }
}

#[async_trait]
impl Program for Node {
    const TARGET: Target = Target::Js;

    async fn fingerprint(&self) -> Fingerprint {
        let mut attributes = BTreeMap::new();
        // `node --version` prints "v20.20.2".
        let version = version_output(&self.node).await;
        let Some(version) = version.as_deref().map(str::trim).filter(|v| !v.is_empty()) else {
            let reason = format!("{} is not installed (apt install nodejs)", self.node.display());
            return Fingerprint { target: Self::TARGET, unavailable: Some(reason), attributes };
        };
        attributes.insert("node".into(), version.trim_start_matches('v').to_owned());
        Fingerprint { target: Self::TARGET, unavailable: None, attributes }
    }

    fn command(&self, launch: &Launch) -> Vec<OsString> {
        vec![self.node.clone().into(), launch.artifact.clone().into()]
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    #[test]
    fn node_runs_the_bundle_before_the_boot_arguments() {
        let launch = testing::launch(Target::Js, 7, &[]);
        let node = Node { node: "/usr/bin/node".into() };
        assert_eq!(node.command(&launch), [OsString::from("/usr/bin/node"), "/store/sha256/kernel".into()]);
    }

    #[tokio::test]
    async fn a_host_without_node_says_what_to_install() {
        let node = Node { node: "/nonexistent/node".into() };
        let fingerprint = node.fingerprint().await;
        assert_eq!(fingerprint.unavailable.as_deref(), Some("/nonexistent/node is not installed (apt install nodejs)"));
        assert!(fingerprint.attributes.is_empty());
    }
}
