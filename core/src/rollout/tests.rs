//! The update planner as scenarios: a registry built by applying commands, the planner (and the
//! scheduler, where the two meet) asked at chosen times, and what they return applied in turn.
//! Instances are named `version/slot@host`, the planner's commands by what they do.

use super::*;
use crate::digest::Digest;
use crate::health::{HealthCheck, Probe};
use crate::registry::{
    AppVersion, ApplyResult, DeploymentSpec, Drain, Host, HostId, HostStatus, Infeasible, InstanceReport, Outcome,
    Placement, Rejection, Request, ReschedulePolicy, Resources, RevisionCause, SlotFailures, UpdatePolicy, holds_slot,
};
use crate::scheduler;
use crate::spec::RunPolicy;
use crate::target::Target;

/// How long a replacement must stay healthy under the default update policy (its
/// `min_healthy_time`; [`World::settle`] waits the deployment's own).
const SETTLE_MS: u64 = 10_000;

fn host(name: &str) -> Host {
    Host {
        id: HostId(name.into()),
        address: format!("{name}:7070"),
        backends: [Target::Unix].into(),
        capacity: Resources { memory_mib: 4_096, vcpus: 16, instances: 16 },
        labels: BTreeMap::new(),
        networks: Default::default(),
        status: HostStatus::Up,
        registered_at_ms: 0,
        status_changed_at_ms: 0,
        drain: None,
        provider: None,
    }
}

/// A version of `app` with a health check, so only a report of `healthy` makes it healthy.
fn version(app: &str, label: &str) -> AppVersion {
    let check = HealthCheck {
        probe: Probe::Tcp { port: 80 },
        interval_ms: HealthCheck::DEFAULT_INTERVAL_MS,
        timeout_ms: HealthCheck::DEFAULT_TIMEOUT_MS,
        grace_ms: 0,
        unhealthy_after: HealthCheck::DEFAULT_UNHEALTHY_AFTER,
    };
    AppVersion {
        app: app.into(),
        version: label.into(),
        artifacts: [(Target::Unix, Digest::of(b"unix"))].into(),
        files: vec![],
        run: RunPolicy { memory_mib: 64, health: Some(check), ..RunPolicy::default() },
        constraints: BTreeMap::new(),
    }
}

fn spec(app: &str, version: &str, count: u32) -> DeploymentSpec {
    DeploymentSpec {
        placement: Placement::Spread,
        update: quick(),
        ..DeploymentSpec::new(app, version, Target::Unix, count)
    }
}

fn hello(count: u32) -> DeploymentSpec {
    spec("hello", "1", count)
}

/// The default policy, but a replaced instance stops as soon as its replacement settled (the
/// shutdown delay has a scenario of its own).
fn quick() -> UpdatePolicy {
    UpdatePolicy { shutdown_delay_ms: 0, ..UpdatePolicy::default() }
}

fn auto_revert() -> UpdatePolicy {
    UpdatePolicy { auto_revert: true, ..quick() }
}

struct World {
    registry: Registry,
    index: u64,
    next_id: u64,
    now_ms: u64,
}

impl World {
    fn new(hosts: &[&str]) -> Self {
        let mut world = Self { registry: Registry::default(), index: 0, next_id: 0, now_ms: 1_000 };
        for name in hosts {
            world.apply(Command::RegisterHost { host: host(name) }).expect("hosts register");
        }
        world
    }

    fn apply(&mut self, command: Command) -> ApplyResult {
        self.index += 1;
        self.registry.apply(self.index, &Request { request_id: format!("r{}", self.index), command })
    }

    /// Registers a version; the registry's name for it.
    fn register(&mut self, version: AppVersion) -> String {
        match self.apply(Command::RegisterApp { version }) {
            Ok(Outcome::Registered { version, .. }) => version,
            other => panic!("registering: {other:?}"),
        }
    }

    fn deploy(&mut self, spec: DeploymentSpec) -> ApplyResult {
        self.apply(Command::Deploy { spec, at_ms: self.now_ms, by: "alice".into(), cause: RevisionCause::Deploy })
    }

    /// Registers `hello` version `label` and deploys it, the rest of the spec as it is.
    fn update_to(&mut self, label: &str) -> ApplyResult {
        let version = self.register(version("hello", label));
        let current = self.registry.deployment("hello").expect("deployed").spec.clone();
        self.deploy(DeploymentSpec { version, ..current })
    }

    fn wait(&mut self, ms: u64) {
        self.now_ms += ms;
    }

    /// The scheduler's plan for `app` now, not applied.
    fn plan(&mut self, app: &str) -> scheduler::Plan {
        let next = &mut self.next_id;
        let mut mint = || {
            *next += 1;
            InstanceId::from_u64(*next)
        };
        scheduler::plan(&self.registry, app, 100, self.now_ms, &mut mint).expect("deployed")
    }

    /// Plans `app`'s empty slots now and commits the plan; the instances it placed.
    fn schedule(&mut self, app: &str) -> Vec<String> {
        let plan = self.plan(app);
        let ids: Vec<InstanceId> = plan.placements.iter().map(|p| p.id).collect();
        if !ids.is_empty() {
            let placements = plan.placements;
            let place = Command::Place { app: plan.app, generation: plan.generation, placements, at_ms: self.now_ms };
            self.apply(place).expect("the plan applies");
        }
        ids.into_iter().map(|id| self.name(id)).collect()
    }

    /// The planner's commands now, applied; each summarized (a stop names what it stops).
    fn advance(&mut self) -> Vec<String> {
        self.check_indexes();
        let commands = plan(&self.registry, self.now_ms);
        let summaries: Vec<String> = commands.iter().map(|c| self.summary(c)).collect();
        for command in commands {
            self.apply(command).expect("the planner's commands apply");
        }
        summaries
    }

    /// The registry's indexes the planner reads name what a walk over every live instance
    /// finds: outdated ones (of another version, or migrating) and each version's fillers.
    fn check_indexes(&self) {
        for deployment in self.registry.deployments() {
            let (app, version) = (&deployment.spec.app, &deployment.spec.version);
            let live = || self.registry.live_of(app);
            let walked: BTreeSet<InstanceId> =
                live().filter(|i| &i.version != version || i.migrating).map(|i| i.id).collect();
            let indexed: BTreeSet<InstanceId> = self.registry.outdated_of(app, version).map(|i| i.id).collect();
            assert_eq!(indexed, walked, "outdated instances of {app}");
            let walked: BTreeSet<InstanceId> =
                live().filter(|i| &i.version == version && !i.migrating).map(|i| i.id).collect();
            let indexed: BTreeSet<InstanceId> = self.registry.fillers_of(app, version).map(|i| i.id).collect();
            assert_eq!(indexed, walked, "instances filling {app}@{version}'s slots");
            for known in self.registry.apps().filter(|v| &v.app == app) {
                self.check_fillers(app, &known.version);
            }
        }
        let mut rebuilt = self.registry.clone();
        rebuilt.rebuild_derived();
        assert!(rebuilt == self.registry, "the indexes kept as entries apply equal those rebuilt from scratch");
    }

    /// The index of the fillers of `app@version` says what a walk over its slots' fillers finds.
    fn check_fillers(&self, app: &str, version: &str) {
        let fillers: Vec<&InstanceEntry> = (0..=self.registry.last_filled_slot(app, version).unwrap_or(0))
            .filter_map(|slot| self.registry.slot_filler(app, version, slot))
            .map(|id| self.instance(id))
            .collect();
        let Some(indexed) = self.registry.slot_fillers(app, version) else {
            assert!(fillers.is_empty(), "{app}@{version} has fillers but no index of them");
            return;
        };
        let running = |i: &&&InstanceEntry| i.desired == Desired::Running;
        assert_eq!(indexed.count(), fillers.len(), "fillers of {app}@{version}");
        for host in self.registry.hosts() {
            let on_host = fillers.iter().filter(|i| i.host == host.id).count() as u32;
            assert_eq!(indexed.on(&host.id), on_host, "fillers of {app}@{version} on {}", host.id);
        }
        let count = self.registry.deployment(app).map_or(0, |d| d.spec.count);
        let empty = (0..count).filter(|slot| self.registry.slot_filler(app, version, *slot).is_none()).count() as u32;
        assert_eq!(self.registry.empty_slot_count(app, version, count), empty, "empty slots of {app}@{version}");
        let troubled: BTreeSet<InstanceId> = fillers
            .iter()
            .filter(running)
            .filter(|i| i.health == Health::Unhealthy || i.restarts > 0)
            .map(|i| i.id)
            .collect();
        assert_eq!(indexed.troubled_since(0).collect::<BTreeSet<_>>(), troubled, "troubled of {app}@{version}");
        let first_waiting = fillers
            .iter()
            .filter(running)
            .filter(|i| i.healthy_since_ms.is_none())
            .map(|i| (i.placed_at_ms, i.id))
            .min();
        assert_eq!(indexed.first_waiting_since(0), first_waiting, "first waiting of {app}@{version}");
        let all_healthy =
            fillers.iter().all(|i| running(&i) && i.observed == Phase::Running && i.healthy_since_ms.is_some());
        let last_healthy = fillers.iter().filter_map(|i| i.healthy_since_ms).max().unwrap_or(0);
        assert_eq!(indexed.all_healthy_since(), all_healthy.then_some(last_healthy), "healthy since, {app}@{version}");
    }

    fn summary(&self, command: &Command) -> String {
        match command {
            Command::StopInstances { ids, .. } => {
                let names: Vec<String> = ids.iter().map(|id| self.name(*id)).collect();
                format!("stop {}", names.join(", "))
            }
            Command::FinishRollout { version, failure: None, .. } => format!("finish {version}"),
            Command::FinishRollout { version, failure: Some(why), .. } => format!("fail {version}: {why}"),
            Command::Promote { app } => format!("promote {app}"),
            Command::Deregister { ids, .. } => {
                let names: Vec<String> = ids.iter().map(|id| self.name(*id)).collect();
                format!("deregister {}", names.join(", "))
            }
            other => panic!("the planner does not send {other:?}"),
        }
    }

    fn report(&mut self, id: InstanceId, phase: Phase, health: Health, restarts: u32) {
        let host = self.instance(id).host.clone();
        let report = InstanceReport {
            id,
            phase,
            restarts,
            last_exit: None,
            message: String::new(),
            revision: 0,
            assignments_index: u64::MAX,
            health,
        };
        self.apply(Command::ReportInstances { host, reports: vec![report], at_ms: self.now_ms })
            .expect("reports apply");
    }

    fn healthy(&mut self, ids: impl IntoIterator<Item = InstanceId>) {
        for id in ids {
            self.report(id, Phase::Running, Health::Healthy, 0);
        }
    }

    /// Every instance of `app`'s deployed version reports healthy, and stays so long enough to
    /// settle.
    fn settle(&mut self, app: &str) {
        let version = self.registry.deployment(app).expect("deployed").spec.version.clone();
        self.healthy(self.live(app, &version));
        self.wait(self.deployment(app).spec.update.min_healthy_time_ms);
    }

    /// The hosts report the instances they were told to stop as ended.
    fn end_stopped(&mut self) {
        let stopping: Vec<(InstanceId, Phase)> = self
            .registry
            .instances()
            .filter(|i| i.desired == Desired::Stopped && holds_slot(i))
            .map(|i| (i.id, if i.observed.has_ended() { i.observed } else { Phase::Stopped }))
            .collect();
        for (id, phase) in stopping {
            self.report(id, phase, Health::None, 0);
        }
    }

    /// Places, settles and lets the planner stop what was replaced, round after round, until
    /// the rollout ends; the planner's commands, in order.
    fn roll_out(&mut self, app: &str) -> Vec<String> {
        let mut steps = Vec::new();
        for _ in 0..20 {
            self.schedule(app);
            self.settle(app);
            let step = self.advance();
            self.end_stopped();
            let ended = step.iter().any(|s| s.starts_with("finish") || s.starts_with("fail"));
            steps.extend(step);
            if ended {
                return steps;
            }
        }
        panic!("the rollout did not end: {steps:?}");
    }

    fn instance(&self, id: InstanceId) -> &InstanceEntry {
        self.registry.instance(id).expect("a known instance")
    }

    fn name(&self, id: InstanceId) -> String {
        let instance = self.instance(id);
        format!("{}/{}@{}", instance.version, instance.slot, instance.host)
    }

    /// The instances of `app`'s `version` that should run, by slot.
    fn live(&self, app: &str, version: &str) -> Vec<InstanceId> {
        let mut live: Vec<&InstanceEntry> = self.registry.live_of(app).filter(|i| i.version == version).collect();
        live.sort_by_key(|i| i.slot);
        live.into_iter().map(|i| i.id).collect()
    }

    fn live_names(&self, app: &str) -> Vec<String> {
        self.registry.live_of(app).map(|i| self.name(i.id)).collect()
    }

    fn filler(&self, app: &str, version: &str, slot: u32) -> InstanceId {
        self.registry.slot_filler(app, version, slot).expect("the slot is filled")
    }

    fn deployment(&self, app: &str) -> &Deployment {
        self.registry.deployment(app).expect("deployed")
    }

    fn progress(&self, app: &str) -> Progress {
        progress(&self.registry, self.deployment(app), self.now_ms)
    }

    /// "version by who: outcome", oldest first.
    fn history(&self, app: &str) -> Vec<String> {
        let history = &self.deployment(app).history;
        history.iter().map(|r| format!("{} by {}: {}", r.version, r.by, r.outcome.name())).collect()
    }

    fn drain(&mut self, name: &str, deadline_after_ms: u64) -> ApplyResult {
        let drain = Drain { since_ms: self.now_ms, deadline_ms: self.now_ms + deadline_after_ms };
        self.apply(Command::DrainHost { host: HostId(name.into()), drain: Some(drain) })
    }

    fn undrain(&mut self, name: &str) -> ApplyResult {
        self.apply(Command::DrainHost { host: HostId(name.into()), drain: None })
    }

    fn remove_host(&mut self, name: &str) -> ApplyResult {
        self.apply(Command::RemoveHost { host: HostId(name.into()) })
    }
}

/// Hosts a, b and c, and `hello` version 1 deployed under `spec`: every slot placed, healthy and
/// settled, the first rollout finished.
fn running(spec: DeploymentSpec) -> World {
    let mut world = World::new(&["a", "b", "c"]);
    world.register(version("hello", "1"));
    world.deploy(spec).expect("deploys");
    assert_eq!(world.roll_out("hello"), ["finish 1"]);
    world
}

/// `hello` running 1 in three slots under `update`, and the update to 2 begun: its first
/// replacement placed, not yet healthy.
fn updating(update: UpdatePolicy) -> (World, InstanceId) {
    let mut world = running(DeploymentSpec { update, ..hello(3) });
    world.update_to("2").expect("deploys");
    assert_eq!(world.schedule("hello"), ["2/0@a"]);
    let replacement = world.filler("hello", "2", 0);
    (world, replacement)
}

#[test]
fn a_first_deploy_places_every_slot_at_once_and_completes_once_each_settled() {
    assert_eq!(UpdatePolicy::default().min_healthy_time_ms, SETTLE_MS);
    let mut world = World::new(&["a", "b", "c"]);
    world.register(version("hello", "1"));
    world.deploy(hello(3)).unwrap();
    assert!(world.progress("hello").outdated_slots.is_empty(), "nothing to replace");
    assert_eq!(world.schedule("hello"), ["1/0@a", "1/1@b", "1/2@c"], "not gated by max_parallel 1");

    let [first, second, third] = world.live("hello", "1")[..] else { panic!("three instances") };
    world.healthy([first, second]);
    world.wait(2_000);
    world.healthy([third]);
    world.wait(SETTLE_MS - 2_000);
    assert!(world.advance().is_empty(), "two settled, the third healthy for only 8s");
    world.wait(2_000 - 1);
    assert!(world.advance().is_empty(), "1ms short");
    world.wait(1);
    assert_eq!(world.advance(), ["finish 1"]);
    assert_eq!(world.deployment("hello").rollout, None);
    assert_eq!(world.history("hello"), ["1 by alice: promoted"]);
    assert!(world.advance().is_empty(), "done: nothing more to do");
}

#[test]
fn a_deploy_scaled_down_before_it_settled_completes_once_the_slots_kept_settled() {
    let mut world = World::new(&["a", "b", "c"]);
    world.register(version("hello", "1"));
    world.deploy(hello(3)).unwrap();
    assert_eq!(world.schedule("hello"), ["1/0@a", "1/1@b", "1/2@c"]);
    let kept = world.filler("hello", "1", 0);
    world.apply(Command::Scale { app: "hello".into(), count: 1 }).unwrap();
    // The two scaled away are asked to stop and hold their slots, above the count, until they end.
    assert_eq!(world.registry.empty_slot_count("hello", "1", 1), 0);
    assert_eq!(world.registry.last_filled_slot("hello", "1"), Some(2));
    world.healthy([kept]);
    world.wait(SETTLE_MS - 1);
    assert!(world.advance().is_empty(), "slot 0 healthy, not yet settled");
    world.wait(1);
    assert_eq!(world.advance(), ["finish 1"], "slot 0 settled: the stopping ones are not the deployment's");
    world.end_stopped();
    assert_eq!(world.registry.last_filled_slot("hello", "1"), Some(0));
    assert!(world.advance().is_empty());
}

#[test]
fn a_rolling_update_replaces_one_slot_at_a_time_stopping_the_old_once_the_new_settled() {
    let (mut world, replacement) = updating(quick());
    let progress = world.progress("hello");
    assert_eq!(progress.outdated_slots, [0, 1, 2].into());
    assert_eq!((progress.replacements, progress.replacements_allowed), (1, 0));
    assert!(world.schedule("hello").is_empty(), "one unsettled replacement at a time");

    world.healthy([replacement]);
    world.wait(SETTLE_MS - 1);
    assert!(world.advance().is_empty(), "healthy 1ms short of min_healthy_time");
    assert!(world.schedule("hello").is_empty());
    assert_eq!(world.live_names("hello"), ["1/0@a", "1/1@b", "1/2@c", "2/0@a"]);
    world.wait(1);
    let old = world.live("hello", "1")[0];
    assert_eq!(world.advance(), ["stop 1/0@a"]);
    assert_eq!(world.instance(old).message, format!("replaced by {replacement} on host a (version 2, healthy)"));
    world.end_stopped();

    assert_eq!(world.roll_out("hello"), ["stop 1/1@b", "stop 1/2@c", "finish 2"]);
    // Each replacement went where the fewest of the new version's instances were: spread as
    // evenly as the first version was, whatever the old ones on their way out.
    assert_eq!(world.live_names("hello"), ["2/0@a", "2/1@b", "2/2@c"]);
    assert_eq!(world.history("hello"), ["1 by alice: promoted", "2 by alice: promoted"]);
}

#[test]
fn a_replaced_instance_leaves_service_discovery_first_and_stops_after_the_shutdown_delay() {
    let delayed = UpdatePolicy { shutdown_delay_ms: 5_000, ..quick() };
    let (mut world, replacement) = updating(delayed);
    world.healthy([replacement]);
    world.wait(SETTLE_MS);
    let old = world.live("hello", "1")[0];
    assert_eq!(world.advance(), ["deregister 1/0@a"]);
    assert_eq!(world.instance(old).deregistered_at_ms, Some(world.now_ms));
    let named = crate::discovery::service_addresses(&world.registry, "hello", 10).unwrap();
    assert!(named.is_empty(), "no interfaces here, but nothing deregistered is named either: {named:?}");
    assert_eq!(world.instance(old).desired, Desired::Running, "it still serves whoever resolved it");
    world.wait(5_000 - 1);
    assert!(world.advance().is_empty(), "1 ms short of the shutdown delay");
    world.wait(1);
    assert_eq!(world.advance(), ["stop 1/0@a"]);
}

#[test]
fn max_parallel_2_replaces_two_slots_at_a_time() {
    let mut world = running(DeploymentSpec { update: UpdatePolicy { max_parallel: 2, ..quick() }, ..hello(3) });
    world.update_to("2").unwrap();
    assert_eq!(world.schedule("hello"), ["2/0@a", "2/1@b"]);
    assert!(world.schedule("hello").is_empty());
    world.settle("hello");
    assert_eq!(world.advance(), ["stop 1/0@a", "stop 1/1@b"]);
    assert_eq!(world.schedule("hello"), ["2/2@c"]);
}

#[test]
fn a_canary_runs_beside_the_old_instances_until_it_is_promoted() {
    let canary = UpdatePolicy { canary: 1, ..quick() };
    let (mut world, _) = updating(canary);
    assert!(world.schedule("hello").is_empty(), "one canary, no more");
    world.settle("hello");
    world.wait(SETTLE_MS);
    assert!(world.advance().is_empty(), "a settled canary stops nothing and is not promoted on its own");
    assert!(world.schedule("hello").is_empty());
    assert_eq!(world.live("hello", "1").len(), 3);

    let promote = || Command::Promote { app: "hello".into() };
    assert_eq!(world.apply(promote()), Ok(Outcome::Done));
    assert_eq!(world.apply(promote()), Err(Rejection::NothingToPromote("hello".into())), "promoted already");
    assert_eq!(world.advance(), ["stop 1/0@a"]);
    world.end_stopped();
    assert_eq!(world.schedule("hello"), ["2/1@b"], "the rest roll by max_parallel");
    assert_eq!(world.roll_out("hello"), ["stop 1/1@b", "stop 1/2@c", "finish 2"]);
}

#[test]
fn promoting_without_canaries_waiting_is_refused() {
    let mut world = running(hello(1));
    let refused: ApplyResult = Err(Rejection::NothingToPromote("hello".into()));
    assert_eq!(world.apply(Command::Promote { app: "hello".into() }), refused, "no rollout under way");
    world.update_to("2").unwrap();
    assert_eq!(world.apply(Command::Promote { app: "hello".into() }), refused, "no canaries asked for");
}

#[test]
fn auto_promote_promotes_once_the_canary_settled() {
    let (mut world, canary) = updating(UpdatePolicy { canary: 1, auto_promote: true, ..quick() });
    world.healthy([canary]);
    world.wait(SETTLE_MS - 1);
    assert!(world.advance().is_empty());
    world.wait(1);
    assert_eq!(world.advance(), ["promote hello"]);
    assert!(world.deployment("hello").rollout.as_ref().unwrap().promoted);
    assert_eq!(world.advance(), ["stop 1/0@a"]);
}

/// Something that happens to an instance.
type Happening = dyn Fn(&mut World, InstanceId);

#[test]
fn a_replacement_that_turns_unhealthy_restarts_or_is_late_fails_the_rollout() {
    const DEADLINE_MS: u64 = 60_000;
    let update = UpdatePolicy { healthy_deadline_ms: DEADLINE_MS, ..quick() };
    let late = |world: &mut World, id: InstanceId| {
        world.report(id, Phase::Running, Health::Starting, 0);
        world.wait(DEADLINE_MS);
        assert!(world.advance().is_empty(), "at the deadline it is still in time");
        world.wait(1);
    };
    let cases: [(&str, &Happening); 3] = [
        ("turned unhealthy", &|world, id| world.report(id, Phase::Running, Health::Unhealthy, 0)),
        ("restarted", &|world, id| world.report(id, Phase::Running, Health::Healthy, 1)),
        ("was not healthy in time", &late),
    ];
    for (what, happen) in cases {
        let (mut world, replacement) = updating(update);
        happen(&mut world, replacement);
        let why = format!("instance {replacement} on host a {what}");
        assert_eq!(world.advance(), [format!("fail 2: {why}")], "{what}");
        assert_eq!(world.deployment("hello").rollout.as_ref().unwrap().failed, Some(why), "{what}");
        assert_eq!(world.progress("hello").replacements_allowed, 0, "{what}");
        assert_eq!(world.history("hello"), ["1 by alice: promoted", "2 by alice: failed"], "{what}");
        // Without auto_revert the old version keeps its slots and nothing moves on.
        assert!(world.advance().is_empty(), "{what}");
        assert!(world.schedule("hello").is_empty(), "{what}");
        assert_eq!(world.live("hello", "1").len(), 3, "{what}");
    }
}

#[test]
fn a_failed_first_deploy_has_nothing_to_revert_to() {
    let mut world = World::new(&["a"]);
    world.register(version("hello", "1"));
    world.deploy(DeploymentSpec { update: auto_revert(), ..hello(1) }).unwrap();
    world.schedule("hello");
    let instance = world.filler("hello", "1", 0);
    world.report(instance, Phase::Running, Health::Healthy, 1);
    assert_eq!(world.advance(), [format!("fail 1: instance {instance} on host a restarted")]);
    assert_eq!(world.history("hello"), ["1 by alice: failed"]);
}

#[test]
fn with_auto_revert_a_failed_update_goes_back_to_the_last_promoted_version() {
    let mut world = running(DeploymentSpec { update: auto_revert(), ..hello(2) });
    world.update_to("2").unwrap();
    assert_eq!(world.roll_out("hello"), ["stop 1/0@a", "stop 1/1@b", "finish 2"]);
    world.update_to("3").unwrap();
    assert_eq!(world.schedule("hello"), ["3/0@b"]);
    let bad = world.filler("hello", "3", 0);
    world.report(bad, Phase::Running, Health::Unhealthy, 0);
    assert_eq!(world.advance(), [format!("fail 3: instance {bad} on host b turned unhealthy")]);

    let deployment = world.deployment("hello");
    assert_eq!(deployment.spec.version, "2");
    assert_eq!(deployment.history.last().unwrap().cause, RevisionCause::Revert("3".into()));
    let history = ["1 by alice: promoted", "2 by alice: promoted", "3 by alice: reverted", "2 by auto-revert: rolling"];
    assert_eq!(world.history("hello"), history);
    // Version 2's instances never stopped and are settled: 3's goes at once.
    assert_eq!(world.advance(), ["stop 3/0@b"]);
    world.end_stopped();
    assert_eq!(world.advance(), ["finish 2"]);
    assert_eq!(world.live_names("hello"), ["2/0@c", "2/1@a"]);
    assert_eq!(world.history("hello").last().unwrap(), "2 by auto-revert: promoted");
}

#[test]
fn a_draining_hosts_instance_moves_elsewhere_and_stops_once_its_replacement_settled() {
    let mut world = running(hello(2));
    let old = world.filler("hello", "1", 0);
    world.drain("a", 600_000).unwrap();
    assert!(world.instance(old).migrating);
    assert_eq!(world.progress("hello").outdated_slots, [0].into());
    assert_eq!(world.schedule("hello"), ["1/0@c"], "not on the draining host");
    let replacement = world.filler("hello", "1", 0);

    world.healthy([replacement]);
    world.wait(SETTLE_MS - 1);
    assert!(world.advance().is_empty(), "the replacement is not settled yet");
    world.wait(1);
    assert_eq!(world.advance(), ["stop 1/0@a"]);
    assert_eq!(world.instance(old).message, format!("moved to host c as {replacement} (its host is draining)"));
    assert_eq!(world.live_names("hello"), ["1/1@b", "1/0@c"]);

    let in_use = |why: &str| -> ApplyResult { Err(Rejection::HostInUse { host: HostId("a".into()), why: why.into() }) };
    let holding = "it holds 1 instance(s); drain it first (mirari cluster hosts drain a)";
    assert_eq!(world.remove_host("a"), in_use(holding), "its instance has not ended yet");
    world.end_stopped();
    world.undrain("a").unwrap();
    let up = "it is up and not drained; drain it first (mirari cluster hosts drain a)";
    assert_eq!(world.remove_host("a"), in_use(up));
    world.drain("a", 600_000).unwrap();
    assert_eq!(world.remove_host("a"), Ok(Outcome::Done));
    assert!(world.registry.host(&HostId("a".into())).is_none());
}

#[test]
fn past_the_drain_deadline_whatever_is_left_on_the_host_is_stopped() {
    let mut world = running(hello(2));
    world.drain("a", 60_000).unwrap();
    assert_eq!(world.schedule("hello"), ["1/0@c"]);
    world.wait(60_000 - 1);
    assert!(world.advance().is_empty(), "the replacement never became healthy; the deadline is not yet");
    world.wait(1);
    let old = world.live("hello", "1")[0];
    assert_eq!(world.advance(), ["stop 1/0@a"]);
    assert_eq!(world.instance(old).message, "the drain deadline of host a passed");
}

#[test]
fn ending_a_drain_gives_an_instance_its_slot_back_unless_a_replacement_filled_it() {
    let mut world = running(hello(2));
    let old = world.filler("hello", "1", 0);
    world.drain("a", 600_000).unwrap();
    world.undrain("a").unwrap();
    assert!(!world.instance(old).migrating);
    assert_eq!(world.filler("hello", "1", 0), old);
    assert!(world.schedule("hello").is_empty(), "nothing to replace");

    world.drain("a", 600_000).unwrap();
    assert_eq!(world.schedule("hello"), ["1/0@c"]);
    world.undrain("a").unwrap();
    assert!(world.instance(old).migrating, "its slot is the replacement's now");
    world.settle("hello");
    assert_eq!(world.advance(), ["stop 1/0@a"]);
}

#[test]
fn a_failed_instance_is_rescheduled_after_a_delay_away_from_its_host_until_the_attempts_run_out() {
    let reschedule = ReschedulePolicy { attempts: 3, delay_ms: 5_000 };
    let mut world = running(DeploymentSpec { reschedule, ..hello(1) });
    let fail = |world: &mut World| {
        let id = world.filler("hello", "1", 0);
        world.report(id, Phase::Failed, Health::None, 0);
        assert_eq!(world.instance(id).desired, Desired::Stopped);
        world.end_stopped();
    };
    let failed_at = world.now_ms;
    fail(&mut world);
    let failures = world.deployment("hello").failures.get(&0).cloned();
    let on_a = SlotFailures { attempts: 1, last_failed_at_ms: failed_at, hosts: [HostId("a".into())].into() };
    assert_eq!(failures, Some(on_a));

    for (delay, expected) in [(5_000, "1/0@b"), (10_000, "1/0@c")] {
        world.wait(delay - 1);
        assert!(world.schedule("hello").is_empty(), "{delay}ms after the failure");
        world.wait(1);
        assert_eq!(world.schedule("hello"), [expected], "every failed host avoided");
        fail(&mut world);
    }
    world.wait(ReschedulePolicy::MAX_DELAY_MS);
    let plan = world.plan("hello");
    assert!(plan.placements.is_empty());
    assert_eq!((plan.unplaced, plan.reasons), (1, [(Infeasible::GaveUp(3), 1)].into()));
    assert_eq!(world.plan("hello").explain(), "1 slot failed 3 times and is not rescheduled again");
}

#[test]
fn an_app_after_db_waits_until_every_db_instance_is_healthy() {
    let mut world = World::new(&["a", "b"]);
    world.register(version("db", "1"));
    world.register(version("hello", "1"));
    world.deploy(spec("db", "1", 2)).unwrap();
    world.deploy(DeploymentSpec { after: vec!["db".into()], ..hello(2) }).unwrap();
    let waiting = world.plan("hello");
    assert_eq!((waiting.placements.len(), waiting.unplaced), (0, 2));
    assert_eq!(waiting.explain(), "waiting for db to be healthy");

    world.schedule("db");
    let [first, second] = world.live("db", "1")[..] else { panic!("two db instances") };
    world.healthy([first]);
    assert!(world.schedule("hello").is_empty(), "one db instance is not healthy yet");
    world.healthy([second]);
    assert_eq!(world.schedule("hello"), ["1/0@a", "1/1@b"]);
}

#[test]
fn after_refuses_unknown_apps_and_cycles() {
    let mut world = World::new(&["a"]);
    world.register(version("db", "1"));
    world.register(version("hello", "1"));
    let after = |app: &str, version: &str, dependency: &str| DeploymentSpec {
        after: vec![dependency.into()],
        ..spec(app, version, 1)
    };
    let refused = |app: &str, dependency: &str, why: &str| -> ApplyResult {
        Err(Rejection::Ordering { app: app.into(), after: format!("`{dependency}`"), why: why.into() })
    };
    assert_eq!(
        world.deploy(after("hello", "1", "db")),
        refused("hello", "db", "`db` is not deployed; deploy it first")
    );
    world.deploy(spec("db", "1", 1)).unwrap();
    world.deploy(after("hello", "1", "db")).unwrap();
    assert_eq!(
        world.deploy(after("db", "1", "hello")),
        refused("db", "hello", "that makes a cycle: db -> hello -> db")
    );
}

#[test]
fn redeploying_the_same_spec_is_unchanged_and_other_contents_under_the_same_label_roll_out() {
    let mut world = running(hello(2));
    let generation = world.deployment("hello").generation;
    assert_eq!(world.deploy(hello(2)), Ok(Outcome::Unchanged));
    assert_eq!(world.deployment("hello").generation, generation);

    let bigger = AppVersion { run: RunPolicy { memory_mib: 96, ..version("hello", "1").run }, ..version("hello", "1") };
    let name = world.register(bigger.clone());
    assert_eq!(name, format!("1#{}", &bigger.digest().to_string()[..8]));
    assert_eq!(world.deploy(spec("hello", &name, 2)), Ok(Outcome::Done));
    assert_eq!(world.deployment("hello").rollout.as_ref().map(|r| r.version.clone()), Some(name.clone()));
    assert_eq!(world.progress("hello").outdated_slots, [0, 1].into());
    assert_eq!(world.roll_out("hello"), ["stop 1/0@a", "stop 1/1@b", format!("finish {name}").as_str()]);
}

#[test]
fn a_revert_after_some_slots_were_replaced_brings_the_old_version_back_into_them() {
    let mut world = running(DeploymentSpec { update: auto_revert(), ..hello(3) });
    world.update_to("2").unwrap();
    assert_eq!(world.schedule("hello"), ["2/0@a"]);
    world.settle("hello");
    assert_eq!(world.advance(), ["stop 1/0@a"]);
    world.end_stopped();
    assert_eq!(world.schedule("hello"), ["2/1@b"]);
    let bad = world.filler("hello", "2", 1);
    world.report(bad, Phase::Running, Health::Unhealthy, 0);
    assert_eq!(world.advance(), [format!("fail 2: instance {bad} on host b turned unhealthy")]);

    assert_eq!(world.advance(), ["stop 2/1@b"], "slot 1's version 1 instance runs on, settled");
    assert_eq!(world.schedule("hello"), ["1/0@a"], "slot 0 runs only version 2: 1 comes back first");
    world.end_stopped();
    assert_eq!(world.roll_out("hello"), ["stop 2/0@a", "finish 1"]);
    assert_eq!(world.live_names("hello"), ["1/1@b", "1/2@c", "1/0@a"]);
}

#[test]
fn a_replacement_that_fits_nowhere_is_unplaced_and_says_why() {
    let mut world = running(hello(1));
    let mut big = version("hello", "2");
    big.run.memory_mib = 8_192;
    let name = world.register(big);
    let current = world.deployment("hello").spec.clone();
    world.deploy(DeploymentSpec { version: name, ..current }).unwrap();
    let plan = world.plan("hello");
    assert_eq!((plan.placements.len(), plan.unplaced), (0, 1));
    assert_eq!(plan.explain(), "3 hosts lack memory");
    assert!(world.advance().is_empty(), "the old instance runs on");
}
