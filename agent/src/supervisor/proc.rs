//! Process identity from `/proc`: a pid names a process only together with its start time.

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

    pub fn nix_pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX))
    }
}

/// Process state letter and start time of `pid`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; it ends at the last ')'.
    let after_name = &text[text.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields after the name start at number 3 (state); start time is field 22.
    let start_ticks = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start_ticks))
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

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(ProcessId::of(pid), None);
    }
}
