//! The coordinator's metrics, `mirari_coordinator_*`, served on `--http-listen`.
//!
//! Events are counted where they happen, in the effectful parts, through one
//! [`CoordinatorMetrics`] made by the server and lent to each of them: the driver owns it and
//! lends it on through [`RaftHandle::metrics`] (proposals in [`RaftHandle::propose`], leader
//! changes, and the apply latencies and snapshots that [`Node::handle_ready`] reports in its
//! output; the node itself knows nothing of metrics), the leader's duties (placements,
//! expired leases), and the redb backing (commit latency). What is a state rather than an
//! event (the term, the role, the indexes, hosts, unplaced slots) is read at scrape time by
//! [`StateCollector`] from the raft status and the applied registry, so it is never stale.
//!
//! [`Node::handle_ready`]: crate::consensus::node::Node::handle_ready

use std::collections::BTreeMap;

use mirari_core::clock;
use mirari_core::registry::{HostStatus, Infeasible, Registry as ClusterRegistry};
use mirari_metrics::{encode_family, encode_metric, latency_histogram};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::driver::RaftHandle;
use crate::status;

/// The prefix of every series.
pub const PREFIX: &str = "mirari_coordinator";

/// The roles a node may be in, as [`crate::driver::RaftStatus::role`] names them.
pub const ROLES: [&str; 4] = ["leader", "follower", "candidate", "pre-candidate"];

/// The counters and histograms the coordinator's loops update.
#[derive(Debug, Clone)]
pub struct CoordinatorMetrics {
    pub leader_changes: Counter,
    /// From a proposal's submission to its entry applied here.
    pub proposal_seconds: Histogram,
    /// Applying one committed entry to the state machine.
    pub apply_seconds: Histogram,
    /// One redb commit (the fsync of a ready's entries and hard state).
    pub fsync_seconds: Histogram,
    pub snapshot_bytes: Gauge,
    pub snapshot_seconds: Histogram,
    pub placements: Counter,
    pub leases_expired: Counter,
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        Self {
            leader_changes: Counter::default(),
            proposal_seconds: latency_histogram(),
            apply_seconds: latency_histogram(),
            fsync_seconds: latency_histogram(),
            snapshot_bytes: Gauge::default(),
            snapshot_seconds: latency_histogram(),
            placements: Counter::default(),
            leases_expired: Counter::default(),
        }
    }
}

impl CoordinatorMetrics {
    /// A registry of these metrics and the state read from `raft` at each scrape.
    pub fn registry(&self, raft: RaftHandle) -> Registry {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register(
            "raft_leader_changes",
            "Times this node learned of a new leader",
            self.leader_changes.clone(),
        );
        registry.register_with_unit(
            "proposal_duration",
            "From submitting a proposal on this node to its entry applied here",
            Unit::Seconds,
            self.proposal_seconds.clone(),
        );
        registry.register_with_unit(
            "apply_duration",
            "Applying one committed entry to the state machine",
            Unit::Seconds,
            self.apply_seconds.clone(),
        );
        registry.register_with_unit(
            "fsync_duration",
            "One durable commit of the raft log (redb, fsync'd)",
            Unit::Seconds,
            self.fsync_seconds.clone(),
        );
        registry.register_with_unit(
            "snapshot_size",
            "Size of the last snapshot of the state machine this node took",
            Unit::Bytes,
            self.snapshot_bytes.clone(),
        );
        registry.register_with_unit(
            "snapshot_duration",
            "Taking and storing one snapshot of the state machine",
            Unit::Seconds,
            self.snapshot_seconds.clone(),
        );
        registry.register(
            "placements",
            "Instances placed by this node's scheduling rounds while it led",
            self.placements.clone(),
        );
        registry.register(
            "leases_expired",
            "Hosts this node declared down, their lease expired, while it led",
            self.leases_expired.clone(),
        );
        registry.register_collector(Box::new(StateCollector { raft }));
        registry
    }
}

/// Reads the raft status and the applied registry at scrape time.
#[derive(Debug)]
pub struct StateCollector {
    raft: RaftHandle,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.raft.status();
        let (hosts, unplaced) = {
            let machine = self.raft.machine();
            (hosts_by_status(&machine.registry), unplaced_by_reason(&machine.registry, clock::wall_ms()))
        };
        encode_metric(&mut encoder, "raft_term", "The raft term this node is in.", None, ConstGauge::new(status.term))?;
        encode_family(
            &mut encoder,
            "raft_role",
            "1 for the role this node is in, 0 for the others.",
            None,
            MetricType::Gauge,
            ROLES.map(|role| ([("role", role)], ConstGauge::new(i64::from(status.role == role)))),
        )?;
        encode_metric(
            &mut encoder,
            "raft_commit_index",
            "The highest log index this node knows committed.",
            None,
            ConstGauge::new(status.commit_index),
        )?;
        encode_metric(
            &mut encoder,
            "raft_applied_index",
            "The highest log index this node applied.",
            None,
            ConstGauge::new(status.applied_index),
        )?;
        encode_metric(
            &mut encoder,
            "disk_failure",
            "1 while this node cannot write its data directory.",
            None,
            ConstGauge::new(i64::from(status.disk_failure.is_some())),
        )?;
        encode_family(
            &mut encoder,
            "hosts",
            "Registered hosts by status, as this node applied the registry.",
            None,
            MetricType::Gauge,
            hosts.into_iter().map(|(status, n)| ([("status", status)], ConstGauge::new(n))),
        )?;
        encode_family(
            &mut encoder,
            "unplaced_slots",
            "Empty slots of running deployments the scheduler finds no host for, by the kind of reason.",
            None,
            MetricType::Gauge,
            unplaced.into_iter().map(|(reason, n)| ([("reason", reason)], ConstGauge::new(n))),
        )
    }
}

fn host_status_name(status: HostStatus) -> &'static str {
    match status {
        HostStatus::Up => "up",
        HostStatus::Down => "down",
    }
}

/// Every host status, with how many hosts are in it (0 included).
pub fn hosts_by_status(registry: &ClusterRegistry) -> BTreeMap<&'static str, u32> {
    let mut counts: BTreeMap<&'static str, u32> =
        [HostStatus::Up, HostStatus::Down].into_iter().map(|s| (host_status_name(s), 0)).collect();
    for host in registry.hosts() {
        *counts.entry(host_status_name(host.status)).or_default() += 1;
    }
    counts
}

/// Every reason kind ([`Infeasible::KINDS`]), with how many slots of running deployments it
/// holds unplaced now (0 included): the scheduler's dry run, as the status shows it.
pub fn unplaced_by_reason(registry: &ClusterRegistry, now_ms: u64) -> BTreeMap<&'static str, u32> {
    let mut counts: BTreeMap<&'static str, u32> = Infeasible::KINDS.into_iter().map(|k| (k, 0)).collect();
    for deployment in registry.deployments() {
        if let Some(plan) = status::dry_run(registry, deployment, now_ms) {
            for (kind, n) in plan.unplaced_by_kind() {
                *counts.entry(kind).or_default() += n;
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_value_is_listed_even_when_nothing_has_it() {
        let registry = ClusterRegistry::default();
        assert_eq!(hosts_by_status(&registry), BTreeMap::from([("down", 0), ("up", 0)]));
        let unplaced = unplaced_by_reason(&registry, 0);
        assert_eq!(unplaced.len(), Infeasible::KINDS.len());
        assert!(unplaced.values().all(|n| *n == 0));
    }
}
