//! Scenarios of the agent's decisions: inputs in, effects out, time passed by hand.

use std::collections::BTreeSet;

use mirari_core::digest::Digest;
use mirari_core::instance::ExitStatus;
use mirari_core::registry::Resources;
use mirari_core::spec::RunPolicy;
use mirari_core::target::Target;

use super::*;

fn spec() -> InstanceSpec {
    InstanceSpec {
        app: "hello".into(),
        version: "1".into(),
        target: Target::Unix,
        artifact: Digest::of(b"hello"),
        files: vec![],
        run: RunPolicy { stop_timeout_secs: 10, ..RunPolicy::default() },
        interfaces: vec![],
    }
}

fn id(n: u64) -> InstanceId {
    InstanceId::from_u64(n)
}

fn handle(n: u64) -> Handle {
    Handle(serde_json::json!({ "run": n }))
}

fn host() -> registry::Host {
    registry::Host::up("h1", "10.0.0.1:7401", [Target::Unix], Resources { memory_mib: 1024, vcpus: 8, instances: 16 })
}

const LEASE: Lease = Lease { ttl_ms: 3_000, register_again: false };
const START: Now = Now { wall_ms: 1_000_000, boot_ms: 10_000 };

fn cluster(lease_ran_out: bool) -> Cluster {
    Cluster { host: host(), timing: LeaseTiming::default(), lease_ran_out }
}

/// A host and a clock that moves only when told.
struct Agent {
    host: Host,
    now: Now,
    sets: u64,
}

impl Agent {
    fn local() -> Self {
        Self { host: Host::open(vec![], None, START).0, now: START, sets: 0 }
    }

    fn joined() -> Self {
        let mut agent = Self {
            host: Host::open(vec![], Some(cluster(false)), START).0,
            now: Now { wall_ms: 1_000_000, boot_ms: 10_000 },
            sets: 0,
        };
        let effects = agent.tick();
        assert!(matches!(effects.as_slice(), [Effect::Register(h)] if h.id.0 == "h1"), "{effects:?}");
        let sent = agent.now.boot_ms;
        let effects = agent.input(Input::Registered { sent_ms: sent, outcome: Ok(LEASE) });
        assert_eq!(
            effects,
            [Effect::FenceDeadline { boot_ms: sent + 3_000 + 1_000 }, Effect::WatchAssignments { epoch: 1 }]
        );
        agent
    }

    fn at(&mut self, boot_ms: u64) {
        assert!(boot_ms >= self.now.boot_ms);
        self.now.wall_ms += boot_ms - self.now.boot_ms;
        self.now.boot_ms = boot_ms;
    }

    fn input(&mut self, input: Input) -> Vec<Effect> {
        self.host.handle(self.now, input)
    }

    fn tick(&mut self) -> Vec<Effect> {
        self.input(Input::Tick)
    }

    /// A registry index for the next assignment set: they only grow.
    fn index(&mut self) -> u64 {
        self.sets += 1;
        self.sets
    }

    fn phase(&self, n: u64) -> Phase {
        self.host.record(id(n)).expect("known").lifecycle.phase
    }

    /// Assigns `ids` in the current epoch and has their blobs arrive; returns the effects.
    fn assign(&mut self, ids: &[u64]) -> Vec<Effect> {
        let epoch = self.host.lease_epoch();
        let instances = ids.iter().map(|&n| (id(n), spec())).collect();
        let index = self.index();
        let effects = self.input(Input::Assigned { epoch, index, instances, stopping: vec![] });
        let Some(Effect::FetchBlobs { generation, digests }) = effects.last().cloned() else {
            panic!("no fetch in {effects:?}");
        };
        assert_eq!(digests.len(), usize::from(!ids.is_empty()));
        self.input(Input::BlobsFetched { generation, ok: true })
    }

    /// Has instance `n`'s start succeed with run handle `n`.
    fn started(&mut self, n: u64) -> Vec<Effect> {
        self.input(Input::Started { id: id(n), outcome: Ok((handle(n), format!("pid {n}"))) })
    }
}

fn kinds(effects: &[Effect]) -> Vec<&'static str> {
    effects
        .iter()
        .map(|e| match e {
            Effect::Persist { .. } => "persist",
            Effect::Start(_) => "start",
            Effect::Watch(_) => "watch",
            Effect::Stop { .. } => "stop",
            Effect::Release { .. } => "release",
            Effect::Recover(_) => "recover",
            Effect::Register(_) => "register",
            Effect::Renew => "renew",
            Effect::Report(_) => "report",
            Effect::WatchAssignments { .. } => "watch-assignments",
            Effect::StopWatchingAssignments => "stop-watching-assignments",
            Effect::FetchBlobs { .. } => "fetch-blobs",
            Effect::FenceDeadline { .. } => "fence-deadline",
            Effect::Probe { .. } => "probe",
            Effect::Forget(_) => "forget",
        })
        .collect()
}

#[test]
fn a_local_run_is_persisted_before_it_starts_and_cleaned_up_after_it_ends() {
    let mut agent = Agent::local();
    let effects = agent.input(Input::Run { instances: vec![(id(1), spec())] });
    assert_eq!(kinds(&effects), ["persist", "start"]);
    let Effect::Persist { new, changed } = &effects[0] else { unreachable!() };
    assert_eq!((new.len(), changed.len()), (1, 0));
    assert_eq!(new[0].lifecycle.phase, Phase::Starting, "persisted as starting, before the start");

    assert_eq!(kinds(&agent.started(1)), ["persist", "watch"]);
    assert_eq!(agent.phase(1), Phase::Running);
    let ended =
        agent.input(Input::Ended { id: id(1), ended: Ended::Exited(ExitStatus::Code(0)), context: String::new() });
    assert_eq!(kinds(&ended), ["persist", "release"]);
    assert!(agent.host.is_busy(id(1)), "no new run before the old one is cleaned up");
    agent.input(Input::Released { id: id(1), handle: Some(handle(1)), ok: true });
    assert_eq!(agent.host.record(id(1)).unwrap().handle, None);
    assert!(!agent.host.is_busy(id(1)));
}

#[test]
fn a_stop_uses_the_stop_timeout_and_the_run_ends_stopped() {
    let mut agent = Agent::local();
    agent.input(Input::Run { instances: vec![(id(1), spec())] });
    agent.started(1);
    let effects = agent.input(Input::Stop { id: id(1) });
    assert_eq!(kinds(&effects), ["persist", "stop"]);
    assert!(matches!(&effects[1], Effect::Stop { timeout_secs: 10, handle: h, .. } if *h == handle(1)));
    agent.input(Input::StopReturned { id: id(1), outcome: Ok(false), timeout_secs: 10 });
    agent.input(Input::Ended { id: id(1), ended: Ended::Exited(ExitStatus::Signal(15)), context: String::new() });
    assert_eq!(agent.phase(1), Phase::Stopped);
    assert_eq!(agent.host.record(id(1)).unwrap().stop_forced, Some(false));
}

#[test]
fn records_found_at_start_are_recovered_or_cleaned_up_first() {
    let mut live = InstanceRecord::new(id(1), Origin::Local, spec(), 0);
    live.lifecycle.on_starting();
    live.lifecycle.on_running(0);
    live.handle = Some(handle(1));
    let mut ended = InstanceRecord::new(id(2), Origin::Local, spec(), 0);
    ended.lifecycle.phase = Phase::Exited;
    ended.handle = Some(handle(2));
    let (mut host, effects) = Host::open(vec![live, ended], None, START);
    assert_eq!(kinds(&effects), ["recover", "release"]);
    let now = Now { wall_ms: 5_000, boot_ms: 5_000 };
    // Nothing else happens to them until recovery answers.
    assert!(host.handle(now, Input::Tick).is_empty());
    let adopted = host.handle(now, Input::Adopted { id: id(1), handle: handle(1) });
    assert_eq!(kinds(&adopted), ["persist", "watch"]);
}

#[test]
fn assignments_run_only_within_the_lease_they_were_heard_in() {
    let mut agent = Agent::joined();
    let effects = agent.assign(&[1, 2]);
    assert_eq!(kinds(&effects), ["persist", "report", "start", "start"]);
    let Effect::Persist { new, .. } = &effects[0] else { unreachable!() };
    assert!(new.iter().all(|r| r.origin == Origin::Cluster));
    // A set heard in an older epoch is ignored.
    let stale =
        agent.input(Input::Assigned { epoch: 0, index: 100, instances: vec![(id(9), spec())], stopping: vec![] });
    assert!(stale.is_empty(), "{stale:?}");
    assert!(agent.host.record(id(9)).is_none());
}

#[test]
fn the_lease_runs_out_on_its_own_timer_and_fences_with_the_short_stop() {
    let mut agent = Agent::joined();
    let registered_at = agent.now.boot_ms;
    agent.assign(&[1]);
    agent.started(1);
    // Renewals stop being answered (the coordinators are cut off): nothing is acknowledged.
    agent.at(registered_at + 1_000);
    assert_eq!(kinds(&agent.tick()), ["renew"]);
    agent.at(registered_at + 1_800);
    assert!(kinds(&agent.input(Input::Renewed { sent_ms: registered_at + 1_000, outcome: Err(()) })).is_empty());
    // The machine asks to be woken exactly when the lease ends, whatever the RPCs do.
    assert_eq!(agent.host.wake_at(agent.now), registered_at + 2_000, "the retry comes first");
    assert_eq!(kinds(&agent.tick()), [] as [&str; 0], "still before the retry");
    agent.at(registered_at + 2_999);
    agent.tick();
    assert!(agent.host.has_lease(agent.now));
    assert_eq!(agent.phase(1), Phase::Running);
    agent.at(registered_at + 3_000);
    let fenced = agent.tick();
    assert_eq!(kinds(&fenced), ["persist", "stop-watching-assignments", "stop"], "{fenced:?}");
    assert!(matches!(&fenced[2], Effect::Stop { timeout_secs: 1, .. }), "fencing waits fence_stop, not 10 s");
    assert!(!agent.host.has_lease(agent.now));
}

#[test]
fn a_renewal_acknowledged_too_late_does_not_revive_the_lease() {
    let mut agent = Agent::joined();
    let sent = agent.now.boot_ms;
    agent.at(sent + 3_500);
    agent.tick();
    assert!(!agent.host.has_lease(agent.now));
    let late = agent.input(Input::Renewed { sent_ms: sent, outcome: Ok(LEASE) });
    assert!(!kinds(&late).contains(&"watch-assignments"));
    assert!(!agent.host.has_lease(agent.now));
}

#[test]
fn a_fenced_instance_still_stopping_runs_again_when_reassigned() {
    let mut agent = Agent::joined();
    let start = agent.now.boot_ms;
    agent.assign(&[1]);
    agent.started(1);
    agent.at(start + 3_000);
    agent.tick();
    assert_eq!(agent.phase(1), Phase::Stopping);
    // The lease comes back (a new epoch) while the graceful stop is under way.
    agent.at(start + 3_400);
    let regained = agent.input(Input::Renewed { sent_ms: start + 3_300, outcome: Ok(LEASE) });
    assert!(regained.contains(&Effect::WatchAssignments { epoch: 2 }), "{regained:?}");
    agent.assign(&[1]);
    agent.input(Input::StopReturned { id: id(1), outcome: Ok(false), timeout_secs: 1 });
    let ended =
        agent.input(Input::Ended { id: id(1), ended: Ended::Exited(ExitStatus::Code(0)), context: String::new() });
    assert_eq!(kinds(&ended), ["persist", "release"]);
    agent.input(Input::Released { id: id(1), handle: Some(handle(1)), ok: true });
    assert_eq!(agent.phase(1), Phase::Starting, "wanted running, it converges to running");
}

#[test]
fn cluster_instances_do_not_restart_without_a_lease() {
    let mut agent = Agent::joined();
    let start = agent.now.boot_ms;
    agent.assign(&[1]);
    agent.started(1);
    agent.input(Input::Ended { id: id(1), ended: Ended::Exited(ExitStatus::Code(3)), context: String::new() });
    agent.input(Input::Released { id: id(1), handle: Some(handle(1)), ok: true });
    let due = agent.host.record(id(1)).unwrap().lifecycle.restart_due_ms.expect("a restart is due");
    assert!(due > agent.now.wall_ms);
    agent.at(start + 3_000);
    agent.tick();
    agent.at(start + 60_000);
    let effects = agent.tick();
    assert!(!kinds(&effects).contains(&"start"), "{effects:?}");
}

#[test]
fn a_report_is_sent_for_what_changed_and_resent_after_a_failure() {
    let mut agent = Agent::joined();
    let effects = agent.assign(&[1]);
    let report = |effects: &[Effect]| {
        effects.iter().find_map(|e| match e {
            Effect::Report(reports) => Some(reports.clone()),
            _ => None,
        })
    };
    let first = report(&effects).expect("the new instance is reported");
    assert_eq!((first.len(), first[0].phase), (1, Phase::Starting));
    // One report at a time: the start is reported after the first is answered.
    assert!(report(&agent.started(1)).is_none());
    let next = report(&agent.input(Input::Reported { reports: first, ok: true })).expect("the start is reported");
    assert_eq!(next[0].phase, Phase::Running);
    assert!(report(&agent.input(Input::Reported { reports: next.clone(), ok: false })).is_none());
    let retry_at = agent.host.wake_at(agent.now);
    agent.at(retry_at);
    assert_eq!(report(&agent.tick()), Some(next.clone()));
    assert!(report(&agent.input(Input::Reported { reports: next, ok: true })).is_none(), "nothing left to say");
}

#[test]
fn an_assignment_that_drops_an_instance_stops_it_and_keeps_the_others() {
    let mut agent = Agent::joined();
    agent.assign(&[1, 2]);
    agent.started(1);
    agent.started(2);
    let effects = agent.assign(&[2]);
    let stopped: BTreeSet<InstanceId> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Stop { record, .. } => Some(record.id),
            _ => None,
        })
        .collect();
    assert_eq!(stopped, [id(1)].into());
    assert_eq!(agent.phase(2), Phase::Running);
}

#[test]
fn register_again_when_the_cluster_lost_this_host() {
    let mut agent = Agent::joined();
    let sent = agent.now.boot_ms;
    agent.at(sent + 1_000);
    assert_eq!(kinds(&agent.tick()), ["renew"]);
    let again = agent
        .input(Input::Renewed { sent_ms: sent + 1_000, outcome: Ok(Lease { ttl_ms: 3_000, register_again: true }) });
    assert_eq!(kinds(&again), ["register"]);
}

#[test]
fn an_instance_to_stop_that_never_ran_here_is_reported_as_such() {
    let mut agent = Agent::joined();
    let epoch = agent.host.lease_epoch();
    let effects = agent.input(Input::Assigned { epoch, index: 50, instances: vec![], stopping: vec![id(7)] });
    let Some(Effect::FetchBlobs { generation, .. }) = effects.last().cloned() else { panic!("{effects:?}") };
    let effects = agent.input(Input::BlobsFetched { generation, ok: true });
    let Some(Effect::Report(reports)) = effects.into_iter().find(|e| matches!(e, Effect::Report(_))) else {
        panic!("no report");
    };
    assert_eq!((reports[0].id, reports[0].phase), (id(7), Phase::Stopped));
    assert!(agent.host.record(id(7)).is_none(), "no record is made for it");
    let effects = agent.input(Input::Reported { reports, ok: true });
    assert!(!kinds(&effects).contains(&"report"), "said once");
}

#[test]
fn after_a_restart_a_cluster_instance_waits_for_the_new_leases_assignments() {
    // The agent died while its instance was running; the instance ended meanwhile (fenced).
    let mut record = InstanceRecord::new(id(1), Origin::Cluster, spec(), 0);
    record.lifecycle.on_starting();
    record.lifecycle.on_running(0);
    record.handle = Some(handle(1));
    let (host, _) = Host::open(vec![record], Some(cluster(false)), START);
    let mut agent = Agent { host, now: Now { wall_ms: 1_000_000, boot_ms: 10_000 }, sets: 0 };
    agent.input(Input::Ended {
        id: id(1),
        ended: Ended::Exited(ExitStatus::Signal(9)),
        context: " while the agent was down".into(),
    });
    agent.input(Input::Released { id: id(1), handle: Some(handle(1)), ok: true });
    assert_eq!(agent.phase(1), Phase::Exited, "a restart is due under on-failure");
    let sent = agent.now.boot_ms;
    agent.tick();
    agent.input(Input::Registered { sent_ms: sent, outcome: Ok(LEASE) });
    agent.at(sent + 2_000);
    assert!(!kinds(&agent.tick()).contains(&"start"), "not before the assignments of this lease say it is ours");
    // They do not: it runs elsewhere now. It is stopped for good instead.
    let effects = agent.assign(&[]);
    assert!(!kinds(&effects).contains(&"start"), "{effects:?}");
    assert_eq!(agent.host.record(id(1)).unwrap().lifecycle.desired, Desired::Stopped);
}

#[test]
fn blobs_that_could_not_be_fetched_are_fetched_again() {
    let mut agent = Agent::joined();
    let epoch = agent.host.lease_epoch();
    let effects = agent.input(Input::Assigned { epoch, index: 50, instances: vec![(id(1), spec())], stopping: vec![] });
    let Some(Effect::FetchBlobs { generation, .. }) = effects.last().cloned() else { panic!("{effects:?}") };
    assert!(agent.input(Input::BlobsFetched { generation, ok: false }).is_empty());
    let retry = agent.host.wake_at(agent.now);
    assert_eq!(retry, agent.now.boot_ms + FETCH_RETRY_MS);
    agent.at(retry);
    let again = agent.tick();
    assert!(again.contains(&Effect::FetchBlobs { generation, digests: vec![Digest::of(b"hello")] }), "{again:?}");
    let started = agent.input(Input::BlobsFetched { generation, ok: true });
    assert!(kinds(&started).contains(&"start"));
}

#[test]
fn an_older_assignment_set_heard_while_a_newer_one_waits_for_its_blobs_is_ignored() {
    let mut agent = Agent::joined();
    let epoch = agent.host.lease_epoch();
    let newer = agent.input(Input::Assigned { epoch, index: 62, instances: vec![], stopping: vec![id(1)] });
    let Some(Effect::FetchBlobs { generation, .. }) = newer.last().cloned() else { panic!("{newer:?}") };
    let older = agent.input(Input::Assigned { epoch, index: 61, instances: vec![(id(1), spec())], stopping: vec![] });
    assert!(older.is_empty(), "{older:?}");
    agent.input(Input::BlobsFetched { generation, ok: true });
    assert!(agent.host.record(id(1)).is_none(), "the older set never ran it");
}

#[test]
fn an_older_assignment_set_is_never_applied_after_a_newer_one() {
    let mut agent = Agent::joined();
    let epoch = agent.host.lease_epoch();
    let newer = agent.input(Input::Assigned { epoch, index: 20, instances: vec![], stopping: vec![] });
    let Some(Effect::FetchBlobs { generation, .. }) = newer.last().cloned() else { panic!("{newer:?}") };
    agent.input(Input::BlobsFetched { generation, ok: true });
    let older = agent.input(Input::Assigned { epoch, index: 12, instances: vec![(id(1), spec())], stopping: vec![] });
    assert!(older.is_empty(), "{older:?}");
    assert!(agent.host.record(id(1)).is_none());
}

#[test]
fn an_ended_instance_the_cluster_still_asks_to_stop_is_reported_again_with_the_new_index() {
    let mut agent = Agent::joined();
    agent.assign(&[1]);
    agent.started(1);
    agent.input(Input::Stop { id: id(1) });
    agent.input(Input::Ended { id: id(1), ended: Ended::Exited(ExitStatus::Code(0)), context: String::new() });
    let epoch = agent.host.lease_epoch();
    // Whatever was reported before, the set that says stop makes it say so again.
    let effects = agent.input(Input::Assigned { epoch, index: 99, instances: vec![], stopping: vec![id(1)] });
    let Some(Effect::FetchBlobs { generation, .. }) = effects.last().cloned() else { panic!("{effects:?}") };
    let mut reports = Vec::new();
    for effect in agent.input(Input::BlobsFetched { generation, ok: true }) {
        if let Effect::Report(sent) = effect {
            reports = sent;
        }
    }
    // The stop's own report is still in flight: the confirmation follows its answer.
    assert!(reports.is_empty(), "{reports:?}");
    let reports = agent
        .input(Input::Reported { reports: vec![], ok: true })
        .into_iter()
        .find_map(|e| if let Effect::Report(r) = e { Some(r) } else { None })
        .expect("a report once the one in flight is answered");
    let confirmation = reports.iter().find(|r| r.id == id(1)).expect("reported again");
    assert_eq!((confirmation.phase, confirmation.assignments_index), (Phase::Stopped, 99));
}

#[test]
fn a_stop_from_before_an_agent_restart_that_ends_a_run_wanted_again_restarts_it() {
    // The agent died while stopping an instance it had since been told to run again; the stop
    // (in the shim) ends the run cleanly after the restart.
    let mut record = InstanceRecord::new(id(1), Origin::Local, spec(), 0);
    record.lifecycle.on_starting();
    record.lifecycle.on_running(0);
    record.lifecycle.on_stop_requested();
    record.lifecycle.on_stopping();
    record.lifecycle.on_run_requested();
    record.handle = Some(handle(1));
    let (host, _) = Host::open(vec![record], None, START);
    let mut agent = Agent { host, now: Now { wall_ms: 1_000_000, boot_ms: 10_000 }, sets: 0 };
    agent.input(Input::Adopted { id: id(1), handle: handle(1) });
    assert_eq!(agent.phase(1), Phase::Running);
    agent.input(Input::Ended { id: id(1), ended: Ended::Exited(ExitStatus::Code(0)), context: String::new() });
    assert_eq!(agent.phase(1), Phase::Pending, "a clean exit we caused does not rest under on-failure");
}

#[test]
fn after_a_restart_past_the_lease_cluster_instances_are_fenced_before_the_host_rejoins() {
    // The agent was down longer than its lease: its instance may have been replaced already.
    let mut record = InstanceRecord::new(id(1), Origin::Cluster, spec(), 0);
    record.lifecycle.on_starting();
    record.lifecycle.on_running(0);
    record.handle = Some(handle(1));
    let (host, first) = Host::open(vec![record], Some(cluster(true)), START);
    assert_eq!(kinds(&first), ["persist", "recover"]);
    let mut agent = Agent { host, now: START, sets: 0 };
    assert_eq!(agent.host.record(id(1)).unwrap().lifecycle.desired, Desired::Stopped);
    let adopted = agent.input(Input::Adopted { id: id(1), handle: handle(1) });
    assert!(matches!(
        adopted.iter().find(|e| matches!(e, Effect::Stop { .. })),
        Some(Effect::Stop { timeout_secs: 1, .. })
    ));
    assert!(!kinds(&adopted).contains(&"register"), "not while a fenced instance runs");
    agent.input(Input::StopReturned { id: id(1), outcome: Ok(false), timeout_secs: 1 });
    agent.input(Input::Ended { id: id(1), ended: Ended::Exited(ExitStatus::Signal(15)), context: String::new() });
    let released = agent.input(Input::Released { id: id(1), handle: Some(handle(1)), ok: true });
    assert_eq!(kinds(&released), ["persist", "register"], "the handle is forgotten, then the host rejoins");
}

#[test]
fn a_failed_start_is_cleaned_up() {
    let mut agent = Agent::local();
    agent.input(Input::Run { instances: vec![(id(1), spec())] });
    let failed = agent.input(Input::Started { id: id(1), outcome: Err("xl create timed out".into()) });
    assert!(failed.iter().any(|e| matches!(e, Effect::Release { handle: None, .. })), "{failed:?}");
    assert!(agent.host.is_busy(id(1)));
}

#[test]
fn a_start_interrupted_by_an_agent_crash_starts_again() {
    // Persisted as starting, then the agent died before the backend started it; what recovery
    // finds ended is the previous run's clean exit.
    let mut record = InstanceRecord::new(id(1), Origin::Local, spec(), 0);
    record.lifecycle.on_starting();
    let (host, first) = Host::open(vec![record], None, START);
    assert_eq!(kinds(&first), ["recover"]);
    let mut agent = Agent { host, now: START, sets: 0 };
    let ended = agent.input(Input::Ended {
        id: id(1),
        ended: Ended::Exited(ExitStatus::Code(0)),
        context: " while the agent was down".into(),
    });
    assert_eq!(kinds(&ended), ["persist", "release"]);
    let started = agent.input(Input::Released { id: id(1), handle: None, ok: true });
    assert!(kinds(&started).contains(&"start"), "{started:?}");
}

/// A spec with an interface and an HTTP health check: 1 s interval, 2 s grace, unhealthy after 2.
fn checked_spec() -> InstanceSpec {
    use mirari_core::health::{HealthCheck, Probe};
    let mut spec = spec();
    spec.run.restart = mirari_core::spec::RestartPolicy::OnFailure { limit: 3 };
    spec.run.health = Some(HealthCheck {
        probe: Probe::Http { port: 80, path: "/".into(), status: 200 },
        interval_ms: 1_000,
        timeout_ms: 500,
        grace_ms: 2_000,
        unhealthy_after: 2,
    });
    spec.interfaces = vec![mirari_core::network::Interface {
        network: "service".into(),
        address: "10.88.0.7/16".parse().unwrap(),
        gateway: None,
        mac: mirari_core::network::MacAddress::for_instance(id(1), 0),
    }];
    spec
}

/// Takes the probe due now; returns its run.
fn due_probe(agent: &mut Agent) -> u64 {
    let effects = agent.tick();
    match effects.as_slice() {
        [Effect::Probe { id: probed, run, address, .. }] => {
            assert_eq!((*probed, address.to_string()), (id(1), "10.88.0.7".into()));
            *run
        }
        other => panic!("expected one probe, got {other:?}"),
    }
}

#[test]
fn health_starts_at_the_run_turns_healthy_and_an_unhealthy_run_is_restarted_as_a_failure() {
    let mut agent = Agent::local();
    agent.input(Input::Run { instances: vec![(id(1), checked_spec())] });
    agent.started(1);
    assert_eq!(agent.host.record(id(1)).unwrap().health, Health::Starting);
    assert_eq!(agent.tick(), [], "the first probe waits a moment");
    let start = agent.now.boot_ms;
    agent.at(start + 1_000);
    let run = due_probe(&mut agent);
    assert_eq!(agent.tick(), [], "one probe at a time");
    let effects = agent.input(Input::Probed { id: id(1), run, result: Ok(()) });
    assert_eq!(kinds(&effects), ["persist"]);
    assert_eq!(agent.host.record(id(1)).unwrap().health, Health::Healthy);
    // Two failures in a row after the grace period: stopped, its end a failed run.
    agent.at(start + 3_000);
    let run = due_probe(&mut agent);
    assert_eq!(agent.input(Input::Probed { id: id(1), run, result: Err("refused".into()) }), []);
    agent.at(start + 4_000);
    let run = due_probe(&mut agent);
    let effects = agent.input(Input::Probed { id: id(1), run, result: Err("refused".into()) });
    assert_eq!(kinds(&effects), ["persist", "stop"]);
    let record = agent.host.record(id(1)).unwrap();
    assert_eq!((record.health, record.health_message.as_str()), (Health::Unhealthy, "refused"));
    agent.input(Input::StopReturned { id: id(1), outcome: Ok(false), timeout_secs: 10 });
    agent.input(Input::Ended { id: id(1), ended: Ended::Exited(ExitStatus::Code(0)), context: String::new() });
    let record = agent.host.record(id(1)).unwrap();
    assert_eq!(record.lifecycle.phase, Phase::Exited);
    assert_eq!(record.lifecycle.message.as_deref(), Some("unhealthy: refused"));
    assert!(record.lifecycle.restart_due_ms.is_some(), "restarted under its policy");
    assert_eq!(record.health, Health::None);
}

#[test]
fn a_late_probe_answer_from_an_earlier_run_changes_nothing() {
    let mut agent = Agent::local();
    agent.input(Input::Run { instances: vec![(id(1), checked_spec())] });
    agent.started(1);
    let start = agent.now.boot_ms;
    agent.at(start + 1_000);
    let old_run = due_probe(&mut agent);
    agent.input(Input::Ended { id: id(1), ended: Ended::Exited(ExitStatus::Code(3)), context: String::new() });
    agent.input(Input::Released { id: id(1), handle: Some(handle(1)), ok: true });
    agent.at(start + 60_000);
    let effects = agent.tick();
    assert_eq!(kinds(&effects), ["persist", "start"]);
    agent.started(1);
    assert_eq!(agent.input(Input::Probed { id: id(1), run: old_run, result: Ok(()) }), []);
    assert_eq!(agent.host.record(id(1)).unwrap().health, Health::Starting);
}

/// The IDs an effect list forgets.
fn forgotten(effects: &[Effect]) -> Vec<InstanceId> {
    effects
        .iter()
        .filter_map(|e| if let Effect::Forget(ids) = e { Some(ids.clone()) } else { None })
        .flatten()
        .collect()
}

/// Answers every report the effects send (and those that follow) as delivered; returns the
/// effects of the last answer.
fn deliver_reports(agent: &mut Agent, mut effects: Vec<Effect>) -> Vec<Effect> {
    while let Some(reports) =
        effects.iter().find_map(|e| if let Effect::Report(r) = e { Some(r.clone()) } else { None })
    {
        effects = agent.input(Input::Reported { reports, ok: true });
    }
    effects
}

const HOUR_MS: u64 = 3_600_000;

#[test]
fn a_local_instance_that_ended_is_forgotten_after_the_retention() {
    let mut agent = Agent::local();
    agent.input(Input::Run { instances: vec![(id(1), spec())] });
    agent.started(1);
    agent.input(Input::Stop { id: id(1) });
    agent.input(Input::StopReturned { id: id(1), outcome: Ok(false), timeout_secs: 10 });
    agent.input(Input::Ended { id: id(1), ended: Ended::Exited(ExitStatus::Signal(15)), context: String::new() });
    agent.input(Input::Released { id: id(1), handle: Some(handle(1)), ok: true });
    assert!(forgotten(&agent.tick()).is_empty());
    agent.at(agent.now.boot_ms + HOUR_MS - 1);
    assert!(forgotten(&agent.tick()).is_empty(), "kept for the hour");
    agent.at(agent.now.boot_ms + 1);
    assert_eq!(forgotten(&agent.tick()), [id(1)]);
    assert!(agent.host.record(id(1)).is_none());
}

#[test]
fn beyond_the_count_the_oldest_ended_records_go_at_once() {
    let mut agent = Agent::local();
    agent.host.set_keep_ended(KeepEnded { for_ms: HOUR_MS, at_most: 1 });
    let mut gone = Vec::new();
    for n in 1..=3 {
        agent.input(Input::Run { instances: vec![(id(n), spec())] });
        agent.started(n);
        agent.input(Input::Stop { id: id(n) });
        agent.input(Input::StopReturned { id: id(n), outcome: Ok(false), timeout_secs: 10 });
        agent.input(Input::Ended { id: id(n), ended: Ended::Exited(ExitStatus::Signal(15)), context: String::new() });
        agent.input(Input::Released { id: id(n), handle: Some(handle(n)), ok: true });
        agent.at(agent.now.boot_ms + 1_000);
        gone.extend(forgotten(&agent.tick()));
    }
    assert_eq!(gone, [id(1), id(2)], "the newest stays");
    assert!(agent.host.record(id(3)).is_some());
}

#[test]
fn a_cluster_instance_is_forgotten_only_once_the_cluster_let_it_go() {
    let mut agent = Agent::joined();
    // A short retention, so the lease (3 s) holds throughout.
    agent.host.set_keep_ended(KeepEnded { for_ms: 1_000, at_most: 100 });
    let effects = agent.assign(&[1, 2, 3]);
    deliver_reports(&mut agent, effects);
    for n in 1..=3 {
        let effects = agent.started(n);
        deliver_reports(&mut agent, effects);
    }
    // The cluster asks for 1 and 2 to stop; they end and are released.
    let epoch = agent.host.lease_epoch();
    let index = agent.index();
    let effects =
        agent.input(Input::Assigned { epoch, index, instances: vec![(id(3), spec())], stopping: vec![id(1), id(2)] });
    let Some(Effect::FetchBlobs { generation, .. }) = effects.last().cloned() else { panic!("{effects:?}") };
    let effects = agent.input(Input::BlobsFetched { generation, ok: true });
    deliver_reports(&mut agent, effects);
    for n in [1, 2] {
        let effects = agent.input(Input::StopReturned { id: id(n), outcome: Ok(false), timeout_secs: 10 });
        deliver_reports(&mut agent, effects);
        let effects = agent.input(Input::Ended {
            id: id(n),
            ended: Ended::Exited(ExitStatus::Signal(15)),
            context: String::new(),
        });
        deliver_reports(&mut agent, effects);
        let effects = agent.input(Input::Released { id: id(n), handle: Some(handle(n)), ok: true });
        deliver_reports(&mut agent, effects);
        assert!(forgotten(&agent.tick()).is_empty(), "the cluster still names them");
    }
    agent.at(agent.now.boot_ms + 1_500);
    let effects = agent.tick();
    assert!(forgotten(&effects).is_empty(), "still in the set to stop: {effects:?}");
    // The cluster lets them go (it saw their ends): past the retention, both go.
    let epoch = agent.host.lease_epoch();
    let index = agent.index();
    let effects = agent.input(Input::Assigned { epoch, index, instances: vec![(id(3), spec())], stopping: vec![] });
    let Some(Effect::FetchBlobs { generation, .. }) = effects.last().cloned() else { panic!("{effects:?}") };
    let fetched = agent.input(Input::BlobsFetched { generation, ok: true });
    let effects = deliver_reports(&mut agent, fetched);
    let mut gone = forgotten(&effects);
    gone.extend(forgotten(&agent.tick()));
    gone.sort();
    assert_eq!(gone, [id(1), id(2)]);
    assert_eq!(agent.phase(3), Phase::Running, "what runs is kept");
}
