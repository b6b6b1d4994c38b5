//! The `unix` backend: the artifact is a native executable, supervised as a process.
//!
//! Boot arguments become its argv; file image `i` is at the path in `MIRARI_BLOCK_<i>`; its
//! stdout and stderr are its console. For a clean stop the agent first uses the app's control
//! channel (a Unix socket at `MIRARI_CONTROL` that accepts `stop`, the seed's UNIX control
//! channel) if the app opened one, else SIGTERM; after the stop timeout, SIGKILL.
//!
//! An instance with network interfaces runs in a network namespace of its own, with a veth
//! pair per interface whose host end joins the interface's bridge ([`super::links`]); the
//! shim enters it for the payload. The namespace outlives an agent restart with the shim, and
//! goes in `destroy`. An instance without interfaces shares the host's network.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use mirari_core::target::Target;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::{
    Backend, BackendError, Capabilities, ConsoleStream, Ended, Fingerprint, Handle, Inspection, Launch, Recovered,
    StopOutcome, links, shimmed,
};
use crate::supervisor::client::{Payload, ShimLauncher};
use crate::supervisor::protocol::ShimInfo;
use crate::supervisor::shim::StderrTo;

const TARGET: Target = Target::Unix;
/// How long the app may take to accept a `stop` on its control socket.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct UnixBackend {
    launcher: ShimLauncher,
}

#[derive(Debug, Serialize, Deserialize)]
struct UnixHandle {
    shim: ShimInfo,
}

impl UnixBackend {
    pub fn new(launcher: ShimLauncher) -> Self {
        Self { launcher }
    }

    fn control_socket(launch: &Launch) -> PathBuf {
        launch.dir.join("control.sock")
    }

    /// Sends `stop` over the app's control socket; false if the app has none.
    async fn ask_over_control_socket(launch: &Launch) -> bool {
        let ask = async {
            let mut stream = UnixStream::connect(Self::control_socket(launch)).await?;
            stream.write_all(b"stop\n").await
        };
        matches!(tokio::time::timeout(CONTROL_TIMEOUT, ask).await, Ok(Ok(())))
    }
}

#[async_trait]
impl Backend for UnixBackend {
    fn target(&self) -> Target {
        TARGET
    }

    async fn fingerprint(&self) -> Fingerprint {
        let mut attributes = BTreeMap::new();
        if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
            attributes.insert("kernel".into(), release.trim().to_owned());
        }
        attributes.insert("arch".into(), std::env::consts::ARCH.into());
        Fingerprint { target: TARGET, unavailable: None, attributes }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { graceful_stop: true, recover: true, enforces_resources: false }
    }

    async fn start(&self, launch: &Launch) -> Result<Handle, BackendError> {
        let mut argv: Vec<OsString> = vec![launch.artifact.clone().into()];
        argv.extend(launch.spec.run.boot_args.iter().map(OsString::from));
        let mut env = vec![
            ("MIRARI_INSTANCE_ID".to_owned(), launch.id.to_string().into()),
            ("MIRARI_CONTROL".to_owned(), Self::control_socket(launch).into()),
        ];
        for (index, file) in launch.files.iter().enumerate() {
            env.push((format!("MIRARI_BLOCK_{index}"), file.clone().into()));
        }
        let netns = links::create_netns(launch).await.map_err(BackendError::network(TARGET))?;
        let payload = Payload {
            dir: launch.dir.clone(),
            fence: launch.fence.clone(),
            netns,
            argv,
            env,
            stderr: StderrTo::Console,
        };
        match self.launcher.spawn(&payload).await {
            Ok(shim) => Ok(Handle::encode(&UnixHandle { shim })),
            Err(error) => {
                links::undo(launch).await;
                Err(error.into())
            }
        }
    }

    async fn recover(&self, launch: &Launch, _handle: Option<&Handle>) -> Result<Recovered, BackendError> {
        Ok(shimmed::recover(launch, |shim| Handle::encode(&UnixHandle { shim })))
    }

    async fn console(&self, launch: &Launch, from: u64) -> Result<ConsoleStream, BackendError> {
        Ok(shimmed::console(launch, from).await)
    }

    async fn wait(&self, launch: &Launch) -> Ended {
        shimmed::wait(launch).await
    }

    async fn stop(&self, launch: &Launch, handle: &Handle, timeout: Duration) -> Result<StopOutcome, BackendError> {
        let UnixHandle { shim } = handle.decode(TARGET)?;
        let ask = async {
            if Self::ask_over_control_socket(launch).await {
                return Ok(());
            }
            shimmed::kill(TARGET, &shim, Signal::SIGTERM)
        };
        // A process has nothing between asking and SIGKILL.
        shimmed::stop(TARGET, launch, &shim, timeout, ask, (async {}, Duration::ZERO)).await
    }

    async fn inspect(&self, _launch: &Launch, handle: &Handle) -> Result<Inspection, BackendError> {
        let UnixHandle { shim } = handle.decode(TARGET)?;
        Ok(Inspection { running: shim.payload.is_alive(), detail: format!("pid {}", shim.payload.pid) })
    }

    async fn destroy(&self, launch: &Launch) -> Result<(), BackendError> {
        let _ = std::fs::remove_file(Self::control_socket(launch));
        links::release(launch).await.map_err(BackendError::network(TARGET))?;
        shimmed::destroy(TARGET, launch)
    }
}
