//! The cluster status: deployments with their counts and why slots are unplaced, hosts,
//! networks, and every instance that should run or still holds its slot while it stops.

use mirari_core::health::Health;
use mirari_core::ids::InstanceId;
use mirari_core::instance::{Desired, Phase};
use mirari_core::registry::{self, Deployment, Registry, Revision, RevisionCause, RevisionOutcome, Rollout};
use mirari_core::{rollout, scheduler};
use mirari_proto::agent as wire_agent;
use mirari_proto::coordinator as pb;
use mirari_proto::log_codec;

pub fn cluster_status(registry: &Registry, read: pb::ReadInfo, now_ms: u64) -> pb::ClusterStatus {
    let deployments = registry.deployments().map(|d| deployment_status(registry, d, now_ms)).collect();
    let instances = registry
        .instances()
        .filter(|i| registry::holds_slot(i) || i.observed.is_live())
        .map(|i| pb::InstanceStatus {
            id: i.id.as_u64(),
            app: i.app.clone(),
            version: i.version.clone(),
            target: i.target.name().to_owned(),
            slot: i.slot,
            host: i.host.0.clone(),
            desired_running: i.desired == Desired::Running,
            observed: wire_agent::Phase::from(i.observed).into(),
            restarts: i.restarts,
            last_exit: i.last_exit.map(wire_agent::ExitStatus::from),
            message: i.message.clone(),
            interfaces: i.interfaces.iter().map(wire_agent::Interface::from).collect(),
            health: wire_agent::Health::from(i.health).into(),
            migrating: i.migrating,
        })
        .collect();
    pb::ClusterStatus {
        read: Some(read),
        deployments,
        hosts: registry.hosts().map(log_codec::host_to_pb).collect(),
        instances,
        networks: registry
            .networks()
            .map(|network| pb::NetworkStatus {
                network: Some(log_codec::network_to_pb(network)),
                pool_size: network.pool_size(),
                held: registry.addresses_held(&network.name) as u64,
            })
            .collect(),
    }
}

/// One deployment's counts (placed, running, healthy, failed, unplaced and why), rollout and
/// history.
pub fn deployment_status(registry: &Registry, deployment: &Deployment, now_ms: u64) -> pb::DeploymentStatus {
    let app = &deployment.spec.app;
    let live = || registry.live_of(app);
    let placed = live().count() as u32;
    let running = live().filter(|i| i.observed == Phase::Running).count() as u32;
    let failed = live().filter(|i| i.observed == Phase::Failed).count() as u32;
    let healthy = live().filter(|i| i.observed == Phase::Running && i.health == Health::Healthy).count() as u32;
    let has_health_check =
        registry.app_version(app, &deployment.spec.version).is_some_and(|version| version.run.health.is_some());
    let stopped = deployment.desired == Desired::Stopped;
    let dry_run = dry_run(registry, deployment, now_ms);
    let unplaced = dry_run.as_ref().map_or(0, |plan| plan.unplaced);
    pb::DeploymentStatus {
        spec: Some(log_codec::deployment_to_pb(&deployment.spec)),
        stopped,
        generation: deployment.generation,
        placed,
        running,
        failed,
        unplaced,
        unplaced_reason: dry_run.filter(|plan| plan.unplaced > 0).map(|plan| plan.explain()).unwrap_or_default(),
        healthy,
        has_health_check,
        rollout: deployment.rollout.as_ref().map(|r| rollout_status(registry, deployment, r, now_ms)),
        history: deployment.history.iter().map(revision_status).collect(),
    }
}

/// The scheduler's plan for a running deployment's empty slots, made only to say how many stay
/// unplaced and why (`None` when it is stopped or has none empty). It plans at most what is
/// empty.
pub fn dry_run(registry: &Registry, deployment: &Deployment, now_ms: u64) -> Option<scheduler::Plan> {
    if deployment.desired == Desired::Stopped {
        return None;
    }
    let (app, spec) = (&deployment.spec.app, &deployment.spec);
    let empty = registry.empty_slot_count(app, &spec.version, spec.count);
    (empty > 0).then(|| scheduler::plan(registry, app, empty as usize, now_ms, &mut || InstanceId::from_u64(0)))?
}

fn rollout_status(registry: &Registry, deployment: &Deployment, rollout: &Rollout, now_ms: u64) -> pb::RolloutStatus {
    let progress = rollout::progress(registry, deployment, now_ms);
    pb::RolloutStatus {
        version: rollout.version.clone(),
        started_at_ms: rollout.started_at_ms,
        awaiting_promotion: !rollout.promoted && !progress.outdated_slots.is_empty(),
        failed: rollout.failed.clone().unwrap_or_default(),
        outdated: progress.outdated_slots.len() as u32,
        replacements: progress.replacements,
        settled: progress.settled,
        canary: deployment.spec.update.canary,
    }
}

fn revision_status(revision: &Revision) -> pb::RevisionStatus {
    let (cause, reverted_from) = match &revision.cause {
        RevisionCause::Deploy => ("deploy", String::new()),
        RevisionCause::Rollback => ("rollback", String::new()),
        RevisionCause::Revert(from) => ("revert", from.clone()),
    };
    let reason = match &revision.outcome {
        RevisionOutcome::Failed(reason) | RevisionOutcome::Reverted(reason) => reason.clone(),
        _ => String::new(),
    };
    pb::RevisionStatus {
        version: revision.version.clone(),
        label: revision.label.clone(),
        digest: revision.digest.to_string(),
        target: revision.target.name().to_owned(),
        artifact: revision.artifact.to_string(),
        files: revision
            .files
            .iter()
            .map(|f| wire_agent::FileImage { name: f.name.clone(), sha256: f.digest.to_string() })
            .collect(),
        deployed_at_ms: revision.deployed_at_ms,
        by: revision.by.clone(),
        cause: cause.to_owned(),
        reverted_from,
        outcome: revision.outcome.name().to_owned(),
        reason,
        ended_at_ms: revision.ended_at_ms.unwrap_or_default(),
    }
}
