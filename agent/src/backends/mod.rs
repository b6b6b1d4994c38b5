//! Backends: how instances of one target run on this host.
//!
//! Shaped after Nomad's driver plugin: a backend fingerprints the host (is it usable here, what
//! versions, why not), declares its capabilities, and starts, recovers, watches, stops,
//! inspects and destroys instances. What a backend needs to find an instance again after an
//! agent restart goes in its opaque [`Handle`], which the agent persists with the instance.
//! Every backend passes the same conformance suite (`agent/tests/conformance.rs`).

pub mod bhyve;
pub mod domain_fence;
pub mod js;
pub mod kvm;
pub mod links;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod rpi;
mod shimmed;
pub mod unix;
pub mod xen;
pub mod xenstore;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use mirari_core::ids::InstanceId;
use mirari_core::instance::ExitStatus;
use mirari_core::spec::InstanceSpec;
use mirari_core::target::Target;
use serde::{Deserialize, Serialize};

use crate::supervisor::client::{ConsoleFrame, SupervisorError};

/// What a backend found on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fingerprint {
    pub target: Target,
    /// `None` when the backend works here; otherwise why not, for the operator.
    pub unavailable: Option<String>,
    /// Versions and facts, e.g. `qemu` -> `7.2.22`, `accelerators` -> `kvm,tcg`.
    pub attributes: BTreeMap<String, String>,
}

/// What a backend can do, so callers need not try and fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Can ask an instance to shut down cleanly before forcing it.
    pub graceful_stop: bool,
    /// Instances survive an agent restart and are re-adopted.
    pub recover: bool,
    /// The memory and vCPU figures of the run policy are enforced.
    pub enforces_resources: bool,
}

impl Capabilities {
    /// The names of what it can do, for people.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.graceful_stop, "graceful-stop"),
            (self.recover, "recover"),
            (self.enforces_resources, "enforces-resources"),
        ]
        .into_iter()
        .filter_map(|(has, name)| has.then_some(name))
        .collect()
    }
}

/// Everything a backend needs to know about one instance.
#[derive(Debug, Clone)]
pub struct Launch {
    pub id: InstanceId,
    /// The instance's private directory: sockets, logs, the shim's records.
    pub dir: PathBuf,
    /// The verified artifact in the blob store.
    pub artifact: PathBuf,
    /// The verified file images, in declaration order.
    pub files: Vec<PathBuf>,
    pub spec: InstanceSpec,
    /// For a cluster instance, the file holding its fencing deadline (see
    /// `crate::supervisor::fence`): its supervisor kills it once that passes. `None` for a
    /// local instance, which no lease governs.
    pub fence: Option<PathBuf>,
    /// The bridge each of `spec.interfaces` joins, in order; empty when this host does not
    /// carry that interface's network.
    pub bridges: Vec<String>,
}

/// A backend's own record of a started instance, opaque to the agent, persisted with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handle(pub serde_json::Value);

impl Handle {
    fn encode(value: &impl Serialize) -> Self {
        Self(serde_json::to_value(value).expect("backend handles serialize"))
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, target: Target) -> Result<T, BackendError> {
        serde_json::from_value(self.0.clone()).map_err(|e| BackendError::BadHandle { target, reason: e.to_string() })
    }
}

/// How an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(ExitStatus),
    /// It is gone and nothing recorded how it ended.
    Lost,
}

/// What [`Backend::recover`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovered {
    Running(Handle),
    Ended(Ended),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StopOutcome {
    /// It shut down within the timeout.
    Graceful,
    /// It had to be forced off.
    Forced,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub running: bool,
    /// For people: e.g. "pid 4242" or "qemu pid 4242, accel tcg, status running".
    pub detail: String,
}

pub type ConsoleStream = BoxStream<'static, ConsoleFrame>;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the {target} backend is not available on this host: {reason}")]
    Unavailable { target: Target, reason: String },
    #[error("the {target} backend does not support {operation}")]
    Unsupported { target: Target, operation: &'static str },
    #[error("{target}: the instance's handle is unreadable: {reason}")]
    BadHandle { target: Target, reason: String },
    #[error("{target}: {message}")]
    Failed { target: Target, message: String },
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// The instance's network interfaces could not be set up or removed.
    #[error("{target}: {source}")]
    Network {
        target: Target,
        #[source]
        source: links::LinkError,
    },
    #[error("{target}: cannot {action}")]
    Io {
        target: Target,
        action: String,
        #[source]
        source: std::io::Error,
    },
}

impl BackendError {
    /// Wraps a [`links::LinkError`] of the `target` backend.
    fn network(target: Target) -> impl FnOnce(links::LinkError) -> Self {
        move |source| Self::Network { target, source }
    }
}

/// Runs a host tool (`xl`, `bhyvectl`, ...) with no stdin for at most `timeout`; its stdout, or
/// an error that shows the command line and the tool's stderr. An abandoned run (a stop that
/// moved on) is killed, not left to linger.
async fn run_tool(target: Target, argv: &[OsString], timeout: Duration) -> Result<Vec<u8>, BackendError> {
    let shown = argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
    let (program, args) = argv.split_first().expect("a command names its program");
    let output =
        tokio::process::Command::new(program).args(args).stdin(std::process::Stdio::null()).kill_on_drop(true).output();
    let output = tokio::time::timeout(timeout, output)
        .await
        .map_err(|_| BackendError::Failed { target, message: format!("`{shown}` did not finish within {timeout:?}") })?
        .map_err(|source| BackendError::Io { target, action: format!("run `{shown}`"), source })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(BackendError::Failed { target, message: format!("`{shown}` failed: {}", stderr.trim()) });
    }
    Ok(output.stdout)
}

/// Where `program` is: itself if it names a path, else the first executable of that name on
/// PATH.
fn find_program(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.components().count() > 1 {
        return executable(program).then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| executable(candidate))
}

/// What `program --version` printed, or `None` if it could not run or failed.
async fn version_output(program: &Path) -> Option<String> {
    let output = tokio::process::Command::new(program).arg("--version").output().await.ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    fn target(&self) -> Target;

    async fn fingerprint(&self) -> Fingerprint;

    fn capabilities(&self) -> Capabilities;

    /// Starts the instance; returns once it runs.
    async fn start(&self, launch: &Launch) -> Result<Handle, BackendError>;

    /// Finds the instance again after an agent restart. `handle` is what `start` returned, or
    /// `None` if the agent died before it could persist it.
    async fn recover(&self, launch: &Launch, handle: Option<&Handle>) -> Result<Recovered, BackendError>;

    /// Console output of the current run from stream offset `from` on (or the oldest kept);
    /// the stream ends when the run ends. For a run that already ended, what it last printed.
    async fn console(&self, launch: &Launch, from: u64) -> Result<ConsoleStream, BackendError>;

    /// Resolves when the current run has ended.
    async fn wait(&self, launch: &Launch) -> Ended;

    /// Asks the instance to shut down; forces it off after `timeout`. Returns once it ended.
    async fn stop(&self, launch: &Launch, handle: &Handle, timeout: Duration) -> Result<StopOutcome, BackendError>;

    async fn inspect(&self, launch: &Launch, handle: &Handle) -> Result<Inspection, BackendError>;

    /// Releases what the instance held on the host (sockets, runtime files). It must have ended.
    async fn destroy(&self, launch: &Launch) -> Result<(), BackendError>;
}

/// Launches for the backends' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use mirari_core::digest::Digest;
    use mirari_core::network::{Interface, MacAddress};
    use mirari_core::spec::RunPolicy;

    use super::*;

    /// A launch of instance `id` for `target` with a file image, and each of `interfaces` (an
    /// address with its prefix, and a gateway) on the bridge beside it ("" when not carried).
    pub fn launch(target: Target, id: u64, interfaces: &[(&str, Option<&str>, &str)]) -> Launch {
        let id = InstanceId::from_u64(id);
        let dir = PathBuf::from(format!("/var/lib/mirari/agent/instances/{id}"));
        let (interfaces, bridges) = interfaces
            .iter()
            .enumerate()
            .map(|(index, (address, gateway, bridge))| {
                let interface = Interface {
                    network: format!("net{index}"),
                    address: address.parse().expect("a test address"),
                    gateway: gateway.map(|g| g.parse().expect("a test gateway")),
                    mac: MacAddress::for_instance(id, u8::try_from(index).expect("few interfaces")),
                };
                (interface, (*bridge).to_owned())
            })
            .unzip();
        Launch {
            id,
            artifact: "/store/sha256/kernel".into(),
            files: vec!["/store/sha256/data".into()],
            fence: None,
            bridges,
            spec: InstanceSpec {
                app: "hello".into(),
                version: "1".into(),
                target,
                artifact: Digest::of(b"k"),
                files: vec![],
                run: RunPolicy {
                    memory_mib: 32,
                    boot_args: vec!["--ip=10.0.0.2".into(), "say=\"hi\"".into()],
                    ..RunPolicy::default()
                },
                interfaces,
            },
            dir,
        }
    }
}
