//! The `xen` backend: instances are Xen domains, run through the `xl` toolstack from dom0.
//!
//! Each instance is a PVH domain named `mirari-<instance ID>`, tagged in xenstore under
//! `/local/domain/0/mirari/instances/<instance ID>` (dom0's own tree, which guests cannot
//! change). A restarted agent re-adopts domains by name. The domain config the agent writes:
//! the artifact as the kernel, boot arguments as the command line, memory and vCPUs from the
//! run policy, the file images as read-only disks (`xvda`, ...) and the first one also as the
//! boot module (`ramdisk`) for guests without a block driver, and `preserve` on poweroff,
//! reboot and crash, so the agent sees how a domain ended before it destroys it. Each network
//! interface is a vif with the interface's MAC on its bridge (`vif = [...]`); the toolstack
//! makes and removes the vifs with the domain.
//!
//! Exit detection watches xenstore's `@releaseDomain` (fired when a domain shuts down or dies)
//! instead of polling. The exit code is Xen's shutdown reason: 0 for a power-off, 3 for a crash;
//! a domain that a stop forced off (`xl destroy`, which leaves no reason) ended as a killed
//! process does, with signal 9.
//!
//! The console is the domain's console pty, whose path xenconsoled puts in xenstore. A pty has
//! one stream (two readers would split the output between them), so one task per domain reads
//! it into a bounded ring from the domain's start until it is gone, and `console` serves that
//! ring from any offset: a run's whole console, also once it ended, until `destroy`.
//!
//! A cluster domain gets a fence keeper beside it ([`super::domain_fence`]): it destroys the
//! domain once the host's fencing deadline passes, even if the agent is dead or frozen.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use mirari_core::instance::ExitStatus;
use mirari_core::target::Target;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use super::xenstore::Xenstore;
use super::{
    Backend, BackendError, Capabilities, ConsoleStream, Ended, Fingerprint, Handle, Inspection, Launch, Recovered,
    StopOutcome, links,
};
use crate::console::ConsoleBuffer;
use crate::supervisor::client::ConsoleFrame;
use crate::supervisor::proc::ProcessId;

const TARGET: Target = Target::Xen;
/// How long an `xl` command may take.
const XL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the state is looked at again when no xenstore event says it changed.
const STATE_RECHECK: Duration = Duration::from_secs(2);
/// The xenstore directory (in dom0's tree) where instances are tagged with their domain ID.
const TAGS: &str = "/local/domain/0/mirari/instances";
/// In the instance directory: the fence keeper's process identity.
const KEEPER_FILE: &str = "domain-fence.json";
/// In the instance directory: written (with the domain ID) before a stop forces the domain off
/// with `xl destroy`, which leaves Xen no shutdown reason to read. A start removes it.
const FORCED_FILE: &str = "forced-off";
/// How a domain that was forced off ended: as a killed process does.
const FORCED_OFF: ExitStatus = ExitStatus::Signal(nix::sys::signal::Signal::SIGKILL as i32);
/// Once a domain stopped running, how long its console is still read for lines on their way
/// (the guest's last output passes through xenconsoled after it shut down).
const CONSOLE_DRAIN: Duration = Duration::from_millis(500);

/// The console of every domain this process reads, by domain name (unique on the host). Shared
/// by every backend value in the process, so that two (a restarted agent's stand-in in a test
/// beside the first) never read one pty at once.
static CONSOLES: LazyLock<tokio::sync::Mutex<BTreeMap<String, DomainConsole>>> = LazyLock::new(Default::default);

/// One domain's console: the ring its reading task fills, for the domain with this ID (a
/// restarted instance's next domain has the same name and another ID).
#[derive(Debug)]
struct DomainConsole {
    domid: u32,
    buffer: Arc<ConsoleBuffer>,
}

#[derive(Debug, Clone)]
pub struct XenBackend {
    xl: PathBuf,
    /// The `mirari-agent` binary, whose `domain-fence` subcommand keeps a cluster domain's
    /// fencing deadline.
    agent_program: PathBuf,
    /// How much of each domain's console is kept.
    console_bytes: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct KeeperRecord {
    domid: u32,
    process: ProcessId,
}

#[derive(Debug, Serialize, Deserialize)]
struct XenHandle {
    name: String,
    domid: u32,
}

/// A domain's state, from `xl list -v`: the state column (`r-----`, `--s---`, `---sc-`, ...)
/// and the shutdown reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DomainState {
    Running,
    /// Being destroyed.
    Dying,
    /// Shut down and preserved, with Xen's reason (`SHUTDOWN_*`: 0 poweroff, 1 reboot,
    /// 2 suspend, 3 crash, 4 watchdog), which is the instance's exit code.
    Ended {
        reason: i32,
    },
}

impl DomainState {
    fn ended(self) -> Option<Ended> {
        match self {
            DomainState::Ended { reason } => Some(Ended::Exited(ExitStatus::Code(reason))),
            DomainState::Running | DomainState::Dying => None,
        }
    }
}

fn failed(message: impl Into<String>) -> BackendError {
    BackendError::Failed { target: TARGET, message: message.into() }
}

fn domain_name(launch: &Launch) -> String {
    format!("mirari-{}", launch.id)
}

/// How a domain that no longer exists ended: forced off by a stop, or nobody knows.
fn gone(launch: &Launch) -> Ended {
    if launch.dir.join(FORCED_FILE).exists() { Ended::Exited(FORCED_OFF) } else { Ended::Lost }
}

/// Opens a console pty for reading without blocking a thread (a blocking read of a quiet pty
/// would never return, and would hold up the runtime's shutdown for good). O_NOCTTY: the agent
/// must not make a guest's pty its controlling terminal, or the hang-up when the domain goes
/// would kill it with SIGHUP.
#[allow(unsafe_code)]
fn open_pty(tty: &str) -> Result<AsyncFd<std::fs::File>, BackendError> {
    let io = |source| BackendError::Io { target: TARGET, action: format!("open the console {tty}"), source };
    let flags = nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_NONBLOCK;
    let pty = std::fs::OpenOptions::new().read(true).custom_flags(flags.bits()).open(tty).map_err(io)?;
    // SAFETY: the `File` owns its descriptor, which stays open (and the same) until the
    // `AsyncFd`, which owns the `File`, is dropped.
    unsafe { AsyncFd::register_with_interest(pty, tokio::io::Interest::READABLE) }.map_err(|e| io(e.into_parts().1))
}

/// One read of what the pty has; 0 or an error (EIO) once xenconsoled closed it.
async fn read_pty(pty: &AsyncFd<std::fs::File>, chunk: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut ready = pty.readable().await?;
        if let Ok(read) = ready.try_io(|pty| pty.get_ref().read(chunk)) {
            return read;
        }
    }
}

impl XenBackend {
    /// `console_bytes`: how much of each domain's console is kept.
    pub fn new(agent_program: PathBuf, console_bytes: usize) -> Self {
        Self { xl: "xl".into(), agent_program, console_bytes }
    }

    /// The console of domain `domid` (named `name`): the ring being filled from its pty, which
    /// this starts reading unless it already is.
    async fn read_console(&self, name: &str, domid: u32) -> Result<Arc<ConsoleBuffer>, BackendError> {
        let mut consoles = CONSOLES.lock().await;
        if let Some(kept) = consoles.get(name).filter(|kept| kept.domid == domid) {
            return Ok(kept.buffer.clone());
        }
        let xenstore = Xenstore::connect_default().await.map_err(|e| failed(format!("xenstore: {e}")))?;
        let tty = xenstore
            .read_string(&format!("/local/domain/{domid}/console/tty"))
            .await
            .map_err(|e| failed(format!("xenstore: {e}")))?
            .ok_or_else(|| failed(format!("domain {name} has no console pty in xenstore yet")))?;
        let pty = open_pty(&tty)?;
        let buffer = Arc::new(ConsoleBuffer::new(self.console_bytes));
        consoles.insert(name.to_owned(), DomainConsole { domid, buffer: buffer.clone() });
        tokio::spawn(self.clone().fill_console(name.to_owned(), pty, buffer.clone()));
        Ok(buffer)
    }

    /// Reads the pty into the ring until the domain no longer runs (the pty stays open while a
    /// preserved domain sits shut down), and then what is still on its way.
    async fn fill_console(self, name: String, pty: AsyncFd<std::fs::File>, buffer: Arc<ConsoleBuffer>) {
        let mut chunk = vec![0u8; 16 * 1024];
        let stopped = self.stopped_running(&name);
        tokio::pin!(stopped);
        // Until the domain stops running, or xenconsoled closes the pty (0 or EIO: it is gone).
        let closed = loop {
            tokio::select! {
                read = read_pty(&pty, &mut chunk) => match read {
                    Ok(n @ 1..) => buffer.push(&chunk[..n]),
                    _ => break true,
                },
                _ = &mut stopped => break false,
            }
        };
        if !closed {
            while let Ok(Ok(n @ 1..)) = tokio::time::timeout(CONSOLE_DRAIN, read_pty(&pty, &mut chunk)).await {
                buffer.push(&chunk[..n]);
            }
        }
        buffer.set_finished(true);
    }

    /// Makes sure a fence keeper watches cluster domain `domid` (started after `xl create`,
    /// and again for a re-adopted domain whose keeper is gone).
    fn keep_fenced(&self, launch: &Launch, domid: u32) -> Result<(), BackendError> {
        let Some(fence_file) = &launch.fence else { return Ok(()) };
        let record = launch.dir.join(KEEPER_FILE);
        let running = std::fs::read(&record)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<KeeperRecord>(&bytes).ok())
            .is_some_and(|keeper| keeper.domid == domid && keeper.process.is_alive());
        if running {
            return Ok(());
        }
        let io = |action: &str| {
            let action = action.to_owned();
            move |source| BackendError::Io { target: TARGET, action, source }
        };
        let log = std::fs::File::create(launch.dir.join("domain-fence.log")).map_err(io("create domain-fence.log"))?;
        let mut child = tokio::process::Command::new(&self.agent_program)
            .arg("domain-fence")
            .arg("--fence-file")
            .arg(fence_file)
            .arg("--domid")
            .arg(domid.to_string())
            .arg("--xl")
            .arg(&self.xl)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: it must outlive the agent.
            .process_group(0)
            .spawn()
            .map_err(io("start the domain's fence keeper"))?;
        let process = child.id().and_then(ProcessId::of).ok_or_else(|| failed("the fence keeper exited at once"))?;
        tokio::spawn(async move { child.wait().await });
        let json = serde_json::to_vec(&KeeperRecord { domid, process }).expect("keeper records serialize");
        mirari_blobs::write_atomically(&record, &json).map_err(io(&format!("write {KEEPER_FILE}")))
    }

    /// Runs `xl ARGS`; its stdout, or an error with its stderr.
    async fn xl(&self, args: &[&str]) -> Result<String, BackendError> {
        let argv: Vec<OsString> =
            std::iter::once(self.xl.clone().into()).chain(args.iter().map(OsString::from)).collect();
        let stdout = super::run_tool(TARGET, &argv, XL_TIMEOUT).await?;
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }

    /// The domain's ID and state, or `None` if no such domain exists.
    async fn state(&self, name: &str) -> Result<Option<(u32, DomainState)>, BackendError> {
        match self.xl(&["list", "-v", name]).await {
            Ok(listing) => Ok(parse_list(&listing, name)),
            Err(BackendError::Failed { message, .. }) if message.contains("is an invalid domain identifier") => {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// The domain's `xl` config; an error for an interface whose network this host lacks.
    fn domain_config(launch: &Launch) -> Result<String, BackendError> {
        let quote = |text: &str| format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""));
        let run = &launch.spec.run;
        let mut config = vec![
            format!("name = {}", quote(&domain_name(launch))),
            "type = \"pvh\"".to_owned(),
            format!("kernel = {}", quote(&launch.artifact.display().to_string())),
            format!("cmdline = {}", quote(&run.boot_args.join(" "))),
            format!("memory = {}", run.memory_mib),
            format!("vcpus = {}", run.vcpus),
            "on_poweroff = \"preserve\"".to_owned(),
            "on_reboot = \"preserve\"".to_owned(),
            "on_crash = \"preserve\"".to_owned(),
        ];
        if let Some(first) = launch.files.first() {
            config.push(format!("ramdisk = {}", quote(&first.display().to_string())));
        }
        let disks: Vec<String> = launch
            .files
            .iter()
            .enumerate()
            .map(|(i, file)| {
                let vdev = format!("xvd{}", char::from(b'a' + u8::try_from(i).unwrap_or(25)));
                quote(&format!("format=raw,vdev={vdev},access=ro,target={}", file.display()))
            })
            .collect();
        if !disks.is_empty() {
            config.push(format!("disk = [ {} ]", disks.join(", ")));
        }
        let vifs: Vec<String> = links::attachments(launch)
            .map_err(BackendError::network(TARGET))?
            .iter()
            .map(|a| quote(&format!("bridge={},mac={}", a.bridge, a.interface.mac)))
            .collect();
        if !vifs.is_empty() {
            config.push(format!("vif = [ {} ]", vifs.join(", ")));
        }
        Ok(config.join("\n") + "\n")
    }

    /// Asks domain `domid` (if it still is `name`) to power off, the PV way: `control/shutdown =
    /// "poweroff"` in its xenstore tree, which the guest acts on and acknowledges by emptying it
    /// (what `xl shutdown` writes). Written with our own client, at once: `xl` itself can take
    /// seconds to start on a busy dom0, and a short stop timeout would be spent before the guest
    /// was even asked.
    async fn ask_to_power_off(&self, name: &str, domid: u32) -> Result<(), BackendError> {
        let xenstore_failed = |e: super::xenstore::XenstoreError| failed(format!("xenstore: {e}"));
        let xenstore = Xenstore::connect_default().await.map_err(xenstore_failed)?;
        let home = format!("/local/domain/{domid}");
        let named = xenstore.read_string(&format!("{home}/name")).await.map_err(xenstore_failed)?;
        if named.as_deref() != Some(name) {
            return Err(failed(format!("domain {domid} is not {name} (it is {named:?})")));
        }
        xenstore.write(&format!("{home}/control/shutdown"), b"poweroff").await.map_err(xenstore_failed)
    }

    /// Waits until the run's domain is no longer running; how it ended.
    async fn ended(&self, launch: &Launch) -> Ended {
        match self.stopped_running(&domain_name(launch)).await {
            Some(ended) => ended,
            None => gone(launch),
        }
    }

    /// Waits until the domain is no longer running; how it ended, or `None` if it is gone.
    async fn stopped_running(&self, name: &str) -> Option<Ended> {
        // A watch makes exit detection prompt; the periodic look is a fallback for a lost
        // xenstore connection.
        let mut watch = match Xenstore::connect_default().await {
            Ok(xenstore) => {
                xenstore.watch("@releaseDomain", &format!("mirari-release-{name}")).await.ok().map(|w| (xenstore, w))
            }
            Err(_) => None,
        };
        loop {
            match self.state(name).await {
                Ok(None) => return None,
                Ok(Some((_, state))) => {
                    if let Some(ended) = state.ended() {
                        return Some(ended);
                    }
                }
                Err(_) => {}
            }
            match watch.as_mut() {
                Some((_, events)) => {
                    let _ = tokio::time::timeout(STATE_RECHECK, events.recv()).await;
                }
                None => tokio::time::sleep(STATE_RECHECK).await,
            }
        }
    }
}

/// Finds `name`'s row in `xl list -v` output:
/// `Name ID Mem VCPUs State Time(s) UUID Reason-Code Security-Label`.
fn parse_list(listing: &str, name: &str) -> Option<(u32, DomainState)> {
    let row = listing.lines().find(|l| l.split_whitespace().next() == Some(name))?;
    let fields: Vec<&str> = row.split_whitespace().collect();
    let domid = fields.get(1)?.parse().ok()?;
    let flags = fields.get(4)?;
    let reason = fields.get(7).and_then(|r| r.parse().ok());
    let state = if flags.contains('s') || flags.contains('c') {
        // A crash leaves `---sc-`; without a reason column, a crash is still a failure.
        DomainState::Ended { reason: reason.unwrap_or(if flags.contains('c') { 3 } else { 0 }) }
    } else if flags.contains('d') {
        DomainState::Dying
    } else {
        DomainState::Running
    };
    Some((domid, state))
}

fn remove_if_present(path: &std::path::Path) -> Result<(), BackendError> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(BackendError::Io { target: TARGET, action: format!("remove {}", path.display()), source: error })
        }
        _ => Ok(()),
    }
}

/// `xl info`'s `key : value` lines.
fn parse_info(info: &str) -> BTreeMap<String, String> {
    info.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

#[async_trait]
impl Backend for XenBackend {
    fn target(&self) -> Target {
        TARGET
    }

    async fn fingerprint(&self) -> Fingerprint {
        let unavailable =
            |reason: String| Fingerprint { target: TARGET, unavailable: Some(reason), attributes: BTreeMap::new() };
        let info = match self.xl(&["info"]).await {
            Ok(info) => parse_info(&info),
            Err(BackendError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return unavailable("xl was not found: this is not a Xen dom0 (install xen-utils on one)".into());
            }
            Err(error) => return unavailable(format!("this is not a usable Xen dom0: {error}")),
        };
        let version = format!(
            "{}.{}{}",
            info.get("xen_major").map_or("?", String::as_str),
            info.get("xen_minor").map_or("?", String::as_str),
            info.get("xen_extra").map_or("", String::as_str)
        );
        let caps = info.get("xen_caps").cloned().unwrap_or_default();
        let mut guests = vec!["pv"];
        if caps.contains("hvm") {
            guests.push("pvh");
        }
        let mut attributes =
            BTreeMap::from([("xen".to_owned(), version), ("guest_types".to_owned(), guests.join(","))]);
        if let Some(free) = info.get("free_memory") {
            attributes.insert("free_memory_mib".into(), free.clone());
        }
        if !caps.contains("hvm") {
            return Fingerprint {
                target: TARGET,
                unavailable: Some("Xen runs without HVM support here, so PVH guests cannot start".into()),
                attributes,
            };
        }
        Fingerprint { target: TARGET, unavailable: None, attributes }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { graceful_stop: true, recover: true, enforces_resources: true }
    }

    async fn start(&self, launch: &Launch) -> Result<Handle, BackendError> {
        let name = domain_name(launch);
        std::fs::create_dir_all(&launch.dir).map_err(|e| BackendError::Io {
            target: TARGET,
            action: "create the instance directory".into(),
            source: e,
        })?;
        let config_path = launch.dir.join("domain.cfg");
        std::fs::write(&config_path, Self::domain_config(launch)?).map_err(|e| BackendError::Io {
            target: TARGET,
            action: format!("write {}", config_path.display()),
            source: e,
        })?;
        // A domain of this name left over from a run before (the agent died while it started)
        // would make `xl create` fail; it is this instance's, so it goes.
        if self.state(&name).await?.is_some() {
            self.xl(&["destroy", &name]).await?;
        }
        remove_if_present(&launch.dir.join(FORCED_FILE))?;
        self.xl(&["create", &config_path.display().to_string()]).await?;
        let (domid, _) = self
            .state(&name)
            .await?
            .ok_or_else(|| failed(format!("domain {name} vanished right after it was created")))?;
        if let Ok(xenstore) = Xenstore::connect_default().await {
            let _ = xenstore.write(&format!("{TAGS}/{}", launch.id), domid.to_string().as_bytes()).await;
        }
        // From the first line on; `console` tries again if the pty is not known yet.
        if let Err(error) = self.read_console(&name, domid).await {
            tracing::warn!(domain = %name, %error, "the console is not read yet");
        }
        if let Err(error) = self.keep_fenced(launch, domid) {
            // Unfenced, a cluster domain could outlive a dead agent's lease: not started.
            let _ = self.xl(&["destroy", &name]).await;
            return Err(error);
        }
        Ok(Handle::encode(&XenHandle { name, domid }))
    }

    async fn recover(&self, launch: &Launch, _handle: Option<&Handle>) -> Result<Recovered, BackendError> {
        let name = domain_name(launch);
        Ok(match self.state(&name).await? {
            None => Recovered::Ended(gone(launch)),
            Some((_, state)) if state.ended().is_some() => Recovered::Ended(state.ended().unwrap_or(Ended::Lost)),
            Some((domid, _)) => {
                self.keep_fenced(launch, domid)?;
                Recovered::Running(Handle::encode(&XenHandle { name, domid }))
            }
        })
    }

    async fn console(&self, launch: &Launch, from: u64) -> Result<ConsoleStream, BackendError> {
        let name = domain_name(launch);
        let buffer = match self.state(&name).await? {
            Some((domid, _)) => self.read_console(&name, domid).await?,
            // Gone (forced off, say): what it printed is kept until `destroy`.
            None => match CONSOLES.lock().await.get(&name) {
                Some(kept) => kept.buffer.clone(),
                None => return Ok(futures::stream::empty().boxed()),
            },
        };
        let frames = buffer.read_from(from, true).filter_map(|read| {
            let offset = read.next - read.bytes.len() as u64;
            futures::future::ready((!read.bytes.is_empty()).then_some(ConsoleFrame { offset, data: read.bytes }))
        });
        Ok(frames.boxed())
    }

    async fn wait(&self, launch: &Launch) -> Ended {
        self.ended(launch).await
    }

    async fn stop(&self, launch: &Launch, handle: &Handle, timeout: Duration) -> Result<StopOutcome, BackendError> {
        let name = domain_name(launch);
        let domid = handle.decode::<XenHandle>(TARGET)?.domid;
        // The request runs beside the wait: the guest may end before it is acknowledged.
        let asking = async {
            if self.ask_to_power_off(&name, domid).await.is_err() {
                // Without xenstore, through the toolstack (which waits up to a minute for the
                // guest to acknowledge; dropped, so killed, when the wait is over).
                let _ = self.xl(&["shutdown", &name]).await;
            }
        };
        let ended = tokio::time::timeout(timeout, async {
            tokio::pin!(asking);
            let mut asked = false;
            loop {
                tokio::select! {
                    ended = self.stopped_running(&name) => return ended,
                    () = &mut asking, if !asked => asked = true,
                }
            }
        })
        .await;
        if ended.is_ok() {
            return Ok(StopOutcome::Graceful);
        }
        match self.state(&name).await? {
            // It shut down on its own after all, just now.
            Some((_, DomainState::Ended { .. })) => Ok(StopOutcome::Graceful),
            Some((domid, _)) => {
                let forced = launch.dir.join(FORCED_FILE);
                mirari_blobs::write_atomically(&forced, domid.to_string().as_bytes()).map_err(|source| {
                    BackendError::Io { target: TARGET, action: format!("write {}", forced.display()), source }
                })?;
                self.xl(&["destroy", &name]).await?;
                Ok(StopOutcome::Forced)
            }
            None => Ok(StopOutcome::Forced),
        }
    }

    async fn inspect(&self, launch: &Launch, _handle: &Handle) -> Result<Inspection, BackendError> {
        let name = domain_name(launch);
        Ok(match self.state(&name).await? {
            Some((domid, state)) => Inspection {
                running: state == DomainState::Running,
                detail: format!("domain {name} (id {domid}), {state:?}").to_lowercase(),
            },
            None => Inspection { running: false, detail: format!("no domain {name}") },
        })
    }

    async fn destroy(&self, launch: &Launch) -> Result<(), BackendError> {
        let name = domain_name(launch);
        if self.state(&name).await?.is_some() {
            self.xl(&["destroy", &name]).await?;
        }
        if let Ok(xenstore) = Xenstore::connect_default().await {
            let _ = xenstore.rm(&format!("{TAGS}/{}", launch.id)).await;
        }
        CONSOLES.lock().await.remove(&name);
        remove_if_present(&launch.dir.join(FORCED_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_states_and_reasons_from_xl_list() {
        // As xl list -v prints it in the test host's dom0.
        let listing = "Name                                        ID   Mem VCPUs\tState\tTime(s)   UUID                            Reason-Code\tSecurity Label\n\
                       Domain-0                                     0  1024     2     r-----     407.2 00000000-0000-0000-0000-000000000000        -                -\n\
                       mirari-00000000000000aa                      3    32     1     -b----       0.4 f86cb024-3e0f-41fe-9ec6-ed9cbbff6bb8        -                -\n\
                       mirari-00000000000000bb                      4    32     1     --ps--       0.2 f86cb024-3e0f-41fe-9ec6-ed9cbbff6bb9        0                -\n\
                       mirari-00000000000000cc                      5    32     1     ---sc-       0.1 f86cb024-3e0f-41fe-9ec6-ed9cbbff6bba        3                -\n";
        assert_eq!(parse_list(listing, "mirari-00000000000000aa"), Some((3, DomainState::Running)));
        assert_eq!(parse_list(listing, "mirari-00000000000000bb"), Some((4, DomainState::Ended { reason: 0 })));
        assert_eq!(parse_list(listing, "mirari-00000000000000cc"), Some((5, DomainState::Ended { reason: 3 })));
        assert_eq!(parse_list(listing, "mirari-00000000000000dd"), None);
        assert_eq!(DomainState::Ended { reason: 3 }.ended(), Some(Ended::Exited(ExitStatus::Code(3))));
    }

    #[test]
    fn a_domain_gone_after_a_forced_stop_was_killed_and_any_other_is_lost() {
        let mut launch = crate::backends::testing::launch(TARGET, 0xab, &[]);
        let dir = tempfile::tempdir().unwrap();
        launch.dir = dir.path().to_owned();
        assert_eq!(gone(&launch), Ended::Lost);
        std::fs::write(dir.path().join(FORCED_FILE), "7").unwrap();
        assert_eq!(gone(&launch), Ended::Exited(ExitStatus::Signal(9)));
        remove_if_present(&dir.path().join(FORCED_FILE)).unwrap();
        remove_if_present(&dir.path().join(FORCED_FILE)).unwrap();
        assert_eq!(gone(&launch), Ended::Lost);
    }

    #[test]
    fn writes_a_pvh_domain_config() {
        let launch = crate::backends::testing::launch(TARGET, 0xab, &[]);
        let config = XenBackend::domain_config(&launch).unwrap();
        assert!(config.contains("name = \"mirari-00000000000000ab\"\ntype = \"pvh\"\n"), "{config}");
        assert!(config.contains("cmdline = \"--ip=10.0.0.2 say=\\\"hi\\\"\"\n"), "{config}");
        assert!(config.contains("memory = 32\nvcpus = 1\n"), "{config}");
        assert!(config.contains("on_crash = \"preserve\""), "{config}");
        assert!(config.contains("ramdisk = \"/store/sha256/data\""), "{config}");
        assert!(config.contains("disk = [ \"format=raw,vdev=xvda,access=ro,target=/store/sha256/data\" ]"), "{config}");
        assert!(!config.contains("vif"), "{config}");
    }

    #[test]
    fn gives_each_interface_a_vif_on_its_bridge() {
        let interfaces = [("10.123.0.2/24", Some("10.123.0.1"), "xenbr0"), ("10.124.0.2/24", None, "xenbr1")];
        let launch = crate::backends::testing::launch(TARGET, 0xab, &interfaces);
        let config = XenBackend::domain_config(&launch).unwrap();
        assert!(
            config.contains(
                "vif = [ \"bridge=xenbr0,mac=02:00:00:00:ab:00\", \"bridge=xenbr1,mac=02:00:00:00:ab:01\" ]\n"
            ),
            "{config}"
        );
        let elsewhere = crate::backends::testing::launch(TARGET, 0xab, &[("10.123.0.2/24", None, "")]);
        let error = XenBackend::domain_config(&elsewhere).unwrap_err().to_string();
        assert!(error.contains("network net0 is not carried by this host"), "{error}");
    }

    #[test]
    fn reads_xl_info() {
        let info = parse_info(
            "host                   : xen-testhost\nxen_major              : 4\nxen_minor              : 17\nxen_extra              : .3\nxen_caps               : xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_64\nfree_memory            : 2979\n",
        );
        assert_eq!(info["xen_major"], "4");
        assert_eq!(info["free_memory"], "2979");
        assert!(info["xen_caps"].contains("hvm"));
    }
}
