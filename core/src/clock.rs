//! The one place Mirari reads clocks. Nothing else in this crate calls it: decisions take time
//! as a value, and the drivers at the edge read it here and pass it in (a simulation passes
//! virtual time instead).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: timestamps kept in records and shown to people.
pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis)
}

/// A duration in whole milliseconds, as times and ttls travel (saturating past `u64::MAX`).
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the host booted (`CLOCK_BOOTTIME`): never jumps, counts time suspended,
/// and reads the same in every process of a host. Lease deadlines are in this clock, so an
/// agent and the shims it writes them for agree on when one passed.
pub fn boot_ms() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME is readable");
    u64::try_from(now.tv_sec()).unwrap_or(0) * 1000 + u64::try_from(now.tv_nsec()).unwrap_or(0) / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_moves_forward() {
        let before = boot_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(boot_ms() >= before + 5);
    }
}
