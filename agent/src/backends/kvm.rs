//! The `kvm` backend: QEMU boots the artifact (a multiboot ELF or a bzImage) as a guest.
//!
//! The accelerator follows the run policy: `kvm`, `tcg`, or `auto` (KVM when `/dev/kvm` works
//! here, TCG otherwise). The serial console is the guest's console; QEMU's own stderr goes to
//! the instance's `stderr.log`. File images are attached read-only as IDE disks, in order.
//! The agent drives QEMU through QMP: `query-status` to inspect, `system_powerdown` (an ACPI
//! power button press) for a graceful stop, `quit` to force it off. A guest that writes to the
//! `isa-debug-exit` port ends QEMU with status `(value << 1) | 1`.
//!
//! Each network interface is a virtio-net NIC with the interface's MAC on a persistent tap
//! that joins the interface's bridge ([`super::links`]). The taps outlive an agent restart with
//! QEMU, and go in `destroy`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use mirari_core::spec::Accelerator;
use mirari_core::target::Target;
use serde::{Deserialize, Serialize};

use super::{
    Backend, BackendError, Capabilities, ConsoleStream, Ended, Fingerprint, Handle, Inspection, Launch, Recovered,
    StopOutcome, links, qemu, shimmed,
};
use crate::supervisor::client::{Payload, ShimLauncher};
use crate::supervisor::protocol::ShimInfo;
use crate::supervisor::shim::StderrTo;

const TARGET: Target = Target::Kvm;
/// QEMU's legacy IDE controller has two channels of two disks each.
const MAX_FILE_IMAGES: usize = 4;

#[derive(Debug, Clone)]
pub struct KvmBackend {
    launcher: ShimLauncher,
    qemu: PathBuf,
    kvm_device: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct KvmHandle {
    shim: ShimInfo,
    accelerator: String,
}

impl KvmBackend {
    pub fn new(launcher: ShimLauncher) -> Self {
        Self { launcher, qemu: "qemu-system-x86_64".into(), kvm_device: "/dev/kvm".into() }
    }

    /// Uses another `/dev/kvm` path (tests point it at a missing file to see the TCG fallback).
    pub fn with_kvm_device(mut self, path: impl Into<PathBuf>) -> Self {
        self.kvm_device = path.into();
        self
    }

    fn accelerator(&self, wanted: Accelerator) -> Result<&'static str, BackendError> {
        match (wanted, kvm_unusable_reason(&self.kvm_device)) {
            (Accelerator::Tcg, _) | (Accelerator::Auto, Some(_)) => Ok("tcg"),
            (Accelerator::Kvm | Accelerator::Auto, None) => Ok("kvm"),
            (Accelerator::Kvm, Some(reason)) => Err(BackendError::Unavailable {
                target: TARGET,
                reason: format!("accelerator = \"kvm\" was asked for, but {reason}; use \"auto\" or \"tcg\""),
            }),
        }
    }

    fn qemu_argv(&self, launch: &Launch, accelerator: &str) -> Result<Vec<OsString>, BackendError> {
        if launch.files.len() > MAX_FILE_IMAGES {
            return Err(BackendError::Failed {
                target: TARGET,
                message: format!(
                    "{} file images declared; QEMU's IDE bus takes at most {MAX_FILE_IMAGES}",
                    launch.files.len()
                ),
            });
        }
        let run = &launch.spec.run;
        let mut argv: Vec<OsString> = [
            self.qemu.as_os_str().to_owned(),
            "-name".into(),
            format!("mirari-{}", launch.id).into(),
            "-machine".into(),
            format!("pc,accel={accelerator}").into(),
            "-m".into(),
            run.memory_mib.to_string().into(),
            "-smp".into(),
            run.vcpus.to_string().into(),
            "-kernel".into(),
            launch.artifact.clone().into(),
            "-append".into(),
            run.boot_args.join(" ").into(),
            "-nodefaults".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            "stdio".into(),
            "-monitor".into(),
            "none".into(),
            "-no-reboot".into(),
            "-device".into(),
            "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
            "-qmp".into(),
            qemu::qmp_option(launch).into(),
        ]
        .into();
        for (index, file) in launch.files.iter().enumerate() {
            // snapshot=on: guest writes go to a throwaway overlay, the image is never changed
            // (QEMU's IDE disks refuse readonly=on).
            argv.push("-drive".into());
            argv.push(format!("file={},format=raw,if=ide,index={index},snapshot=on", qemu::escape_path(file)).into());
        }
        argv.extend(nic_args(launch).into_iter().map(OsString::from));
        Ok(argv)
    }
}

/// A virtio-net NIC with the interface's MAC on its tap, per interface.
fn nic_args(launch: &Launch) -> Vec<String> {
    let nics = launch.spec.interfaces.iter().enumerate().flat_map(|(k, interface)| {
        let tap = links::tap_name(launch.id, k);
        [
            "-netdev".to_owned(),
            format!("tap,id=net{k},ifname={tap},script=no,downscript=no"),
            "-device".to_owned(),
            format!("virtio-net-pci,netdev=net{k},mac={}", interface.mac),
        ]
    });
    nics.collect()
}

/// Why KVM cannot be used here, or `None` if it can.
fn kvm_unusable_reason(device: &Path) -> Option<String> {
    let file = match std::fs::OpenOptions::new().read(true).write(true).open(device) {
        Ok(file) => file,
        Err(e) => return Some(format!("{} cannot be opened ({e})", device.display())),
    };
    match kvm_api_version(&file) {
        Ok(12) => None,
        Ok(version) => Some(format!("{} speaks KVM API {version}, not 12", device.display())),
        Err(e) => Some(format!("{} does not answer KVM_GET_API_VERSION ({e})", device.display())),
    }
}

nix::ioctl_none!(kvm_get_api_version_ioctl, 0xAE, 0x00);

#[allow(unsafe_code)]
fn kvm_api_version(file: &std::fs::File) -> nix::Result<i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an integer; the fd is open
    // for the duration of the call.
    unsafe { kvm_get_api_version_ioctl(file.as_raw_fd()) }
}

#[async_trait]
impl Backend for KvmBackend {
    fn target(&self) -> Target {
        TARGET
    }

    async fn fingerprint(&self) -> Fingerprint {
        let mut attributes = BTreeMap::new();
        let Some(version) = qemu::version(&self.qemu).await else {
            return Fingerprint {
                target: TARGET,
                unavailable: Some(format!("{} was not found; install qemu-system-x86", self.qemu.display())),
                attributes,
            };
        };
        attributes.insert("qemu".into(), version);
        match kvm_unusable_reason(&self.kvm_device) {
            None => {
                attributes.insert("accelerators".into(), "kvm,tcg".into());
            }
            Some(reason) => {
                attributes.insert("accelerators".into(), "tcg".into());
                attributes.insert("kvm".into(), reason);
            }
        }
        Fingerprint { target: TARGET, unavailable: None, attributes }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { graceful_stop: true, recover: true, enforces_resources: true }
    }

    async fn start(&self, launch: &Launch) -> Result<Handle, BackendError> {
        let accelerator = self.accelerator(launch.spec.run.accelerator)?;
        let argv = self.qemu_argv(launch, accelerator)?;
        links::create_taps(launch).await.map_err(BackendError::network(TARGET))?;
        let payload = Payload {
            dir: launch.dir.clone(),
            fence: launch.fence.clone(),
            netns: None,
            argv,
            env: Vec::new(),
            stderr: StderrTo::Log,
        };
        match qemu::start(TARGET, &self.launcher, launch, &payload).await {
            Ok(shim) => Ok(Handle::encode(&KvmHandle { shim, accelerator: accelerator.to_owned() })),
            Err(error) => {
                links::undo(launch).await;
                Err(error)
            }
        }
    }

    async fn recover(&self, launch: &Launch, handle: Option<&Handle>) -> Result<Recovered, BackendError> {
        let accelerator = match handle {
            Some(handle) => handle.decode::<KvmHandle>(TARGET)?.accelerator,
            None => "unknown".to_owned(),
        };
        Ok(shimmed::recover(launch, |shim| Handle::encode(&KvmHandle { shim, accelerator })))
    }

    async fn console(&self, launch: &Launch, from: u64) -> Result<ConsoleStream, BackendError> {
        Ok(shimmed::console(launch, from).await)
    }

    async fn wait(&self, launch: &Launch) -> Ended {
        shimmed::wait(launch).await
    }

    async fn stop(&self, launch: &Launch, handle: &Handle, timeout: Duration) -> Result<StopOutcome, BackendError> {
        let KvmHandle { shim, .. } = handle.decode(TARGET)?;
        let ask = async {
            qemu::send(launch, "system_powerdown").await;
            Ok(())
        };
        shimmed::stop(TARGET, launch, &shim, timeout, ask, (qemu::send(launch, "quit"), qemu::QUIT_GRACE)).await
    }

    async fn inspect(&self, launch: &Launch, handle: &Handle) -> Result<Inspection, BackendError> {
        let KvmHandle { shim, accelerator } = handle.decode(TARGET)?;
        Ok(qemu::inspect(launch, &shim, &format!("accel {accelerator}")).await)
    }

    async fn destroy(&self, launch: &Launch) -> Result<(), BackendError> {
        let _ = std::fs::remove_file(qemu::qmp_socket(launch));
        links::release(launch).await.map_err(BackendError::network(TARGET))?;
        shimmed::destroy(TARGET, launch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::testing;

    fn backend() -> KvmBackend {
        KvmBackend::new(ShimLauncher { program: "mirari-agent".into(), console_bytes: 1024 })
    }

    #[test]
    fn each_interface_is_a_virtio_nic_on_its_tap() {
        let interfaces = [("10.123.0.2/24", None, "br0"), ("10.124.0.2/24", None, "br1")];
        let launch = testing::launch(TARGET, 0x1122_3344_5566_7788, &interfaces);
        let argv: Vec<String> =
            backend().qemu_argv(&launch, "tcg").unwrap().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let nics = argv.iter().position(|a| a == "-netdev").expect("a -netdev");
        assert_eq!(
            argv[nics..],
            [
                "-netdev",
                "tap,id=net0,ifname=mt3344556677880,script=no,downscript=no",
                "-device",
                "virtio-net-pci,netdev=net0,mac=02:55:66:77:88:00",
                "-netdev",
                "tap,id=net1,ifname=mt3344556677881,script=no,downscript=no",
                "-device",
                "virtio-net-pci,netdev=net1,mac=02:55:66:77:88:01",
            ]
        );
        assert!(argv.contains(&"-nodefaults".to_owned()), "{argv:?}");
        let plain = testing::launch(TARGET, 1, &[]);
        let argv = backend().qemu_argv(&plain, "tcg").unwrap();
        assert!(!argv.iter().any(|a| a == "-netdev"), "{argv:?}");
    }
}
