//! The agent's side of a shim: start one, stream its console, learn how its payload ended.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::Command;
use tokio::time::timeout;

use super::protocol::{ExitRecord, MAX_FRAME, ShimInfo, ShimPaths};
use super::shim::StderrTo;

/// How long a shim may take to start its payload and report.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`wait`] looks at the instance directory.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot start the shim {}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the shim did not start its payload: {0}")]
    ShimFailed(String),
    #[error("cannot prepare the instance directory {}", dir.display())]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Starts shims: knows the `mirari-agent` binary that has the `shim` subcommand.
#[derive(Debug, Clone)]
pub struct ShimLauncher {
    pub program: PathBuf,
    pub console_bytes: usize,
}

/// One payload to supervise.
#[derive(Debug, Clone)]
pub struct Payload {
    pub dir: PathBuf,
    /// The fencing deadline file the shim watches (cluster instances only).
    pub fence: Option<PathBuf>,
    /// The network namespace the payload runs in (see `crate::backends::links`); the host's
    /// when `None`.
    pub netns: Option<PathBuf>,
    pub argv: Vec<OsString>,
    pub env: Vec<(String, OsString)>,
    pub stderr: StderrTo,
}

impl ShimLauncher {
    /// Starts a shim for `payload` and returns once the payload runs.
    pub async fn spawn(&self, payload: &Payload) -> Result<ShimInfo, SupervisorError> {
        let paths = ShimPaths::new(&payload.dir);
        let dir_error = |source| SupervisorError::Dir { dir: payload.dir.clone(), source };
        std::fs::create_dir_all(&payload.dir).map_err(dir_error)?;
        paths.clear_run_files().map_err(dir_error)?;
        let shim_log_path = payload.dir.join("shim.log");
        let shim_log = File::create(&shim_log_path).map_err(dir_error)?;
        let stderr_to = match payload.stderr {
            StderrTo::Console => "console",
            StderrTo::Log => "log",
        };
        let mut child = Command::new(&self.program)
            .arg("shim")
            .arg("--dir")
            .arg(&payload.dir)
            .arg("--console-bytes")
            .arg(self.console_bytes.to_string())
            .arg("--stderr")
            .arg(stderr_to)
            .args(payload.fence.iter().flat_map(|fence| [OsString::from("--fence-file"), fence.into()]))
            .args(payload.netns.iter().flat_map(|netns| [OsString::from("--netns"), netns.into()]))
            .arg("--")
            .args(&payload.argv)
            .envs(payload.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log)
            // Its own process group: signals meant for the agent's group do not reach it.
            .process_group(0)
            .spawn()
            .map_err(|source| SupervisorError::Spawn { program: self.program.clone(), source })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        let read = timeout(SPAWN_TIMEOUT, BufReader::new(stdout).read_line(&mut line)).await;
        // Reap the shim whenever it ends; if the agent dies first, init does.
        tokio::spawn(async move { child.wait().await });
        match (read, serde_json::from_str::<ShimInfo>(line.trim())) {
            (Ok(Ok(_)), Ok(info)) => Ok(info),
            (Err(_), _) => Err(SupervisorError::ShimFailed(format!("no report within {}s", SPAWN_TIMEOUT.as_secs()))),
            _ => {
                let log = std::fs::read_to_string(&shim_log_path).unwrap_or_default();
                Err(SupervisorError::ShimFailed(chain_text(&log)))
            }
        }
    }
}

/// The last line a failed shim logged, which holds its error chain.
fn chain_text(log: &str) -> String {
    log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("it exited without a word").trim().to_owned()
}

/// Where a supervised payload is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running(ShimInfo),
    Exited(ExitRecord),
    /// Neither running nor recorded as exited: the shim died (or never started) with it.
    Lost,
}

pub fn run_state(dir: &Path) -> RunState {
    let paths = ShimPaths::new(dir);
    if let Some(exit) = paths.read_exit() {
        return RunState::Exited(exit);
    }
    match paths.read_info() {
        Some(info) if info.shim.is_alive() => RunState::Running(info),
        _ => {
            // The shim may have written exit.json between the two reads.
            paths.read_exit().map_or(RunState::Lost, RunState::Exited)
        }
    }
}

/// Waits until the payload is no longer running.
pub async fn wait(dir: &Path) -> RunState {
    loop {
        match run_state(dir) {
            RunState::Running(_) => tokio::time::sleep(POLL_INTERVAL).await,
            ended => return ended,
        }
    }
}

/// A piece of console output at a stream offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleFrame {
    pub offset: u64,
    pub data: Vec<u8>,
}

/// A connection to a shim's console socket.
#[derive(Debug)]
pub struct ConsoleReader {
    stream: UnixStream,
}

impl ConsoleReader {
    /// Connects and asks for output from `offset` on. `None` if the shim is gone.
    pub async fn connect(dir: &Path, offset: u64) -> Option<Self> {
        let mut stream = UnixStream::connect(ShimPaths::new(dir).console_socket()).await.ok()?;
        stream.write_all(format!("console {offset}\n").as_bytes()).await.ok()?;
        Some(Self { stream })
    }

    /// The next frame; `None` once the payload has ended and everything was read.
    pub async fn next(&mut self) -> io::Result<Option<ConsoleFrame>> {
        let mut header = [0u8; 12];
        match self.stream.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let (offset, len) = header.split_at(8);
        let offset = u64::from_le_bytes(offset.try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes")));
        }
        let mut data = vec![0u8; len];
        self.stream.read_exact(&mut data).await?;
        Ok(Some(ConsoleFrame { offset, data }))
    }
}
