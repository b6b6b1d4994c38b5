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
//!
//! Once the leader has found a lease expired it grants that host nothing more until the host
//! has been declared down: declaring it down takes a raft round, and a renewal granted
//! meanwhile would let the host start instances whose slots the declaration then frees for
//! replacements.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::registry::{Host, HostId, HostStatus, Registry};

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
    /// Hosts found expired and not yet seen declared down, each with the time its status last
    /// changed then: while the registry still shows it up since that time, it gets no lease.
    condemned: HashMap<HostId, u64>,
}

impl LeaseTable {
    /// This node became leader at `now_ms`: every agent's host that is up starts a fresh lease,
    /// since the previous leader's renewals are unknown here. Providers hold no leases: no agent
    /// runs there, the leader itself drives them.
    pub fn start_leading(&mut self, registry: &Registry, now_ms: u64) {
        self.heard_at.clear();
        self.by_time.clear();
        self.condemned.clear();
        for host in registry.hosts().filter(|h| h.status == HostStatus::Up && h.provider.is_none()) {
            self.record(&host.id, now_ms);
        }
    }

    /// A renewal from `host` (its record in the registry, which shows it up) was received at
    /// `now_ms`. Returns whether the lease is renewed: not for a host found expired that has
    /// not been declared down since, nor for a provider.
    pub fn renew(&mut self, host: &Host, now_ms: u64) -> bool {
        if host.provider.is_some() {
            return false;
        }
        if let Some(&changed_at) = self.condemned.get(&host.id) {
            if Self::still_condemned(Some(host), changed_at) {
                return false;
            }
            self.condemned.remove(&host.id);
        }
        self.record(&host.id, now_ms);
        true
    }

    fn record(&mut self, host: &HostId, now_ms: u64) {
        if let Some(previous) = self.heard_at.insert(host.clone(), now_ms) {
            self.by_time.remove(&(previous, host.clone()));
        }
        self.by_time.insert((now_ms, host.clone()));
    }

    fn still_condemned(host: Option<&Host>, changed_at: u64) -> bool {
        host.is_some_and(|h| h.status == HostStatus::Up && h.status_changed_at_ms == changed_at)
    }

    /// Hosts up in `registry` whose lease ran out `down_after` ago: the leader declares them
    /// down (again each time it asks, until the registry says so). Hosts no longer up, or down
    /// and up again since, are forgotten.
    pub fn expired(&mut self, registry: &Registry, now_ms: u64, down_after: Duration) -> Vec<HostId> {
        let limit = u64::try_from(down_after.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms.saturating_sub(limit);
        let stale: Vec<(u64, HostId)> = self.by_time.range(..(cutoff, HostId(String::new()))).cloned().collect();
        for (at, id) in stale {
            self.by_time.remove(&(at, id.clone()));
            self.heard_at.remove(&id);
            if let Some(host) = registry.host(&id).filter(|h| h.status == HostStatus::Up) {
                self.condemned.insert(id, host.status_changed_at_ms);
            }
        }
        self.condemned.retain(|id, changed_at| Self::still_condemned(registry.host(id), *changed_at));
        let mut expired: Vec<HostId> = self.condemned.keys().cloned().collect();
        expired.sort();
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

    fn host(name: &str, at_ms: u64) -> Host {
        Host {
            id: HostId(name.into()),
            address: format!("{name}:1"),
            backends: Default::default(),
            capacity: Resources::default(),
            labels: Default::default(),
            networks: Default::default(),
            status: HostStatus::Up,
            registered_at_ms: at_ms,
            status_changed_at_ms: at_ms,
            drain: None,
            provider: None,
        }
    }

    fn apply(registry: &mut Registry, command: Command) {
        let index = registry.applied_index() + 1;
        registry.apply(index, &Request { request_id: format!("r{index}"), command }).unwrap();
    }

    fn registry(hosts: &[&str]) -> Registry {
        let mut registry = Registry::default();
        for name in hosts {
            apply(&mut registry, Command::RegisterHost { host: host(name, 0) });
        }
        registry
    }

    fn record<'a>(registry: &'a Registry, name: &str) -> &'a Host {
        registry.host(&HostId(name.into())).expect("registered")
    }

    #[test]
    fn leases_expire_after_down_after_and_a_new_leader_starts_them_afresh() {
        let registry = registry(&["a", "b"]);
        let down_after = Duration::from_secs(7);
        let mut table = LeaseTable::default();
        table.start_leading(&registry, 1_000);
        assert!(table.renew(record(&registry, "a"), 5_000));
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
        apply(&mut registry, Command::SetHostStatus { host: HostId("a".into()), status: HostStatus::Down, at_ms: 1 });
        assert!(table.expired(&registry, 60_000, Duration::from_secs(7)).is_empty());
        assert!(table.heard_at.is_empty() && table.by_time.is_empty() && table.condemned.is_empty());
    }

    #[test]
    fn an_expired_host_gets_no_lease_until_it_has_been_declared_down() {
        let down_after = Duration::from_secs(7);
        let mut registry = registry(&["a"]);
        let mut table = LeaseTable::default();
        table.start_leading(&registry, 0);
        assert_eq!(table.expired(&registry, 7_001, down_after), [HostId("a".into())]);
        // Its renewal arrives while the declaration is still on its way through raft.
        assert!(!table.renew(record(&registry, "a"), 7_010));
        // Registering again (an agent restarted) changes nothing until the host is down.
        apply(&mut registry, Command::RegisterHost { host: host("a", 7_020) });
        assert!(!table.renew(record(&registry, "a"), 7_030));
        assert_eq!(table.expired(&registry, 7_040, down_after), [HostId("a".into())], "still to declare");

        apply(
            &mut registry,
            Command::SetHostStatus { host: HostId("a".into()), status: HostStatus::Down, at_ms: 7_050 },
        );
        apply(&mut registry, Command::RegisterHost { host: host("a", 7_060) });
        assert!(table.renew(record(&registry, "a"), 7_070), "down and registered again: a lease");
        assert!(table.expired(&registry, 14_000, down_after).is_empty());
    }
}
