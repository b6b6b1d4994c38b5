//! Health checks: what `[health]` asks, and what a run of results means.
//!
//! The agent probes each running instance at its first interface's address (a TCP connect, or
//! an HTTP GET that must answer a given status) every `interval`, each probe given `timeout`.
//! [`HealthTracker`] turns results into a [`Health`]: `starting` until the first pass,
//! `healthy` after it, `unhealthy` after `unhealthy_after` failures in a row. Failures in the
//! grace period after a start do not count. An instance that turns unhealthy is restarted
//! under its restart policy (the caller's to do when [`Verdict::restart`] says so).

use serde::{Deserialize, Serialize};

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// A TCP connection to the port is accepted.
    Tcp { port: u16 },
    /// `GET path` on the port answers with `status`.
    Http { port: u16, path: String, status: u16 },
}

/// The `[health]` section of `mirari.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// After a start, failures do not count for this long.
    pub grace_ms: u64,
    /// Failures in a row that make an instance unhealthy.
    pub unhealthy_after: u32,
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL_MS: u64 = 2_000;
    pub const DEFAULT_TIMEOUT_MS: u64 = 1_000;
    pub const DEFAULT_GRACE_MS: u64 = 10_000;
    pub const DEFAULT_UNHEALTHY_AFTER: u32 = 3;
    /// The longest interval, timeout and grace period accepted (an hour).
    pub const MAX_MS: u64 = 3_600_000;

    /// Checks the numbers (from a config file or the wire).
    pub fn validate(&self) -> Result<(), String> {
        if self.interval_ms == 0 || self.timeout_ms == 0 {
            return Err("the interval and timeout must be above zero".into());
        }
        if [self.interval_ms, self.timeout_ms, self.grace_ms].iter().any(|&ms| ms > Self::MAX_MS) {
            return Err("interval, timeout and grace are at most an hour".into());
        }
        if self.unhealthy_after == 0 || self.unhealthy_after > 100 {
            return Err("unhealthy_after is 1 to 100 failures in a row".into());
        }
        match &self.probe {
            Probe::Tcp { port: 0 } | Probe::Http { port: 0, .. } => Err("the port must be above zero".into()),
            Probe::Http { path, .. }
                if !path.starts_with('/') || path.len() > 1024 || path.contains(char::is_whitespace) =>
            {
                Err(format!("the HTTP path `{path}` must start with `/`, have no spaces and be at most 1 KiB"))
            }
            Probe::Http { status, .. } if !(100..=599).contains(status) => {
                Err(format!("status {status} is not an HTTP status"))
            }
            _ => Ok(()),
        }
    }
}

/// What the checks say of an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No health check, or the instance is not running.
    #[default]
    None,
    /// Running, not passed a check yet.
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub const fn name(self) -> &'static str {
        match self {
            Health::None => "-",
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// What one probe result means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The health changed: report it.
    pub changed: bool,
    /// The instance just turned unhealthy: restart it.
    pub restart: bool,
}

/// The health of one run of an instance, from its probe results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthTracker {
    pub health: Health,
    started_at_ms: u64,
    failures_in_row: u32,
    /// Why the last probe failed ("" once one passes).
    pub last_failure: String,
}

impl HealthTracker {
    /// A run that started at `started_at_ms`.
    pub fn started(started_at_ms: u64) -> Self {
        Self { health: Health::Starting, started_at_ms, failures_in_row: 0, last_failure: String::new() }
    }

    /// Takes one probe result at `now_ms`.
    pub fn record(&mut self, check: &HealthCheck, now_ms: u64, result: Result<(), String>) -> Verdict {
        let before = self.health;
        match result {
            Ok(()) => {
                self.failures_in_row = 0;
                self.last_failure.clear();
                self.health = Health::Healthy;
            }
            Err(why) => {
                self.last_failure = why;
                if now_ms.saturating_sub(self.started_at_ms) >= check.grace_ms {
                    self.failures_in_row += 1;
                }
                if self.failures_in_row >= check.unhealthy_after {
                    self.health = Health::Unhealthy;
                }
            }
        }
        let changed = self.health != before;
        Verdict { changed, restart: changed && self.health == Health::Unhealthy }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> HealthCheck {
        HealthCheck {
            probe: Probe::Http { port: 80, path: "/".into(), status: 200 },
            interval_ms: 1_000,
            timeout_ms: 500,
            grace_ms: 5_000,
            unhealthy_after: 3,
        }
    }

    #[test]
    fn a_pass_makes_it_healthy_and_failures_in_a_row_unhealthy() {
        let check = check();
        let mut tracker = HealthTracker::started(0);
        assert_eq!(tracker.record(&check, 1_000, Ok(())), Verdict { changed: true, restart: false });
        assert_eq!(tracker.health, Health::Healthy);
        assert!(!tracker.record(&check, 6_000, Err("refused".into())).changed);
        assert!(!tracker.record(&check, 7_000, Err("refused".into())).changed);
        assert_eq!(tracker.record(&check, 8_000, Err("timed out".into())), Verdict { changed: true, restart: true });
        assert_eq!((tracker.health, tracker.last_failure.as_str()), (Health::Unhealthy, "timed out"));
        assert!(!tracker.record(&check, 9_000, Err("refused".into())).restart, "restarted once per turn");
    }

    #[test]
    fn failures_in_the_grace_period_do_not_count_and_a_pass_resets_the_run() {
        let check = check();
        let mut tracker = HealthTracker::started(10_000);
        for at in [10_500, 11_000, 12_000, 13_000, 14_000] {
            assert!(!tracker.record(&check, at, Err("refused".into())).changed);
        }
        assert_eq!(tracker.health, Health::Starting);
        tracker.record(&check, 15_000, Err("refused".into()));
        tracker.record(&check, 16_000, Err("refused".into()));
        tracker.record(&check, 17_000, Ok(()));
        tracker.record(&check, 18_000, Err("refused".into()));
        tracker.record(&check, 19_000, Err("refused".into()));
        assert_eq!(tracker.health, Health::Healthy);
    }

    #[test]
    fn numbers_are_checked() {
        assert!(check().validate().is_ok());
        let mut bad = check();
        bad.unhealthy_after = 0;
        assert!(bad.validate().is_err());
        let mut bad = check();
        bad.probe = Probe::Http { port: 80, path: "no-slash".into(), status: 200 };
        assert!(bad.validate().is_err());
        let mut bad = check();
        bad.probe = Probe::Tcp { port: 0 };
        assert!(bad.validate().is_err());
    }
}
