//! The `freebsd` backend: instances are bhyve virtual machines on a FreeBSD host.
//!
//! **Untested on a real FreeBSD host**: none was available. The command lines are planned by
//! the pure functions of [`plan`] and golden-tested; the conformance suite runs this backend
//! against stand-in `bhyve`, `bhyvectl` and `bhyveload` scripts (`agent/tests/support/`).
//!
//! The artifact is a bootable FreeBSD disk image. A run is three commands:
//!
//! 1. `bhyveload -m MEM -d IMG -e mirari.args=ARGS NAME` creates the VM and loads the guest's
//!    kernel with FreeBSD's loader (userboot) straight from the image; no UEFI firmware package
//!    is needed on the host. The boot arguments, space-separated, become the loader variable
//!    `mirari.args`, which the guest's kernel environment keeps (`kenv mirari.args`).
//!    The loader's own output goes to the instance's `bhyveload.log`.
//! 2. `bhyve -c VCPUS -m MEM -A -H -P -s 0,hostbridge -s 1,lpc -s 2,virtio-blk,IMG,ro
//!    [-s N,virtio-blk,FILE,ro ...] -l com1,stdio NAME` runs it under the shim. `com1,stdio`
//!    puts the guest's serial console on bhyve's stdout, which the shim captures exactly as it
//!    does QEMU's `-serial stdio` for kvm (ring buffer, tail, re-attach after an agent
//!    restart); a nullmodem pair (`/dev/nmdmNA`) would need a console reader outside the shim.
//!    `-A` builds ACPI tables, which the power button of a graceful stop needs. Disks are
//!    read-only because they are the blob store's files.
//! 3. `bhyvectl --destroy --vm=NAME` frees the VM once bhyve has exited (the kernel keeps a VM,
//!    with its memory, until it is destroyed).
//!
//! VMs are named `mirari-<instance ID>` (23 characters; bhyve allows 31). A graceful stop is
//! SIGTERM to bhyve, which bhyve(8) turns into an ACPI power-button press; the forced stop is
//! `bhyvectl --force-poweroff`. bhyve's exit status says how the guest ended; [`GuestEnd`]
//! maps it to the instance's exit code. Network interfaces are not supported yet: FreeBSD's
//! taps and bridges are set up with `ifconfig`, which [`super::links`] does not speak.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use mirari_core::instance::ExitStatus;
use mirari_core::target::Target;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::{
    Backend, BackendError, Capabilities, ConsoleStream, Ended, Fingerprint, Handle, Inspection, Launch, Recovered,
    StopOutcome, find_program, shimmed,
};
use crate::supervisor::client::{Payload, ShimLauncher};
use crate::supervisor::protocol::ShimInfo;
use crate::supervisor::shim::StderrTo;

const TARGET: Target = Target::Freebsd;
/// How long `bhyveload` or a `bhyvectl` command may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// After `bhyvectl --force-poweroff`, how long to wait before killing bhyve outright.
const POWEROFF_GRACE: Duration = Duration::from_secs(5);

/// The three programs of bhyve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub bhyve: PathBuf,
    pub bhyvectl: PathBuf,
    pub bhyveload: PathBuf,
}

impl Tools {
    /// The programs of these names in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self { bhyve: dir.join("bhyve"), bhyvectl: dir.join("bhyvectl"), bhyveload: dir.join("bhyveload") }
    }

    fn each(&self) -> [(&'static str, &Path); 3] {
        [("bhyve", &self.bhyve), ("bhyvectl", &self.bhyvectl), ("bhyveload", &self.bhyveload)]
    }
}

/// The command lines of a run: no I/O, so they are golden-tested.
pub mod plan {
    use super::*;

    /// bhyve's PCI bus 0 has slots 0 to 31; 0, 1 and 2 hold the host bridge, the LPC bridge
    /// (with com1) and the boot disk.
    pub const MAX_FILE_IMAGES: usize = 29;

    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum PlanError {
        #[error("{count} file images declared; bhyve's PCI bus has slots for at most {MAX_FILE_IMAGES}")]
        TooManyFileImages { count: usize },
        /// bhyve splits a device's options at commas and has no escape for them.
        #[error("bhyve cannot attach {}: its path contains a comma", path.display())]
        CommaInPath { path: PathBuf },
    }

    pub fn vm_name(launch: &Launch) -> String {
        format!("mirari-{}", launch.id)
    }

    /// bhyve and bhyveload take the memory size with a unit.
    fn memory(launch: &Launch) -> String {
        format!("{}M", launch.spec.run.memory_mib)
    }

    fn disk(path: &Path) -> Result<String, PlanError> {
        let text = path.display().to_string();
        if text.contains(',') {
            return Err(PlanError::CommaInPath { path: path.to_owned() });
        }
        Ok(format!("virtio-blk,{text},ro"))
    }

    /// `bhyveload`: creates the VM and loads the guest's kernel from the artifact, with the
    /// boot arguments in the loader variable `mirari.args`.
    pub fn bhyveload(tools: &Tools, launch: &Launch) -> Vec<OsString> {
        vec![
            tools.bhyveload.clone().into(),
            "-m".into(),
            memory(launch).into(),
            "-d".into(),
            launch.artifact.clone().into(),
            "-e".into(),
            format!("mirari.args={}", launch.spec.run.boot_args.join(" ")).into(),
            vm_name(launch).into(),
        ]
    }

    /// `bhyve`: runs the loaded VM with its console on stdio.
    pub fn bhyve(tools: &Tools, launch: &Launch) -> Result<Vec<OsString>, PlanError> {
        if launch.files.len() > MAX_FILE_IMAGES {
            return Err(PlanError::TooManyFileImages { count: launch.files.len() });
        }
        let run = &launch.spec.run;
        let mut argv: Vec<OsString> = vec![
            tools.bhyve.clone().into(),
            "-c".into(),
            run.vcpus.to_string().into(),
            "-m".into(),
            memory(launch).into(),
            "-A".into(),
            "-H".into(),
            "-P".into(),
            "-s".into(),
            "0,hostbridge".into(),
            "-s".into(),
            "1,lpc".into(),
            "-s".into(),
            format!("2,{}", disk(&launch.artifact)?).into(),
        ];
        for (slot, file) in (3..).zip(&launch.files) {
            argv.push("-s".into());
            argv.push(format!("{slot},{}", disk(file)?).into());
        }
        argv.extend(["-l".into(), "com1,stdio".into(), vm_name(launch).into()]);
        Ok(argv)
    }

    /// `bhyvectl --destroy`: frees the VM (bhyve must have exited).
    pub fn destroy(tools: &Tools, launch: &Launch) -> Vec<OsString> {
        bhyvectl(tools, "--destroy", launch)
    }

    /// `bhyvectl --force-poweroff`: powers the VM off without asking the guest.
    pub fn force_poweroff(tools: &Tools, launch: &Launch) -> Vec<OsString> {
        bhyvectl(tools, "--force-poweroff", launch)
    }

    fn bhyvectl(tools: &Tools, operation: &str, launch: &Launch) -> Vec<OsString> {
        vec![tools.bhyvectl.clone().into(), operation.into(), format!("--vm={}", vm_name(launch)).into()]
    }
}

/// How the guest ended, from bhyve's exit status as bhyve(8) defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEnd {
    Rebooted,
    PoweredOff,
    Halted,
    TripleFault,
    /// bhyve itself failed (a device it could not open, a VM that was destroyed under it).
    Error,
    /// A status bhyve(8) does not define.
    Other(i32),
}

impl GuestEnd {
    pub fn of_exit_code(code: i32) -> Self {
        match code {
            0 => Self::Rebooted,
            1 => Self::PoweredOff,
            2 => Self::Halted,
            3 => Self::TripleFault,
            4 => Self::Error,
            other => Self::Other(other),
        }
    }

    /// The instance's exit code. Only a power-off is a success; the others follow Xen's
    /// shutdown reasons where they mean the same (1 reboot, 3 crash), so a guest's end reads
    /// alike on both hypervisors. A reboot is not done in place: the restart policy decides.
    pub fn status(self) -> ExitStatus {
        ExitStatus::Code(match self {
            Self::PoweredOff => 0,
            Self::Rebooted => 1,
            Self::Halted => 2,
            Self::TripleFault => 3,
            Self::Error => 4,
            Self::Other(code) => code,
        })
    }
}

impl fmt::Display for GuestEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rebooted => f.write_str("the guest rebooted"),
            Self::PoweredOff => f.write_str("the guest powered off"),
            Self::Halted => f.write_str("the guest halted"),
            Self::TripleFault => f.write_str("the guest triple-faulted"),
            Self::Error => f.write_str("bhyve exited with an error (see stderr.log)"),
            Self::Other(code) => write!(f, "bhyve exited with status {code}, which bhyve(8) does not define"),
        }
    }
}

/// What the shim recorded (bhyve's status), as the instance's end.
fn guest_ended(ended: Ended) -> Ended {
    match ended {
        Ended::Exited(ExitStatus::Code(code)) => Ended::Exited(GuestEnd::of_exit_code(code).status()),
        // Killed (the forced stop's last resort, a fence): the signal says it.
        other => other,
    }
}

/// Why the backend cannot run here, from the programs not found, whether the vmm device
/// directory exists, and the host's OS; `None` when it can.
fn unavailable_reason(missing: &[String], vmm_dir: &Path, vmm_present: bool, os: &str) -> Option<String> {
    if !missing.is_empty() {
        return Some(format!(
            "bhyve is FreeBSD's hypervisor: {} not found on PATH (this host is {os})",
            missing.join(", ")
        ));
    }
    (!vmm_present)
        .then(|| format!("{} does not exist: the vmm kernel module is not loaded (kldload vmm)", vmm_dir.display()))
}

#[derive(Debug, Clone)]
pub struct BhyveBackend {
    launcher: ShimLauncher,
    tools: Tools,
    /// Where the kernel lists VMs (`/dev/vmm/NAME`).
    vmm_dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct BhyveHandle {
    shim: ShimInfo,
    vm: String,
}

fn failed(message: impl Into<String>) -> BackendError {
    BackendError::Failed { target: TARGET, message: message.into() }
}

impl BhyveBackend {
    /// The tools on PATH, and the kernel's `/dev/vmm`.
    pub fn new(launcher: ShimLauncher) -> Self {
        let on_path = Tools { bhyve: "bhyve".into(), bhyvectl: "bhyvectl".into(), bhyveload: "bhyveload".into() };
        Self { launcher, tools: on_path, vmm_dir: "/dev/vmm".into() }
    }

    /// Uses these programs instead of the ones on PATH (tests give stand-ins; the test process
    /// cannot safely change its own PATH while other tests run).
    pub fn with_tools(mut self, tools: Tools) -> Self {
        self.tools = tools;
        self
    }

    /// Looks for VMs in another directory than `/dev/vmm` (where stand-in tools keep them).
    pub fn with_vmm_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.vmm_dir = dir.into();
        self
    }

    fn vm_exists(&self, launch: &Launch) -> bool {
        self.vmm_dir.join(plan::vm_name(launch)).exists()
    }

    /// Runs a planned bhyveload or bhyvectl command; its stdout.
    async fn run(argv: &[OsString]) -> Result<Vec<u8>, BackendError> {
        super::run_tool(TARGET, argv, TOOL_TIMEOUT).await
    }

    /// Destroys the instance's VM if the kernel still has it.
    async fn destroy_vm(&self, launch: &Launch) -> Result<(), BackendError> {
        if self.vm_exists(launch) {
            Self::run(&plan::destroy(&self.tools, launch)).await?;
        }
        Ok(())
    }

    /// Loads the guest, keeping the loader's output in `bhyveload.log`.
    async fn load(&self, launch: &Launch) -> Result<(), BackendError> {
        let loader_output = Self::run(&plan::bhyveload(&self.tools, launch)).await?;
        let log = launch.dir.join("bhyveload.log");
        std::fs::write(&log, loader_output).map_err(|source| BackendError::Io {
            target: TARGET,
            action: format!("write {}", log.display()),
            source,
        })
    }
}

#[async_trait]
impl Backend for BhyveBackend {
    fn target(&self) -> Target {
        TARGET
    }

    async fn fingerprint(&self) -> Fingerprint {
        let mut attributes = BTreeMap::new();
        let mut missing = Vec::new();
        for (name, program) in self.tools.each() {
            match find_program(program) {
                Some(path) => {
                    attributes.insert(name.to_owned(), path.display().to_string());
                }
                None => missing.push(program.display().to_string()),
            }
        }
        attributes.insert("os".into(), std::env::consts::OS.into());
        attributes.insert("vmm".into(), self.vmm_dir.display().to_string());
        let unavailable = unavailable_reason(&missing, &self.vmm_dir, self.vmm_dir.is_dir(), std::env::consts::OS);
        Fingerprint { target: TARGET, unavailable, attributes }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { graceful_stop: true, recover: true, enforces_resources: true }
    }

    async fn start(&self, launch: &Launch) -> Result<Handle, BackendError> {
        if !launch.spec.interfaces.is_empty() {
            return Err(BackendError::Unsupported { target: TARGET, operation: "network interfaces" });
        }
        let argv = plan::bhyve(&self.tools, launch).map_err(|e| failed(e.to_string()))?;
        std::fs::create_dir_all(&launch.dir).map_err(|source| BackendError::Io {
            target: TARGET,
            action: "create the instance directory".into(),
            source,
        })?;
        // A VM of this name left from a run before (the agent died before destroying it) is
        // this instance's: it goes, so the new run starts from a fresh one.
        self.destroy_vm(launch).await?;
        if let Err(error) = self.load(launch).await {
            // bhyveload may have created the VM before it failed.
            let _ = self.destroy_vm(launch).await;
            return Err(error);
        }
        let payload = Payload {
            dir: launch.dir.clone(),
            fence: launch.fence.clone(),
            netns: None,
            argv,
            env: Vec::new(),
            stderr: StderrTo::Log,
        };
        match self.launcher.spawn(&payload).await {
            Ok(shim) => Ok(Handle::encode(&BhyveHandle { shim, vm: plan::vm_name(launch) })),
            Err(error) => {
                let _ = self.destroy_vm(launch).await;
                Err(error.into())
            }
        }
    }

    async fn recover(&self, launch: &Launch, _handle: Option<&Handle>) -> Result<Recovered, BackendError> {
        let vm = plan::vm_name(launch);
        Ok(match shimmed::recover(launch, |shim| Handle::encode(&BhyveHandle { shim, vm })) {
            Recovered::Ended(ended) => Recovered::Ended(guest_ended(ended)),
            running => running,
        })
    }

    async fn console(&self, launch: &Launch, from: u64) -> Result<ConsoleStream, BackendError> {
        Ok(shimmed::console(launch, from).await)
    }

    async fn wait(&self, launch: &Launch) -> Ended {
        let ended = shimmed::wait(launch).await;
        if let Ended::Exited(ExitStatus::Code(code)) = ended {
            tracing::info!(id = %launch.id, "{}", GuestEnd::of_exit_code(code));
        }
        guest_ended(ended)
    }

    async fn stop(&self, launch: &Launch, handle: &Handle, timeout: Duration) -> Result<StopOutcome, BackendError> {
        let BhyveHandle { shim, .. } = handle.decode(TARGET)?;
        // bhyve turns SIGTERM into an ACPI power-button press.
        let ask = async { shimmed::kill(TARGET, &shim, Signal::SIGTERM) };
        let force = async {
            if self.vm_exists(launch) {
                // Should bhyvectl fail, SIGKILL still ends the run.
                let _ = Self::run(&plan::force_poweroff(&self.tools, launch)).await;
            }
        };
        shimmed::stop(TARGET, launch, &shim, timeout, ask, (force, POWEROFF_GRACE)).await
    }

    async fn inspect(&self, launch: &Launch, handle: &Handle) -> Result<Inspection, BackendError> {
        let BhyveHandle { shim, vm } = handle.decode(TARGET)?;
        let in_kernel = if self.vm_exists(launch) { "present" } else { "absent" };
        Ok(Inspection {
            running: shim.payload.is_alive(),
            detail: format!("bhyve pid {}, vm {vm} {in_kernel} in {}", shim.payload.pid, self.vmm_dir.display()),
        })
    }

    async fn destroy(&self, launch: &Launch) -> Result<(), BackendError> {
        self.destroy_vm(launch).await?;
        shimmed::destroy(TARGET, launch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::testing;

    fn tools() -> Tools {
        Tools::in_dir(Path::new("/usr/sbin"))
    }

    fn strings(argv: Vec<OsString>) -> Vec<String> {
        argv.into_iter().map(|a| a.into_string().expect("utf-8")).collect()
    }

    #[test]
    fn loads_the_image_with_the_boot_args_in_the_loader_environment() {
        let launch = testing::launch(TARGET, 0xab, &[]);
        assert_eq!(
            strings(plan::bhyveload(&tools(), &launch)),
            [
                "/usr/sbin/bhyveload",
                "-m",
                "32M",
                "-d",
                "/store/sha256/kernel",
                "-e",
                "mirari.args=--ip=10.0.0.2 say=\"hi\"",
                "mirari-00000000000000ab",
            ]
        );
    }

    #[test]
    fn runs_the_vm_with_read_only_disks_and_the_console_on_stdio() {
        let mut launch = testing::launch(TARGET, 0xab, &[]);
        launch.spec.run.vcpus = 2;
        launch.files.push("/store/sha256/more".into());
        assert_eq!(
            strings(plan::bhyve(&tools(), &launch).unwrap()),
            [
                "/usr/sbin/bhyve",
                "-c",
                "2",
                "-m",
                "32M",
                "-A",
                "-H",
                "-P",
                "-s",
                "0,hostbridge",
                "-s",
                "1,lpc",
                "-s",
                "2,virtio-blk,/store/sha256/kernel,ro",
                "-s",
                "3,virtio-blk,/store/sha256/data,ro",
                "-s",
                "4,virtio-blk,/store/sha256/more,ro",
                "-l",
                "com1,stdio",
                "mirari-00000000000000ab",
            ]
        );
    }

    #[test]
    fn refuses_what_the_pci_bus_or_bhyve_options_cannot_take() {
        let mut launch = testing::launch(TARGET, 0xab, &[]);
        launch.files = vec!["/store/f".into(); plan::MAX_FILE_IMAGES];
        assert!(plan::bhyve(&tools(), &launch).is_ok());
        launch.files.push("/store/f".into());
        assert_eq!(plan::bhyve(&tools(), &launch), Err(plan::PlanError::TooManyFileImages { count: 30 }));
        launch.files = vec!["/store/a,b".into()];
        let error = plan::bhyve(&tools(), &launch).unwrap_err().to_string();
        assert_eq!(error, "bhyve cannot attach /store/a,b: its path contains a comma");
    }

    #[test]
    fn controls_the_vm_by_name() {
        let launch = testing::launch(TARGET, 0xab, &[]);
        assert_eq!(
            strings(plan::destroy(&tools(), &launch)),
            ["/usr/sbin/bhyvectl", "--destroy", "--vm=mirari-00000000000000ab"]
        );
        assert_eq!(
            strings(plan::force_poweroff(&tools(), &launch)),
            ["/usr/sbin/bhyvectl", "--force-poweroff", "--vm=mirari-00000000000000ab"]
        );
    }

    #[test]
    fn only_a_power_off_is_a_clean_end() {
        let ends: Vec<(GuestEnd, ExitStatus)> =
            (0..=5).map(GuestEnd::of_exit_code).map(|end| (end, end.status())).collect();
        assert_eq!(
            ends,
            [
                (GuestEnd::Rebooted, ExitStatus::Code(1)),
                (GuestEnd::PoweredOff, ExitStatus::Code(0)),
                (GuestEnd::Halted, ExitStatus::Code(2)),
                (GuestEnd::TripleFault, ExitStatus::Code(3)),
                (GuestEnd::Error, ExitStatus::Code(4)),
                (GuestEnd::Other(5), ExitStatus::Code(5)),
            ]
        );
        assert_eq!(guest_ended(Ended::Exited(ExitStatus::Code(1))), Ended::Exited(ExitStatus::Code(0)));
        assert_eq!(guest_ended(Ended::Exited(ExitStatus::Signal(9))), Ended::Exited(ExitStatus::Signal(9)));
        assert_eq!(guest_ended(Ended::Lost), Ended::Lost);
        assert_eq!(GuestEnd::TripleFault.to_string(), "the guest triple-faulted");
    }

    #[test]
    fn says_why_it_cannot_run_here() {
        let vmm = Path::new("/dev/vmm");
        assert_eq!(
            unavailable_reason(&["bhyve".into(), "bhyvectl".into(), "bhyveload".into()], vmm, false, "linux")
                .as_deref(),
            Some("bhyve is FreeBSD's hypervisor: bhyve, bhyvectl, bhyveload not found on PATH (this host is linux)")
        );
        assert_eq!(
            unavailable_reason(&[], vmm, false, "freebsd").as_deref(),
            Some("/dev/vmm does not exist: the vmm kernel module is not loaded (kldload vmm)")
        );
        assert_eq!(unavailable_reason(&[], vmm, true, "freebsd"), None);
    }

    #[tokio::test]
    async fn refuses_network_interfaces_before_touching_the_host() {
        let backend = BhyveBackend::new(ShimLauncher { program: "mirari-agent".into(), console_bytes: 1024 });
        let launch = testing::launch(TARGET, 0xab, &[("10.123.0.2/24", None, "bridge0")]);
        let error = backend.start(&launch).await.unwrap_err();
        assert!(matches!(error, BackendError::Unsupported { operation: "network interfaces", .. }), "{error}");
    }
}
