//! Observed state of an instance: where it is in its lifecycle and how it ended.

use std::fmt;

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
