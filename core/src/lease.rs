//! Lease timing between agents and the coordinator leader.
//!
//! An agent renews its lease with a heartbeat every `heartbeat`. An agent that has not had a
//! heartbeat acknowledged for `fence_after` (counted from when it sent the last acknowledged
//! one) stops its cluster instances at once: it can no longer be sure the cluster still counts
//! on it. The leader declares a host down, and replaces its instances elsewhere, only after
//! `ttl + grace` without hearing from it. The margin `ttl + grace - fence_after` (4 s by
//! default) is the time a fenced host has to stop its instances before replacements start, so
//! a slot never runs twice.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub heartbeat: Duration,
    pub fence_after: Duration,
    pub ttl: Duration,
    pub grace: Duration,
}

impl LeaseTiming {
    /// How long the leader waits without a heartbeat before declaring a host down.
    pub fn down_after(&self) -> Duration {
        self.ttl + self.grace
    }
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            fence_after: Duration::from_secs(3),
            ttl: Duration::from_secs(5),
            grace: Duration::from_secs(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fenced_host_stops_well_before_it_is_declared_down() {
        let timing = LeaseTiming::default();
        assert!(timing.fence_after + timing.heartbeat < timing.down_after());
        assert_eq!(timing.down_after() - timing.fence_after, Duration::from_secs(4));
    }
}
