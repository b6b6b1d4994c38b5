//! The instances filling a version's slots, kept as the registry applies entries: how many on
//! each host (what the scheduler spreads by), and how far they are on their way to settled
//! (what a rollout's verdict asks, [`crate::rollout::verdict`]). Both cost a lookup, never a
//! walk over the version's instances: at 100,000 instances such walks held the registry for
//! hundreds of milliseconds a round, the raft driver waiting to apply behind them.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeFrom;

use crate::health::Health;
use crate::ids::InstanceId;
use crate::instance::{Desired, Phase};

use super::{HostId, InstanceEntry, fills_slot};

/// Where one instance that fills a slot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Standing {
    placed_at_ms: u64,
    stage: Stage,
    /// It should run and turned unhealthy or restarted.
    troubled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// It should run and has not been healthy since it last started.
    Waiting,
    /// It should run, runs, and has been healthy since then.
    Healthy { since_ms: u64 },
    /// Asked to stop (it holds its slot until it ended), or healthy by its record but not running.
    Neither,
}

impl Standing {
    /// The standing of `instance`, if it fills a slot.
    pub(super) fn of(instance: &InstanceEntry) -> Option<Self> {
        if !fills_slot(instance) {
            return None;
        }
        let running = instance.desired == Desired::Running;
        let stage = match instance.healthy_since_ms {
            _ if !running => Stage::Neither,
            None => Stage::Waiting,
            Some(since_ms) if instance.observed == Phase::Running => Stage::Healthy { since_ms },
            Some(_) => Stage::Neither,
        };
        let troubled = running && (instance.health == Health::Unhealthy || instance.restarts > 0);
        Some(Self { placed_at_ms: instance.placed_at_ms, stage, troubled })
    }
}

/// The instances filling one version's slots, by host and by how far they are on their way to
/// settled. Each slot has at most one (a placement refuses a taken slot; an instance back from a drain
/// takes its slot back only when no replacement filled it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fillers {
    /// How many on each host.
    hosts: BTreeMap<HostId, u32>,
    /// Those not yet healthy, by when they were placed.
    waiting: BTreeSet<(u64, InstanceId)>,
    /// Those healthy, by since when.
    healthy: BTreeSet<(u64, InstanceId)>,
    /// Those that turned unhealthy or restarted, by when they were placed.
    troubled: BTreeSet<(u64, InstanceId)>,
    /// Those neither waiting nor healthy ([`Stage::Neither`]).
    neither: usize,
}

impl Fillers {
    /// How many slots are filled.
    pub fn count(&self) -> usize {
        self.waiting.len() + self.healthy.len() + self.neither
    }

    /// How many slots instances on `host` fill.
    pub fn on(&self, host: &HostId) -> u32 {
        self.hosts.get(host).copied().unwrap_or_default()
    }

    /// The instances placed at or after `since_ms` that turned unhealthy or restarted, first
    /// placed first.
    pub fn troubled_since(&self, since_ms: u64) -> impl Iterator<Item = InstanceId> + '_ {
        self.troubled.range(from(since_ms)).map(|(_, id)| *id)
    }

    /// The instance placed first at or after `since_ms` that has not been healthy yet, and when
    /// it was placed.
    pub fn first_waiting_since(&self, since_ms: u64) -> Option<(u64, InstanceId)> {
        self.waiting.range(from(since_ms)).next().copied()
    }

    /// If every filler should run, runs and is healthy: since when the last of them is.
    pub fn all_healthy_since(&self) -> Option<u64> {
        (self.waiting.is_empty() && self.neither == 0).then(|| self.healthy.last().map_or(0, |(since, _)| *since))
    }

    /// Adds (or takes out) a filler's standing.
    pub(super) fn change(&mut self, id: InstanceId, standing: Standing, add: bool) {
        let placed = (standing.placed_at_ms, id);
        let set_change = |set: &mut BTreeSet<(u64, InstanceId)>, key| {
            if add {
                set.insert(key);
            } else {
                set.remove(&key);
            }
        };
        match standing.stage {
            Stage::Waiting => set_change(&mut self.waiting, placed),
            Stage::Healthy { since_ms } => set_change(&mut self.healthy, (since_ms, id)),
            Stage::Neither if add => self.neither += 1,
            Stage::Neither => self.neither -= 1,
        }
        if standing.troubled {
            set_change(&mut self.troubled, placed);
        }
    }

    /// Counts (or stops counting) a filler on `host`.
    pub(super) fn count_on(&mut self, host: &HostId, add: bool) {
        if add {
            *self.hosts.entry(host.clone()).or_default() += 1;
        } else if let Some(count) = self.hosts.get_mut(host) {
            *count -= 1;
            if *count == 0 {
                self.hosts.remove(host);
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.count() == 0 && self.troubled.is_empty()
    }
}

/// Keys of instances placed at or after `since_ms`.
fn from(since_ms: u64) -> RangeFrom<(u64, InstanceId)> {
    (since_ms, InstanceId::from_u64(0))..
}
