//! The fencing deadline of a host's cluster instances, in a file the agent writes and every
//! cluster shim watches.
//!
//! The agent fences its cluster instances itself when its lease runs out. But an agent that is
//! dead, frozen or stuck on its disk cannot, and its instances must not outlive the lease all
//! the same: the coordinators replace them once it has surely run out. So each cluster shim
//! reads this file (a boot-clock time in milliseconds, as text) every [`POLL`] and kills its
//! payload once the deadline has passed. The agent writes `lease end + fence_stop`: alive, it
//! has stopped the instance gracefully by then; dead, the shim's kill is the backstop. The
//! boot clock (`CLOCK_BOOTTIME`) is the same for every process on the host.

use std::io;
use std::path::Path;
use std::time::Duration;

/// How often a shim looks at the deadline.
pub const POLL: Duration = Duration::from_millis(100);

/// Replaces the deadline. A rename, so a shim reads the old value or the new, never part of
/// one; not fsync'd: after a crash of the host, no shim is left to read it.
pub fn write(path: &Path, deadline_boot_ms: u64) -> io::Result<()> {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, deadline_boot_ms.to_string())?;
    std::fs::rename(&temp, path)
}

/// Whether the fencing deadline has passed at `now_boot_ms`. No deadline means no lease: passed.
pub fn passed(now_boot_ms: u64, deadline: Option<u64>) -> bool {
    deadline.is_none_or(|deadline| now_boot_ms >= deadline)
}

/// The deadline in the file, if it holds one.
pub fn read(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_round_trips_and_garbage_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fence");
        assert_eq!(read(&path), None);
        write(&path, 123_456).unwrap();
        write(&path, 123_999).unwrap();
        assert_eq!(read(&path), Some(123_999));
        std::fs::write(&path, "soon").unwrap();
        assert_eq!(read(&path), None);
    }
}
