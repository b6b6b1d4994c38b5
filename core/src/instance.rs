//! Observed state of an instance: where it is in its lifecycle and how it ended.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a process or guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitStatus {
    /// Exited on its own with this code (for a guest: 0 after a clean power-off).
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// What the operator (or coordinator) wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
}

/// Where an instance is in its lifecycle, as last observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Accepted, not started yet.
    Pending,
    /// The backend is starting it.
    Starting,
    Running,
    /// A stop was asked for and is under way.
    Stopping,
    /// Ended; a restart may follow per the restart policy.
    Exited,
    /// Stopped because someone asked.
    Stopped,
    /// Ended and will not be restarted: the restart limit was reached or it could not start.
    Failed,
    /// Its host or backend lost track of it.
    Lost,
}

impl Phase {
    /// Every phase, in lifecycle order.
    pub const ALL: [Phase; 8] = [
        Phase::Pending,
        Phase::Starting,
        Phase::Running,
        Phase::Stopping,
        Phase::Exited,
        Phase::Stopped,
        Phase::Failed,
        Phase::Lost,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Exited => "exited",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
            Phase::Lost => "lost",
        }
    }

    /// True while something of the instance may be running on the host.
    pub const fn is_live(self) -> bool {
        matches!(self, Phase::Starting | Phase::Running | Phase::Stopping)
    }

    /// True once an instance has ended for good, as the cluster sees it: stopped as asked,
    /// failed past its restart policy, or lost with its host. An exited instance has not: its
    /// restart policy may start it again before its host hears that it should stop.
    pub const fn has_ended(self) -> bool {
        matches!(self, Phase::Stopped | Phase::Failed | Phase::Lost)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no phase's; it says which names are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state `{text}`: expected one of {}", Phase::ALL.map(Phase::name).join(", "))]
pub struct ParsePhaseError {
    text: String,
}

impl FromStr for Phase {
    type Err = ParsePhaseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|phase| phase.name() == text)
            .ok_or_else(|| ParsePhaseError { text: text.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_parses_from_its_name_and_an_unknown_name_lists_them() {
        for phase in Phase::ALL {
            assert_eq!(phase.name().parse(), Ok(phase));
        }
        let error = "runing".parse::<Phase>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown state `runing`: expected one of pending, starting, running, stopping, exited, stopped, failed, lost"
        );
    }
}
