//! Leases between agents and the coordinator leader: their timing, and the leader's table of
//! who renewed when.
//!
//! An agent renews its lease with a heartbeat every `heartbeat`. The leader grants `ttl`,
//! counted from when the agent *sent* the renewal: an agent whose lease runs out stops its
//! cluster instances at once (fencing; graceful for at most `fence_stop`, then forced), since it
//! can no longer be sure the cluster still counts on it. The leader declares a host down, and
//! replaces its instances elsewhere, only after `ttl + grace` without hearing from it, counted
//! from when it *received* the last renewal, which is later. So a fenced host has `grace` to
//! stop its instances before replacements start, and a slot never runs twice.
//!
//! [`LeaseTable`] is the leader's side, in memory only (a heartbeat a second per host is no
//! log entry): renewals in, hosts to declare down out, time passed in as milliseconds.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::registry::{HostId, HostStatus, Registry};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub heartbeat: Duration,
    /// What the leader grants: the agent fences when it has had no renewal acknowledged for
    /// this long since it sent the last one.
    pub ttl: Duration,
    /// How much longer the leader waits before declaring the host down.
    pub grace: Duration,
    /// How long a fencing stop waits for a graceful shutdown before forcing.
    pub fence_stop: Duration,
}

impl LeaseTiming {
    /// How long the leader waits without a heartbeat before declaring a host down.
    pub fn down_after(&self) -> Duration {
        self.ttl + self.grace
    }

    /// When a fenced host's instances are surely gone, after its lease ran out: the graceful
    /// stop, then the kill.
    pub fn fenced_within(&self) -> Duration {
        self.ttl + self.fence_stop
    }
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            ttl: Duration::from_secs(3),
            grace: Duration::from_secs(4),
            fence_stop: Duration::from_secs(1),
        }
    }
}

/// The leader's record of when it last heard from each host.
#[derive(Debug, Clone, Default)]
pub struct LeaseTable {
    heard_at: HashMap<HostId, u64>,
    /// The same, ordered by time, so finding expired leases costs what expired.
    by_time: BTreeSet<(u64, HostId)>,
}

impl LeaseTable {
    /// This node became leader at `now_ms`: every host that is up starts a fresh lease, since
    /// the previous leader's renewals are unknown here.
    pub fn start_leading(&mut self, registry: &Registry, now_ms: u64) {
        self.heard_at.clear();
        self.by_time.clear();
        for host in registry.hosts().filter(|h| h.status == HostStatus::Up) {
            self.renew(&host.id, now_ms);
        }
    }

    /// A renewal from `host` was received at `now_ms`.
    pub fn renew(&mut self, host: &HostId, now_ms: u64) {
        if let Some(previous) = self.heard_at.insert(host.clone(), now_ms) {
            self.by_time.remove(&(previous, host.clone()));
        }
        self.by_time.insert((now_ms, host.clone()));
    }

    /// Hosts up in `registry` whose lease ran out `down_after` ago: the leader declares them
    /// down (again each time it asks, until the registry says so). Hosts no longer up are
    /// forgotten.
    pub fn expired(&mut self, registry: &Registry, now_ms: u64, down_after: Duration) -> Vec<HostId> {
        let limit = u64::try_from(down_after.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms.saturating_sub(limit);
        let stale: Vec<(u64, HostId)> = self.by_time.range(..(cutoff, HostId(String::new()))).cloned().collect();
        let mut expired = Vec::new();
        for (at, host) in stale {
            if registry.host(&host).is_some_and(|h| h.status == HostStatus::Up) {
                expired.push(host);
            } else {
                self.by_time.remove(&(at, host.clone()));
                self.heard_at.remove(&host);
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Command, Host, Request, Resources};

    #[test]
    fn a_fenced_host_is_gone_well_before_it_is_declared_down() {
        let timing = LeaseTiming::default();
        assert!(timing.fenced_within() + timing.heartbeat < timing.down_after());
        assert_eq!(timing.down_after() - timing.ttl, Duration::from_secs(4));
    }

    fn registry(hosts: &[&str]) -> Registry {
        let mut registry = Registry::default();
        for (index, name) in hosts.iter().enumerate() {
            let host = Host {
                id: HostId((*name).into()),
                address: format!("{name}:1"),
                backends: Default::default(),
                capacity: Resources::default(),
                labels: Default::default(),
                status: HostStatus::Up,
                registered_at_ms: 0,
                status_changed_at_ms: 0,
            };
            let request = Request { request_id: format!("r{index}"), command: Command::RegisterHost { host } };
            registry.apply(index as u64 + 1, &request).unwrap();
        }
        registry
    }

    #[test]
    fn leases_expire_after_down_after_and_a_new_leader_starts_them_afresh() {
        let registry = registry(&["a", "b"]);
        let down_after = Duration::from_secs(7);
        let mut table = LeaseTable::default();
        table.start_leading(&registry, 1_000);
        table.renew(&HostId("a".into()), 5_000);
        assert!(table.expired(&registry, 8_000, down_after).is_empty());
        assert_eq!(table.expired(&registry, 8_001, down_after), [HostId("b".into())]);
        assert_eq!(table.expired(&registry, 8_002, down_after), [HostId("b".into())], "asked again until down");
        // Leadership moves: nobody is expired until a whole `down_after` from the new start.
        table.start_leading(&registry, 20_000);
        assert!(table.expired(&registry, 27_000, down_after).is_empty());
        assert_eq!(table.expired(&registry, 27_001, down_after).len(), 2);
    }

    #[test]
    fn hosts_no_longer_up_are_forgotten() {
        let mut registry = registry(&["a"]);
        let mut table = LeaseTable::default();
        table.start_leading(&registry, 0);
        let down = Command::SetHostStatus { host: HostId("a".into()), status: HostStatus::Down, at_ms: 1 };
        registry.apply(9, &Request { request_id: "down".into(), command: down }).unwrap();
        assert!(table.expired(&registry, 60_000, Duration::from_secs(7)).is_empty());
        assert!(table.heard_at.is_empty() && table.by_time.is_empty());
    }
}
