//! The scheduler: which host fills each empty slot of a deployment.
//!
//! Pure: an immutable registry in, a plan out. Feasibility (host up, backend, labels, networks,
//! memory, vCPUs, instance slots; a provider's machine size and limit), then a choice among feasible
//! hosts: agents' hosts before providers (a deployment bursts to a provider only when no host can
//! take the instance, unless it asks for the provider by name), then the host running the fewest
//! instances of this deployment (so a deployment spreads over hosts), then by the placement
//! policy: `binpack` prefers the host that will be fullest, `spread` the emptiest. Ties go to
//! the smaller host ID, so the same registry always gives the same plan. Each placed instance
//! gets the next free address of each of its networks' pools, round the pool from after the last
//! one given (so a just-released address is the last to be reused); a pool that runs dry leaves the
//! remaining slots unplaced with that reason. Slots that fit nowhere
//! are counted with why, for the status to show. The leader commits a plan through raft, where
//! applying it re-checks every placement against the registry as it is then.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use crate::ids::InstanceId;
use crate::instance::Desired;
use crate::network::MacAddress;
use crate::registry::{Demand, HostId, Infeasible, PlacedInstance, Placement, Registry, Resources, feasible};
use crate::rollout;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub app: String,
    /// The deployment generation the plan was made for.
    pub generation: u64,
    pub placements: Vec<PlacedInstance>,
    /// Empty slots left without a host.
    pub unplaced: u32,
    /// Why hosts were passed over, and how many hosts gave each reason.
    pub reasons: BTreeMap<Infeasible, u32>,
}

impl Plan {
    /// "3 hosts lack backend xen, 2 hosts lack memory".
    pub fn explain(&self) -> String {
        if self.reasons.is_empty() {
            return "no hosts are registered".into();
        }
        let parts: Vec<String> = self.reasons.iter().map(|(reason, hosts)| reason.describe(*hosts)).collect();
        parts.join(", ")
    }

    /// The unplaced slots by the kind of reason that holds them ([`Infeasible::kind`]): slots
    /// given up on count as `gave_up`; the rest go to a cluster-wide reason if there is one,
    /// else to the reason the most hosts gave (ties to the first in order), else `no_hosts`.
    /// A slot counts once, so the values add up to `unplaced`.
    pub fn unplaced_by_kind(&self) -> BTreeMap<&'static str, u32> {
        let mut kinds = BTreeMap::new();
        if self.unplaced == 0 {
            return kinds;
        }
        let gave_up = self.reasons.iter().find(|(r, _)| matches!(r, Infeasible::GaveUp(_))).map_or(0, |(_, n)| *n);
        let gave_up = gave_up.min(self.unplaced);
        if gave_up > 0 {
            kinds.insert("gave_up", gave_up);
        }
        let rest = self.unplaced - gave_up;
        if rest > 0 {
            let others = || self.reasons.iter().filter(|(r, _)| !matches!(r, Infeasible::GaveUp(_)));
            let wide = others().find(|(r, _)| r.is_cluster_wide());
            // The most hosts, and among equals the first: `max_by_key` keeps the last maximum.
            let most = others().rev().max_by_key(|(_, hosts)| **hosts);
            let kind = wide.or(most).map_or("no_hosts", |(reason, _)| reason.kind());
            *kinds.entry(kind).or_default() += rest;
        }
        kinds
    }
}

/// A feasible host in the heap; the greatest key is the best choice.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    /// Agents' hosts before providers: a deployment bursts to a provider's machines only when
    /// no host can take its instance.
    on_premises: bool,
    siblings: Reverse<u32>,
    fit: i64,
    host: Reverse<HostId>,
}

/// Plans up to `limit` placements for the empty slots of `app`'s deployment at `now_ms`. `mint`
/// supplies fresh instance IDs. `None` if the app is not deployed or its deployment is stopped.
///
/// A slot counts as empty when no instance of the deployment's version fills it. Beyond host
/// feasibility, three things hold a slot back: the apps the deployment comes `after` are not all
/// healthy (every slot then waits, and says so); the slot's outdated instance waits its turn
/// under the update policy ([`rollout::progress`]); the slot failed for good before and waits
/// its reschedule delay (its failed hosts are avoided while others fit), or failed as often as
/// the reschedule policy allows (then it stays empty, and says so).
pub fn plan(
    registry: &Registry,
    app: &str,
    limit: usize,
    now_ms: u64,
    mint: &mut dyn FnMut() -> InstanceId,
) -> Option<Plan> {
    let deployment = registry.deployment(app).filter(|d| d.desired == Desired::Running)?;
    let spec = &deployment.spec;
    let version = registry.app_version(&spec.app, &spec.version)?;
    let need = Resources { memory_mib: u64::from(version.run.memory_mib), vcpus: version.run.vcpus, instances: 1 };
    let empty_count = registry.empty_slot_count(app, &spec.version, spec.count);
    let mut plan = Plan {
        app: app.to_owned(),
        generation: deployment.generation,
        placements: Vec::new(),
        unplaced: 0,
        reasons: BTreeMap::new(),
    };
    if empty_count == 0 {
        return Some(plan);
    }
    if let Some(dependency) = spec.after.iter().find(|dependency| !is_healthy(registry, dependency)) {
        plan.unplaced = empty_count;
        plan.reasons.insert(Infeasible::Waiting(dependency.clone()), 1);
        return Some(plan);
    }
    let networks = &version.run.networks;
    let mut pools = Vec::with_capacity(networks.len());
    for name in networks {
        let Some(network) = registry.network(name) else {
            plan.unplaced = empty_count;
            plan.reasons.insert(Infeasible::UnknownNetwork(name.clone()), 1);
            return Some(plan);
        };
        let cursor = registry.address_cursor(name);
        let free = network.free_addresses_from(cursor, move |address| registry.address_holder(name, address).is_some());
        pools.push((network, free.peekable()));
    }

    let fit = |host: &crate::registry::Host, used: Resources| -> i64 {
        let capacity = host.capacity.memory_mib.max(1) as i64;
        let fill = (used.memory_mib as i64).saturating_mul(1_000_000) / capacity;
        match spec.placement {
            Placement::Binpack => fill,
            Placement::Spread => -fill,
        }
    };
    let demand = Demand {
        target: spec.target,
        need,
        constraints: &version.constraints,
        networks,
        provider: spec.provider.as_deref(),
    };
    let mut planned: BTreeMap<HostId, Resources> = BTreeMap::new();
    let mut heap = BinaryHeap::new();
    let fillers = registry.slot_fillers(app, &spec.version);
    for host in registry.hosts() {
        let used = registry.used(&host.id).plus(need);
        match feasible(host, used, &demand) {
            Ok(()) => {
                // Instances of the version filling slots: the ones a rollout replaces, and
                // those migrating, are on their way out.
                let siblings = fillers.map_or(0, |f| f.on(&host.id));
                heap.push(Candidate {
                    on_premises: host.provider.is_none(),
                    siblings: Reverse(siblings),
                    fit: fit(host, used),
                    host: Reverse(host.id.clone()),
                });
            }
            Err(reason) => *plan.reasons.entry(reason).or_default() += 1,
        }
    }

    let progress = rollout::progress(registry, deployment, now_ms);
    let mut replacements_allowed = progress.replacements_allowed;
    let policy = spec.reschedule;
    let mut gave_up = 0u32;
    // Whether a slot waits (its turn in a rollout, its reschedule delay) or was given up on.
    let mut held_back = |slot: u32, replacements_allowed: u32| -> bool {
        if progress.outdated_slots.contains(&slot) && replacements_allowed == 0 {
            return true;
        }
        match deployment.failures.get(&slot) {
            Some(failures) if failures.attempts >= policy.attempts => {
                gave_up += 1;
                true
            }
            Some(failures) => now_ms < failures.last_failed_at_ms.saturating_add(policy.delay_after(failures.attempts)),
            None => false,
        }
    };
    let mut slots = registry.empty_slots(app, &spec.version, spec.count);
    let mut considered = 0u32;
    let mut pending = slots.next();
    let mut out_of_hosts = false;
    while let Some(slot) = pending {
        if plan.placements.len() == limit {
            break;
        }
        if held_back(slot, replacements_allowed) {
            considered += 1;
            pending = slots.next();
            continue;
        }
        let avoid = deployment.failures.get(&slot).map(|f| &f.hosts);
        let Some(Candidate { on_premises, siblings, host: Reverse(host_id), .. }) = pop_avoiding(&mut heap, avoid)
        else {
            out_of_hosts = true;
            break;
        };
        let host = registry.host(&host_id).expect("candidates are registered hosts");
        let extra = planned.get(&host_id).copied().unwrap_or_default().plus(need);
        let used = registry.used(&host_id).plus(extra);
        if let Err(reason) = feasible(host, used, &demand) {
            // Full now, with this plan's earlier placements on it: drop it, try the slot again.
            *plan.reasons.entry(reason).or_default() += 1;
            continue;
        }
        if let Some(network) = pools.iter_mut().find_map(|(network, free)| free.peek().is_none().then_some(*network)) {
            plan.reasons.insert(Infeasible::NoAddress(network.name.clone()), 1);
            out_of_hosts = true;
            break;
        }
        let id = mint();
        let interfaces = pools
            .iter_mut()
            .enumerate()
            .map(|(index, (network, free))| {
                let address = free.next().expect("peeked above");
                network.interface(address, MacAddress::for_instance(id, index as u8))
            })
            .collect();
        plan.placements.push(PlacedInstance { id, slot, host: host_id.clone(), interfaces });
        if progress.outdated_slots.contains(&slot) {
            replacements_allowed = replacements_allowed.saturating_sub(1);
        }
        considered += 1;
        planned.insert(host_id.clone(), extra);
        let next_used = used.plus(need);
        heap.push(Candidate {
            on_premises,
            siblings: Reverse(siblings.0 + 1),
            fit: fit(host, next_used),
            host: Reverse(host_id),
        });
        pending = slots.next();
    }
    if out_of_hosts {
        // Every slot not yet considered is unplaced, but for those that would wait anyway.
        let mut waiting_rest = 0;
        if !progress.outdated_slots.is_empty() || !deployment.failures.is_empty() {
            for slot in std::iter::once(pending).flatten().chain(slots) {
                if held_back(slot, replacements_allowed) {
                    waiting_rest += 1;
                } else if progress.outdated_slots.contains(&slot) {
                    replacements_allowed = replacements_allowed.saturating_sub(1);
                }
            }
        }
        plan.unplaced = empty_count - considered - waiting_rest + gave_up;
    } else {
        plan.unplaced = gave_up;
    }
    if gave_up > 0 {
        plan.reasons.insert(Infeasible::GaveUp(policy.attempts), gave_up);
    }
    Some(plan)
}

/// The best candidate not in `avoid`, or the best of all if every candidate is to be avoided;
/// the others go back in the heap.
fn pop_avoiding(heap: &mut BinaryHeap<Candidate>, avoid: Option<&BTreeSet<HostId>>) -> Option<Candidate> {
    let Some(avoid) = avoid.filter(|hosts| !hosts.is_empty()) else { return heap.pop() };
    let mut passed_over = Vec::new();
    let chosen = loop {
        match heap.pop() {
            Some(candidate) if avoid.contains(&candidate.host.0) => passed_over.push(candidate),
            Some(candidate) => break Some(candidate),
            None => break None,
        }
    };
    let mut passed_over = passed_over.into_iter();
    let chosen = chosen.or_else(|| passed_over.next());
    heap.extend(passed_over);
    chosen
}

/// Whether an app's deployment runs with as many healthy instances as its count (running, for
/// a version without a health check), of whichever versions: one rolling out serves throughout.
pub fn is_healthy(registry: &Registry, app: &str) -> bool {
    let Some(deployment) = registry.deployment(app).filter(|d| d.desired == Desired::Running) else {
        return false;
    };
    let healthy = registry.live_of(app).filter(|i| i.healthy_since_ms.is_some()).count();
    healthy >= deployment.spec.count as usize
}

/// Plans every running deployment that has empty slots, up to `limit` placements each; only
/// plans that place something.
pub fn plan_round(registry: &Registry, limit: usize, now_ms: u64, mint: &mut dyn FnMut() -> InstanceId) -> Vec<Plan> {
    let apps: Vec<&str> =
        registry.deployments().filter(|d| d.desired == Desired::Running).map(|d| d.spec.app.as_str()).collect();
    apps.into_iter()
        .filter_map(|app| plan(registry, app, limit, now_ms, mint))
        .filter(|plan| !plan.placements.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::registry::{AppVersion, Command, DeploymentSpec, Host, HostStatus, Request};
    use crate::spec::RunPolicy;
    use crate::target::Target;

    fn host(name: &str, memory_mib: u64, backends: &[Target]) -> Host {
        Host {
            id: HostId(name.into()),
            address: format!("{name}:1"),
            backends: backends.iter().copied().collect(),
            capacity: Resources { memory_mib, vcpus: 64, instances: 64 },
            labels: BTreeMap::new(),
            networks: Default::default(),
            status: HostStatus::Up,
            registered_at_ms: 0,
            status_changed_at_ms: 0,
            drain: None,
            provider: None,
        }
    }

    fn deploy(spec: DeploymentSpec) -> Command {
        Command::Deploy { spec, at_ms: 0, by: "test".into(), cause: crate::registry::RevisionCause::Deploy }
    }

    struct World {
        registry: Registry,
        index: u64,
        next_id: u64,
    }

    impl World {
        fn new(hosts: &[Host]) -> Self {
            let mut world = Self { registry: Registry::default(), index: 0, next_id: 1 };
            for host in hosts {
                world.apply(Command::RegisterHost { host: host.clone() });
            }
            world.apply(Command::RegisterApp {
                version: AppVersion {
                    app: "hello".into(),
                    version: "1".into(),
                    artifacts: [
                        (Target::Unix, Digest::of(b"u")),
                        (Target::Xen, Digest::of(b"x")),
                        (Target::Kvm, Digest::of(b"k")),
                    ]
                    .into(),
                    files: vec![],
                    run: RunPolicy { memory_mib: 100, ..RunPolicy::default() },
                    constraints: BTreeMap::new(),
                },
            });
            world
        }

        fn apply(&mut self, command: Command) {
            self.index += 1;
            let request = Request { request_id: format!("r{}", self.index), command };
            self.registry.apply(self.index, &request).expect("applies");
        }

        fn deploy(&mut self, target: Target, count: u32, placement: Placement) {
            let spec = DeploymentSpec { placement, ..DeploymentSpec::new("hello", "1", target, count) };
            self.apply(deploy(spec));
        }

        /// Plans and commits until nothing more can be placed; returns the last plan.
        fn schedule(&mut self) -> Plan {
            loop {
                let mut next = self.next_id;
                let plan = plan(&self.registry, "hello", 2, 0, &mut || {
                    next += 1;
                    InstanceId::from_u64(next)
                })
                .expect("deployed");
                self.next_id = next;
                if plan.placements.is_empty() {
                    return plan;
                }
                self.apply(Command::Place {
                    app: plan.app.clone(),
                    generation: plan.generation,
                    placements: plan.placements,
                    at_ms: 0,
                });
            }
        }

        fn per_host(&self) -> BTreeMap<String, usize> {
            self.registry.hosts().map(|h| (h.id.0.clone(), self.registry.placed_on(&h.id).count())).collect()
        }
    }

    #[test]
    fn one_deployment_spreads_evenly_over_equal_hosts() {
        let hosts: Vec<Host> = ["a", "b", "c"].iter().map(|n| host(n, 10_000, &[Target::Unix])).collect();
        let mut world = World::new(&hosts);
        world.deploy(Target::Unix, 6, Placement::Binpack);
        let last = world.schedule();
        assert_eq!(last.unplaced, 0);
        assert_eq!(world.per_host(), [("a".into(), 2), ("b".into(), 2), ("c".into(), 2)].into());
    }

    #[test]
    fn binpack_fills_the_fuller_host_and_spread_the_emptier() {
        // b already holds a big instance of another deployment; equal sibling counts then decide
        // by fill.
        let hosts = [host("a", 1_000, &[Target::Unix]), host("b", 1_000, &[Target::Unix])];
        for (placement, expected) in [(Placement::Binpack, "b"), (Placement::Spread, "a")] {
            let mut world = World::new(&hosts);
            let mut other = world.registry.app_version("hello", "1").unwrap().clone();
            other.app = "other".into();
            world.apply(Command::RegisterApp { version: other });
            let spec = DeploymentSpec { placement, ..DeploymentSpec::new("other", "1", Target::Unix, 1) };
            world.apply(deploy(spec));
            let place =
                PlacedInstance { id: InstanceId::from_u64(999), slot: 0, host: HostId("b".into()), interfaces: vec![] };
            world.apply(Command::Place { app: "other".into(), generation: 1, placements: vec![place], at_ms: 0 });
            world.deploy(Target::Unix, 1, placement);
            world.schedule();
            let chosen = world.registry.instances().find(|i| i.app == "hello").unwrap().host.0.clone();
            assert_eq!(chosen, expected, "{placement:?}");
        }
    }

    #[test]
    fn unplaceable_slots_are_counted_with_reasons() {
        let hosts = [
            host("a", 250, &[Target::Xen]),
            host("b", 10_000, &[Target::Unix]),
            host("c", 10_000, &[Target::Unix]),
            host("d", 10_000, &[Target::Unix]),
        ];
        let mut world = World::new(&hosts);
        world.deploy(Target::Xen, 4, Placement::Binpack);
        let last = world.schedule();
        assert_eq!(world.per_host()["a"], 2, "a fits two 100 MiB instances");
        assert_eq!(last.unplaced, 2);
        assert_eq!(last.explain(), "3 hosts lack backend xen, 1 host lacks memory");
    }

    #[test]
    fn plans_are_deterministic_and_respect_the_limit() {
        let hosts: Vec<Host> = (0..5).map(|i| host(&format!("h{i}"), 10_000, &[Target::Unix])).collect();
        let mut world = World::new(&hosts);
        world.deploy(Target::Unix, 50, Placement::Spread);
        let ids = || {
            let mut n = 0;
            move || {
                n += 1;
                InstanceId::from_u64(n)
            }
        };
        let first = plan(&world.registry, "hello", 10, 0, &mut ids()).unwrap();
        let second = plan(&world.registry, "hello", 10, 0, &mut ids()).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.placements.len(), 10);
        assert_eq!(first.unplaced, 0);
    }

    #[test]
    fn a_huge_count_costs_only_what_is_placed() {
        // Billions of slots, one tiny host: the plan places what fits and counts the rest
        // without walking or collecting every slot.
        let mut world = World::new(&[host("a", 250, &[Target::Unix])]);
        world.deploy(Target::Unix, u32::MAX, Placement::Binpack);
        let plan = plan(&world.registry, "hello", 10, 0, &mut || InstanceId::from_u64(7)).unwrap();
        assert_eq!(plan.placements.iter().map(|p| p.slot).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(plan.unplaced, u32::MAX - 2);
    }

    #[test]
    fn empty_slots_skip_the_filled_ones() {
        let mut world = World::new(&[host("a", 10_000, &[Target::Unix])]);
        world.deploy(Target::Unix, 6, Placement::Binpack);
        let placements = [1, 2, 4].map(|slot| PlacedInstance {
            id: InstanceId::from_u64(100 + u64::from(slot)),
            slot,
            host: HostId("a".into()),
            interfaces: vec![],
        });
        world.apply(Command::Place { app: "hello".into(), generation: 1, placements: placements.into(), at_ms: 0 });
        assert_eq!(world.registry.empty_slots("hello", "1", 6).collect::<Vec<_>>(), [0, 3, 5]);
        assert_eq!(world.registry.empty_slots("hello", "1", 3).collect::<Vec<_>>(), [0]);
        assert_eq!(world.registry.empty_slot_count("hello", "1", 6), 3);
    }

    #[test]
    fn stopped_or_unknown_deployments_plan_nothing() {
        let mut world = World::new(&[host("a", 1_000, &[Target::Unix])]);
        assert!(plan(&world.registry, "hello", 10, 0, &mut || InstanceId::from_u64(1)).is_none());
        world.deploy(Target::Unix, 1, Placement::Binpack);
        world.apply(Command::StopDeployment { app: "hello".into() });
        assert!(plan(&world.registry, "hello", 10, 0, &mut || InstanceId::from_u64(1)).is_none());
    }

    #[test]
    fn instances_get_distinct_addresses_until_the_pool_runs_dry() {
        let carrying = Host { networks: ["service".to_owned()].into(), ..host("a", 10_000, &[Target::Unix]) };
        let mut world = World::new(&[carrying, host("b", 10_000, &[Target::Unix])]);
        let network = crate::network::Network {
            name: "service".into(),
            subnet: "10.88.0.0/29".parse().unwrap(),
            gateway: Some("10.88.0.1".parse().unwrap()),
            range: None,
            dns: vec![],
        };
        world.apply(Command::CreateNetwork { network });
        let mut version = world.registry.app_version("hello", "1").unwrap().clone();
        version.version = "2".into();
        version.run.networks = vec!["service".into()];
        world.apply(Command::RegisterApp { version });
        let spec =
            DeploymentSpec { placement: Placement::Spread, ..DeploymentSpec::new("hello", "2", Target::Unix, 7) };
        world.apply(deploy(spec));
        let last = world.schedule();
        let addresses: std::collections::BTreeSet<String> =
            world.registry.instances().map(|i| i.interfaces[0].address.to_string()).collect();
        assert_eq!(addresses.len(), 5, "{addresses:?}");
        assert!(world.registry.instances().all(|i| i.host.0 == "a"), "only a carries the network");
        assert_eq!(last.unplaced, 2);
        assert_eq!(last.explain(), "1 host lacks network service, network service has no free address");
    }

    fn plan_with(unplaced: u32, reasons: &[(Infeasible, u32)]) -> Plan {
        Plan {
            app: "a".into(),
            generation: 1,
            placements: Vec::new(),
            unplaced,
            reasons: reasons.iter().cloned().collect(),
        }
    }

    #[test]
    fn unplaced_slots_count_once_under_the_kind_that_holds_them() {
        assert!(plan_with(0, &[(Infeasible::LacksMemory, 3)]).unplaced_by_kind().is_empty());
        let none = plan_with(2, &[]).unplaced_by_kind();
        assert_eq!(none, BTreeMap::from([("no_hosts", 2)]));
        // The reason most hosts gave; between equals the first in order.
        let hosts = plan_with(4, &[(Infeasible::Down, 1), (Infeasible::LacksMemory, 2), (Infeasible::Full, 2)]);
        assert_eq!(hosts.unplaced_by_kind(), BTreeMap::from([("lacks_memory", 4)]));
        // A cluster-wide reason holds every slot, however many hosts gave others.
        let pool = plan_with(3, &[(Infeasible::LacksMemory, 5), (Infeasible::NoAddress("service".into()), 1)]);
        assert_eq!(pool.unplaced_by_kind(), BTreeMap::from([("no_address", 3)]));
        // Slots given up on are theirs; the rest go to the hosts' reason.
        let gave_up = plan_with(3, &[(Infeasible::GaveUp(5), 1), (Infeasible::LacksBackend(Target::Xen), 2)]);
        assert_eq!(gave_up.unplaced_by_kind(), BTreeMap::from([("gave_up", 1), ("lacks_backend", 2)]));
        let waiting = plan_with(2, &[(Infeasible::Waiting("db".into()), 1)]);
        assert_eq!(waiting.unplaced_by_kind().values().sum::<u32>(), 2);
    }

    fn with_provider(hosts: &[Host], max_instances: u32) -> World {
        let mut world = World::new(hosts);
        let provider = crate::provider::Provider::ec2("us-east-1", "t3.micro", max_instances);
        world.apply(Command::AddProvider { name: HostId("aws1".into()), provider, at_ms: 0 });
        world
    }

    #[test]
    fn a_deployment_bursts_to_a_provider_only_when_the_hosts_are_full() {
        let small = Host {
            capacity: Resources { memory_mib: 10_000, vcpus: 64, instances: 2 },
            ..host("a", 0, &[Target::Kvm])
        };
        let mut world = with_provider(&[small], 3);
        world.deploy(Target::Kvm, 4, Placement::Spread);
        world.schedule();
        assert_eq!(world.per_host(), BTreeMap::from([("a".into(), 2), ("aws1".into(), 2)]));
        let on = |slot: u32| world.registry.live_of("hello").find(|i| i.slot == slot).map(|i| i.host.0.clone());
        // The host's instances fill the first slots, so scaling down stops the provider's first.
        assert_eq!(
            [on(0), on(1), on(2), on(3)],
            [Some("a".into()), Some("a".into()), Some("aws1".into()), Some("aws1".into())]
        );

        world.apply(Command::Scale { app: "hello".into(), count: 7 });
        let last = world.schedule();
        assert_eq!(world.per_host(), BTreeMap::from([("a".into(), 2), ("aws1".into(), 3)]));
        assert_eq!(last.unplaced, 2);
        assert_eq!(last.explain(), "1 host is full, provider aws1 at its 3-instance limit");
    }

    #[test]
    fn a_deployment_that_names_a_provider_runs_only_there_on_machines_it_fits() {
        let mut world = with_provider(&[host("a", 10_000, &[Target::Kvm])], 5);
        let spec =
            DeploymentSpec { provider: Some("aws1".into()), ..DeploymentSpec::new("hello", "1", Target::Kvm, 2) };
        world.apply(deploy(spec));
        world.schedule();
        assert_eq!(world.per_host(), BTreeMap::from([("a".into(), 0), ("aws1".into(), 2)]));

        // t3.micro machines have 1024 MiB: a bigger instance fits none of them.
        let mut big = world.registry.app_version("hello", "1").unwrap().clone();
        big.version = "2".into();
        big.run.memory_mib = 2048;
        world.apply(Command::RegisterApp { version: big });
        let spec =
            DeploymentSpec { provider: Some("aws1".into()), ..DeploymentSpec::new("hello", "2", Target::Kvm, 2) };
        world.apply(deploy(spec));
        let plan = world.schedule();
        assert_eq!(plan.explain(), "1 host is not provider aws1, provider aws1's t3.micro machines are too small");
    }

    #[test]
    fn every_reason_kind_is_listed() {
        let reasons = [
            Infeasible::Down,
            Infeasible::Draining,
            Infeasible::LacksBackend(Target::Unix),
            Infeasible::LacksLabel("k".into(), "v".into()),
            Infeasible::LacksNetwork("n".into()),
            Infeasible::LacksMemory,
            Infeasible::LacksVcpus,
            Infeasible::Full,
            Infeasible::NoAddress("n".into()),
            Infeasible::UnknownNetwork("n".into()),
            Infeasible::Waiting("a".into()),
            Infeasible::GaveUp(1),
            Infeasible::ProviderFull(HostId("p".into()), 1),
            Infeasible::NotTheProvider("p".into()),
            Infeasible::MachineTooSmall(HostId("p".into()), "t3.nano".into()),
        ];
        for reason in &reasons {
            assert!(Infeasible::KINDS.contains(&reason.kind()), "{reason:?}");
        }
        assert_eq!(Infeasible::KINDS.len(), reasons.len() + 1, "and no_hosts");
    }
}
