//! The shim process (`mirari-agent shim`): parent of one instance's payload process.
//!
//! It is single-threaded on purpose: the payload is told to die with the thread that forked
//! it (`PR_SET_PDEATHSIG`), so that thread must be the shim's only one, alive as long as the
//! shim is.

use std::cell::RefCell;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::rc::Rc;
use std::time::Duration;

use mirari_core::instance::ExitStatus;
use mirari_core::ring::ByteRing;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::{JoinHandle, spawn_local};
use tokio::time::timeout;

use super::proc::ProcessId;
use mirari_blobs::write_atomically;

use super::fence;
use super::protocol::{ExitRecord, MAX_FRAME, ShimInfo, ShimPaths, encode_frame};
use mirari_core::clock::wall_ms as now_ms;

/// How long the shim waits, after the payload exits, for its last output and for clients to
/// read it. Grandchildren may keep the pipes open; they must not keep the shim alive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The payload's stderr log, when it is not part of the console, stops growing here.
const STDERR_LOG_LIMIT: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StderrTo {
    /// Interleaved with stdout in the console (a process's stderr is its console too).
    Console,
    /// Kept apart in `stderr.log` (QEMU's own messages are not the guest's console).
    Log,
}

/// Arguments of `mirari-agent shim`; the agent builds them, people never type them.
#[derive(Debug, Clone, clap::Args)]
pub struct ShimArgs {
    /// The instance directory: the payload's working directory and where the shim's files go.
    #[arg(long)]
    pub dir: PathBuf,
    /// Size of the console ring.
    #[arg(long, default_value_t = 256 * 1024)]
    pub console_bytes: usize,
    #[arg(long, value_enum, default_value = "console")]
    pub stderr: StderrTo,
    /// A cluster instance's fencing deadline file: the payload is killed once it has passed.
    #[arg(long)]
    pub fence_file: Option<PathBuf>,
    /// The network namespace the payload runs in (a file such as `/run/netns/NAME`); the
    /// host's when absent. The shim itself stays in the host's.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// The payload command and its arguments.
    #[arg(required = true, last = true)]
    pub command: Vec<OsString>,
}

#[derive(Debug, thiserror::Error)]
#[error("shim: cannot {action}")]
pub struct ShimError {
    action: String,
    #[source]
    source: io::Error,
}

fn failed(action: impl Into<String>) -> impl FnOnce(io::Error) -> ShimError {
    let action = action.into();
    move |source| ShimError { action, source }
}

/// Runs the shim until the payload has ended and its exit is recorded.
pub fn run(args: ShimArgs) -> Result<(), ShimError> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(failed("start the runtime"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, supervise(args))
}

async fn supervise(args: ShimArgs) -> Result<(), ShimError> {
    let paths = ShimPaths::new(&args.dir);
    let socket = paths.console_socket();
    let _ = fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(failed(format!("listen on {}", socket.display())))?;

    let (program, program_args) = args.command.split_first().expect("clap requires a command");
    let mut command = Command::new(program);
    command
        .args(program_args)
        .current_dir(&args.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_this_thread(&mut command);
    run_at_no_higher_priority(&mut command);
    if let Some(netns) = &args.netns {
        let namespace =
            fs::File::open(netns).map_err(failed(format!("open the network namespace {}", netns.display())))?;
        enter_network_namespace(&mut command, namespace);
    }
    let mut child = command.spawn().map_err(failed(format!("start {}", program.to_string_lossy())))?;

    let identify = |pid: Option<u32>| {
        pid.and_then(ProcessId::of).ok_or_else(|| failed("identify the processes")(io::ErrorKind::NotFound.into()))
    };
    let info = ShimInfo { shim: identify(Some(std::process::id()))?, payload: identify(child.id())? };
    let json = serde_json::to_vec(&info).expect("shim info serializes");
    write_atomically(&paths.info(), &json).map_err(failed("write shim.json"))?;
    // The agent waits for this line, then stops reading our stdout.
    println!("{}", String::from_utf8_lossy(&json));

    let console = Rc::new(RefCell::new(ByteRing::new(args.console_bytes)));
    let (end_tx, end_rx) = watch::channel(0u64);
    let (done_tx, done_rx) = watch::channel(false);
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let pumps: [JoinHandle<()>; 2] = [
        spawn_local(pump_console(stdout, console.clone(), end_tx.clone())),
        match args.stderr {
            StderrTo::Console => spawn_local(pump_console(stderr, console.clone(), end_tx)),
            StderrTo::Log => spawn_local(pump_log(stderr, paths.stderr_log())),
        },
    ];
    let clients = spawn_local(serve_clients(listener, console.clone(), end_rx, done_rx));
    let fencing = args
        .fence_file
        .clone()
        .zip(child.id())
        .map(|(file, pid)| spawn_local(enforce_fence(file, pid, console.clone())));

    let status = child.wait().await.map_err(failed("wait for the payload"))?;
    if let Some(fencing) = fencing {
        fencing.abort();
    }
    let _ = timeout(DRAIN_TIMEOUT, futures::future::join_all(pumps)).await;
    let status = match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal(signal),
        (None, None) => ExitStatus::Code(-1),
    };
    let tail = console.borrow().contents();
    write_atomically(&paths.console_tail(), &tail).map_err(failed("write console.tail"))?;
    let record = ExitRecord { status, at_ms: now_ms() };
    let json = serde_json::to_vec(&record).expect("exit record serializes");
    write_atomically(&paths.exit(), &json).map_err(failed("write exit.json"))?;

    let _ = done_tx.send(true);
    let _ = timeout(DRAIN_TIMEOUT, clients).await;
    let _ = fs::remove_file(&socket);
    Ok(())
}

/// Kills the payload once the fencing deadline in `file` has passed (the agent could not
/// renew the host's lease, or could not stop the instance itself). A deadline that cannot be
/// read keeps the last one read; with none ever read, the payload is fenced at once.
async fn enforce_fence(file: PathBuf, pid: u32, console: Rc<RefCell<ByteRing>>) {
    let mut deadline = None;
    loop {
        deadline = fence::read(&file).or(deadline);
        let now = mirari_core::clock::boot_ms();
        if fence::passed(now, deadline) {
            let late = now - deadline.unwrap_or(now);
            let note = format!("\n[mirari: fenced: the host's cluster lease ran out {late} ms ago; killed]\n");
            console.borrow_mut().push(note.as_bytes());
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            return;
        }
        tokio::time::sleep(fence::POLL).await;
    }
}

/// Has the kernel kill the payload if the shim dies, so no instance outlives its supervisor
/// unseen.
#[allow(unsafe_code)]
fn die_with_this_thread(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec; it only calls prctl(2), which
    // is async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(io::Error::from));
    }
}

/// Runs the payload at nice 0 when the shim runs at a higher priority (the agent's unit sets
/// `Nice=-5`): the agent and the shims, which start, stop and fence instances, then come before
/// the guests, so a host busy with guests still starts the next one and fences on time. A shim
/// at nice 0 or lower priority leaves its payload where it is.
#[allow(unsafe_code)]
fn run_at_no_higher_priority(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec; it only calls getpriority(2)
    // and setpriority(2), which are async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            use nix::libc::{PRIO_PROCESS, getpriority, setpriority};
            // getpriority may return -1 as a value: a nice of -1 is reset too, so no errno check.
            if getpriority(PRIO_PROCESS, 0) < 0 && setpriority(PRIO_PROCESS, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Has the payload enter the network namespace `namespace` (an open namespace file) before it
/// execs.
#[allow(unsafe_code)]
fn enter_network_namespace(command: &mut Command, namespace: fs::File) {
    // SAFETY: the closure runs in the forked child before exec; it only calls setns(2) on a
    // descriptor opened beforehand, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
        });
    }
}

async fn pump_console(mut pipe: impl AsyncRead + Unpin, console: Rc<RefCell<ByteRing>>, end: watch::Sender<u64>) {
    let mut buffer = vec![0u8; 16 * 1024];
    while let Ok(n @ 1..) = pipe.read(&mut buffer).await {
        let mut ring = console.borrow_mut();
        ring.push(&buffer[..n]);
        end.send_replace(ring.end());
    }
}

async fn pump_log(mut pipe: impl AsyncRead + Unpin, path: PathBuf) {
    let mut written = 0u64;
    let mut log = tokio::fs::File::create(&path).await.ok();
    let mut buffer = vec![0u8; 16 * 1024];
    // Keep reading past the limit, so the payload never blocks on a full pipe.
    while let Ok(n @ 1..) = pipe.read(&mut buffer).await {
        let room = usize::try_from(STDERR_LOG_LIMIT.saturating_sub(written)).unwrap_or(0);
        if let Some(file) = log.as_mut() {
            let keep = n.min(room);
            if file.write_all(&buffer[..keep]).await.is_err() || keep < n {
                let _ = file.write_all(b"\n[mirari: stderr log truncated]\n").await;
                log = None;
            }
            written += keep as u64;
        }
    }
}

async fn serve_clients(
    listener: UnixListener,
    console: Rc<RefCell<ByteRing>>,
    end: watch::Receiver<u64>,
    mut done: watch::Receiver<bool>,
) {
    let mut clients = Vec::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    clients.push(spawn_local(serve_client(stream, console.clone(), end.clone(), done.clone())));
                }
            }
            _ = done.changed() => break,
        }
    }
    futures::future::join_all(clients).await;
}

async fn serve_client(
    stream: UnixStream,
    console: Rc<RefCell<ByteRing>>,
    mut end: watch::Receiver<u64>,
    mut done: watch::Receiver<bool>,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut request = String::new();
    timeout(Duration::from_secs(5), BufReader::new(read).read_line(&mut request))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let mut next: u64 = request
        .strip_prefix("console ")
        .and_then(|offset| offset.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "expected `console <offset>`"))?;
    loop {
        end.borrow_and_update();
        let finished = *done.borrow_and_update();
        let read = console.borrow().read_from(next, MAX_FRAME);
        if !read.bytes.is_empty() {
            let offset = read.next - read.bytes.len() as u64;
            write.write_all(&encode_frame(offset, &read.bytes)).await?;
            next = read.next;
            continue;
        }
        if finished {
            return Ok(());
        }
        tokio::select! {
            changed = end.changed() => if changed.is_err() { done.changed().await.ok(); },
            _ = done.changed() => {}
        }
    }
}
