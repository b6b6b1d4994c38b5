//! The `rpi` backend: arm64 unikernels booted by U-Boot, on emulated boards.
//!
//! The artifact is a Linux arm64 `Image` (checked at build, and again here); U-Boot boots it
//! with `booti`, the boot arguments as `bootargs` and the file image as the initrd, which the
//! guest finds through the device tree ([`plan`] says how and where). An agent runs one board
//! kind, `--rpi-board`:
//!
//! - `virt` (the default): QEMU's arm64 `virt` machine with Debian's `u-boot-qemu`, netbooted
//!   from the instance's `boot/` directory by QEMU's TFTP server. The board has the
//!   instance's `memory_mib` plus [`plan::FIRMWARE_MIB`] for U-Boot, and its `vcpus`. A
//!   graceful stop presses the board's power button (QMP `system_powerdown`: a GPIO line).
//! - `raspi3b`: QEMU's Raspberry Pi 3 Model B with the Pi 3 build of U-Boot (`u-boot-rpi`),
//!   booted from an SD card image made per instance (`sd.img`: an MBR and a FAT partition
//!   holding `uboot.env`, `Image` and `files.tar`, made with `mkfs.vfat` and `mcopy`). The
//!   board is a Pi 3 (1 GiB, 4 cores); QEMU's Pi has no Ethernet and no power button, so a
//!   graceful stop is a `stop` line on the Pi's first UART, which QEMU serves as the
//!   instance's `control.sock`; the console is the second UART, as on a real Pi 3.
//!
//! Either way QEMU runs under the shim with the serial console on its stdout, and the guest's
//! exit status becomes QEMU's through semihosting. Real boards netbooted over TFTP are
//! planned ([`plan::real_board_dnsmasq`]) but not run by the agent: no board was available.
//! Network interfaces are not supported: the example's arm64 build has no NIC driver, and the
//! emulated boards' only NIC carries their boot.

pub mod plan;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use mirari_core::artifact::{ARM64_HEADER_BYTES, Arm64Image};
use mirari_core::target::Target;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use self::plan::{Board, Layout};
use super::{
    Backend, BackendError, Capabilities, ConsoleStream, Ended, Fingerprint, Handle, Inspection, Launch, Recovered,
    StopOutcome, find_program, qemu, shimmed,
};
use crate::supervisor::client::{Payload, ShimLauncher};
use crate::supervisor::protocol::ShimInfo;
use crate::supervisor::shim::StderrTo;

const TARGET: Target = Target::Rpi;
/// How long making an SD image may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct RpiBackend {
    launcher: ShimLauncher,
    qemu: PathBuf,
    board: Board,
    firmware: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct RpiHandle {
    shim: ShimInfo,
    board: Board,
}

fn failed(message: impl Into<String>) -> BackendError {
    BackendError::Failed { target: TARGET, message: message.into() }
}

fn io(action: String) -> impl FnOnce(std::io::Error) -> BackendError {
    move |source| BackendError::Io { target: TARGET, action, source }
}

/// The programs the SD card image is made with (dosfstools, mtools).
const SD_TOOLS: [&str; 2] = ["mkfs.vfat", "mcopy"];

impl RpiBackend {
    /// A backend for `virt` boards with Debian's U-Boot.
    pub fn new(launcher: ShimLauncher) -> Self {
        Self::for_board(launcher, Board::Virt)
    }

    pub fn for_board(launcher: ShimLauncher, board: Board) -> Self {
        Self { launcher, qemu: "qemu-system-aarch64".into(), board, firmware: board.default_firmware() }
    }

    /// Boots this U-Boot build instead of Debian's.
    pub fn with_firmware(mut self, firmware: impl Into<PathBuf>) -> Self {
        self.firmware = firmware.into();
        self
    }

    fn boot_dir(launch: &Launch) -> PathBuf {
        launch.dir.join("boot")
    }

    fn sd_image(launch: &Launch) -> PathBuf {
        launch.dir.join("sd.img")
    }

    fn control_socket(launch: &Launch) -> PathBuf {
        launch.dir.join("control.sock")
    }

    /// What keeps this backend from running here, if anything.
    fn unavailable_reason(&self, qemu_found: bool) -> Option<String> {
        if !qemu_found {
            return Some(format!("{} was not found; install qemu-system-arm", self.qemu.display()));
        }
        if !self.firmware.is_file() {
            let how = match self.board {
                Board::Virt => "install u-boot-qemu",
                Board::Raspi3b => "run deploy/rpi/install-u-boot-rpi.sh",
            };
            return Some(format!("U-Boot for {} is missing at {}; {how}", self.board.name(), self.firmware.display()));
        }
        let missing: Vec<&str> = match self.board {
            Board::Virt => Vec::new(),
            Board::Raspi3b => SD_TOOLS.into_iter().filter(|t| find_program(Path::new(t)).is_none()).collect(),
        };
        (!missing.is_empty())
            .then(|| format!("{} not found (SD card images need them); install dosfstools mtools", missing.join(", ")))
    }

    /// Reads the artifact's header and plans where everything goes.
    fn plan_layout(&self, launch: &Launch) -> Result<Layout, BackendError> {
        if launch.files.len() > 1 {
            return Err(failed(plan::PlanError::TooManyFileImages { count: launch.files.len() }.to_string()));
        }
        let mut head = Vec::with_capacity(ARM64_HEADER_BYTES);
        std::fs::File::open(&launch.artifact)
            .and_then(|f| f.take(ARM64_HEADER_BYTES as u64).read_to_end(&mut head))
            .map_err(io(format!("read the artifact {}", launch.artifact.display())))?;
        let image = Arm64Image::parse(&head).map_err(|e| failed(e.to_string()))?;
        let file_bytes = match launch.files.first() {
            Some(file) => Some(std::fs::metadata(file).map_err(io(format!("read {}", file.display())))?.len()),
            None => None,
        };
        plan::layout(self.board, image, file_bytes, u64::from(launch.spec.run.memory_mib))
            .map_err(|e| failed(e.to_string()))
    }

    /// Puts the boot files in `boot/`: the Image and file image (hard links to the blob
    /// store's files where possible), and what U-Boot reads first.
    fn write_boot_files(launch: &Launch, first: &[(&str, Vec<u8>)]) -> Result<PathBuf, BackendError> {
        let dir = Self::boot_dir(launch);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let link = |from: &Path, name: &str| {
            let to = dir.join(name);
            std::fs::hard_link(from, &to).or_else(|_| std::fs::copy(from, &to).map(drop)).map_err(io(format!(
                "copy {} to {}",
                from.display(),
                to.display()
            )))
        };
        link(&launch.artifact, "Image")?;
        if let Some(file) = launch.files.first() {
            link(file, "files.tar")?;
        }
        for (name, bytes) in first {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(io(format!("write {}", path.display())))?;
        }
        Ok(dir)
    }

    /// Makes `sd.img` from the boot files: the MBR, a FAT file system in its partition, the
    /// files copied in.
    async fn make_sd_image(launch: &Launch, boot: &Path) -> Result<PathBuf, BackendError> {
        let names: Vec<PathBuf> =
            ["uboot.env", "Image", "files.tar"].into_iter().map(|n| boot.join(n)).filter(|p| p.exists()).collect();
        let payload: u64 = names.iter().filter_map(|p| p.metadata().ok()).map(|m| m.len()).sum();
        let bytes = plan::sd_image_bytes(payload);
        let image = Self::sd_image(launch);
        {
            let mut file = std::fs::File::create(&image).map_err(io(format!("create {}", image.display())))?;
            std::io::Write::write_all(&mut file, &plan::sd_mbr(bytes))
                .and_then(|()| file.set_len(bytes))
                .map_err(io(format!("write {}", image.display())))?;
        }
        let partition_kib = (bytes - plan::SD_PARTITION_START_SECTOR * 512) / 1024;
        let offset = format!("--offset={}", plan::SD_PARTITION_START_SECTOR);
        let mkfs: Vec<OsString> = vec![
            "mkfs.vfat".into(),
            offset.into(),
            "-n".into(),
            "MIRARI".into(),
            image.clone().into(),
            partition_kib.to_string().into(),
        ];
        super::run_tool(TARGET, &mkfs, TOOL_TIMEOUT).await?;
        let mut mcopy: Vec<OsString> = vec!["mcopy".into(), "-i".into(), format!("{}@@1M", image.display()).into()];
        mcopy.extend(names.into_iter().map(OsString::from));
        mcopy.push("::/".into());
        super::run_tool(TARGET, &mcopy, TOOL_TIMEOUT).await?;
        Ok(image)
    }

    /// Prepares the boot media of this board kind; the path QEMU is given.
    async fn prepare(&self, launch: &Launch, layout: &Layout) -> Result<PathBuf, BackendError> {
        let args = &launch.spec.run.boot_args;
        let plan_error = |e: plan::PlanError| failed(e.to_string());
        match self.board {
            Board::Virt => {
                let files = plan::netboot_files(layout, args).map_err(plan_error)?;
                Self::write_boot_files(launch, &[("boot.scr.uimg", files.script), ("bootargs.env", files.bootargs_env)])
            }
            Board::Raspi3b => {
                let env = plan::sd_environment(layout, args).map_err(plan_error)?;
                let boot = Self::write_boot_files(launch, &[("uboot.env", env)])?;
                let image = Self::make_sd_image(launch, &boot).await;
                let _ = std::fs::remove_dir_all(&boot); // all of it is on the card now
                image
            }
        }
    }

    /// Removes what a run left in the instance directory besides the shim's records.
    fn remove_boot_media(launch: &Launch) {
        let _ = std::fs::remove_dir_all(Self::boot_dir(launch));
        let _ = std::fs::remove_file(Self::sd_image(launch));
        let _ = std::fs::remove_file(Self::control_socket(launch));
    }

    /// The stop request of this board kind: the power button, or a `stop` line on the
    /// control UART.
    async fn ask_to_stop(board: Board, launch: &Launch) {
        match board {
            Board::Virt => qemu::send(launch, "system_powerdown").await,
            Board::Raspi3b => {
                if let Ok(mut control) = tokio::net::UnixStream::connect(Self::control_socket(launch)).await {
                    let _ = control.write_all(b"stop\n").await;
                    // QEMU feeds the UART as the guest reads it: keep the connection open
                    // until the guest had time to take the line.
                    let _ = tokio::time::timeout(Duration::from_secs(2), control.readable()).await;
                }
            }
        }
    }
}

#[async_trait]
impl Backend for RpiBackend {
    fn target(&self) -> Target {
        TARGET
    }

    async fn fingerprint(&self) -> Fingerprint {
        let mut attributes = BTreeMap::new();
        let version = qemu::version(&self.qemu).await;
        if let Some(version) = &version {
            attributes.insert("qemu".into(), version.clone());
        }
        attributes.insert("board".into(), self.board.name().into());
        attributes.insert("u-boot".into(), self.firmware.display().to_string());
        Fingerprint { target: TARGET, unavailable: self.unavailable_reason(version.is_some()), attributes }
    }

    fn capabilities(&self) -> Capabilities {
        // A Pi 3 has its memory and cores whatever the run policy says.
        Capabilities { graceful_stop: true, recover: true, enforces_resources: self.board == Board::Virt }
    }

    async fn start(&self, launch: &Launch) -> Result<Handle, BackendError> {
        if !launch.spec.interfaces.is_empty() {
            return Err(BackendError::Unsupported { target: TARGET, operation: "network interfaces" });
        }
        let layout = self.plan_layout(launch)?;
        std::fs::create_dir_all(&launch.dir).map_err(io("create the instance directory".into()))?;
        Self::remove_boot_media(launch);
        let media = match self.prepare(launch, &layout).await {
            Ok(media) => media,
            Err(error) => {
                Self::remove_boot_media(launch);
                return Err(error);
            }
        };
        let machine = plan::Machine {
            qemu: &self.qemu,
            board: self.board,
            firmware: &self.firmware,
            layout: &layout,
            boot_media: &media,
            control_socket: &Self::control_socket(launch),
        };
        let payload = Payload {
            dir: launch.dir.clone(),
            fence: launch.fence.clone(),
            netns: None,
            argv: plan::qemu_argv(&machine, launch),
            env: Vec::new(),
            stderr: StderrTo::Log,
        };
        match qemu::start(TARGET, &self.launcher, launch, &payload).await {
            Ok(shim) => Ok(Handle::encode(&RpiHandle { shim, board: self.board })),
            Err(error) => {
                Self::remove_boot_media(launch);
                Err(error)
            }
        }
    }

    async fn recover(&self, launch: &Launch, handle: Option<&Handle>) -> Result<Recovered, BackendError> {
        let board = match handle {
            Some(handle) => handle.decode::<RpiHandle>(TARGET)?.board,
            None => self.board,
        };
        Ok(shimmed::recover(launch, |shim| Handle::encode(&RpiHandle { shim, board })))
    }

    async fn console(&self, launch: &Launch, from: u64) -> Result<ConsoleStream, BackendError> {
        Ok(shimmed::console(launch, from).await)
    }

    async fn wait(&self, launch: &Launch) -> Ended {
        shimmed::wait(launch).await
    }

    async fn stop(&self, launch: &Launch, handle: &Handle, timeout: Duration) -> Result<StopOutcome, BackendError> {
        let RpiHandle { shim, board } = handle.decode(TARGET)?;
        let ask = async {
            Self::ask_to_stop(board, launch).await;
            Ok(())
        };
        shimmed::stop(TARGET, launch, &shim, timeout, ask, (qemu::send(launch, "quit"), qemu::QUIT_GRACE)).await
    }

    async fn inspect(&self, launch: &Launch, handle: &Handle) -> Result<Inspection, BackendError> {
        let RpiHandle { shim, board } = handle.decode(TARGET)?;
        Ok(qemu::inspect(launch, &shim, &format!("board {}", board.name())).await)
    }

    async fn destroy(&self, launch: &Launch) -> Result<(), BackendError> {
        let _ = std::fs::remove_file(qemu::qmp_socket(launch));
        Self::remove_boot_media(launch);
        shimmed::destroy(TARGET, launch)
    }
}
