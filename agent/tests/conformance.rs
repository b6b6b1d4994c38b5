//! The backend conformance suite: every backend runs the same checks against the example app.
//!
//! Each check drives a backend through the `Backend` trait alone, the way the agent runtime
//! does: start, console, inspect, recover (as a restarted agent would, with and without the
//! persisted handle), graceful stop, forced stop after a timeout, exit status, destroy.
//!
//! The subjects: unix, js, kvm under TCG, freebsd with stand-in bhyve tools, and xen, which
//! needs a Xen dom0: ignored here, it runs inside the nested one of `tests/tests/xen.rs`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mirari_agent::backends::bhyve::{BhyveBackend, Tools};
use mirari_agent::backends::js::JsBackend;
use mirari_agent::backends::kvm::KvmBackend;
use mirari_agent::backends::rpi::RpiBackend;
use mirari_agent::backends::rpi::plan::Board;
use mirari_agent::backends::unix::UnixBackend;
use mirari_agent::backends::xen::XenBackend;
use mirari_agent::backends::{Backend, Ended, Launch, Recovered, StopOutcome};
use mirari_core::ids::InstanceId;
use mirari_core::instance::ExitStatus;
use mirari_core::spec::Accelerator;
use support::{console_until, launcher};

/// One backend under test, with how to make launches for it.
struct Subject {
    backend: Arc<dyn Backend>,
    /// A fresh backend value, as a restarted agent would construct.
    reconstruct: fn() -> Arc<dyn Backend>,
    accelerator: Accelerator,
}

fn unix() -> Arc<dyn Backend> {
    Arc::new(UnixBackend::new(launcher()))
}

fn js() -> Arc<dyn Backend> {
    Arc::new(JsBackend::new(launcher()))
}

fn kvm() -> Arc<dyn Backend> {
    Arc::new(KvmBackend::new(launcher()))
}

fn rpi_virt() -> Arc<dyn Backend> {
    Arc::new(RpiBackend::for_board(launcher(), Board::Virt))
}

fn rpi_raspi3b() -> Arc<dyn Backend> {
    Arc::new(RpiBackend::for_board(launcher(), Board::Raspi3b))
}

fn xen() -> Arc<dyn Backend> {
    Arc::new(XenBackend::new(support::agent_program(), support::CONSOLE_BYTES))
}

/// The bhyve stand-ins (`support/bhyve-standin.py`) linked as `bhyve`, `bhyvectl` and
/// `bhyveload` into a directory of this test binary's, which also holds their `vmm/`.
fn bhyve_standins() -> &'static Path {
    static LINKED: OnceLock<PathBuf> = OnceLock::new();
    LINKED.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/bhyve-standin.py");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(concat!(env!("CARGO_CRATE_NAME"), "-bhyve-standin"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("vmm")).unwrap();
        for tool in ["bhyve", "bhyvectl", "bhyveload"] {
            std::os::unix::fs::symlink(&script, dir.join(tool)).unwrap();
        }
        dir
    })
}

fn bhyve_with_standins() -> Arc<dyn Backend> {
    let standins = bhyve_standins();
    Arc::new(BhyveBackend::new(launcher()).with_tools(Tools::in_dir(standins)).with_vmm_dir(standins.join("vmm")))
}

impl Subject {
    fn launch(&self, dir: &Path, args: &[&str]) -> Launch {
        support::launch(self.backend.target(), next_id(), dir, args, self.accelerator)
    }
}

fn next_id() -> InstanceId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    InstanceId::from_u64(NEXT.fetch_add(1, Ordering::Relaxed))
}

async fn suite(subject: Subject) {
    let backend = subject.backend.as_ref();
    let fingerprint = backend.fingerprint().await;
    assert_eq!(fingerprint.unavailable, None, "the {} backend must work on a test host", backend.target());

    let scratch = tempfile::tempdir().unwrap();

    // Start, console, inspect.
    let launch = subject.launch(&scratch.path().join("a"), &["--ipv4=10.0.0.2/24", "mode=conformance"]);
    let handle = backend.start(&launch).await.expect("start");
    let console = console_until(backend, &launch, "hello: heartbeat 1").await;
    assert!(console.contains("hello: boot args: --ipv4=10.0.0.2/24 mode=conformance"), "{console}");
    assert!(
        console.contains("hello: file motd.txt (42 bytes)") || console.contains("hello: file ./motd.txt (42 bytes)"),
        "{console}"
    );
    assert!(console.contains("hello: files: 3 entries"), "{console}");
    assert!(backend.inspect(&launch, &handle).await.expect("inspect").running);

    // Recover, as a restarted agent would: with the persisted handle, and without one.
    let fresh = (subject.reconstruct)();
    assert_eq!(fresh.recover(&launch, Some(&handle)).await.expect("recover"), Recovered::Running(handle.clone()));
    assert!(matches!(fresh.recover(&launch, None).await.expect("recover"), Recovered::Running(_)));

    // Graceful stop.
    let outcome = fresh.stop(&launch, &handle, Duration::from_secs(30)).await.expect("stop");
    assert_eq!(outcome, StopOutcome::Graceful);
    assert_eq!(fresh.wait(&launch).await, Ended::Exited(ExitStatus::Code(0)));
    assert_eq!(
        fresh.recover(&launch, Some(&handle)).await.expect("recover"),
        Recovered::Ended(Ended::Exited(ExitStatus::Code(0)))
    );
    // The console of an ended run still holds what it printed last.
    let tail = console_until(backend, &launch, "hello: stopping").await;
    assert!(tail.contains("hello: heartbeat 1"), "{tail}");
    backend.destroy(&launch).await.expect("destroy");
    let leftovers: Vec<_> = std::fs::read_dir(&launch.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "sock"))
        .collect();
    assert!(leftovers.is_empty(), "destroy left sockets: {leftovers:?}");

    // A failing guest reports its exit status.
    let failing = subject.launch(&scratch.path().join("b"), &["exit-after=1"]);
    backend.start(&failing).await.expect("start");
    assert_eq!(backend.wait(&failing).await, Ended::Exited(ExitStatus::Code(3)));
    backend.destroy(&failing).await.expect("destroy");

    // A guest that ignores the stop request is forced off after the timeout.
    let stubborn = subject.launch(&scratch.path().join("c"), &["ignore-stop"]);
    let handle = backend.start(&stubborn).await.expect("start");
    console_until(backend, &stubborn, "hello: heartbeat 1").await;
    let outcome = backend.stop(&stubborn, &handle, Duration::from_secs(1)).await.expect("stop");
    assert_eq!(outcome, StopOutcome::Forced);
    assert!(matches!(backend.wait(&stubborn).await, Ended::Exited(_)));
    assert!(console_until(backend, &stubborn, "hello: ignoring stop request").await.contains("ignoring"));
    backend.destroy(&stubborn).await.expect("destroy");
}

#[tokio::test]
async fn unix_backend_conforms() {
    suite(Subject { backend: unix(), reconstruct: unix, accelerator: Accelerator::Auto }).await;
}

#[tokio::test]
async fn js_backend_conforms() {
    suite(Subject { backend: js(), reconstruct: js, accelerator: Accelerator::Auto }).await;
}

#[tokio::test]
async fn kvm_backend_conforms_under_tcg() {
    suite(Subject { backend: kvm(), reconstruct: kvm, accelerator: Accelerator::Tcg }).await;
}

/// U-Boot on QEMU's arm64 `virt` board netboots the example's arm64 Image by TFTP.
#[tokio::test]
async fn rpi_backend_conforms_on_the_virt_board() {
    suite(Subject { backend: rpi_virt(), reconstruct: rpi_virt, accelerator: Accelerator::Tcg }).await;
}

/// U-Boot's Raspberry Pi 3 build on QEMU's `raspi3b` boots it from an SD card image.
#[tokio::test]
async fn rpi_backend_conforms_on_the_raspi3b_board() {
    suite(Subject { backend: rpi_raspi3b(), reconstruct: rpi_raspi3b, accelerator: Accelerator::Tcg }).await;
}

/// The freebsd backend's real commands, run by stand-in bhyve tools on this Linux host: the
/// shim, console, recovery, stop and exit mapping are exercised; bhyve itself is not.
#[tokio::test]
async fn freebsd_backend_conforms_with_standin_bhyve_tools() {
    suite(Subject { backend: bhyve_with_standins(), reconstruct: bhyve_with_standins, accelerator: Accelerator::Auto })
        .await;
}

/// The xen backend against a real hypervisor. Only a Xen dom0 has one (`xl` runs the domains),
/// so the ignored end-to-end test `deploys_watches_readopts_and_stops_xen_domains`
/// (`tests/tests/xen.rs`) copies this binary into its nested dom0 and runs this test there.
#[tokio::test]
#[ignore = "needs a Xen dom0 (xl); tests/tests/xen.rs (deploys_watches_readopts_and_stops_xen_domains) runs it in one"]
async fn xen_backend_conforms_on_a_xen_dom0() {
    suite(Subject { backend: xen(), reconstruct: xen, accelerator: Accelerator::Auto }).await;
}

/// `auto` picks KVM where `/dev/kvm` works; the example boots under it on these hosts.
#[tokio::test]
async fn kvm_backend_boots_with_auto_accelerator() {
    let subject = Subject { backend: kvm(), reconstruct: kvm, accelerator: Accelerator::Auto };
    let scratch = tempfile::tempdir().unwrap();
    let launch = subject.launch(&scratch.path().join("auto"), &["mode=auto"]);
    let handle = subject.backend.start(&launch).await.expect("start");
    let detail = subject.backend.inspect(&launch, &handle).await.expect("inspect").detail;
    let kvm_works = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let expected = if kvm_works { "accel kvm" } else { "accel tcg" };
    assert!(detail.contains(expected), "{detail}");
    console_until(subject.backend.as_ref(), &launch, "hello: heartbeat 1").await;
    subject.backend.stop(&launch, &handle, Duration::from_secs(30)).await.expect("stop");
}

/// Asking for KVM where it does not work is refused with the reason, not silently emulated.
#[tokio::test]
async fn kvm_backend_refuses_kvm_where_it_is_missing() {
    let backend: Arc<dyn Backend> = Arc::new(KvmBackend::new(launcher()).with_kvm_device("/nonexistent/kvm"));
    let subject = Subject { backend: backend.clone(), reconstruct: kvm, accelerator: Accelerator::Kvm };
    let scratch = tempfile::tempdir().unwrap();
    let error = backend.start(&subject.launch(scratch.path(), &[])).await.unwrap_err().to_string();
    assert!(error.contains("/nonexistent/kvm cannot be opened"), "{error}");
    let fingerprint = backend.fingerprint().await;
    assert_eq!(fingerprint.attributes.get("accelerators").map(String::as_str), Some("tcg"));
}

/// Guests never run above nice 0: the agent's unit runs it (and so its shims) at `Nice=-5` so
/// starts, stops and fencing come before a busy host's guests, and the shim puts its payload
/// back at 0. A shim at lower priority keeps its payload there.
#[tokio::test(flavor = "current_thread")]
#[allow(unsafe_code)]
async fn a_payload_runs_at_nice_zero_however_high_its_shim_runs() {
    use mirari_agent::supervisor::client::{self, Payload, RunState};
    use mirari_agent::supervisor::shim::StderrTo;

    // Linux keeps a nice value per thread, and a child forked from this one inherits it.
    async fn payload_nice_under_a_shim_at(nice: i32) -> String {
        // SAFETY: setpriority(2) on this thread only; no memory is involved.
        assert_eq!(unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, nice) }, 0, "needs root");
        let scratch = tempfile::tempdir().unwrap();
        let payload = Payload {
            dir: scratch.path().join("run"),
            fence: None,
            netns: None,
            // Field 19 of stat is the nice value; `cut` inherits the payload's.
            argv: ["/bin/sh", "-c", "echo shim $(cut -d' ' -f19 /proc/$PPID/stat) payload $(cut -d' ' -f19 /proc/self/stat)"]
                .map(Into::into)
                .to_vec(),
            env: Vec::new(),
            stderr: StderrTo::Console,
        };
        launcher().spawn(&payload).await.expect("the shim starts");
        assert!(matches!(client::wait(&payload.dir).await, RunState::Exited(_)));
        let console = std::fs::read_to_string(mirari_agent::supervisor::protocol::ShimPaths::new(&payload.dir).console_tail());
        console.unwrap().trim().to_owned()
    }
    let high = payload_nice_under_a_shim_at(-5).await;
    let low = payload_nice_under_a_shim_at(5).await;
    assert_eq!((high.as_str(), low.as_str()), ("shim -5 payload 0", "shim 5 payload 5"));
}
