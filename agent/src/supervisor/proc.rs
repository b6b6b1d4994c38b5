//! Process identity from `/proc`: a pid names a process only together with its start time.
//! Also what a process has used (CPU time, resident memory), for the agent's metrics.

use std::fs;

use serde::{Deserialize, Serialize};

/// A process as it was when we saw it start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
}

impl ProcessId {
    /// Identifies a live process by pid.
    pub fn of(pid: u32) -> Option<Self> {
        let (state, start_ticks) = stat(pid)?;
        (state != 'Z').then_some(Self { pid, start_ticks })
    }

    /// True if this very process is still alive (not exited, not a zombie, pid not reused).
    pub fn is_alive(&self) -> bool {
        Self::of(self.pid) == Some(*self)
    }

    /// What this very process has used so far, if it is still alive (`None` once its pid
    /// names another process).
    pub fn usage(&self) -> Option<Usage> {
        let stat = Stat::parse(&fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?)?;
        if stat.state == 'Z' || stat.start_ticks != self.start_ticks {
            return None;
        }
        let resident_pages = resident_pages(&fs::read_to_string(format!("/proc/{}/statm", self.pid)).ok()?)?;
        Some(Usage { cpu_ticks: stat.utime + stat.stime, resident_pages })
    }

    pub fn nix_pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX))
    }
}

/// What a process has used: CPU time in clock ticks (user and system), resident memory in
/// pages. [`Usage::cpu_seconds`] and [`Usage::resident_bytes`] convert with this machine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub cpu_ticks: u64,
    pub resident_pages: u64,
}

impl Usage {
    pub fn cpu_seconds(&self) -> f64 {
        let ticks_per_second = sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap_or(100);
        self.cpu_ticks as f64 / ticks_per_second as f64
    }

    pub fn resident_bytes(&self) -> u64 {
        self.resident_pages.saturating_mul(sysconf(nix::unistd::SysconfVar::PAGE_SIZE).unwrap_or(4096))
    }
}

fn sysconf(variable: nix::unistd::SysconfVar) -> Option<u64> {
    nix::unistd::sysconf(variable).ok().flatten().and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0)
}

/// The fields of `/proc/PID/stat` we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: char,
    /// Fields 14 and 15: CPU time in user and in kernel mode, in clock ticks.
    utime: u64,
    stime: u64,
    /// Field 22: start time in clock ticks since boot.
    start_ticks: u64,
}

impl Stat {
    fn parse(text: &str) -> Option<Self> {
        // The command name (field 2) may contain spaces and parentheses; it ends at the last ')'.
        let after_name = &text[text.rfind(')')? + 1..];
        // Fields after the name start at number 3 (state).
        let fields: Vec<&str> = after_name.split_whitespace().take(22 - 2).collect();
        let field = |number: usize| fields.get(number - 3).and_then(|f| f.parse::<u64>().ok());
        Some(Self {
            state: fields.first()?.chars().next()?,
            utime: field(14)?,
            stime: field(15)?,
            start_ticks: field(22)?,
        })
    }
}

/// The resident set in pages, the second field of `/proc/PID/statm`.
fn resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// Process state letter and start time of `pid`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let stat = Stat::parse(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    Some((stat.state, stat.start_ticks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_this_process_and_not_dead_ones() {
        let me = ProcessId::of(std::process::id()).expect("own stat readable");
        assert!(me.is_alive());
        let impostor = ProcessId { start_ticks: me.start_ticks + 1, ..me };
        assert!(!impostor.is_alive(), "a different start time is a different process");

        assert!(me.usage().is_some_and(|u| u.resident_pages > 0 && u.resident_bytes() > 0), "{:?}", me.usage());
        assert_eq!(impostor.usage(), None);

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(ProcessId::of(pid), None);
    }

    #[test]
    fn parses_stat_past_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (qemu (x) 1) S 1 4242 4242 0 -1 4194560 2913 0 0 0 731 95 0 0 20 0 3 0 1234567 \
                    1048576 5000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let stat = Stat::parse(line).expect("parses");
        assert_eq!(stat, Stat { state: 'S', utime: 731, stime: 95, start_ticks: 1234567 });
        assert_eq!(Stat::parse("4242 (cut short) S 1 2"), None);
        assert_eq!(Stat::parse("no name at all"), None);
    }

    #[test]
    fn reads_the_resident_set_from_statm() {
        assert_eq!(resident_pages("11000 2816 1900 200 0 900 0\n"), Some(2816));
        assert_eq!(resident_pages("11000"), None);
        let usage = Usage { cpu_ticks: 250, resident_pages: 2 };
        assert!(usage.cpu_seconds() > 0.0);
        assert_eq!(usage.resident_bytes() % 2, 0);
    }
}
