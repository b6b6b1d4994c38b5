//! The operations that the backends running their payload under a shim share: the process
//! backends ([`super::process`]: unix, js), `kvm` and `freebsd`.

use std::time::Duration;

use futures::StreamExt;
use mirari_core::target::Target;

use super::{BackendError, ConsoleStream, Ended, Handle, Launch, Recovered, StopOutcome};
use crate::supervisor::client::{self, ConsoleFrame, ConsoleReader, RunState};
use crate::supervisor::protocol::{ShimInfo, ShimPaths};

impl From<RunState> for Option<Ended> {
    fn from(state: RunState) -> Self {
        match state {
            RunState::Running(_) => None,
            RunState::Exited(exit) => Some(Ended::Exited(exit.status)),
            RunState::Lost => Some(Ended::Lost),
        }
    }
}

/// Re-adopts a shim from the instance directory (the handle may be missing or stale).
pub fn recover(launch: &Launch, handle_of: impl FnOnce(ShimInfo) -> Handle) -> Recovered {
    match client::run_state(&launch.dir) {
        RunState::Running(info) => Recovered::Running(handle_of(info)),
        ended => Recovered::Ended(Option::<Ended>::from(ended).unwrap_or(Ended::Lost)),
    }
}

pub async fn console(launch: &Launch, from: u64) -> ConsoleStream {
    let Some(reader) = ConsoleReader::connect(&launch.dir, from).await else {
        // The shim is gone: what the run printed last is in its console tail.
        let paths = ShimPaths::new(&launch.dir);
        let tail = std::fs::read(paths.console_tail()).unwrap_or_default();
        let frames = (!tail.is_empty()).then_some(ConsoleFrame { offset: 0, data: tail });
        return futures::stream::iter(frames).boxed();
    };
    futures::stream::unfold(reader, |mut reader| async move {
        let frame = reader.next().await.ok().flatten()?;
        Some((frame, reader))
    })
    .boxed()
}

pub async fn wait(launch: &Launch) -> Ended {
    Option::<Ended>::from(client::wait(&launch.dir).await).unwrap_or(Ended::Lost)
}

/// Waits up to `timeout` for the payload to end; true if it did.
async fn ended_within(launch: &Launch, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, client::wait(&launch.dir)).await.is_ok()
}

/// Stops a shimmed payload: `ask` it to shut down and wait up to `timeout`; then `force` it off
/// and wait up to `grace`; then SIGKILL it. Returns once it ended.
pub async fn stop(
    target: Target,
    launch: &Launch,
    shim: &ShimInfo,
    timeout: Duration,
    ask: impl Future<Output = Result<(), BackendError>>,
    (force, grace): (impl Future<Output = ()>, Duration),
) -> Result<StopOutcome, BackendError> {
    ask.await?;
    if ended_within(launch, timeout).await {
        return Ok(StopOutcome::Graceful);
    }
    force.await;
    if !ended_within(launch, grace).await {
        kill(target, shim, nix::sys::signal::Signal::SIGKILL)?;
        wait(launch).await;
    }
    Ok(StopOutcome::Forced)
}

pub fn kill(target: Target, info: &ShimInfo, signal: nix::sys::signal::Signal) -> Result<(), BackendError> {
    if !info.payload.is_alive() {
        return Ok(());
    }
    match nix::sys::signal::kill(info.payload.nix_pid(), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(BackendError::Io {
            target,
            action: format!("send {signal} to pid {}", info.payload.pid),
            source: e.into(),
        }),
    }
}

pub fn destroy(target: Target, launch: &Launch) -> Result<(), BackendError> {
    let paths = ShimPaths::new(&launch.dir);
    for path in [paths.console_socket(), paths.info()] {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(BackendError::Io { target, action: format!("remove {}", path.display()), source: e });
            }
            _ => {}
        }
    }
    Ok(())
}
