//! The files and command lines of an `rpi` run: no I/O, so they are golden-tested.
//!
//! U-Boot boots the artifact (an arm64 Image) with `booti`, its file image as the initrd (the
//! guest finds it through the device tree's `/chosen`), and the boot arguments as `bootargs`.
//! Two ways to hand U-Boot those three, one per board mode:
//!
//! - **netboot** ([`netboot_files`]): U-Boot's default boot finds no disk, DHCPs and fetches
//!   `boot.scr.uimg` by TFTP; that script fetches `bootargs.env` (imported as U-Boot
//!   environment: a value runs raw to the end of its line, so no shell quoting is involved),
//!   `files.tar` and `Image`, and boots. The emulated `virt` board gets them from QEMU's
//!   built-in TFTP server; a real board from the TFTP server of the host that serves it.
//! - **SD card** ([`sd_environment`]): U-Boot reads `uboot.env` from the card's FAT partition,
//!   whose `bootcmd` loads `Image` and `files.tar` from it and boots (QEMU's `raspi3b`, which
//!   has no Ethernet).
//!
//! Load addresses are planned here, not taken from U-Boot's variables, so that the Image,
//! whatever its size, and the file image after it stay inside the instance's memory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use mirari_core::artifact::Arm64Image;

use super::super::Launch;
use super::super::qemu;

const MIB: u64 = 1 << 20;
/// booti places an Image at a 2 MiB-aligned base plus its text_offset.
const IMAGE_ALIGN: u64 = 2 * MIB;
/// What U-Boot occupies at the top of an emulated board's memory (its relocated code, heap,
/// stack and device tree copy; `virt` fails "Out of memory" below 48 MiB). The board gets the
/// instance's `memory_mib` plus this.
pub const FIRMWARE_MIB: u64 = 64;
/// QEMU's `raspi3b` always has 1 GiB, of which the GPU keeps 64 MiB.
const RASPI3B_RAM_MIB: u64 = 1024;
const RASPI3B_USABLE_MIB: u64 = 960;
/// U-Boot's environment size in the rpi_3 build (CONFIG_ENV_SIZE).
pub const SD_ENV_BYTES: usize = 0x4000;
/// The FAT partition starts 1 MiB into the SD image, after the MBR.
pub const SD_PARTITION_START_SECTOR: u64 = 2048;
const SECTOR: u64 = 512;

/// The boards an `rpi` instance can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Board {
    /// QEMU's generic arm64 machine, netbooted by TFTP (the default: the fastest to boot).
    Virt,
    /// QEMU's Raspberry Pi 3 Model B, booted from an SD card image.
    Raspi3b,
}

impl Board {
    pub const fn name(self) -> &'static str {
        match self {
            Board::Virt => "virt",
            Board::Raspi3b => "raspi3b",
        }
    }

    /// Where Debian puts the U-Boot build for this board (`u-boot-qemu`; `u-boot-rpi` is an
    /// arm64 package, see `deploy/rpi/install-u-boot-rpi.sh`).
    pub fn default_firmware(self) -> PathBuf {
        match self {
            Board::Virt => "/usr/lib/u-boot/qemu_arm64/u-boot.bin".into(),
            Board::Raspi3b => "/usr/lib/u-boot/rpi_3/u-boot.bin".into(),
        }
    }

    /// Where the board's memory starts.
    const fn ram_base(self) -> u64 {
        match self {
            Board::Virt => 0x4000_0000,
            Board::Raspi3b => 0,
        }
    }
}

impl std::str::FromStr for Board {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [Board::Virt, Board::Raspi3b]
            .into_iter()
            .find(|b| b.name() == text)
            .ok_or_else(|| format!("unknown rpi board `{text}`; known: virt, raspi3b"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{count} file images declared; U-Boot passes one initrd, so an rpi instance takes at most 1")]
    TooManyFileImages { count: usize },
    #[error(
        "the Image ({image_size} bytes) and file image ({files} bytes) do not fit in memory_mib = {memory_mib} \
         (they need {needed_mib} MiB)"
    )]
    TooBig { image_size: u64, files: u64, memory_mib: u64, needed_mib: u64 },
    #[error("memory_mib = {memory_mib} is more than the raspi3b board leaves an instance ({max} MiB)")]
    BoardTooSmall { memory_mib: u64, max: u64 },
    #[error("a boot argument holds a line break or NUL, which U-Boot's environment cannot carry")]
    UnsafeBootArgs,
}

/// Where U-Boot loads what, and how much memory QEMU gives the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub kernel: u64,
    /// Where the file image goes, if there is one.
    pub initrd: Option<u64>,
    pub board_ram_mib: u64,
}

/// Plans the load addresses: the Image 2 MiB into memory (booti then runs it in place), the
/// file image at the next 2 MiB boundary past the Image's memory size, both inside the
/// instance's `memory_mib`.
pub fn layout(board: Board, image: Arm64Image, file_bytes: Option<u64>, memory_mib: u64) -> Result<Layout, PlanError> {
    let base = board.ram_base();
    let kernel = base + IMAGE_ALIGN + image.text_offset;
    let image_end = kernel + image.image_size;
    let initrd = file_bytes.map(|_| image_end.div_ceil(IMAGE_ALIGN) * IMAGE_ALIGN);
    let end = initrd.map_or(image_end, |at| at + file_bytes.unwrap_or(0));
    let needed_mib = (end - base).div_ceil(MIB);
    if needed_mib > memory_mib {
        let files = file_bytes.unwrap_or(0);
        return Err(PlanError::TooBig { image_size: image.image_size, files, memory_mib, needed_mib });
    }
    let board_ram_mib = match board {
        Board::Virt => memory_mib + FIRMWARE_MIB,
        Board::Raspi3b => {
            let max = RASPI3B_USABLE_MIB - FIRMWARE_MIB;
            if memory_mib > max {
                return Err(PlanError::BoardTooSmall { memory_mib, max });
            }
            RASPI3B_RAM_MIB
        }
    };
    Ok(Layout { kernel, initrd, board_ram_mib })
}

/// The `booti` line: the Image, the initrd as `ADDR:SIZE` (or `-`), U-Boot's own device tree.
fn booti(layout: &Layout, initrd_size_var: &str) -> String {
    let initrd = layout.initrd.map_or("-".to_owned(), |at| format!("{at:#x}:${{{initrd_size_var}}}"));
    format!("booti {:#x} {initrd} ${{fdtcontroladdr}}", layout.kernel)
}

/// The boot arguments as one environment value.
fn bootargs(args: &[String]) -> Result<String, PlanError> {
    let line = args.join(" ");
    if line.contains(['\n', '\r', '\0']) {
        return Err(PlanError::UnsafeBootArgs);
    }
    Ok(line)
}

/// What a netbooted board fetches from its TFTP directory, beside `Image` and `files.tar`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetbootFiles {
    /// `boot.scr.uimg`, the script U-Boot's DHCP boot runs.
    pub script: Vec<u8>,
    /// `bootargs.env`.
    pub bootargs_env: Vec<u8>,
}

/// The boot script's text. (The arguments are fetched first, into the Image's place, which the
/// Image then overwrites.)
pub fn netboot_script(layout: &Layout) -> String {
    let mut script = format!("tftpboot {k:#x} bootargs.env\nenv import -t {k:#x} ${{filesize}}\n", k = layout.kernel);
    if let Some(initrd) = layout.initrd {
        script.push_str(&format!("tftpboot {initrd:#x} files.tar\nsetenv initrd_size ${{filesize}}\n"));
    }
    script.push_str(&format!("tftpboot {:#x} Image\n{}\n", layout.kernel, booti(layout, "initrd_size")));
    script
}

pub fn netboot_files(layout: &Layout, args: &[String]) -> Result<NetbootFiles, PlanError> {
    Ok(NetbootFiles {
        script: uimage_script(&netboot_script(layout)),
        bootargs_env: format!("bootargs={}\n", bootargs(args)?).into_bytes(),
    })
}

/// A U-Boot legacy image of type "script" (what `mkimage -A arm64 -T script -C none` writes,
/// with a zero timestamp so that the same script gives the same bytes).
pub fn uimage_script(script: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(script.len() + 8);
    data.extend_from_slice(&u32::try_from(script.len()).expect("a short script").to_be_bytes());
    data.extend_from_slice(&0u32.to_be_bytes()); // the end of the length list
    data.extend_from_slice(script.as_bytes());
    let mut header = [0u8; 64];
    header[0..4].copy_from_slice(&0x2705_1956u32.to_be_bytes()); // magic
    header[12..16].copy_from_slice(&u32::try_from(data.len()).expect("a short script").to_be_bytes());
    header[24..28].copy_from_slice(&crc32fast::hash(&data).to_be_bytes());
    header[28] = 5; // OS: Linux
    header[29] = 22; // architecture: arm64
    header[30] = 6; // type: script
    header[31] = 0; // compression: none
    let name = b"mirari boot";
    header[32..32 + name.len()].copy_from_slice(name);
    let header_crc = crc32fast::hash(&header); // computed with its own field zero
    header[4..8].copy_from_slice(&header_crc.to_be_bytes());
    [header.as_slice(), &data].concat()
}

/// `uboot.env` for the SD card (what `mkenvimage -s 0x4000` writes): a CRC32, then
/// `name=value` strings, each NUL-terminated, padded with 0xff.
pub fn sd_environment(layout: &Layout, args: &[String]) -> Result<Vec<u8>, PlanError> {
    let mut load = format!("fatload mmc 0:1 {:#x} Image; ", layout.kernel);
    if let Some(initrd) = layout.initrd {
        load.push_str(&format!("fatload mmc 0:1 {initrd:#x} files.tar; "));
    }
    let variables = [
        ("bootargs", bootargs(args)?),
        ("bootcmd", format!("{load}{}", booti(layout, "filesize"))),
        // The whole environment comes from this file: U-Boot's defaults (a 2-second
        // autoboot countdown, the console on the screen too) are not merged in.
        ("bootdelay", "0".to_owned()),
        ("stderr", "serial".to_owned()),
        ("stdin", "serial".to_owned()),
        ("stdout", "serial".to_owned()),
    ];
    Ok(environment_image(&variables))
}

/// A U-Boot environment image of [`SD_ENV_BYTES`].
pub fn environment_image(variables: &[(&str, String)]) -> Vec<u8> {
    let mut data = Vec::with_capacity(SD_ENV_BYTES - 4);
    for (name, value) in variables {
        data.extend_from_slice(format!("{name}={value}\0").as_bytes());
    }
    data.push(0);
    data.resize(SD_ENV_BYTES - 4, 0xff);
    [crc32fast::hash(&data).to_le_bytes().as_slice(), &data].concat()
}

/// The size of an SD image holding `payload` bytes of files: a power of two (QEMU's SD card
/// requires it), at least 16 MiB, with room for the FAT and the 1 MiB before the partition.
pub fn sd_image_bytes(payload: u64) -> u64 {
    (payload + payload / 8 + 4 * MIB).next_power_of_two().max(16 * MIB)
}

/// The SD image's master boot record: one FAT32 (LBA) partition from sector 2048 to the end.
pub fn sd_mbr(image_bytes: u64) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    let sectors = u32::try_from(image_bytes / SECTOR - SD_PARTITION_START_SECTOR).expect("an SD image under 2 TiB");
    let entry = &mut mbr[446..462];
    entry[1..4].copy_from_slice(&[0xff; 3]); // CHS: unused, LBA only
    entry[4] = 0x0c; // FAT32, LBA
    entry[5..8].copy_from_slice(&[0xff; 3]);
    entry[8..12].copy_from_slice(&u32::try_from(SD_PARTITION_START_SECTOR).expect("small").to_le_bytes());
    entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
    mbr
}

/// What the QEMU command line of an emulated board is made from.
#[derive(Debug)]
pub struct Machine<'a> {
    pub qemu: &'a Path,
    pub board: Board,
    pub firmware: &'a Path,
    pub layout: &'a Layout,
    /// `virt`: the directory QEMU's TFTP server serves. `raspi3b`: the SD image.
    pub boot_media: &'a Path,
    /// `raspi3b`: the Unix socket the control UART listens on.
    pub control_socket: &'a Path,
}

pub fn qemu_argv(machine: &Machine<'_>, launch: &Launch) -> Vec<OsString> {
    let run = &launch.spec.run;
    let mut argv: Vec<String> = vec!["-name".into(), format!("mirari-{}", launch.id)];
    match machine.board {
        Board::Virt => argv.extend([
            // acpi=off: the power button is then the device tree's GPIO key, which the guest
            // can read without an ACPI interpreter; the guest's timer wake-up is GICv2's.
            "-machine".into(),
            "virt,acpi=off,gic-version=2".into(),
            "-accel".into(),
            "tcg".into(),
            "-cpu".into(),
            "cortex-a57".into(),
            "-smp".into(),
            run.vcpus.to_string(),
            "-bios".into(),
            qemu::escape_path(machine.firmware),
            // U-Boot's DHCP boot over QEMU's user network, which serves the TFTP directory
            // and reaches nothing else (restrict=on).
            "-netdev".into(),
            format!("user,id=boot,restrict=on,tftp={}", qemu::escape_path(machine.boot_media)),
            "-device".into(),
            "virtio-net-pci,netdev=boot".into(),
            "-serial".into(),
            "stdio".into(),
        ]),
        Board::Raspi3b => argv.extend([
            // The Pi's four cores on one host thread: the three U-Boot parks spin under TCG.
            "-machine".into(),
            "raspi3b".into(),
            "-accel".into(),
            "tcg,thread=single".into(),
            "-kernel".into(),
            qemu::escape_path(machine.firmware),
            "-drive".into(),
            format!("file={},if=sd,format=raw", qemu::escape_path(machine.boot_media)),
            // The first UART (the PL011) takes stop requests; the second (the mini UART,
            // U-Boot's and the guest's console on a Pi 3) is the console.
            "-chardev".into(),
            format!("socket,id=control,path={},server=on,wait=off", qemu::escape_path(machine.control_socket)),
            "-serial".into(),
            "chardev:control".into(),
            "-serial".into(),
            "stdio".into(),
        ]),
    }
    argv.extend([
        "-m".into(),
        machine.layout.board_ram_mib.to_string(),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-no-reboot".into(),
        // The guest's exit status becomes QEMU's (semihosting SYS_EXIT).
        "-semihosting-config".into(),
        "enable=on,target=native".into(),
        "-qmp".into(),
        qemu::qmp_option(launch),
    ]);
    std::iter::once(machine.qemu.as_os_str().to_owned()).chain(argv.into_iter().map(OsString::from)).collect()
}

/// A real Pi 3 netbooted from this host (planned and tested here, not wired into the agent: no
/// board was available). Its own U-Boot (u-boot-rpi's rpi_3 on its SD card, default
/// environment) runs the same DHCP boot as `virt`, asking the DHCP server's TFTP for
/// `boot.scr.uimg`; dnsmasq with these lines serves each board from its own directory of the
/// TFTP root ([`real_board_dir`]), which holds the [`netboot_files`] of a [`Board::Raspi3b`]
/// layout (a Pi 3's memory map), `Image` and `files.tar`.
pub fn real_board_dnsmasq(tftp_root: &Path) -> String {
    format!("enable-tftp\ntftp-root={}\ntftp-unique-root=mac\n", tftp_root.display())
}

/// The board's directory under dnsmasq's `tftp-unique-root=mac`: its MAC in lower case, with
/// dashes.
pub fn real_board_dir(tftp_root: &Path, board_mac: &str) -> PathBuf {
    tftp_root.join(board_mac.to_ascii_lowercase().replace(':', "-"))
}

#[cfg(test)]
mod tests;
