//! Disk images: a `kvm` artifact (a multiboot kernel), its boot arguments and its file images
//! as one raw disk that a PC BIOS boots, for clouds that boot a disk rather than `-kernel`
//! (Amazon EC2 imports it as a snapshot).
//!
//! The disk is an MBR (syslinux's `mbr.bin` and a partition table written here) and one active
//! FAT partition from 1 MiB to the end, made by `mkfs.vfat --offset`. `syslinux --offset`
//! installs itself there through mtools and `mcopy -i IMAGE@@OFFSET` copies the rest, so no
//! loop device, mount or root is needed. `syslinux.cfg` has `mboot.c32` load the kernel with
//! the boot arguments as its command line (after its file name, as QEMU's `-kernel` puts the
//! kernel's path first) and each file image, in order, as a multiboot module. The kernel finds
//! its images in memory whatever disk it booted from: images left on the disk would need a
//! driver for that disk (NVMe on EC2's Nitro instances), while the BIOS reads any disk it can
//! boot. Syslinux prints what it loads on COM1, so a boot that fails says why on the serial
//! console (EC2's console output).
//!
//! Equal inputs give byte-identical images: a fixed volume ID and label (`mkfs.vfat
//! --invariant -i`), every FAT timestamp at 1980-01-01 00:00 UTC (`SOURCE_DATE_EPOCH`, which
//! mtools honours, in `TZ=UTC`), fixed names in a fixed order, and sizes that follow from the
//! inputs' sizes alone.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use mirari_core::digest::{Digest, Hasher};

/// A written disk image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskImage {
    pub path: PathBuf,
    /// The sha256 of the image's bytes.
    pub sha256: Digest,
    /// In bytes, a whole number of MiB.
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskImageError {
    #[error("{what} was not found; install {packages}")]
    Missing { what: String, packages: &'static str },
    #[error(
        "{} is not a multiboot kernel: its first 8 KiB hold no multiboot header (magic 0x1BADB002 \
         and its checksum); build the app's kvm target",
        kernel.display()
    )]
    NotMultiboot { kernel: PathBuf },
    #[error("boot argument {arg:?} cannot be passed through syslinux: {reason}")]
    BootArg { arg: String, reason: &'static str },
    #[error(
        "the boot command line would be {len} bytes, and syslinux reads at most {MAX_COMMAND_LINE}; \
         shorten the boot arguments"
    )]
    CommandLineTooLong { len: usize },
    #[error(
        "the kernel and file images add up to {bytes} bytes; a 32-bit multiboot kernel is loaded \
         with its modules below 4 GiB"
    )]
    TooLarge { bytes: u64 },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the disk image {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run {tool}")]
    Spawn {
        tool: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{tool} failed ({status}) writing the disk image {}: {stderr}", image.display())]
    Tool { tool: &'static str, image: PathBuf, status: ExitStatus, stderr: String },
}

/// A program the image is made with, and the Debian packages that bring it.
#[derive(Debug, Clone, Copy)]
struct Tool {
    program: &'static str,
    packages: &'static str,
}

const MKFS: Tool = Tool { program: "mkfs.vfat", packages: "dosfstools" };
const SYSLINUX: Tool = Tool { program: "syslinux", packages: "syslinux syslinux-common" };
const MCOPY: Tool = Tool { program: "mcopy", packages: "mtools" };

/// Where Debian's `syslinux-common` keeps the BIOS boot code and the modules the image uses.
const SYSLINUX_LIB: &str = "/usr/lib/syslinux";
const SYSLINUX_COMMON: &str = "syslinux-common";
const MBR_CODE: &str = "mbr/mbr.bin";
const MBOOT: &str = "mboot.c32";
/// `mboot.c32` and what it links against, installed beside `syslinux.cfg`.
const MODULES: [&str; 2] = [MBOOT, "libcom32.c32"];
const KERNEL_NAME: &str = "kernel.elf";
const CONFIG_NAME: &str = "syslinux.cfg";

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// The partition starts at 1 MiB, where partitioning tools align it.
const PARTITION_START: u64 = MIB;
/// Room for `ldlinux.sys` and `ldlinux.c32`, which the `syslinux` binary carries (176 KiB in
/// Debian 12's 6.04).
const LDLINUX_BYTES: u64 = 256 * 1024;
/// Each file is counted as whole clusters of this size, more than mkfs.vfat picks for any
/// partition made here (below 4 GiB and the slack), so the partition holds them whatever the
/// cluster size.
const CLUSTER_BOUND: u64 = 64 * 1024;
/// Room beyond the files' clusters for the boot sector, the root directory and the FATs (whose
/// size grows with the partition's, hence [`partition_bytes`] adds a 64th as well).
const FAT_SLACK: u64 = 512 * 1024;
/// The longest command line syslinux boots (`mboot.c32` and the APPEND text): a longer one
/// boots nothing at all, silently (measured with Debian 12's syslinux 6.04).
const MAX_COMMAND_LINE: usize = 2047;
/// The MBR's disk signature and the FAT volume ID.
const VOLUME_ID: u32 = 0x6d69_7261;
const VOLUME_LABEL: &str = "MIRARI";
/// 1980-01-01 00:00:00 UTC, FAT's first representable time: every file's timestamp.
const TIMESTAMP: &str = "315532800";
const MULTIBOOT_MAGIC: u32 = 0x1bad_b002;
/// The multiboot header must lie within the kernel's first 8 KiB, 4-aligned.
const MULTIBOOT_SEARCH: u64 = 8192;

/// Writes a raw disk image to `out` that a PC BIOS boots into `kernel` (a multiboot kernel)
/// with `boot_args` as its command line and `files` as its multiboot modules, in order.
///
/// The image is written beside `out` and renamed into place once complete: on failure nothing
/// is left at `out`.
pub fn write_disk_image(
    kernel: &Path,
    files: &[PathBuf],
    boot_args: &[String],
    out: &Path,
) -> Result<DiskImage, DiskImageError> {
    check_multiboot(kernel)?;
    let config = syslinux_config(boot_args, files.len())?;
    let lib = Path::new(SYSLINUX_LIB);
    let mbr_code = fs::read(lib.join(MBR_CODE)).map_err(installed_error(&lib.join(MBR_CODE)))?;
    let modules: Vec<Source> = MODULES
        .iter()
        .map(|module| {
            let path = lib.join("modules/bios").join(module);
            Source::open(&path, module.to_string(), installed_error(&path))
        })
        .collect::<Result<_, _>>()?;
    let loaded: Vec<Source> = std::iter::once((kernel, KERNEL_NAME.to_owned()))
        .chain(files.iter().enumerate().map(|(index, file)| (file.as_path(), file_name(index))))
        .map(|(path, name)| Source::open(path, name, read_error(path)))
        .collect::<Result<_, _>>()?;
    let loaded_bytes = loaded.iter().map(|source| source.size).sum();
    if loaded_bytes >= 1 << 32 {
        return Err(DiskImageError::TooLarge { bytes: loaded_bytes });
    }
    let sources: Vec<Source> = modules.into_iter().chain(loaded).collect();
    let sizes: Vec<u64> = sources.iter().map(|source| source.size).chain([config.len() as u64]).collect();
    let partition = partition_bytes(&sizes);

    let dir = out.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let temp =
        tempfile::Builder::new().prefix(".mirari-disk-").suffix(".tmp").tempfile_in(dir).map_err(write_error(out))?;
    let file = temp.as_file();
    file.set_len(PARTITION_START + partition).map_err(write_error(out))?;
    // The tools run in `dir` and are given the temporary file's bare name, so no path of the
    // caller's (an `@@` in it, say) reaches mtools' `IMAGE@@OFFSET` syntax.
    let name = temp.path().file_name().and_then(|name| name.to_str()).expect("temporary file names are ASCII");
    fill_partition(&Tools { dir, image: name, out }, partition, &config, sources)?;

    let mut boot_sector = [0u8; SECTOR as usize];
    file.read_exact_at(&mut boot_sector, PARTITION_START).map_err(write_error(out))?;
    let mbr = master_boot_record(&mbr_code, partition_type(&boot_sector), partition / SECTOR);
    file.write_all_at(&mbr, 0).map_err(write_error(out))?;
    let sha256 = publish(temp, dir, out).map_err(write_error(out))?;
    Ok(DiskImage { path: out.to_owned(), sha256, size: PARTITION_START + partition })
}

/// Makes the FAT, installs syslinux and copies in its config and `sources`, in order.
fn fill_partition(tools: &Tools, partition: u64, config: &str, sources: Vec<Source>) -> Result<(), DiskImageError> {
    let start_sector = (PARTITION_START / SECTOR).to_string();
    let volume_id = format!("{VOLUME_ID:08x}");
    let blocks = (partition / 1024).to_string();
    // No random serial and no time in the boot sector or the volume label's entry.
    let invariant = ["--invariant", "-i", &volume_id, "-n", VOLUME_LABEL];
    // The geometry the MBR's addresses use, and the partition's start as its hidden sectors.
    let layout = ["-g", "255/63", "-h", &start_sector, "--offset", &start_sector, tools.image, &blocks];
    tools.run(MKFS, &[invariant.as_slice(), &layout].concat(), Input::Nothing)?;
    tools.run(SYSLINUX, &["--offset", &PARTITION_START.to_string(), "--install", tools.image], Input::Nothing)?;
    tools.copy_in(CONFIG_NAME, Input::Bytes(config.as_bytes()))?;
    for source in sources {
        tools.copy_in(&source.name, Input::File(source.file))?;
    }
    Ok(())
}

/// Syncs the image, hashes it and renames it to `out` (then syncs `dir`, which holds both).
fn publish(temp: tempfile::NamedTempFile, dir: &Path, out: &Path) -> io::Result<Digest> {
    let file = temp.as_file();
    file.sync_all()?;
    let mut hasher = Hasher::default();
    io::copy(&mut File::open(temp.path())?, &mut hasher)?;
    // A build output like any other, not a private temporary file.
    file.set_permissions(fs::Permissions::from_mode(0o644))?;
    temp.persist(out)?;
    File::open(dir)?.sync_all()?;
    Ok(hasher.finish())
}

/// A file the partition holds, open, with its name there.
#[derive(Debug)]
struct Source {
    file: File,
    size: u64,
    name: String,
}

impl Source {
    fn open(
        path: &Path,
        name: String,
        error: impl FnOnce(io::Error) -> DiskImageError,
    ) -> Result<Self, DiskImageError> {
        let file = File::open(path).and_then(|file| Ok((file.metadata()?.len(), file)));
        let (size, file) = file.map_err(error)?;
        Ok(Self { file, size, name })
    }
}

/// The name of file image `index` in the partition (and in mboot's module list).
fn file_name(index: usize) -> String {
    format!("file{index}.tar")
}

/// Refuses a kernel without a multiboot (v1) header: an image of it would boot into
/// mboot.c32's complaint.
fn check_multiboot(kernel: &Path) -> Result<(), DiskImageError> {
    let mut head = Vec::new();
    File::open(kernel)
        .and_then(|file| file.take(MULTIBOOT_SEARCH).read_to_end(&mut head))
        .map_err(read_error(kernel))?;
    let words: Vec<u32> =
        head.chunks_exact(4).map(|word| u32::from_le_bytes(word.try_into().expect("4 bytes"))).collect();
    // magic, flags, checksum: the three add up to zero.
    let found = words
        .windows(3)
        .any(|header| header[0] == MULTIBOOT_MAGIC && header[0].wrapping_add(header[1]).wrapping_add(header[2]) == 0);
    if found { Ok(()) } else { Err(DiskImageError::NotMultiboot { kernel: kernel.to_owned() }) }
}

/// `syslinux.cfg`: straight to `mboot.c32` with the kernel, the boot arguments and the file
/// images, on the serial console too.
fn syslinux_config(boot_args: &[String], files: usize) -> Result<String, DiskImageError> {
    boot_args.iter().try_for_each(|arg| check_boot_arg(arg))?;
    let mut words: Vec<String> = [KERNEL_NAME.to_owned()].into_iter().chain(boot_args.iter().cloned()).collect();
    for index in 0..files {
        words.extend(["---".to_owned(), file_name(index)]);
    }
    let append = words.join(" ");
    let len = MBOOT.len() + 1 + append.len();
    if len > MAX_COMMAND_LINE {
        return Err(DiskImageError::CommandLineTooLong { len });
    }
    Ok(format!("SERIAL 0 115200\nDEFAULT mirari\nLABEL mirari\n  KERNEL {MBOOT}\n  APPEND {append}\n"))
}

/// Refuses an argument that would not reach the kernel as QEMU's `-append` passes it.
fn check_boot_arg(arg: &str) -> Result<(), DiskImageError> {
    let reason = if arg.chars().any(char::is_control) {
        "a control character cannot stand on a line of syslinux.cfg"
    } else if arg.split(' ').any(|word| word == "---") {
        "`---` separates mboot.c32's modules"
    } else if arg.is_empty() || arg.starts_with(' ') || arg.ends_with(' ') || arg.contains("  ") {
        "syslinux splits its command line at spaces and joins the words with one, so this \
         argument would reach the kernel changed"
    } else {
        return Ok(());
    };
    Err(DiskImageError::BootArg { arg: arg.to_owned(), reason })
}

/// The partition's size for files of `sizes` bytes: a whole number of MiB.
fn partition_bytes(sizes: &[u64]) -> u64 {
    let files = LDLINUX_BYTES + sizes.iter().map(|size| size.div_ceil(CLUSTER_BOUND) * CLUSTER_BOUND).sum::<u64>();
    (files + files / 64 + FAT_SLACK).div_ceil(MIB) * MIB
}

/// The MBR partition type of the FAT that mkfs.vfat chose, told by its cluster count as the
/// FAT specification tells FAT12, FAT16 and FAT32 apart.
fn partition_type(boot_sector: &[u8; SECTOR as usize]) -> u8 {
    let u16_at = |at: usize| u64::from(u16::from_le_bytes([boot_sector[at], boot_sector[at + 1]]));
    let u32_at = |at: usize| u64::from(u32::from_le_bytes(boot_sector[at..at + 4].try_into().expect("4 bytes")));
    let bytes_per_sector = u16_at(11).max(1);
    let root_sectors = (u16_at(17) * 32).div_ceil(bytes_per_sector);
    let total_sectors = if u16_at(19) != 0 { u16_at(19) } else { u32_at(32) };
    let fat_sectors = if u16_at(22) != 0 { u16_at(22) } else { u32_at(36) };
    let data_sectors =
        total_sectors.saturating_sub(u16_at(14) + u64::from(boot_sector[16]) * fat_sectors + root_sectors);
    match data_sectors / u64::from(boot_sector[13]).max(1) {
        0..4085 => 0x01,     // FAT12
        4085..65525 => 0x0e, // FAT16, LBA
        _ => 0x0c,           // FAT32, LBA
    }
}

/// Boot code, the disk signature and one active partition of `sectors` from 1 MiB.
fn master_boot_record(code: &[u8], partition_type: u8, sectors: u64) -> [u8; SECTOR as usize] {
    let start = PARTITION_START / SECTOR;
    let mut mbr = [0u8; SECTOR as usize];
    let code = &code[..code.len().min(440)];
    mbr[..code.len()].copy_from_slice(code);
    mbr[440..444].copy_from_slice(&VOLUME_ID.to_le_bytes());
    let entry = &mut mbr[446..462];
    entry[0] = 0x80;
    entry[1..4].copy_from_slice(&chs(start));
    entry[4] = partition_type;
    entry[5..8].copy_from_slice(&chs(start + sectors - 1));
    // Both fit: the partition is below 4 GiB plus slack, far below 2 TiB.
    entry[8..12].copy_from_slice(&(start as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
    mbr[510..].copy_from_slice(&[0x55, 0xaa]);
    mbr
}

/// The cylinder-head-sector address of `lba` in the geometry mkfs.vfat is given (255 heads, 63
/// sectors a track); past cylinder 1023, the largest there is (a BIOS then reads by LBA).
fn chs(lba: u64) -> [u8; 3] {
    let (cylinder, rest) = (lba / (255 * 63), lba % (255 * 63));
    if cylinder > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let (head, sector) = (rest / 63, rest % 63 + 1);
    [head as u8, sector as u8 | ((cylinder >> 2) & 0xc0) as u8, cylinder as u8]
}

/// What a tool reads on its standard input.
#[derive(Debug)]
enum Input<'a> {
    Nothing,
    File(File),
    Bytes(&'a [u8]),
}

/// Runs the tools on the image being written, `image` (a bare file name) in `dir`.
#[derive(Debug)]
struct Tools<'a> {
    dir: &'a Path,
    image: &'a str,
    /// Where the image goes, for errors.
    out: &'a Path,
}

impl Tools<'_> {
    /// Copies `input` into the partition's root directory as `name`.
    fn copy_in(&self, name: &str, input: Input) -> Result<(), DiskImageError> {
        let image = format!("{}@@{PARTITION_START}", self.image);
        self.run(MCOPY, &["-i", &image, "-", &format!("::{name}")], input)
    }

    /// Runs `tool` with `args`; its standard error is the error if it fails.
    fn run(&self, tool: Tool, args: &[&str], input: Input) -> Result<(), DiskImageError> {
        let mut command = Command::new(tool.program);
        command
            .args(args)
            .current_dir(self.dir)
            .env("SOURCE_DATE_EPOCH", TIMESTAMP)
            .env("TZ", "UTC")
            .env("LC_ALL", "C")
            // mtools' check that a disk's geometry matches its size is for floppies.
            .env("MTOOLS_SKIP_CHECK", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let bytes = match input {
            Input::Nothing => {
                command.stdin(Stdio::null());
                None
            }
            Input::File(file) => {
                command.stdin(file);
                None
            }
            Input::Bytes(bytes) => {
                command.stdin(Stdio::piped());
                Some(bytes)
            }
        };
        let mut child = command.spawn().map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => {
                DiskImageError::Missing { what: tool.program.to_owned(), packages: tool.packages }
            }
            _ => DiskImageError::Spawn { tool: tool.program, source },
        })?;
        if let (Some(bytes), Some(mut stdin)) = (bytes, child.stdin.take()) {
            // A tool that ended without reading its input says why in its status and stderr.
            match stdin.write_all(bytes) {
                Err(source) if source.kind() != io::ErrorKind::BrokenPipe => {
                    return Err(DiskImageError::Spawn { tool: tool.program, source });
                }
                _ => {}
            }
        }
        let output = child.wait_with_output().map_err(|source| DiskImageError::Spawn { tool: tool.program, source })?;
        if output.status.success() {
            return Ok(());
        }
        Err(DiskImageError::Tool {
            tool: tool.program,
            image: self.out.to_owned(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

fn installed_error(path: &Path) -> impl FnOnce(io::Error) -> DiskImageError {
    let path = path.to_owned();
    move |source| match source.kind() {
        io::ErrorKind::NotFound => {
            DiskImageError::Missing { what: path.display().to_string(), packages: SYSLINUX_COMMON }
        }
        _ => DiskImageError::Read { path, source },
    }
}

fn read_error(path: &Path) -> impl FnOnce(io::Error) -> DiskImageError {
    let path = path.to_owned();
    move |source| DiskImageError::Read { path, source }
}

fn write_error(path: &Path) -> impl FnOnce(io::Error) -> DiskImageError {
    let path = path.to_owned();
    move |source| DiskImageError::Write { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// A file that passes for a multiboot kernel: a header (flags 0) at `offset`, zeros around it.
    fn kernel_with_header_at(dir: &Path, offset: usize) -> PathBuf {
        let mut bytes = vec![0u8; 12 * 1024];
        let checksum = 0u32.wrapping_sub(MULTIBOOT_MAGIC);
        for (k, word) in [MULTIBOOT_MAGIC, 0, checksum].iter().enumerate() {
            bytes[offset + 4 * k..offset + 4 * k + 4].copy_from_slice(&word.to_le_bytes());
        }
        let path = dir.join(format!("kernel-{offset}.elf"));
        fs::write(&path, bytes).unwrap();
        path
    }

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| word.to_string()).collect()
    }

    /// A file of the image's partition, read back with mtools.
    fn read_back(image: &Path, name: &str) -> Vec<u8> {
        let output = Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", &format!("{}@@{PARTITION_START}", image.display()), &format!("::{name}"), "-"])
            .output()
            .expect("mtools is needed: apt install mtools");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn the_same_inputs_give_the_same_image() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_with_header_at(dir.path(), 0);
        let image = dir.path().join("data.tar");
        fs::write(&image, vec![7u8; 3000]).unwrap();
        let boot_args = args(&["--ipv4=10.0.0.2/24", "greeting=hi"]);
        let first = write_disk_image(&kernel, std::slice::from_ref(&image), &boot_args, &dir.path().join("one.img"))
            .unwrap_or_else(|e| panic!("{e}"));

        // New modification times on the inputs change nothing.
        for input in [&kernel, &image] {
            File::options()
                .write(true)
                .open(input)
                .unwrap()
                .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
                .unwrap();
        }
        let second = write_disk_image(&kernel, std::slice::from_ref(&image), &boot_args, &dir.path().join("two.img"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(second.sha256, first.sha256);
        assert_eq!(fs::read(&first.path).unwrap(), fs::read(&second.path).unwrap());

        let bytes = fs::read(&first.path).unwrap();
        assert_eq!(first.sha256, Digest::of(&bytes), "the digest is the file's");
        assert_eq!(first.size, bytes.len() as u64);
        assert_eq!(first.size % MIB, 0);
        assert!(first.size <= 4 * MIB, "a small kernel gives a small image: {} bytes", first.size);

        let other = write_disk_image(&kernel, &[image], &args(&["greeting=ho"]), &dir.path().join("three.img"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(other.sha256, first.sha256);
    }

    #[test]
    fn the_disk_holds_an_mbr_and_a_partition_with_syslinux_the_kernel_and_the_images() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_with_header_at(dir.path(), 0);
        let images = [dir.path().join("a.tar"), dir.path().join("b.tar")];
        fs::write(&images[0], "first image").unwrap();
        fs::write(&images[1], "second image").unwrap();
        let out = dir.path().join("disk.img");
        let disk = write_disk_image(&kernel, &images, &args(&["mode=test"]), &out).unwrap_or_else(|e| panic!("{e}"));

        let bytes = fs::read(&out).unwrap();
        let mbr_code = fs::read(Path::new(SYSLINUX_LIB).join(MBR_CODE)).unwrap();
        assert_eq!(bytes[..mbr_code.len()], mbr_code[..]);
        assert_eq!(bytes[510..512], [0x55, 0xaa]);
        let entry = &bytes[446..462];
        assert_eq!(entry[0], 0x80, "active");
        assert_eq!(entry[4], 0x01, "a partition of a few MiB gets FAT12");
        assert_eq!(u32::from_le_bytes(entry[8..12].try_into().unwrap()), 2048);
        assert_eq!(u64::from(u32::from_le_bytes(entry[12..16].try_into().unwrap())), (disk.size - MIB) / SECTOR);
        assert_eq!(bytes[462..510], [0; 48], "one partition");

        assert_eq!(read_back(&out, KERNEL_NAME), fs::read(&kernel).unwrap());
        assert_eq!(read_back(&out, "file0.tar"), b"first image");
        assert_eq!(read_back(&out, "file1.tar"), b"second image");
        assert_eq!(read_back(&out, "mboot.c32"), fs::read("/usr/lib/syslinux/modules/bios/mboot.c32").unwrap());
        assert!(!read_back(&out, "ldlinux.sys").is_empty(), "syslinux is installed");
        assert_eq!(
            String::from_utf8(read_back(&out, CONFIG_NAME)).unwrap(),
            "SERIAL 0 115200\nDEFAULT mirari\nLABEL mirari\n  KERNEL mboot.c32\n  \
             APPEND kernel.elf mode=test --- file0.tar --- file1.tar\n"
        );
        let listing = Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-a", "-i", &format!("{}@@{PARTITION_START}", out.display()), "::"])
            .output()
            .unwrap();
        let listing = String::from_utf8(listing.stdout).unwrap();
        // ldlinux.sys and ldlinux.c32 (hidden), syslinux.cfg, two modules, the kernel, two images.
        assert_eq!(listing.matches(" 1980-01-01   0:00").count(), 8, "every file dated 1980:\n{listing}");
        assert_eq!(names_in(dir.path()), ["a.tar", "b.tar", "disk.img", "kernel-0.elf"], "no temporary file is left");
    }

    #[test]
    fn files_of_any_size_fit() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_with_header_at(dir.path(), 0);
        let sizes = [0, 1, CLUSTER_BOUND - 1, CLUSTER_BOUND + 1, 5 * MIB, 40 * MIB];
        let images: Vec<PathBuf> = sizes
            .iter()
            .map(|&size| {
                let path = dir.path().join(format!("{size}.tar"));
                File::create(&path).unwrap().set_len(size).unwrap();
                path
            })
            .collect();
        let out = dir.path().join("disk.img");
        let disk = write_disk_image(&kernel, &images, &[], &out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs::read(&out).unwrap()[446 + 4], 0x0e, "a partition of 47 MiB gets FAT16");
        assert!(disk.size <= 49 * MIB, "little room beyond the files: {} bytes", disk.size);
        assert_eq!(read_back(&out, "file5.tar").len() as u64, 40 * MIB);
    }

    #[test]
    fn a_kernel_without_a_multiboot_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_multiboot(&kernel_with_header_at(dir.path(), 0)).is_ok());
        assert!(check_multiboot(&kernel_with_header_at(dir.path(), 8192 - 12)).is_ok(), "the last place in 8 KiB");
        for offset in [8192, 2] {
            let kernel = kernel_with_header_at(dir.path(), offset);
            let error = check_multiboot(&kernel).unwrap_err().to_string();
            assert_eq!(
                error,
                format!(
                    "{} is not a multiboot kernel: its first 8 KiB hold no multiboot header (magic \
                     0x1BADB002 and its checksum); build the app's kvm target",
                    kernel.display()
                )
            );
        }
        let bad_checksum = dir.path().join("bad.elf");
        let mut bytes = fs::read(kernel_with_header_at(dir.path(), 0)).unwrap();
        bytes[8] ^= 1;
        fs::write(&bad_checksum, bytes).unwrap();
        assert!(matches!(check_multiboot(&bad_checksum), Err(DiskImageError::NotMultiboot { .. })));

        let out = dir.path().join("disk.img");
        assert!(write_disk_image(&bad_checksum, &[], &[], &out).is_err());
        assert!(!out.exists());
    }

    #[test]
    fn a_missing_file_image_is_named_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_with_header_at(dir.path(), 0);
        let absent = dir.path().join("absent.tar");
        let error =
            write_disk_image(&kernel, std::slice::from_ref(&absent), &[], &dir.path().join("disk.img")).unwrap_err();
        assert_eq!(error.to_string(), format!("cannot read {}", absent.display()));
        assert_eq!(names_in(dir.path()), ["kernel-0.elf"]);
    }

    #[test]
    fn boot_args_that_would_reach_the_kernel_changed_are_refused() {
        for (arg, reason) in [
            ("a\nb", "a control character"),
            ("tab\there", "a control character"),
            ("---", "separates mboot.c32's modules"),
            ("x --- y", "separates mboot.c32's modules"),
            ("", "joins the words with one"),
            ("two  spaces", "joins the words with one"),
            (" leading", "joins the words with one"),
        ] {
            let error = syslinux_config(&args(&["ok=1", arg]), 1).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("boot argument {arg:?} cannot be passed through syslinux: ")),
                "{error}"
            );
            assert!(error.contains(reason), "{arg:?}: {error}");
        }
        let config = syslinux_config(&args(&["a=\"$x\"", "#b", "ünï", "c d", "--e"]), 0).unwrap();
        assert!(config.ends_with("  APPEND kernel.elf a=\"$x\" #b ünï c d --e\n"), "{config}");
    }

    #[test]
    fn the_command_line_is_bounded_by_what_syslinux_boots() {
        // "mboot.c32 kernel.elf " and " --- file0.tar" around the argument.
        let fixed = "mboot.c32 kernel.elf ".len() + " --- file0.tar".len();
        let longest = "x".repeat(MAX_COMMAND_LINE - fixed);
        assert!(syslinux_config(std::slice::from_ref(&longest), 1).is_ok());
        let error = syslinux_config(&[longest + "x"], 1).unwrap_err();
        assert!(matches!(error, DiskImageError::CommandLineTooLong { len: 2048 }), "{error}");
    }

    #[test]
    fn tools_that_are_missing_or_fail_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let tools = Tools { dir: dir.path(), image: "x", out: Path::new("/images/app.img") };
        let absent = Tool { program: "mirari-no-such-tool", packages: "pkg-a pkg-b" };
        let error = tools.run(absent, &[], Input::Nothing).unwrap_err().to_string();
        assert_eq!(error, "mirari-no-such-tool was not found; install pkg-a pkg-b");

        let shell = Tool { program: "sh", packages: "dash" };
        let failing = tools.run(shell, &["-c", "cat >&2; exit 3"], Input::Bytes(b"from stdin\n")).unwrap_err();
        assert_eq!(
            failing.to_string(),
            "sh failed (exit status: 3) writing the disk image /images/app.img: from stdin"
        );
        let early = tools.run(shell, &["-c", "echo no input wanted >&2; exit 1"], Input::Bytes(&vec![b'x'; 1 << 20]));
        assert_eq!(
            early.unwrap_err().to_string(),
            "sh failed (exit status: 1) writing the disk image /images/app.img: no input wanted"
        );
    }

    #[test]
    fn cylinder_head_sector_addresses() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(2048), [32, 33, 0]);
        assert_eq!(chs(255 * 63 * 300 + 63 + 4), [1, 5 | 0x40, 0x2c]);
        assert_eq!(chs(255 * 63 * 1024), [0xfe, 0xff, 0xff]);
    }
}
