//! What applying a log entry changed, told as events: deployments, placements, rollouts, hosts
//! going up, down or draining, instances changing phase or health.
//!
//! The registry notes them while it applies an entry ([`Registry::take_events`]), so they
//! follow from the log alone: every replica tells the same events for the same index, and a
//! reader that moves to another coordinator resumes where it was.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Host, HostId, HostStatus, InstanceEntry, Registry};
use crate::health::Health;
use crate::ids::InstanceId;
use crate::instance::{Desired, Phase};

/// One change, at the log entry that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The raft index of the entry.
    pub index: u64,
    /// Its place among the entry's events, from 0.
    pub offset: u32,
    /// When it happened: the entry's own time, or (for entries without one) that of the
    /// last entry before it that had one; 0 when none is known yet.
    pub at_ms: u64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum EventKind {
    HostRegistered {
        host: HostId,
        address: String,
        again: bool,
    },
    HostUp {
        host: HostId,
    },
    HostDown {
        host: HostId,
    },
    HostDraining {
        host: HostId,
    },
    HostEligible {
        host: HostId,
    },
    HostRemoved {
        host: HostId,
    },
    Deployed {
        app: String,
        version: String,
        count: u32,
        by: String,
    },
    Scaled {
        app: String,
        count: u32,
    },
    DeploymentStopped {
        app: String,
    },
    Promoted {
        app: String,
    },
    RolloutFinished {
        app: String,
        version: String,
        failure: Option<String>,
    },
    Placed {
        app: String,
        version: String,
        instance: InstanceId,
        host: HostId,
        slot: u32,
    },
    InstanceStopping {
        app: String,
        instance: InstanceId,
        host: HostId,
        reason: String,
    },
    InstancePhase {
        app: String,
        instance: InstanceId,
        host: HostId,
        phase: Phase,
        message: String,
    },
    InstanceHealth {
        app: String,
        instance: InstanceId,
        host: HostId,
        health: Health,
    },
    NetworkCreated {
        network: String,
    },
    NetworkRemoved {
        network: String,
    },
    /// A provider's API failing (`condition` set: why) or working again.
    ProviderCondition {
        host: HostId,
        condition: Option<String>,
    },
}

impl EventKind {
    /// Whether the leader should plan placements at once rather than at its next round: an
    /// operator asked for instances (a deploy, a scale, a promotion) and waits to see them.
    pub fn asks_for_placement(&self) -> bool {
        matches!(self, EventKind::Deployed { .. } | EventKind::Scaled { .. } | EventKind::Promoted { .. })
    }

    /// A short dotted name for filtering and display, e.g. `instance.phase`.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::HostRegistered { .. } => "host.registered",
            EventKind::HostUp { .. } => "host.up",
            EventKind::HostDown { .. } => "host.down",
            EventKind::HostDraining { .. } => "host.draining",
            EventKind::HostEligible { .. } => "host.eligible",
            EventKind::HostRemoved { .. } => "host.removed",
            EventKind::Deployed { .. } => "deployment.deployed",
            EventKind::Scaled { .. } => "deployment.scaled",
            EventKind::DeploymentStopped { .. } => "deployment.stopped",
            EventKind::Promoted { .. } => "rollout.promoted",
            EventKind::RolloutFinished { .. } => "rollout.finished",
            EventKind::Placed { .. } => "instance.placed",
            EventKind::InstanceStopping { .. } => "instance.stopping",
            EventKind::InstancePhase { .. } => "instance.phase",
            EventKind::InstanceHealth { .. } => "instance.health",
            EventKind::NetworkCreated { .. } => "network.created",
            EventKind::NetworkRemoved { .. } => "network.removed",
            EventKind::ProviderCondition { .. } => "provider.condition",
        }
    }

    /// The app it is about, if any.
    pub fn app(&self) -> Option<&str> {
        match self {
            EventKind::Deployed { app, .. }
            | EventKind::Scaled { app, .. }
            | EventKind::DeploymentStopped { app }
            | EventKind::Promoted { app }
            | EventKind::RolloutFinished { app, .. }
            | EventKind::Placed { app, .. }
            | EventKind::InstanceStopping { app, .. }
            | EventKind::InstancePhase { app, .. }
            | EventKind::InstanceHealth { app, .. } => Some(app),
            _ => None,
        }
    }

    /// The host it is about, if any.
    pub fn host(&self) -> Option<&HostId> {
        match self {
            EventKind::HostRegistered { host, .. }
            | EventKind::HostUp { host }
            | EventKind::HostDown { host }
            | EventKind::HostDraining { host }
            | EventKind::HostEligible { host }
            | EventKind::HostRemoved { host }
            | EventKind::ProviderCondition { host, .. }
            | EventKind::Placed { host, .. }
            | EventKind::InstanceStopping { host, .. }
            | EventKind::InstancePhase { host, .. }
            | EventKind::InstanceHealth { host, .. } => Some(host),
            _ => None,
        }
    }

    /// The instance it is about, if any.
    pub fn instance(&self) -> Option<InstanceId> {
        match self {
            EventKind::Placed { instance, .. }
            | EventKind::InstanceStopping { instance, .. }
            | EventKind::InstancePhase { instance, .. }
            | EventKind::InstanceHealth { instance, .. } => Some(*instance),
            _ => None,
        }
    }
}

/// One line for people, e.g. `hello 00000000000a1b2c on h2: running`.
impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKind::HostRegistered { host, address, again: false } => {
                write!(f, "host {host} registered at {address}")
            }
            EventKind::HostRegistered { host, address, again: true } => {
                write!(f, "host {host} registered again at {address}")
            }
            EventKind::HostUp { host } => write!(f, "host {host} is up"),
            EventKind::HostDown { host } => write!(f, "host {host} is down: its instances are lost"),
            EventKind::HostDraining { host } => write!(f, "host {host} is draining"),
            EventKind::HostEligible { host } => write!(f, "host {host} is eligible again"),
            EventKind::HostRemoved { host } => write!(f, "host {host} was removed"),
            EventKind::Deployed { app, version, count, by } => {
                write!(f, "{app} version {version} deployed ×{count} by {by}")
            }
            EventKind::Scaled { app, count } => write!(f, "{app} scaled to {count}"),
            EventKind::DeploymentStopped { app } => write!(f, "{app} stopped"),
            EventKind::Promoted { app } => write!(f, "{app}'s canaries promoted"),
            EventKind::RolloutFinished { app, version, failure: None } => {
                write!(f, "{app} version {version} rolled out")
            }
            EventKind::RolloutFinished { app, version, failure: Some(why) } => {
                write!(f, "{app} version {version} failed to roll out: {why}")
            }
            EventKind::Placed { app, version, instance, host, slot } => {
                write!(f, "{app} {instance} (version {version}, slot {slot}) placed on {host}")
            }
            EventKind::InstanceStopping { app, instance, host, reason } => {
                write!(f, "{app} {instance} on {host} asked to stop: {reason}")
            }
            EventKind::InstancePhase { app, instance, host, phase, message } if message.is_empty() => {
                write!(f, "{app} {instance} on {host}: {phase}")
            }
            EventKind::InstancePhase { app, instance, host, phase, message } => {
                write!(f, "{app} {instance} on {host}: {phase} ({message})")
            }
            EventKind::InstanceHealth { app, instance, host, health } => {
                write!(f, "{app} {instance} on {host} is {}", health_word(*health))
            }
            EventKind::NetworkCreated { network } => write!(f, "network {network} created"),
            EventKind::NetworkRemoved { network } => write!(f, "network {network} removed"),
            EventKind::ProviderCondition { host, condition: Some(why) } => {
                write!(f, "provider {host} cannot launch: {why}")
            }
            EventKind::ProviderCondition { host, condition: None } => write!(f, "provider {host} launches again"),
        }
    }
}

fn health_word(health: Health) -> &'static str {
    match health {
        Health::None => "no longer checked",
        Health::Starting => "waiting for its first health check",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

/// The events noted while one entry is applied. Not part of the replicated state: two
/// registries that differ only here are equal.
#[derive(Debug, Clone, Default)]
pub(super) struct Journal(Vec<EventKind>);

impl PartialEq for Journal {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Registry {
    pub(super) fn note(&mut self, event: EventKind) {
        self.journal.0.push(event);
    }

    /// A host registering: for the first time or again, and up again if it was down.
    pub(super) fn journal_registration(&mut self, host: &Host, known_status: Option<HostStatus>) {
        let id = host.id.clone();
        self.note(EventKind::HostRegistered {
            host: id.clone(),
            address: host.address.clone(),
            again: known_status.is_some(),
        });
        if known_status.is_some_and(|status| status != host.status) && host.status == HostStatus::Up {
            self.note(EventKind::HostUp { host: id });
        }
    }

    /// What changed in an instance that was `desired`, `phase` and `health` before.
    pub(super) fn journal_change(&mut self, instance: &InstanceEntry, desired: Desired, phase: Phase, health: Health) {
        let (app, id, host) = (instance.app.clone(), instance.id, instance.host.clone());
        if desired == Desired::Running && instance.desired == Desired::Stopped {
            let reason = instance.message.clone();
            self.note(EventKind::InstanceStopping { app: app.clone(), instance: id, host: host.clone(), reason });
        }
        if phase != instance.observed {
            let message = instance.message.clone();
            let phase = instance.observed;
            self.note(EventKind::InstancePhase { app: app.clone(), instance: id, host: host.clone(), phase, message });
        }
        if health != instance.health {
            self.note(EventKind::InstanceHealth { app, instance: id, host, health: instance.health });
        }
    }

    /// What the entry applied last changed, in the order it changed it. Taken once: the
    /// next call (or the next entry) starts afresh.
    pub fn take_events(&mut self) -> Vec<EventKind> {
        std::mem::take(&mut self.journal.0)
    }
}
