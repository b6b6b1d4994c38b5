//! Replacing instances without downtime: rolling updates, canaries, automatic revert, drains.
//!
//! Pure, like the scheduler: the registry and the time in, registry commands out, which the
//! leader proposes; a new leader reads the same registry and carries on where the last one was.
//! Slot by slot, an *outdated* instance (of another version than the deployment's, or
//! migrating off a draining host) keeps running beside its replacement, which the scheduler
//! places, until the replacement has been healthy for the update policy's `min_healthy_time`;
//! then service discovery stops naming the outdated one, and after the update policy's
//! `shutdown_delay` (the DNS TTL by default, so no client still holds its address) it is stopped. At most `max_parallel` replacements are unsettled at a time
//! (with canaries not yet promoted: at most `canary` replacements in all, and nothing outdated
//! is stopped), so the healthy instances of a deployment never drop below its count minus
//! `max_parallel` on account of an update. A replacement that restarts, fails, turns unhealthy or
//! is not healthy by `healthy_deadline` fails the rollout; applying that failure reverts to the
//! last version that was healthy everywhere when the policy says `auto_revert`.

use std::collections::{BTreeMap, BTreeSet};

use crate::health::Health;
use crate::ids::InstanceId;
use crate::instance::{Desired, Phase};
use crate::registry::{Command, Deployment, InstanceEntry, Registry};

/// Where a deployment's replacements stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Slots below the count with an outdated instance that should run.
    pub outdated_slots: BTreeSet<u32>,
    /// How many of those the scheduler may give a replacement now.
    pub replacements_allowed: u32,
    /// Replacements placed beside outdated instances, and how many of them are settled.
    pub replacements: u32,
    pub settled: u32,
    /// Outdated instances whose replacement has settled: first service discovery stops
    /// naming them, then (after the shutdown delay) they stop, each with why.
    pub deregisters: Vec<InstanceId>,
    pub stops: Vec<(InstanceId, String)>,
}

/// Where a rollout under way goes next ([`verdict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It failed, and why.
    Failed(String),
    /// Every slot runs the deployment's version, settled, and nothing outdated is left.
    Complete,
    /// The canaries are all settled and the policy promotes them on its own.
    Promote,
}

/// A replacement is settled once it has run healthy for `min_healthy_ms` without a break.
fn settled(instance: &InstanceEntry, now_ms: u64, min_healthy_ms: u64) -> bool {
    instance.desired == Desired::Running
        && instance.observed == Phase::Running
        && instance.healthy_since_ms.is_some_and(|since| now_ms.saturating_sub(since) >= min_healthy_ms)
}

/// Where `deployment`'s replacements stand at `now_ms`. Without a rollout or migrating instances
/// the work is constant; with one, in proportion to the outdated instances (the scheduler asks
/// on every round, however many instances of the new version there are).
pub fn progress(registry: &Registry, deployment: &Deployment, now_ms: u64) -> Progress {
    let spec = &deployment.spec;
    let policy = spec.update;
    let rollout = deployment.rollout.as_ref();
    let mut progress = Progress { replacements_allowed: u32::MAX, ..Progress::default() };
    if deployment.desired != Desired::Running || (rollout.is_none() && !registry.has_migrating(&spec.app)) {
        return progress;
    }
    let promoted = rollout.is_none_or(|r| r.promoted);
    let mut outdated: BTreeMap<u32, Vec<&InstanceEntry>> = BTreeMap::new();
    for instance in registry.outdated_of(&spec.app, &spec.version).filter(|i| i.slot < spec.count) {
        outdated.entry(instance.slot).or_default().push(instance);
    }
    for (slot, old) in &outdated {
        let Some(new) = filler(registry, deployment, *slot) else { continue };
        progress.replacements += 1;
        if !settled(new, now_ms, policy.min_healthy_time_ms) {
            continue;
        }
        progress.settled += 1;
        let moving_only = old.iter().all(|o| o.migrating && o.version == spec.version);
        if promoted || moving_only {
            for o in old {
                match o.deregistered_at_ms {
                    None if policy.shutdown_delay_ms > 0 => progress.deregisters.push(o.id),
                    Some(since) if now_ms.saturating_sub(since) < policy.shutdown_delay_ms => {}
                    _ => {
                        let why = if o.version == spec.version {
                            format!("moved to host {} as {} (its host is draining)", new.host, new.id)
                        } else {
                            format!("replaced by {} on host {} (version {}, healthy)", new.id, new.host, spec.version)
                        };
                        progress.stops.push((o.id, why));
                    }
                }
            }
        }
    }
    let unsettled = progress.replacements - progress.settled;
    progress.replacements_allowed = match rollout {
        Some(r) if r.failed.is_some() => 0,
        _ if !promoted => policy.canary.saturating_sub(progress.replacements),
        _ => policy.max_parallel.saturating_sub(unsettled),
    };
    progress.outdated_slots = outdated.keys().copied().collect();
    progress
}

/// Where the rollout under way goes next, its replacements standing as `progress` says (of
/// the same registry and time): `None` while it has neither failed nor finished, nor is to be
/// promoted. Its checks are in proportion to the rollout version's instances that are not
/// healthy yet or in trouble, not to all of them.
pub fn verdict(registry: &Registry, deployment: &Deployment, progress: &Progress, now_ms: u64) -> Option<Verdict> {
    if deployment.desired != Desired::Running {
        return None;
    }
    let rollout = deployment.rollout.as_ref().filter(|r| r.failed.is_none())?;
    if let Some(failure) = failure(registry, deployment, now_ms) {
        return Some(Verdict::Failed(failure));
    }
    let policy = deployment.spec.update;
    let outdated = progress.outdated_slots.len() as u32;
    // With nothing outdated there is nothing to be a canary beside: promotion is moot.
    if outdated == 0 && all_settled(registry, deployment, now_ms) {
        Some(Verdict::Complete)
    } else if !rollout.promoted
        && policy.auto_promote
        && outdated > 0
        && progress.replacements >= policy.canary.min(outdated)
        && progress.settled == progress.replacements
    {
        Some(Verdict::Promote)
    } else {
        None
    }
}

/// The instance of the deployment's version that fills `slot`.
fn filler<'a>(registry: &'a Registry, deployment: &Deployment, slot: u32) -> Option<&'a InstanceEntry> {
    let spec = &deployment.spec;
    registry.slot_filler(&spec.app, &spec.version, slot).and_then(|id| registry.instance(id))
}

/// Whether every slot below the deployment's count is filled by an instance of its version
/// that is settled: in proportion to the instances not healthy yet (the registry's
/// [`Fillers`](crate::registry::Fillers)),
/// unless instances of the version still fill slots at or above the count (scaled down, not yet
/// ended), when each slot is looked at.
fn all_settled(registry: &Registry, deployment: &Deployment, now_ms: u64) -> bool {
    let spec = &deployment.spec;
    let Some(fillers) = registry.slot_fillers(&spec.app, &spec.version) else { return spec.count == 0 };
    if registry.last_filled_slot(&spec.app, &spec.version).is_some_and(|slot| slot >= spec.count) {
        return (0..spec.count).all(|slot| {
            filler(registry, deployment, slot).is_some_and(|new| settled(new, now_ms, spec.update.min_healthy_time_ms))
        });
    }
    // No slot is filled twice, so as many fillers below the count as slots fill them all.
    fillers.count() == spec.count as usize
        && fillers
            .all_healthy_since()
            .is_some_and(|since| now_ms.saturating_sub(since) >= spec.update.min_healthy_time_ms)
}

/// Why the rollout under way failed, if it did: one of its new instances restarted, failed,
/// turned unhealthy, or is not healthy by the deadline. In proportion to those in trouble.
fn failure(registry: &Registry, deployment: &Deployment, now_ms: u64) -> Option<String> {
    let spec = &deployment.spec;
    let rollout = deployment.rollout.as_ref()?;
    let deadline = spec.update.healthy_deadline_ms;
    let fillers = registry.slot_fillers(&spec.app, &rollout.version);
    let troubled = fillers.and_then(|r| r.troubled_since(rollout.started_at_ms).next());
    let failed = match troubled.and_then(|id| registry.instance(id)) {
        Some(instance) if instance.health == Health::Unhealthy => Some((instance, "turned unhealthy")),
        Some(instance) => Some((instance, "restarted")),
        // The first placed of those not healthy yet is the first to be late.
        None => fillers
            .and_then(|r| r.first_waiting_since(rollout.started_at_ms))
            .filter(|(placed_at_ms, _)| now_ms.saturating_sub(*placed_at_ms) > deadline)
            .and_then(|(_, id)| registry.instance(id))
            .map(|instance| (instance, "was not healthy in time")),
    };
    if let Some((instance, what)) = failed {
        let detail = if instance.message.is_empty() { String::new() } else { format!(": {}", instance.message) };
        return Some(format!("instance {} on host {} {what}{detail}", instance.id, instance.host));
    }
    deployment
        .failures
        .iter()
        .find(|(_, f)| f.last_failed_at_ms >= rollout.started_at_ms)
        .map(|(slot, f)| format!("slot {slot}'s instance failed on {}", hosts(&f.hosts)))
}

fn hosts(hosts: &BTreeSet<crate::registry::HostId>) -> String {
    hosts.iter().map(|h| format!("host {h}")).collect::<Vec<_>>().join(", ")
}

/// The commands that move every deployment's replacements on at `now_ms`: deregistrations and
/// then stops of outdated instances whose replacements settled, promotions, finished or failed rollouts, and stops of
/// whatever is left on hosts whose drain deadline passed.
pub fn plan(registry: &Registry, now_ms: u64) -> Vec<Command> {
    let mut commands = Vec::new();
    for deployment in registry.deployments() {
        let app = deployment.spec.app.clone();
        let progress = progress(registry, deployment, now_ms);
        let verdict = verdict(registry, deployment, &progress, now_ms);
        if !progress.deregisters.is_empty() {
            commands.push(Command::Deregister { ids: progress.deregisters, at_ms: now_ms });
        }
        for (id, reason) in progress.stops {
            commands.push(Command::StopInstances { ids: vec![id], reason });
        }
        let version = || deployment.spec.version.clone();
        match verdict {
            Some(Verdict::Failed(failure)) => {
                commands.push(Command::FinishRollout { app, version: version(), failure: Some(failure), at_ms: now_ms })
            }
            Some(Verdict::Complete) => {
                commands.push(Command::FinishRollout { app, version: version(), failure: None, at_ms: now_ms })
            }
            Some(Verdict::Promote) => commands.push(Command::Promote { app }),
            None => {}
        }
    }
    for host in registry.hosts().filter(|h| h.drain.is_some_and(|d| now_ms >= d.deadline_ms)) {
        let left: Vec<InstanceId> =
            registry.placed_on(&host.id).filter(|i| i.desired == Desired::Running).map(|i| i.id).collect();
        if !left.is_empty() {
            let reason = format!("the drain deadline of host {} passed", host.id);
            commands.push(Command::StopInstances { ids: left, reason });
        }
    }
    commands
}

#[cfg(test)]
mod tests;
