//! What the `unix` and `js` backends share: the payload is a host process under a shim.
//!
//! Boot arguments follow the [`Program`]'s command line; file image `i` is at the path in
//! `MIRARI_BLOCK_<i>`; its stdout and stderr are its console. For a clean stop the agent first
//! uses the app's control channel (a Unix socket at `MIRARI_CONTROL` that accepts `stop`, the
//! seed's UNIX control channel) if the app opened one, else SIGTERM; after the stop timeout,
//! SIGKILL.
//!
//! An instance with network interfaces runs in a network namespace of its own, with a veth
//! pair per interface whose host end joins the interface's bridge ([`super::links`]); the
//! shim enters it for the payload. The namespace outlives an agent restart with the shim, and
//! goes in `destroy`. An instance without interfaces shares the host's network.

use std::ffi::OsString;
use std::fmt;
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

/// How long the app may take to accept a `stop` on its control socket.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(1);

/// What sets one process backend apart from another: its target, what it needs on the host,
/// and how an artifact becomes a command.
#[async_trait]
pub trait Program: Send + Sync + fmt::Debug + 'static {
    const TARGET: Target;

    /// Whether this host can run the program's artifacts, and the versions it found.
    async fn fingerprint(&self) -> Fingerprint;

    /// The command line that runs `launch`'s artifact, before its boot arguments.
    fn command(&self, launch: &Launch) -> Vec<OsString>;
}

#[derive(Debug, Clone)]
pub struct ProcessBackend<P> {
    launcher: ShimLauncher,
    program: P,
}

#[derive(Debug, Serialize, Deserialize)]
struct ProcessHandle {
    shim: ShimInfo,
}

impl<P: Program> ProcessBackend<P> {
    pub(super) fn with_program(launcher: ShimLauncher, program: P) -> Self {
        Self { launcher, program }
    }

    pub(super) fn program_mut(&mut self) -> &mut P {
        &mut self.program
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

    fn payload(&self, launch: &Launch, netns: Option<PathBuf>) -> Payload {
        let mut argv = self.program.command(launch);
        argv.extend(launch.spec.run.boot_args.iter().map(OsString::from));
        let mut env = vec![
            ("MIRARI_INSTANCE_ID".to_owned(), launch.id.to_string().into()),
            ("MIRARI_CONTROL".to_owned(), Self::control_socket(launch).into()),
        ];
        for (index, file) in launch.files.iter().enumerate() {
            env.push((format!("MIRARI_BLOCK_{index}"), file.clone().into()));
        }
        Payload { dir: launch.dir.clone(), fence: launch.fence.clone(), netns, argv, env, stderr: StderrTo::Console }
    }
}

#[async_trait]
impl<P: Program> Backend for ProcessBackend<P> {
    fn target(&self) -> Target {
        P::TARGET
    }

    async fn fingerprint(&self) -> Fingerprint {
        self.program.fingerprint().await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { graceful_stop: true, recover: true, enforces_resources: false }
    }

    async fn start(&self, launch: &Launch) -> Result<Handle, BackendError> {
        let netns = links::create_netns(launch).await.map_err(BackendError::network(P::TARGET))?;
        match self.launcher.spawn(&self.payload(launch, netns)).await {
            Ok(shim) => Ok(Handle::encode(&ProcessHandle { shim })),
            Err(error) => {
                links::undo(launch).await;
                Err(error.into())
            }
        }
    }

    async fn recover(&self, launch: &Launch, _handle: Option<&Handle>) -> Result<Recovered, BackendError> {
        Ok(shimmed::recover(launch, |shim| Handle::encode(&ProcessHandle { shim })))
    }

    async fn console(&self, launch: &Launch, from: u64) -> Result<ConsoleStream, BackendError> {
        Ok(shimmed::console(launch, from).await)
    }

    async fn wait(&self, launch: &Launch) -> Ended {
        shimmed::wait(launch).await
    }

    async fn stop(&self, launch: &Launch, handle: &Handle, timeout: Duration) -> Result<StopOutcome, BackendError> {
        let ProcessHandle { shim } = handle.decode(P::TARGET)?;
        let ask = async {
            if Self::ask_over_control_socket(launch).await {
                return Ok(());
            }
            shimmed::kill(P::TARGET, &shim, Signal::SIGTERM)
        };
        // A process has nothing between asking and SIGKILL.
        shimmed::stop(P::TARGET, launch, &shim, timeout, ask, (async {}, Duration::ZERO)).await
    }

    async fn inspect(&self, _launch: &Launch, handle: &Handle) -> Result<Inspection, BackendError> {
        let ProcessHandle { shim } = handle.decode(P::TARGET)?;
        Ok(Inspection { running: shim.payload.is_alive(), detail: format!("pid {}", shim.payload.pid) })
    }

    async fn destroy(&self, launch: &Launch) -> Result<(), BackendError> {
        let _ = std::fs::remove_file(Self::control_socket(launch));
        links::release(launch).await.map_err(BackendError::network(P::TARGET))?;
        shimmed::destroy(P::TARGET, launch)
    }
}
