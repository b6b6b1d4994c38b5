//! A small disk for a test: a tmpfs of a few MiB mounted at a directory (needs root), which
//! the test fills up and frees again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug)]
pub struct SmallDisk {
    mount_point: PathBuf,
    filler: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `mib` MiB at `mount_point` (created if missing).
    pub fn mount(mount_point: &Path, mib: u32) -> Self {
        std::fs::create_dir_all(mount_point).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(mount_point)
            .status()
            .expect("run mount");
        assert!(status.success(), "cannot mount a tmpfs at {} (the disk-full tests need root)", mount_point.display());
        Self { mount_point: mount_point.to_owned(), filler: mount_point.join("filler") }
    }

    /// Writes a filler file until the disk has no space left.
    pub fn fill(&self) {
        let mut file = std::fs::File::create(&self.filler).expect("filler file");
        for chunk in [1 << 20, 4096, 1] {
            let bytes = vec![0xa5u8; chunk];
            while file.write_all(&bytes).and_then(|()| file.sync_data()).is_ok() {}
        }
    }

    /// Removes the filler: the space is back.
    pub fn free(&self) {
        std::fs::remove_file(&self.filler).expect("remove the filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount_point).status();
    }
}
