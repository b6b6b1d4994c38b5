//! What the QEMU-based backends (`kvm`, `rpi`) share: QEMU under a shim, driven through QMP.
//!
//! Each instance's QMP socket is `qmp.sock` in its directory. A start waits until QEMU opens
//! it (or reports what QEMU printed when it died first); inspection asks `query-status`; a
//! stop's last resort before SIGKILL is `quit`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mirari_core::target::Target;
use nix::sys::signal::Signal;

use super::qmp::Qmp;
use super::{BackendError, Inspection, Launch, shimmed, version_output};
use crate::supervisor::client::{self, Payload, RunState, ShimLauncher};
use crate::supervisor::protocol::{ShimInfo, ShimPaths};

/// How long QEMU may take to open its QMP socket after it started.
const QMP_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// After `quit`, how long to wait before killing QEMU outright.
pub const QUIT_GRACE: Duration = Duration::from_secs(5);

pub fn qmp_socket(launch: &Launch) -> PathBuf {
    launch.dir.join("qmp.sock")
}

/// The `-qmp` option value for this instance's socket.
pub fn qmp_option(launch: &Launch) -> String {
    format!("unix:{},server=on,wait=off", qmp_socket(launch).display())
}

/// Starts QEMU under a shim and waits until it opens QMP; kills it if it does not get there.
pub async fn start(
    target: Target,
    launcher: &ShimLauncher,
    launch: &Launch,
    payload: &Payload,
) -> Result<ShimInfo, BackendError> {
    let _ = std::fs::remove_file(qmp_socket(launch));
    let shim = launcher.spawn(payload).await?;
    if let Err(error) = wait_until_ready(target, launch).await {
        let _ = shimmed::kill(target, &shim, Signal::SIGKILL);
        return Err(error);
    }
    Ok(shim)
}

/// Waits for QEMU to open QMP; if it dies instead, its stderr says why.
async fn wait_until_ready(target: Target, launch: &Launch) -> Result<(), BackendError> {
    let deadline = tokio::time::Instant::now() + QMP_READY_TIMEOUT;
    loop {
        if Qmp::connect(&qmp_socket(launch)).await.is_ok() {
            return Ok(());
        }
        let exited = !matches!(client::run_state(&launch.dir), RunState::Running(_));
        if exited || tokio::time::Instant::now() >= deadline {
            let stderr = std::fs::read_to_string(ShimPaths::new(&launch.dir).stderr_log()).unwrap_or_default();
            let why = if exited { "QEMU exited" } else { "QEMU did not open QMP in time" };
            return Err(BackendError::Failed { target, message: format!("{why}: {}", stderr.trim()) });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends one QMP command, ignoring failure (QEMU may be gone already).
pub async fn send(launch: &Launch, command: &'static str) {
    if let Ok(mut qmp) = Qmp::connect(&qmp_socket(launch)).await {
        let _ = qmp.execute(command).await;
    }
}

/// Whether QEMU runs the guest, from the shim and `query-status`; `what` leads the detail.
pub async fn inspect(launch: &Launch, shim: &ShimInfo, what: &str) -> Inspection {
    let status = match Qmp::connect(&qmp_socket(launch)).await {
        Ok(mut qmp) => qmp
            .execute("query-status")
            .await
            .ok()
            .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "unknown".into()),
        Err(_) => "unreachable".into(),
    };
    Inspection {
        running: shim.payload.is_alive() && status == "running",
        detail: format!("qemu pid {}, {what}, status {status}", shim.payload.pid),
    }
}

/// The version `qemu --version` names, e.g. `7.2.22`.
pub async fn version(qemu: &Path) -> Option<String> {
    let text = version_output(qemu).await?;
    // "QEMU emulator version 7.2.22 (Debian ...)"
    text.split_whitespace().skip_while(|w| *w != "version").nth(1).map(str::to_owned)
}

/// QEMU's options separate with commas; a comma in a path is written twice.
pub fn escape_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}
