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
//! The renewals a leader takes are bounded, however large the cluster (as Nomad's
//! `max_heartbeats_per_second` bounds them): past `renewals_per_second × heartbeat` hosts,
//! every lease grows in proportion ([`LeaseTiming::for_hosts`]), and agents renew as much
//! less often ([`LeaseTiming::heartbeat_for`]). A host lost is then declared down later (at
//! 10,000 hosts, after 34 s rather than 7 s), but the coordinators are not swamped. The
//! count is the most hosts the registry has held at once ([`Registry::most_hosts`]), which
//! never shrinks: no leader grants a lease shorter than one an earlier leader may have
//! granted, which a new leader's fresh leases have to outlast.
//!
//! Once the leader has found a lease expired it grants that host nothing more until the host
//! has been declared down: declaring it down takes a raft round, and a renewal granted
//! meanwhile would let the host start instances whose slots the declaration then frees for
//! replacements.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::clock::millis;
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
    /// The most renewals a second the leader takes from all hosts together; more hosts than
    /// this many seconds' worth of heartbeats get longer leases ([`Self::for_hosts`]).
    pub renewals_per_second: u32,
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

    /// The timing a leader grants in a cluster that has held `hosts` hosts: this one while
    /// their heartbeats stay within `renewals_per_second`, else with heartbeat and ttl
    /// stretched alike until they do. Grace and the fencing stop stay as they are: they cover
    /// a stop and a message in flight, which take no longer in a larger cluster.
    pub fn for_hosts(&self, hosts: usize) -> LeaseTiming {
        let rate = u128::from(self.renewals_per_second.max(1));
        let heartbeat_ms = self.heartbeat.as_millis().max(1);
        let needed_ms = (hosts as u128 * 1000).div_ceil(rate);
        if needed_ms <= heartbeat_ms {
            return *self;
        }
        let stretched = |d: Duration| Duration::from_millis(clamp_ms(d.as_millis() * needed_ms / heartbeat_ms));
        LeaseTiming { heartbeat: Duration::from_millis(clamp_ms(needed_ms)), ttl: stretched(self.ttl), ..*self }
    }

    /// How often an agent renews a lease granted for `ttl_ms`: as often, against the ttl, as
    /// this timing does, and never more often than `heartbeat`.
    pub fn heartbeat_for(&self, ttl_ms: u64) -> Duration {
        let ttl = self.ttl.as_millis().max(1);
        let scaled = u128::from(ttl_ms) * self.heartbeat.as_millis() / ttl;
        self.heartbeat.max(Duration::from_millis(clamp_ms(scaled)))
    }
}

fn clamp_ms(ms: u128) -> u64 {
    u64::try_from(ms).unwrap_or(u64::MAX)
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            ttl: Duration::from_secs(3),
            grace: Duration::from_secs(4),
            fence_stop: Duration::from_secs(1),
            renewals_per_second: 1000,
        }
    }
}

/// The leader's record of when each host's lease runs out for good.
#[derive(Debug, Clone, Default)]
pub struct LeaseTable {
    timing: LeaseTiming,
    /// When each host is to be declared down unless it renews: the last renewal's arrival,
    /// plus the ttl granted then, plus grace.
    down_at: HashMap<HostId, u64>,
    /// The same, ordered by time, so finding expired leases costs what expired.
    by_deadline: BTreeSet<(u64, HostId)>,
    /// Hosts found expired and not yet seen declared down, each with the time its status last
    /// changed then: while the registry still shows it up since that time, it gets no lease.
    condemned: HashMap<HostId, u64>,
}

impl LeaseTable {
    /// A table granting `timing`, stretched to the registry's size ([`LeaseTiming::for_hosts`]).
    pub fn new(timing: LeaseTiming) -> Self {
        Self { timing, ..Self::default() }
    }

    /// What a renewal granted now gets in `registry`.
    pub fn timing_in(&self, registry: &Registry) -> LeaseTiming {
        self.timing.for_hosts(registry.most_hosts())
    }

    /// This node became leader at `now_ms`: every agent's host that is up starts a fresh lease,
    /// since the previous leader's renewals are unknown here. Providers hold no leases: no agent
    /// runs there, the leader itself drives them.
    pub fn start_leading(&mut self, registry: &Registry, now_ms: u64) {
        self.down_at.clear();
        self.by_deadline.clear();
        self.condemned.clear();
        let deadline = now_ms.saturating_add(millis(self.timing_in(registry).down_after()));
        for host in registry.hosts().filter(|h| h.status == HostStatus::Up && h.provider.is_none()) {
            self.record(&host.id, deadline);
        }
    }

    /// A renewal from `host` (its record in `registry`, which shows it up) was received at
    /// `now_ms`. Returns the ttl granted, or `None`: nothing for a host found expired that has
    /// not been declared down since, nor for a provider.
    pub fn renew(&mut self, registry: &Registry, host: &Host, now_ms: u64) -> Option<Duration> {
        if host.provider.is_some() {
            return None;
        }
        if let Some(&changed_at) = self.condemned.get(&host.id) {
            if Self::still_condemned(Some(host), changed_at) {
                return None;
            }
            self.condemned.remove(&host.id);
        }
        let granted = self.timing_in(registry);
        self.record(&host.id, now_ms.saturating_add(millis(granted.down_after())));
        Some(granted.ttl)
    }

    fn record(&mut self, host: &HostId, deadline_ms: u64) {
        if let Some(previous) = self.down_at.insert(host.clone(), deadline_ms) {
            self.by_deadline.remove(&(previous, host.clone()));
        }
        self.by_deadline.insert((deadline_ms, host.clone()));
    }

    fn still_condemned(host: Option<&Host>, changed_at: u64) -> bool {
        host.is_some_and(|h| h.status == HostStatus::Up && h.status_changed_at_ms == changed_at)
    }

    /// Hosts up in `registry` whose lease ran out for good before `now_ms`: the leader
    /// declares them down (again each time it asks, until the registry says so). Hosts no
    /// longer up, or down and up again since, are forgotten.
    pub fn expired(&mut self, registry: &Registry, now_ms: u64) -> Vec<HostId> {
        let stale: Vec<(u64, HostId)> = self.by_deadline.range(..(now_ms, HostId(String::new()))).cloned().collect();
        for (at, id) in stale {
            self.by_deadline.remove(&(at, id.clone()));
            self.down_at.remove(&id);
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
        let mut table = LeaseTable::new(LeaseTiming::default());
        table.start_leading(&registry, 1_000);
        assert!(table.renew(&registry, record(&registry, "a"), 5_000).is_some());
        assert!(table.expired(&registry, 8_000).is_empty());
        assert_eq!(table.expired(&registry, 8_001), [HostId("b".into())]);
        assert_eq!(table.expired(&registry, 8_002), [HostId("b".into())], "asked again until down");
        // Leadership moves: nobody is expired until a whole `down_after` from the new start.
        table.start_leading(&registry, 20_000);
        assert!(table.expired(&registry, 27_000).is_empty());
        assert_eq!(table.expired(&registry, 27_001).len(), 2);
    }

    #[test]
    fn hosts_no_longer_up_are_forgotten() {
        let mut registry = registry(&["a"]);
        let mut table = LeaseTable::new(LeaseTiming::default());
        table.start_leading(&registry, 0);
        apply(&mut registry, Command::SetHostStatus { host: HostId("a".into()), status: HostStatus::Down, at_ms: 1 });
        assert!(table.expired(&registry, 60_000).is_empty());
        assert!(table.down_at.is_empty() && table.by_deadline.is_empty() && table.condemned.is_empty());
    }

    #[test]
    fn an_expired_host_gets_no_lease_until_it_has_been_declared_down() {
        let mut registry = registry(&["a"]);
        let mut table = LeaseTable::new(LeaseTiming::default());
        table.start_leading(&registry, 0);
        assert_eq!(table.expired(&registry, 7_001), [HostId("a".into())]);
        // Its renewal arrives while the declaration is still on its way through raft.
        assert_eq!(table.renew(&registry, record(&registry, "a"), 7_010), None);
        // Registering again (an agent restarted) changes nothing until the host is down.
        apply(&mut registry, Command::RegisterHost { host: host("a", 7_020) });
        assert_eq!(table.renew(&registry, record(&registry, "a"), 7_030), None);
        assert_eq!(table.expired(&registry, 7_040), [HostId("a".into())], "still to declare");

        apply(
            &mut registry,
            Command::SetHostStatus { host: HostId("a".into()), status: HostStatus::Down, at_ms: 7_050 },
        );
        apply(&mut registry, Command::RegisterHost { host: host("a", 7_060) });
        assert!(table.renew(&registry, record(&registry, "a"), 7_070).is_some(), "down and registered again: a lease");
        assert!(table.expired(&registry, 14_000).is_empty());
    }

    #[test]
    fn past_the_renewal_bound_leases_stretch_and_agents_renew_as_much_less_often() {
        let timing = LeaseTiming::default();
        assert_eq!(timing.for_hosts(1_000), timing, "1,000 hosts renew 1,000 times a second");
        let large = timing.for_hosts(10_000);
        assert_eq!((large.heartbeat, large.ttl), (Duration::from_secs(10), Duration::from_secs(30)));
        assert_eq!((large.grace, large.fence_stop), (timing.grace, timing.fence_stop));
        assert_eq!(timing.for_hosts(1_500).ttl, Duration::from_millis(4_500));
        // The agent keeps to its own ratio of heartbeat to ttl, and never renews more often.
        assert_eq!(timing.heartbeat_for(30_000), Duration::from_secs(10));
        assert_eq!(timing.heartbeat_for(3_000), Duration::from_secs(1));
        assert_eq!(timing.heartbeat_for(600), Duration::from_secs(1));
    }

    #[test]
    fn a_new_leaders_fresh_leases_outlast_those_granted_before_the_cluster_shrank() {
        // One renewal a second in all: three hosts renew every 3 s, for leases of 9 s.
        let timing = LeaseTiming { renewals_per_second: 1, ..LeaseTiming::default() };
        let mut registry = registry(&["a", "b", "c"]);
        let mut table = LeaseTable::new(timing);
        table.start_leading(&registry, 0);
        assert_eq!(table.renew(&registry, record(&registry, "a"), 1_000), Some(Duration::from_secs(9)));
        assert!(table.expired(&registry, 1_000 + 13_000).contains(&HostId("b".into())));
        assert!(!table.expired(&registry, 1_000 + 13_000).contains(&HostId("a".into())));
        // "c" goes down and is removed: two hosts are left, but leases stay as long.
        apply(&mut registry, Command::SetHostStatus { host: HostId("c".into()), status: HostStatus::Down, at_ms: 2 });
        apply(&mut registry, Command::RemoveHost { host: HostId("c".into()) });
        assert_eq!(registry.hosts().count(), 2);
        table.start_leading(&registry, 20_000);
        assert!(table.expired(&registry, 33_000).is_empty());
        assert_eq!(table.renew(&registry, record(&registry, "a"), 33_000), Some(Duration::from_secs(9)));
    }
}
