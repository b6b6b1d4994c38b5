//! The restart policy, applied to the end of a run.

use crate::instance::ExitStatus;
use crate::spec::RestartPolicy;

/// A run that lasted this long counts as healthy: the failure streak starts over.
pub const STABLE_RUN_MS: u64 = 60_000;
const FIRST_BACKOFF_MS: u64 = 500;
const MAX_BACKOFF_MS: u64 = 60_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartDecision {
    /// Start it again after this delay.
    Restart { after_ms: u64 },
    /// It ended and the policy says leave it (a clean exit under `on-failure`, or `never`).
    Rest,
    /// It keeps failing: stop trying and report why.
    GiveUp { reason: String },
}

/// How a run ended, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    Exited(ExitStatus),
    /// Stopped for failing its health checks (why): a failure, whatever its exit code.
    Unhealthy(String),
}

impl RunEnd {
    pub fn success(&self) -> bool {
        matches!(self, RunEnd::Exited(exit) if exit.success())
    }
}

impl std::fmt::Display for RunEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunEnd::Exited(exit) => write!(f, "{exit}"),
            RunEnd::Unhealthy(why) => write!(f, "unhealthy: {why}"),
        }
    }
}

/// Decides what follows an end the operator did not ask for. `failures_in_a_row` counts the
/// failed runs before this one that were too short to count as healthy.
pub fn decide(policy: RestartPolicy, end: &RunEnd, failures_in_a_row: u32) -> RestartDecision {
    let backoff = || RestartDecision::Restart { after_ms: backoff_ms(failures_in_a_row) };
    match policy {
        RestartPolicy::Never => RestartDecision::Rest,
        RestartPolicy::Always => backoff(),
        RestartPolicy::OnFailure { .. } if end.success() => RestartDecision::Rest,
        RestartPolicy::OnFailure { limit } if failures_in_a_row < limit => backoff(),
        RestartPolicy::OnFailure { limit } => {
            RestartDecision::GiveUp { reason: format!("{end}; restart limit of {limit} reached") }
        }
    }
}

/// Exponential back-off: 0.5 s, 1 s, 2 s, ... capped at a minute.
pub fn backoff_ms(failures_in_a_row: u32) -> u64 {
    FIRST_BACKOFF_MS.saturating_mul(1u64 << failures_in_a_row.min(16)).min(MAX_BACKOFF_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAIL: ExitStatus = ExitStatus::Code(3);
    const CLEAN: ExitStatus = ExitStatus::Code(0);

    #[test]
    fn on_failure_restarts_up_to_the_limit() {
        let policy = RestartPolicy::OnFailure { limit: 2 };
        assert_eq!(decide(policy, &RunEnd::Exited(FAIL), 0), RestartDecision::Restart { after_ms: 500 });
        assert_eq!(
            decide(policy, &RunEnd::Exited(ExitStatus::Signal(9)), 1),
            RestartDecision::Restart { after_ms: 1000 }
        );
        assert_eq!(
            decide(policy, &RunEnd::Exited(FAIL), 2),
            RestartDecision::GiveUp { reason: "exit code 3; restart limit of 2 reached".into() }
        );
        assert_eq!(decide(policy, &RunEnd::Exited(CLEAN), 0), RestartDecision::Rest);
    }

    #[test]
    fn never_and_always() {
        assert_eq!(decide(RestartPolicy::Never, &RunEnd::Exited(FAIL), 0), RestartDecision::Rest);
        assert_eq!(
            decide(RestartPolicy::Always, &RunEnd::Exited(CLEAN), 0),
            RestartDecision::Restart { after_ms: 500 }
        );
        assert_eq!(
            decide(RestartPolicy::Always, &RunEnd::Exited(FAIL), 40),
            RestartDecision::Restart { after_ms: 60_000 }
        );
    }
}
