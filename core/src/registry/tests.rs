use super::*;
use crate::digest::Digest;
use crate::health::Health;
use crate::spec::RunPolicy;
use crate::target::Target;

fn host(name: &str, memory_mib: u64, backends: &[Target]) -> Host {
    Host {
        id: HostId(name.into()),
        address: format!("{name}:7070"),
        backends: backends.iter().copied().collect(),
        capacity: Resources { memory_mib, vcpus: 8, instances: 10 },
        labels: BTreeMap::new(),
        networks: Default::default(),
        status: HostStatus::Up,
        registered_at_ms: 1,
        status_changed_at_ms: 1,
        drain: None,
        provider: None,
    }
}

fn app(version: &str) -> AppVersion {
    AppVersion {
        app: "hello".into(),
        version: version.into(),
        artifacts: [(Target::Unix, Digest::of(b"unix")), (Target::Kvm, Digest::of(b"kvm"))].into(),
        files: vec![],
        run: RunPolicy { memory_mib: 64, ..RunPolicy::default() },
        constraints: BTreeMap::new(),
    }
}

/// A registry that applied `commands`, and the index of the last.
fn setup(commands: impl IntoIterator<Item = Command>) -> (Registry, u64) {
    let mut registry = Registry::default();
    let mut index = 0;
    for command in commands {
        index += 1;
        registry.apply(index, &request(index, command)).expect("setup applies");
    }
    (registry, index)
}

/// A registry with two hosts, the app registered and deployed with `count` slots.
fn deployed(count: u32) -> (Registry, u64) {
    let commands = [
        Command::RegisterHost { host: host("a", 256, &[Target::Unix, Target::Kvm]) },
        Command::RegisterHost { host: host("b", 128, &[Target::Unix]) },
        Command::RegisterApp { version: app("1") },
        Command::Deploy {
            spec: spec("1", count),
            at_ms: 5,
            by: "test".into(),
            cause: crate::registry::RevisionCause::Deploy,
        },
    ];
    setup(commands)
}

fn spec(version: &str, count: u32) -> DeploymentSpec {
    DeploymentSpec::new("hello", version, Target::Unix, count)
}

fn request(n: u64, command: Command) -> Request {
    Request { request_id: format!("req-{n}"), command }
}

fn placed(id: u64, slot: u32, host: &str) -> PlacedInstance {
    PlacedInstance { id: InstanceId::from_u64(id), slot, host: HostId(host.into()), interfaces: vec![] }
}

fn place(registry: &mut Registry, index: u64, placements: Vec<PlacedInstance>) -> ApplyResult {
    let generation = registry.deployment("hello").unwrap().generation;
    registry.apply(index, &request(index, Command::Place { app: "hello".into(), generation, placements, at_ms: 9 }))
}

#[test]
fn places_instances_and_accounts_for_them() {
    let (mut registry, index) = deployed(3);
    let outcome = place(&mut registry, index + 1, vec![placed(1, 0, "a"), placed(2, 1, "a"), placed(3, 2, "b")]);
    assert_eq!(
        outcome,
        Ok(Outcome::Placed(vec![InstanceId::from_u64(1), InstanceId::from_u64(2), InstanceId::from_u64(3)]))
    );
    assert_eq!(registry.used(&HostId("a".into())), Resources { memory_mib: 128, vcpus: 2, instances: 2 });
    assert_eq!(registry.slot_filler("hello", "1", 2), Some(InstanceId::from_u64(3)));
    assert_eq!(registry.instances().count(), 3);
}

#[test]
fn refuses_reused_ids_taken_slots_and_overcommitted_hosts_atomically() {
    let (mut registry, index) = deployed(4);
    place(&mut registry, index + 1, vec![placed(1, 0, "b")]).unwrap();
    let before = registry.clone();

    assert_eq!(
        place(&mut registry, index + 2, vec![placed(1, 1, "a")]),
        Err(Rejection::IdReused(InstanceId::from_u64(1)))
    );
    assert_eq!(
        place(&mut registry, index + 3, vec![placed(5, 0, "a")]),
        Err(Rejection::SlotTaken { app: "hello".into(), slot: 0 })
    );
    // Host b has 128 MiB: one more 64 MiB instance fits, a second does not; nothing is placed.
    let error = place(&mut registry, index + 4, vec![placed(6, 1, "b"), placed(7, 2, "b")]).unwrap_err();
    assert_eq!(error, Rejection::Infeasible { host: HostId("b".into()), reason: "1 host lacks memory".into() });
    assert_eq!(registry.instances().count(), before.instances().count());
    assert_eq!(registry.used(&HostId("b".into())), before.used(&HostId("b".into())));
}

#[test]
fn two_plans_racing_for_the_last_slot_never_both_win() {
    let (mut registry, index) = deployed(2);
    place(&mut registry, index + 1, vec![placed(1, 0, "a")]).unwrap();
    let first = place(&mut registry, index + 2, vec![placed(2, 1, "a")]);
    let second = place(&mut registry, index + 3, vec![placed(3, 1, "b")]);
    assert!(first.is_ok());
    assert_eq!(second, Err(Rejection::SlotTaken { app: "hello".into(), slot: 1 }));
}

#[test]
fn a_plan_for_an_older_generation_is_refused() {
    let (mut registry, index) = deployed(2);
    let old = registry.deployment("hello").unwrap().generation;
    registry.apply(index + 1, &request(index + 1, Command::Scale { app: "hello".into(), count: 3 })).unwrap();
    let command =
        Command::Place { app: "hello".into(), generation: old, placements: vec![placed(1, 0, "a")], at_ms: 1 };
    assert!(matches!(registry.apply(index + 2, &request(index + 2, command)), Err(Rejection::StalePlan { .. })));
}

#[test]
fn ids_minted_from_serials_are_remembered_by_one_number_however_many_instances_came_and_went() {
    let (mut registry, mut index) = deployed(1);
    let next = |index: &mut u64| {
        *index += 1;
        *index
    };
    let mut lifetimes = Vec::new();
    for _ in 0..300 {
        let id = registry.fresh_ids().next().unwrap();
        let placement = PlacedInstance { id, slot: 0, host: HostId("a".into()), interfaces: vec![] };
        place(&mut registry, next(&mut index), vec![placement]).unwrap();
        let i = next(&mut index);
        registry.apply(i, &request(i, Command::Scale { app: "hello".into(), count: 0 })).unwrap();
        reported(&mut registry, next(&mut index), "a", vec![report(id.as_u64(), Phase::Stopped)]);
        let i = next(&mut index);
        registry.apply(i, &request(i, Command::ForgetInstances { ids: vec![id] })).unwrap();
        let i = next(&mut index);
        registry.apply(i, &request(i, Command::Scale { app: "hello".into(), count: 1 })).unwrap();
        lifetimes.push(id);
    }
    assert_eq!(registry.instances().count(), 0, "every one was forgotten");
    assert_eq!(lifetimes.iter().map(|id| id.serial()).collect::<Vec<_>>(), (1..=300).collect::<Vec<_>>());
    assert!(registry.minted_apart.is_empty(), "nothing is kept per instance");
    assert!(lifetimes.iter().all(|id| registry.was_minted(*id)));
    let reused = PlacedInstance { id: lifetimes[17], slot: 0, host: HostId("a".into()), interfaces: vec![] };
    assert_eq!(place(&mut registry, next(&mut index), vec![reused]), Err(Rejection::IdReused(lifetimes[17])));

    // Another cluster counts from a base of its own: it mints none of these.
    let (mut other, _) = deployed(1);
    other.set_serial_base(0x51f1_5e0d_2c4b_7a93);
    let theirs: Vec<InstanceId> = other.fresh_ids().take(300).collect();
    assert!(theirs.iter().all(|id| !lifetimes.contains(id) && !registry.was_minted(*id)));
    assert!(lifetimes.iter().all(|id| !other.was_minted(*id)));

    // An ID from elsewhere (drawn at random, as before serials) is kept apart, and refused again.
    let random = InstanceId::from_u64(0x3f9a_2c1d_0b7e_6a54);
    let placement = PlacedInstance { id: random, slot: 0, host: HostId("a".into()), interfaces: vec![] };
    place(&mut registry, next(&mut index), vec![placement.clone()]).unwrap();
    assert_eq!(registry.minted_apart.iter().copied().collect::<Vec<_>>(), [random]);
    assert_eq!(registry.fresh_ids().next().map(InstanceId::serial), Some(301), "the serial did not leap");
    assert_eq!(place(&mut registry, next(&mut index), vec![placement]), Err(Rejection::IdReused(random)));

    // A snapshot holds both, and a snapshot from before serials (its IDs under "minted") loads.
    let copy: Registry = serde_json::from_slice(&serde_json::to_vec(&registry).unwrap()).unwrap();
    assert!(copy.was_minted(lifetimes[299]) && copy.was_minted(random));
    assert!(!copy.was_minted(copy.fresh_ids().next().unwrap()));
    let mut old = serde_json::to_value(&registry).unwrap();
    old.as_object_mut().unwrap().remove("next_serial");
    let old: Registry = serde_json::from_value(old).unwrap();
    assert!(old.was_minted(random));
}

/// A plan placing instance 1 in slot 0 of `hello` on host `a`.
fn place_first_slot(registry: &Registry) -> Command {
    let generation = registry.deployment("hello").unwrap().generation;
    Command::Place { app: "hello".into(), generation, placements: vec![placed(1, 0, "a")], at_ms: 1 }
}

#[test]
fn retried_requests_apply_once() {
    let (mut registry, index) = deployed(3);
    let command = place_first_slot(&registry);
    let first = registry.apply(index + 1, &Request { request_id: "once".into(), command: command.clone() });
    let retry = registry.apply(index + 2, &Request { request_id: "once".into(), command });
    assert_eq!(first, retry);
    assert_eq!(registry.instances().count(), 1);
    // The retry's entry is applied all the same: a read barrier waiting for it must not stall.
    assert_eq!(registry.applied_index(), index + 2);
}

#[test]
fn request_ids_are_forgotten_after_the_window() {
    let mut registry = Registry::default();
    let command = Command::RegisterHost { host: host("a", 1, &[]) };
    registry.apply(1, &Request { request_id: "r".into(), command: command.clone() }).unwrap();
    registry.apply(2 + DEDUP_WINDOW, &Request { request_id: "other".into(), command }).unwrap();
    assert!(!registry.remembers("r"));
    assert!(registry.remembers("other"));
    assert_eq!(registry.recent.len(), 1);
}

#[test]
fn a_snapshot_that_kept_request_ids_themselves_still_answers_their_retries() {
    let (mut registry, index) = deployed(3);
    let command = place_first_slot(&registry);
    let first = registry.apply(index + 1, &Request { request_id: "once".into(), command: command.clone() });
    // The window as releases before keys wrote it: request ID -> [index, result], plus the order.
    let mut old = serde_json::to_value(&registry).unwrap();
    let window = old.as_object_mut().unwrap().remove("recent").unwrap();
    let by_id: serde_json::Map<String, serde_json::Value> = window
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let applied_at = entry[0].as_u64().unwrap();
            let id = if applied_at == index + 1 { "once".to_owned() } else { format!("earlier-{applied_at}") };
            (id, serde_json::json!([applied_at, entry[2]]))
        })
        .collect();
    let order: Vec<_> = by_id.iter().map(|(id, entry)| serde_json::json!([entry[0], id])).collect();
    old["recent_requests"] = by_id.into();
    old["request_order"] = order.into();
    let mut restored: Registry = serde_json::from_value(old).unwrap();
    restored.rebuild_derived();
    let retry = restored.apply(index + 2, &Request { request_id: "once".into(), command });
    assert_eq!(retry, first);
    assert_eq!(restored.instances().count(), 1);
}

fn report(id: u64, phase: Phase) -> InstanceReport {
    InstanceReport {
        id: InstanceId::from_u64(id),
        phase,
        restarts: 0,
        last_exit: None,
        message: String::new(),
        revision: 0,
        assignments_index: u64::MAX,
        health: Default::default(),
    }
}

fn reported(registry: &mut Registry, index: u64, host: &str, reports: Vec<InstanceReport>) {
    let command = Command::ReportInstances { host: HostId(host.into()), reports, at_ms: 0 };
    registry.apply(index, &request(index, command)).unwrap();
}

#[test]
fn scaling_down_stops_the_highest_slots() {
    let (mut registry, index) = deployed(3);
    place(&mut registry, index + 1, vec![placed(1, 0, "a"), placed(2, 1, "a"), placed(3, 2, "a")]).unwrap();
    registry.apply(index + 2, &request(index + 2, Command::Scale { app: "hello".into(), count: 1 })).unwrap();
    let running: Vec<u64> =
        registry.instances().filter(|i| i.desired == Desired::Running).map(|i| i.id.as_u64()).collect();
    assert_eq!(running, [1]);
    // The stopped ones hold their host's resources until they have ended.
    assert_eq!(registry.used(&HostId("a".into())).instances, 3);
    reported(&mut registry, index + 3, "a", vec![report(2, Phase::Stopped), report(3, Phase::Stopped)]);
    assert_eq!(registry.used(&HostId("a".into())).instances, 1);
}

#[test]
fn a_slot_is_not_filled_again_until_its_stopped_instance_has_ended() {
    // Scale 2 -> 1 -> 2: slot 1's old instance is still stopping when the slot is wanted again.
    let (mut registry, index) = deployed(2);
    place(&mut registry, index + 1, vec![placed(1, 0, "a"), placed(2, 1, "b")]).unwrap();
    reported(&mut registry, index + 2, "b", vec![report(2, Phase::Running)]);
    registry.apply(index + 3, &request(index + 3, Command::Scale { app: "hello".into(), count: 1 })).unwrap();
    registry.apply(index + 4, &request(index + 4, Command::Scale { app: "hello".into(), count: 2 })).unwrap();
    assert_eq!(registry.slot_filler("hello", "1", 1), Some(InstanceId::from_u64(2)), "held while it may run");
    assert_eq!(registry.empty_slots("hello", "1", 2).count(), 0);
    assert!(matches!(place(&mut registry, index + 5, vec![placed(3, 1, "a")]), Err(Rejection::SlotTaken { .. })));
    // The host says what it must stop is still stopping; then that it has stopped.
    assert!(registry.placed_on(&HostId("b".into())).any(|i| i.id == InstanceId::from_u64(2)));
    reported(&mut registry, index + 6, "b", vec![report(2, Phase::Stopping)]);
    assert_eq!(registry.slot_filler("hello", "1", 1), Some(InstanceId::from_u64(2)));
    reported(&mut registry, index + 7, "b", vec![report(2, Phase::Stopped)]);
    assert_eq!(registry.slot_filler("hello", "1", 1), None);
    assert!(registry.placed_on(&HostId("b".into())).next().is_none());
    place(&mut registry, index + 8, vec![placed(3, 1, "a")]).expect("the slot is free once its instance ended");
}

#[test]
fn a_host_version_seen_before_a_snapshot_load_is_not_one_after_it() {
    let (mut registry, index) = deployed(1);
    place(&mut registry, index + 1, vec![placed(1, 0, "a")]).unwrap();
    let host = HostId("a".into());
    let seen = registry.host_version(&host);
    assert!(registry.assignments_since(&host, seen).is_none(), "nothing changed since");
    // Loaded from a snapshot, the host's changes count the same (one placement), and the set
    // may differ from the one seen: a watcher must look again.
    let mut loaded: Registry = serde_json::from_slice(&serde_json::to_vec(&registry).unwrap()).unwrap();
    loaded.rebuild_derived();
    assert_ne!(loaded.host_version(&host), seen);
    assert_eq!(loaded.assignments_since(&host, seen).map(|(run, _)| run.len()), Some(1));
}

#[test]
fn a_stop_is_part_of_the_hosts_assignments_until_it_has_ended() {
    let (mut registry, index) = deployed(1);
    place(&mut registry, index + 1, vec![placed(1, 0, "a")]).unwrap();
    let host = HostId("a".into());
    let before = registry.host_version(&host);
    registry.apply(index + 2, &request(index + 2, Command::StopDeployment { app: "hello".into() })).unwrap();
    assert!(registry.host_version(&host) > before, "watchers look again: the host must stop it");
    let held: Vec<(u64, Desired)> = registry.placed_on(&host).map(|i| (i.id.as_u64(), i.desired)).collect();
    assert_eq!(held, [(1, Desired::Stopped)]);
}

#[test]
fn a_host_going_down_loses_its_instances_and_frees_their_slots() {
    let (mut registry, index) = deployed(2);
    place(&mut registry, index + 1, vec![placed(1, 0, "a"), placed(2, 1, "b")]).unwrap();
    let down = Command::SetHostStatus { host: HostId("b".into()), status: HostStatus::Down, at_ms: 50 };
    registry.apply(index + 2, &request(index + 2, down)).unwrap();
    let lost = registry.instance(InstanceId::from_u64(2)).unwrap();
    assert_eq!((lost.observed, lost.desired), (Phase::Lost, Desired::Stopped));
    assert_eq!(registry.slot_filler("hello", "1", 1), None);
    // A stale report from the returning host does not revive it.
    let report = report(lost.id.as_u64(), Phase::Running);
    registry
        .apply(
            index + 3,
            &request(index + 3, Command::ReportInstances { host: HostId("b".into()), reports: vec![report], at_ms: 0 }),
        )
        .unwrap();
    assert_eq!(registry.instance(InstanceId::from_u64(2)).unwrap().observed, Phase::Lost);
}

#[test]
fn derived_indexes_survive_a_snapshot_round_trip() {
    let (mut registry, index) = deployed(3);
    place(&mut registry, index + 1, vec![placed(1, 0, "a"), placed(2, 1, "b")]).unwrap();
    let json = serde_json::to_vec(&registry).unwrap();
    let mut restored: Registry = serde_json::from_slice(&json).unwrap();
    restored.rebuild_derived();
    assert_eq!(restored, registry);
}

#[test]
fn deploying_a_new_version_starts_a_rollout_beside_the_old_instances() {
    let (mut registry, index) = deployed(1);
    place(&mut registry, index + 1, vec![placed(1, 0, "a")]).unwrap();
    let registered = registry.apply(index + 2, &request(index + 2, Command::RegisterApp { version: app("2") }));
    assert_eq!(registered, Ok(Outcome::Registered { version: "2".into(), unchanged: false }));
    let deploy = |version: &str| Command::Deploy {
        spec: spec(version, 1),
        at_ms: 7,
        by: "alice".into(),
        cause: RevisionCause::Deploy,
    };
    registry.apply(index + 3, &request(index + 3, deploy("2"))).unwrap();
    // The old instance runs on until the rollout replaces it; version 2's slot is empty.
    assert_eq!(registry.instance(InstanceId::from_u64(1)).unwrap().desired, Desired::Running);
    assert_eq!(registry.slot_filler("hello", "1", 0), Some(InstanceId::from_u64(1)));
    assert_eq!(registry.empty_slots("hello", "2", 1).collect::<Vec<_>>(), [0]);
    let deployment = registry.deployment("hello").unwrap();
    assert_eq!(deployment.rollout.as_ref().map(|r| r.version.as_str()), Some("2"));
    let history: Vec<(&str, &str, &str)> =
        deployment.history.iter().map(|r| (r.version.as_str(), r.by.as_str(), r.outcome.name())).collect();
    assert_eq!(history, [("1", "test", "superseded"), ("2", "alice", "rolling")]);
    assert_eq!(registry.apply(index + 4, &request(index + 4, deploy("2"))), Ok(Outcome::Unchanged));
    assert_eq!(
        registry.apply(index + 5, &request(index + 5, deploy("9"))),
        Err(Rejection::UnknownVersion { app: "hello".into(), version: "9".into() })
    );
}

#[test]
fn the_same_label_with_other_contents_is_another_version_and_the_same_contents_are_unchanged() {
    let (mut registry, index) = deployed(1);
    let mut changed = app("1");
    changed.run.memory_mib = 96;
    let register = |version: &AppVersion| Command::RegisterApp { version: version.clone() };
    let digest = changed.digest().to_string();
    let second = registry.apply(index + 1, &request(index + 1, register(&changed)));
    assert_eq!(second, Ok(Outcome::Registered { version: format!("1#{}", &digest[..8]), unchanged: false }));
    let again = registry.apply(index + 2, &request(index + 2, register(&changed)));
    assert_eq!(again, Ok(Outcome::Registered { version: format!("1#{}", &digest[..8]), unchanged: true }));
    let first = registry.apply(index + 3, &request(index + 3, register(&app("1"))));
    assert_eq!(first, Ok(Outcome::Registered { version: "1".into(), unchanged: true }));
    let mut bad = app("1#2");
    bad.run.memory_mib = 1;
    assert!(matches!(registry.apply(index + 4, &request(index + 4, register(&bad))), Err(Rejection::Invalid(_))));
}

#[test]
fn an_exited_instance_asked_to_stop_holds_its_slot_until_it_is_stopped() {
    // It exited on its own (a restart is due) just as the deployment was stopped: its host may
    // restart it before it hears of the stop.
    let (mut registry, index) = deployed(1);
    place(&mut registry, index + 1, vec![placed(1, 0, "a")]).unwrap();
    reported(&mut registry, index + 2, "a", vec![report(1, Phase::Exited)]);
    registry.apply(index + 3, &request(index + 3, Command::StopDeployment { app: "hello".into() })).unwrap();
    assert_eq!(registry.slot_filler("hello", "1", 0), Some(InstanceId::from_u64(1)));
    reported(&mut registry, index + 4, "a", vec![report(1, Phase::Stopped)]);
    assert_eq!(registry.slot_filler("hello", "1", 0), None);
}

#[test]
fn a_report_older_than_one_applied_is_ignored() {
    let (mut registry, index) = deployed(1);
    place(&mut registry, index + 1, vec![placed(1, 0, "a")]).unwrap();
    let versioned = |phase, revision| InstanceReport { revision, ..report(1, phase) };
    reported(&mut registry, index + 2, "a", vec![versioned(Phase::Running, 5)]);
    // A report from before (retried after a timeout) lands late.
    reported(&mut registry, index + 3, "a", vec![versioned(Phase::Exited, 3)]);
    assert_eq!(registry.instance(InstanceId::from_u64(1)).unwrap().observed, Phase::Running);
    reported(&mut registry, index + 4, "a", vec![versioned(Phase::Stopping, 6)]);
    assert_eq!(registry.instance(InstanceId::from_u64(1)).unwrap().observed, Phase::Stopping);
}

#[test]
fn an_end_reported_before_the_host_heard_of_the_stop_does_not_free_the_slot() {
    // Fenced, the host stopped the instance; meanwhile the deployment was scaled down. The
    // host may still act on an older assignment that runs it: only an end reported after it
    // applied assignments that say stop frees the slot.
    let (mut registry, index) = deployed(1);
    place(&mut registry, index + 1, vec![placed(1, 0, "a")]).unwrap();
    registry.apply(index + 2, &request(index + 2, Command::Scale { app: "hello".into(), count: 0 })).unwrap();
    let stopped_at = index + 2;
    let early = InstanceReport { assignments_index: stopped_at - 1, revision: 2, ..report(1, Phase::Stopped) };
    reported(&mut registry, index + 3, "a", vec![early]);
    assert_eq!(registry.slot_filler("hello", "1", 0), Some(InstanceId::from_u64(1)), "the stop was not heard yet");
    let heard = InstanceReport { assignments_index: stopped_at, revision: 3, ..report(1, Phase::Stopped) };
    reported(&mut registry, index + 4, "a", vec![heard]);
    assert_eq!(registry.slot_filler("hello", "1", 0), None);
}

/// A registry with a /29 network `service` (pool .2-.6, gateway .1) that hosts a and b carry,
/// and the app deployed on it with `count` slots.
fn networked(count: u32) -> (Registry, u64) {
    let network = Network {
        name: "service".into(),
        subnet: "10.88.0.0/29".parse().unwrap(),
        gateway: Some("10.88.0.1".parse().unwrap()),
        range: None,
        dns: vec![],
    };
    let carrying = |name: &str| Host { networks: ["service".to_owned()].into(), ..host(name, 4096, &[Target::Unix]) };
    let mut version = app("1");
    version.run.networks = vec!["service".into()];
    version.run.boot_args = vec!["--ipv4={net.service.cidr}".into(), "slot={instance.slot}".into()];
    let commands = [
        Command::CreateNetwork { network },
        Command::RegisterHost { host: carrying("a") },
        Command::RegisterHost { host: carrying("b") },
        Command::RegisterApp { version },
        Command::Deploy {
            spec: spec("1", count),
            at_ms: 5,
            by: "test".into(),
            cause: crate::registry::RevisionCause::Deploy,
        },
    ];
    setup(commands)
}

/// Placed with an interface on `service` (the /29 of [`networked`]) at `address`.
fn placed_at(id: u64, slot: u32, host: &str, address: &str) -> PlacedInstance {
    let interface = crate::network::Interface {
        network: "service".into(),
        address: crate::network::Ipv4Cidr { address: address.parse().unwrap(), prefix: 29 },
        gateway: Some("10.88.0.1".parse().unwrap()),
        mac: MacAddress::for_instance(InstanceId::from_u64(id), 0),
    };
    PlacedInstance { interfaces: vec![interface], ..placed(id, slot, host) }
}

#[test]
fn placed_interfaces_are_checked_and_their_addresses_held() {
    let (mut registry, index) = networked(3);
    let first = placed_at(1, 0, "a", "10.88.0.2");
    place(&mut registry, index + 1, vec![first]).unwrap();
    assert_eq!(registry.address_holder("service", "10.88.0.2".parse().unwrap()), Some(InstanceId::from_u64(1)));
    let taken = place(&mut registry, index + 2, vec![placed_at(2, 1, "b", "10.88.0.2")]);
    assert!(matches!(taken, Err(Rejection::AddressTaken { .. })), "{taken:?}");
    let twice = vec![placed_at(2, 1, "a", "10.88.0.3"), placed_at(3, 2, "b", "10.88.0.3")];
    assert!(matches!(place(&mut registry, index + 3, twice), Err(Rejection::Invalid(_))));
    for outside in ["10.88.0.1", "10.88.0.7", "10.89.0.2"] {
        let result = place(&mut registry, index + 4, vec![placed_at(4, 1, "a", outside)]);
        assert!(matches!(result, Err(Rejection::Invalid(_))), "{outside}: {result:?}");
    }
    let mut wrong_mac = placed_at(5, 1, "a", "10.88.0.4");
    wrong_mac.interfaces[0].mac = MacAddress([2, 0, 0, 0, 0, 9]);
    assert!(place(&mut registry, index + 5, vec![wrong_mac]).is_err());
    assert!(place(&mut registry, index + 6, vec![placed(6, 1, "a")]).is_err(), "an interface per network");
    // What the host is told to run has its templates filled in.
    let (run, _) = registry.assignments(&HostId("a".into()));
    assert_eq!(run[0].1.run.boot_args, ["--ipv4=10.88.0.2/29", "slot=0"]);
    assert_eq!(run[0].1.interfaces[0].mac.to_string(), "02:00:00:00:01:00");
}

#[test]
fn an_address_is_free_again_only_once_its_instance_is_known_to_have_ended() {
    let (mut registry, index) = networked(2);
    place(&mut registry, index + 1, vec![placed_at(1, 0, "a", "10.88.0.2")]).unwrap();
    let address = "10.88.0.2".parse().unwrap();
    reported(&mut registry, index + 2, "a", vec![report(1, Phase::Running)]);
    registry.apply(index + 3, &request(index + 3, Command::StopDeployment { app: "hello".into() })).unwrap();
    assert!(registry.address_holder("service", address).is_some(), "stopping is not stopped");
    reported(&mut registry, index + 4, "a", vec![report(1, Phase::Stopped)]);
    assert_eq!(registry.address_holder("service", address), None);

    // A host that stops answering keeps its instances' addresses until it is declared down.
    registry
        .apply(
            index + 5,
            &request(
                index + 5,
                Command::Deploy {
                    spec: spec("1", 1),
                    at_ms: 6,
                    by: "test".into(),
                    cause: crate::registry::RevisionCause::Deploy,
                },
            ),
        )
        .unwrap();
    place(&mut registry, index + 6, vec![placed_at(2, 0, "b", "10.88.0.2")]).unwrap();
    let stop = Command::StopInstances { ids: vec![InstanceId::from_u64(2)], reason: "replaced".into() };
    registry.apply(index + 7, &request(index + 7, stop)).unwrap();
    assert!(registry.address_holder("service", address).is_some(), "asked to stop, not known to have");
    let down = Command::SetHostStatus { host: HostId("b".into()), status: HostStatus::Down, at_ms: 9 };
    registry.apply(index + 8, &request(index + 8, down)).unwrap();
    assert_eq!(registry.address_holder("service", address), None);
    // The same after a snapshot is loaded.
    let mut copy: Registry = serde_json::from_str(&serde_json::to_string(&registry).unwrap()).unwrap();
    copy.rebuild_derived();
    assert_eq!((copy.addresses_held("service"), copy.address_holder("service", address)), (0, None));
}

#[test]
fn networks_are_declared_once_and_kept_while_used() {
    let (mut registry, index) = networked(1);
    let mut same = registry.network("service").unwrap().clone();
    let create = Command::CreateNetwork { network: same.clone() };
    assert_eq!(registry.apply(index + 1, &request(index + 1, create)), Ok(Outcome::Done));
    same.gateway = Some("10.88.0.6".parse().unwrap());
    let changed = Command::CreateNetwork { network: same };
    assert_eq!(
        registry.apply(index + 2, &request(index + 2, changed)),
        Err(Rejection::NetworkExists("service".into()))
    );
    let remove = |n: u64| request(n, Command::RemoveNetwork { name: "service".into() });
    assert!(matches!(registry.apply(index + 3, &remove(index + 3)), Err(Rejection::NetworkInUse { .. })));
    registry.apply(index + 4, &request(index + 4, Command::StopDeployment { app: "hello".into() })).unwrap();
    assert_eq!(registry.apply(index + 5, &remove(index + 5)), Ok(Outcome::Done));
    let redeploy = Command::Deploy {
        spec: spec("1", 1),
        at_ms: 7,
        by: "test".into(),
        cause: crate::registry::RevisionCause::Deploy,
    };
    assert_eq!(
        registry.apply(index + 6, &request(index + 6, redeploy)),
        Err(Rejection::UnknownNetwork("service".into()))
    );
    let mut bad = app("2");
    bad.run.boot_args = vec!["--ipv4={net.other.cidr}".into()];
    let register = Command::RegisterApp { version: bad };
    assert!(matches!(registry.apply(index + 7, &request(index + 7, register)), Err(Rejection::Invalid(_))));
}

#[test]
fn a_target_without_interfaces_is_refused_for_a_version_with_networks() {
    let (mut registry, index) = networked(1);
    let mut version = app("2");
    version.artifacts.insert(Target::Rpi, Digest::of(b"rpi"));
    version.run.networks = vec!["service".into()];
    let register = Command::RegisterApp { version };
    registry.apply(index + 1, &request(index + 1, register)).unwrap();
    let deploy = Command::Deploy {
        spec: DeploymentSpec { target: Target::Rpi, ..spec("2", 1) },
        at_ms: 7,
        by: "test".into(),
        cause: crate::registry::RevisionCause::Deploy,
    };
    let refusal = registry.apply(index + 2, &request(index + 2, deploy)).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "target `rpi` cannot give instances network interfaces yet, and this version has [[network]] service; \
         deploy it to another target, or without [[network]]"
    );
    assert_eq!(registry.deployment("hello").unwrap().spec.version, "1", "the running deployment is untouched");
}

/// The events each entry's application noted, as `kind: text` lines.
fn events_of(registry: &mut Registry) -> Vec<String> {
    registry.take_events().iter().map(|event| format!("{}: {event}", event.name())).collect()
}

#[test]
fn applying_an_entry_tells_what_it_changed_as_events() {
    let mut registry = Registry::default();
    registry.apply(1, &request(1, Command::RegisterHost { host: host("a", 256, &[Target::Unix]) })).unwrap();
    assert_eq!(events_of(&mut registry), ["host.registered: host a registered at a:7070"]);
    registry.apply(2, &request(2, Command::RegisterApp { version: app("1") })).unwrap();
    assert!(events_of(&mut registry).is_empty(), "registering a version changes nothing that runs");
    let deploy = Command::Deploy { spec: spec("1", 1), at_ms: 5, by: "alice".into(), cause: RevisionCause::Deploy };
    registry.apply(3, &request(3, deploy)).unwrap();
    assert_eq!(events_of(&mut registry), ["deployment.deployed: hello version 1 deployed ×1 by alice"]);
    place(&mut registry, 4, vec![placed(1, 0, "a")]).unwrap();
    let id = InstanceId::from_u64(1);
    assert_eq!(events_of(&mut registry), [format!("instance.placed: hello {id} (version 1, slot 0) placed on a")]);

    let running = InstanceReport { health: Health::Healthy, revision: 1, ..report(1, Phase::Running) };
    reported(&mut registry, 5, "a", vec![running.clone()]);
    assert_eq!(
        events_of(&mut registry),
        [format!("instance.phase: hello {id} on a: running"), format!("instance.health: hello {id} on a is healthy")]
    );
    reported(&mut registry, 6, "a", vec![running]);
    assert!(events_of(&mut registry).is_empty(), "the same state again is no event");

    let down = Command::SetHostStatus { host: HostId("a".into()), status: HostStatus::Down, at_ms: 50 };
    registry.apply(7, &request(7, down)).unwrap();
    assert_eq!(
        events_of(&mut registry),
        [
            "host.down: host a is down: its instances are lost".to_owned(),
            format!("instance.stopping: hello {id} on a asked to stop: host a is down"),
            format!("instance.phase: hello {id} on a: lost (host a is down)"),
        ]
    );
    // A retried request applies nothing again, so it tells nothing.
    registry.apply(8, &request(7, Command::Scale { app: "hello".into(), count: 3 })).unwrap();
    assert!(events_of(&mut registry).is_empty());
    registry.apply(9, &request(9, Command::StopDeployment { app: "hello".into() })).unwrap();
    assert_eq!(events_of(&mut registry), ["deployment.stopped: hello stopped"]);
}
