//! The disk image boots: the example's kvm kernel, built here, with boot arguments and one file
//! image, booted by QEMU's BIOS from the image alone, shows both on its serial console and
//! beats.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mirari_build::archive;
use mirari_build::disk_image::write_disk_image;
use mirari_core::digest::Digest;

/// How long the boot may take to show everything (TCG on a busy machine: the BIOS, syslinux
/// and three heartbeats take a few seconds).
const DEADLINE: Duration = Duration::from_secs(120);

/// The example's kvm kernel, built from a copy of its sources in `scratch`.
fn build_example_kernel(scratch: &Path) -> PathBuf {
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let build = scratch.join("hello");
    std::fs::create_dir_all(&build).unwrap();
    let copied =
        Command::new("cp").arg("-r").arg(sources.join("src")).arg(sources.join("Makefile")).arg(&build).status();
    assert!(copied.unwrap().success(), "copying the example failed");
    let made = Command::new("make").arg("-s").arg("-C").arg(&build).arg("kvm").status();
    let made = made.unwrap_or_else(|e| panic!("cannot run make ({e}): apt install build-essential"));
    assert!(made.success(), "make kvm failed");
    build.join("_build/hello.elf")
}

/// Kills QEMU if the test ends before it does.
struct Guest(Child);

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_example_boots_from_its_disk_image_with_its_args_and_files() {
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let kernel = build_example_kernel(scratch.path());
    let files = scratch.path().join("data.tar");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello/data");
    archive::write_dir(&data, std::fs::File::create(&files).unwrap(), &|_| false).unwrap();
    let boot_args: Vec<String> = ["greeting=hello-from-disk", "exit-after=3"].map(String::from).into();
    let out = scratch.path().join("hello.img");
    let disk = write_disk_image(&kernel, std::slice::from_ref(&files), &boot_args, &out)
        .unwrap_or_else(|e| panic!("writing the disk image failed: {e}"));
    assert_eq!(disk.sha256, Digest::of(&std::fs::read(&out).unwrap()));

    // TCG, not `accel=kvm:tcg`: where /dev/kvm is a software KVM (kvm_pvm, as on the machines
    // these tests run on), it cannot emulate syslinux's protected-mode `iret` and stops with
    // "emulation failure" (the example kernel itself avoids iret for that reason).
    let drive = format!("file={},format=raw,if=ide", out.display());
    let qemu = Command::new("qemu-system-x86_64")
        .args(["-drive", &drive, "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot"])
        .args(["-machine", "pc,accel=tcg", "-m", "64", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run qemu-system-x86_64 ({e}): apt install qemu-system-x86"));
    let mut guest = Guest(qemu);
    let (lines, received) = mpsc::channel();
    let console = guest.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(console).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });

    // In this order (the archive's is sorted), among syslinux's own lines.
    let expected = [
        "hello: boot args: greeting=hello-from-disk exit-after=3",
        "hello: file conf/app.conf (68 bytes)",
        "hello: file index.html (69 bytes)",
        "hello: file motd.txt (42 bytes)",
        "hello: files: 3 entries",
        "hello: heartbeat 1",
        "hello: heartbeat 2",
        "hello: heartbeat 3",
        "hello: exiting with failure",
    ];
    let start = Instant::now();
    let (mut seen, mut found) = (Vec::new(), 0);
    while found < expected.len() {
        let line = received.recv_timeout(DEADLINE.saturating_sub(start.elapsed())).unwrap_or_else(|_| {
            panic!("the console never showed {:?}; it showed:\n{}", expected[found], seen.join("\n"))
        });
        // Syslinux ends its lines in \r\n, the kernel in \n.
        if line.trim_end() == expected[found] {
            found += 1;
        }
        seen.push(line);
    }
    let status = guest.0.wait().unwrap();
    assert_eq!(status.code(), Some(3), "exit-after ends QEMU through isa-debug-exit");
}
