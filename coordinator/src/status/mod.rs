//! The cluster status: deployments with their counts and why slots are unplaced, hosts with
//! what their instances use, networks, instances by phase, and the instances themselves,
//! filtered and a page at a time ([`instances`]). The summary costs one walk over the instances
//! the hosts hold (the registry keeps them by host), never one per host, and none over the
//! instances that have ended.

pub mod instances;

use std::collections::BTreeMap;

use mirari_core::health::Health;
use mirari_core::ids::InstanceId;
use mirari_core::instance::{Desired, Phase};
use mirari_core::registry::{Deployment, InstanceEntry, Registry, Revision, RevisionCause, RevisionOutcome, Rollout};
use mirari_core::{rollout, scheduler};
use mirari_proto::agent as wire_agent;
use mirari_proto::coordinator as pb;
use mirari_proto::log_codec;

use self::instances::page;
pub use self::instances::{Query, QueryError};

/// The answer to a status request (checked into a [`Query`] first): what its view asks for,
/// the instances narrowed by its filters.
pub fn cluster_status(registry: &Registry, query: &Query, read: pb::ReadInfo, now_ms: u64) -> pb::ClusterStatus {
    let mut status = match query.view {
        pb::StatusView::Instances => pb::ClusterStatus::default(),
        pb::StatusView::Full | pb::StatusView::Summary => summary(registry, now_ms),
    };
    status.read = Some(read);
    let listing = match query.view {
        pb::StatusView::Summary => None,
        pb::StatusView::Instances => Some(page(registry, &query.filter, query.after, query.page_size)),
        pb::StatusView::Full => Some(page(registry, &query.filter, None, std::num::NonZeroUsize::MAX)),
    };
    if let Some(listing) = listing {
        status.instances = listing.instances.into_iter().map(instance_status).collect();
        status.next_page_token = listing.next.map(|id| id.to_string()).unwrap_or_default();
        status.matched = listing.matched;
    }
    status
}

/// Everything but the instance list.
fn summary(registry: &Registry, now_ms: u64) -> pb::ClusterStatus {
    let deployments = registry.deployments().map(|d| deployment_status(registry, d, now_ms)).collect();
    let (host_usage, phases) = usage(registry);
    pb::ClusterStatus {
        deployments,
        hosts: registry.hosts().map(log_codec::host_to_pb).collect(),
        networks: registry
            .networks()
            .map(|network| pb::NetworkStatus {
                network: Some(log_codec::network_to_pb(network)),
                pool_size: network.pool_size(),
                held: registry.addresses_held(&network.name) as u64,
            })
            .collect(),
        host_usage,
        phases,
        ..Default::default()
    }
}

/// One deployment's counts (placed, running, healthy, failed, unplaced and why), rollout and
/// history.
pub fn deployment_status(registry: &Registry, deployment: &Deployment, now_ms: u64) -> pb::DeploymentStatus {
    let app = &deployment.spec.app;
    // One walk over the app's live instances for every count.
    let (mut placed, mut running, mut failed, mut healthy) = (0, 0, 0, 0);
    for instance in registry.live_of(app) {
        placed += 1;
        running += u32::from(instance.observed == Phase::Running);
        failed += u32::from(instance.observed == Phase::Failed);
        healthy += u32::from(instance.observed == Phase::Running && instance.health == Health::Healthy);
    }
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

/// What each host's instances use, in the order of the hosts, and how many instances the hosts
/// hold by phase. These are the instances the list names, save one its host reports live again
/// after it was known to have ended (the registry no longer counts it against the host).
fn usage(registry: &Registry) -> (Vec<pb::HostUsage>, Vec<pb::PhaseCount>) {
    let mut phases: BTreeMap<Phase, u64> = BTreeMap::new();
    let hosts = registry
        .hosts()
        .map(|host| {
            let (mut instances, mut running) = (0, 0);
            for instance in registry.placed_on(&host.id) {
                *phases.entry(instance.observed).or_default() += 1;
                instances += 1;
                running += u32::from(instance.observed == Phase::Running);
            }
            let used = registry.used(&host.id);
            pb::HostUsage {
                host: host.id.0.clone(),
                instances,
                running,
                memory_mib: used.memory_mib,
                vcpus: used.vcpus,
            }
        })
        .collect();
    let phases = phases
        .into_iter()
        .map(|(phase, count)| pb::PhaseCount { phase: wire_agent::Phase::from(phase).into(), count })
        .collect();
    (hosts, phases)
}

fn instance_status(i: &InstanceEntry) -> pb::InstanceStatus {
    pb::InstanceStatus {
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

#[cfg(test)]
pub(crate) mod tests {
    use mirari_core::registry::{
        AppVersion, Command, DeploymentSpec, Host, HostId, InstanceReport, PlacedInstance, Placement, Request,
        Resources, RevisionCause,
    };
    use mirari_core::spec::RunPolicy;
    use mirari_core::target::Target;

    use super::*;

    pub(crate) const HOSTS: [&str; 3] = ["h0", "h1", "h2"];
    /// What the fixture's instances report, in turn.
    const PHASES: [Phase; 5] = [Phase::Running, Phase::Running, Phase::Starting, Phase::Failed, Phase::Exited];

    fn apply(registry: &mut Registry, command: Command) {
        let index = registry.applied_index() + 1;
        let request = Request { request_id: format!("r{index}"), command };
        registry.apply(index, &request).unwrap_or_else(|rejection| panic!("refused: {rejection}"));
    }

    /// Places `more` instances of `app` in new slots, round-robin over the hosts, with IDs
    /// scattered over the whole range (so they land before and after any point of a listing),
    /// and has each report the next of [`PHASES`].
    pub(crate) fn grow(registry: &mut Registry, app: &str, more: u32) {
        let deployment = registry.deployment(app).unwrap();
        let from = deployment.spec.count;
        apply(registry, Command::Scale { app: app.into(), count: from + more });
        let generation = registry.deployment(app).unwrap().generation;
        let minted = registry.instances().count() as u64;
        let placements: Vec<PlacedInstance> = (0..more)
            .map(|n| PlacedInstance {
                // An odd multiplier is a bijection on u64: distinct counters, distinct IDs.
                id: InstanceId::from_serial(minted + u64::from(n) + 1),
                slot: from + n,
                host: HostId(HOSTS[(from + n) as usize % HOSTS.len()].into()),
                interfaces: Vec::new(),
            })
            .collect();
        let ids: Vec<InstanceId> = placements.iter().map(|p| p.id).collect();
        apply(registry, Command::Place { app: app.into(), generation, placements: placements.clone(), at_ms: 1 });
        for (n, placed) in placements.into_iter().enumerate() {
            let report = InstanceReport {
                id: ids[n],
                phase: PHASES[(minted as usize + n) % PHASES.len()],
                restarts: 0,
                last_exit: None,
                message: String::new(),
                revision: 1,
                assignments_index: registry.applied_index(),
                health: Health::None,
            };
            apply(registry, Command::ReportInstances { host: placed.host, reports: vec![report], at_ms: 1 });
        }
    }

    /// Three hosts, apps `web` (200 instances) and `api` (100), in the phases of [`PHASES`].
    pub(crate) fn registry() -> Registry {
        let mut registry = Registry::default();
        for name in HOSTS {
            let capacity = Resources { memory_mib: 1 << 20, vcpus: 1_000, instances: 1_000 };
            let host = Host::up(name, format!("{name}:1"), [Target::Unix], capacity);
            apply(&mut registry, Command::RegisterHost { host });
        }
        for (app, count) in [("web", 200), ("api", 100)] {
            let version = AppVersion {
                app: app.into(),
                version: "1".into(),
                artifacts: [(Target::Unix, mirari_core::digest::Digest::of(app.as_bytes()))].into(),
                files: vec![],
                run: RunPolicy::default(),
                constraints: Default::default(),
            };
            apply(&mut registry, Command::RegisterApp { version });
            let spec =
                DeploymentSpec { placement: Placement::Spread, ..DeploymentSpec::new(app, "1", Target::Unix, 0) };
            apply(&mut registry, Command::Deploy { spec, at_ms: 1, by: "test".into(), cause: RevisionCause::Deploy });
            grow(&mut registry, app, count);
        }
        registry
    }

    fn answer(registry: &Registry, request: &pb::StatusRequest) -> pb::ClusterStatus {
        cluster_status(registry, &Query::try_from(request).unwrap(), pb::ReadInfo::default(), 1)
    }

    fn status(registry: &Registry, view: pb::StatusView) -> pb::ClusterStatus {
        answer(registry, &pb::StatusRequest { view: view.into(), ..Default::default() })
    }

    #[test]
    fn the_summary_counts_what_the_list_names_without_naming_it() {
        let registry = registry();
        let summary = status(&registry, pb::StatusView::Summary);
        let full = status(&registry, pb::StatusView::Full);
        assert!(summary.instances.is_empty());
        assert_eq!(summary.matched, None);
        assert_eq!(full.instances.len(), 300);
        assert_eq!(full.matched, Some(300));
        assert_eq!(pb::ClusterStatus { instances: Vec::new(), matched: None, ..full.clone() }, summary);

        let phase_of = |i: &pb::InstanceStatus| Phase::try_from(i.observed()).unwrap();
        let mut by_phase: BTreeMap<Phase, u64> = BTreeMap::new();
        for instance in &full.instances {
            *by_phase.entry(phase_of(instance)).or_default() += 1;
        }
        let phases: BTreeMap<Phase, u64> =
            summary.phases.iter().map(|p| (Phase::try_from(p.phase()).unwrap(), p.count)).collect();
        assert_eq!(phases, by_phase);
        assert_eq!(phases[&Phase::Running], 120, "two in five of 300");

        assert_eq!(summary.host_usage.iter().map(|u| u.host.as_str()).collect::<Vec<_>>(), HOSTS);
        for usage in &summary.host_usage {
            let on = || full.instances.iter().filter(|i| i.host == usage.host);
            assert_eq!(usage.instances as usize, on().count());
            assert_eq!(usage.running as usize, on().filter(|i| phase_of(i) == Phase::Running).count());
            assert_eq!((usage.memory_mib, usage.vcpus), (u64::from(usage.instances) * 64, usage.instances));
        }
        let deployed: Vec<(u32, u32)> = summary.deployments.iter().map(|d| (d.placed, d.running)).collect();
        // A failed instance is asked to stop (its slot is filled again elsewhere), so it is
        // listed, as its host still holds it, but no longer placed.
        assert_eq!(deployed, [(80, 40), (160, 80)], "api, then web");
    }

    #[test]
    fn the_instances_view_is_a_page_and_nothing_else() {
        let registry = registry();
        let request = pb::StatusRequest {
            view: pb::StatusView::Instances.into(),
            app: "api".into(),
            state: "running".into(),
            page_size: 30,
            ..Default::default()
        };
        let first = answer(&registry, &request);
        assert!(first.deployments.is_empty() && first.hosts.is_empty() && first.phases.is_empty());
        assert_eq!((first.instances.len(), first.matched), (30, Some(40)));
        assert!(first.instances.iter().all(|i| i.app == "api" && i.observed() == wire_agent::Phase::Running));
        let request = pb::StatusRequest { page_token: first.next_page_token.clone(), ..request };
        let second = answer(&registry, &request);
        assert_eq!((second.instances.len(), second.matched, second.next_page_token.as_str()), (10, None, ""));
        assert!(first.instances.last().unwrap().id < second.instances[0].id);
    }
}
