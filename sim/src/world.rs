//! The simulated world: coordinators, agent hosts, a client, the network, one virtual clock,
//! and a nemesis; the invariants are checked after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mirari_coordinator::consensus::node::Node;
use mirari_coordinator::consensus::storage::{RaftLog, SimulatedDisk};
use mirari_core::digest::Digest;
use mirari_core::ids::InstanceId;
use mirari_core::instance::{Desired, Phase};
use mirari_core::lease::LeaseTiming;
use mirari_core::registry::{
    AppVersion, ApplyResult, Command, DeploymentSpec, HostStatus, Outcome, Placement, Registry, Request,
};
use mirari_core::rng::SplitMix64;
use mirari_core::spec::{RestartPolicy, RunPolicy};
use mirari_core::target::Target;

use crate::agents::SimAgent;
use crate::coordinators::SimCoordinator;
use crate::net::{Addr, Ms, Network};

const STEP_MS: Ms = 10;
const APPS: [&str; 2] = ["web", "db"];
/// The network every app's instances have an interface on, and every host carries. Its pool
/// holds exactly as many addresses as the apps can ask for at most (2 apps, 7 instances each),
/// so addresses are given again and again.
pub const NETWORK: &str = "sim";
const NETWORK_SUBNET: &str = "10.88.0.0/28";

/// What a leader planned for an instance.
#[derive(Debug, Clone)]
pub struct Planned {
    pub app: String,
    pub slot: u32,
    pub addresses: Vec<std::net::Ipv4Addr>,
}

/// How a run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub coordinators: u64,
    pub agents: usize,
    /// Virtual time with faults on.
    pub faults_ms: Ms,
    /// Most virtual time to settle once they are healed.
    pub settle_ms: Ms,
}

impl Default for Scenario {
    fn default() -> Self {
        Self { coordinators: 3, agents: 3, faults_ms: 30_000, settle_ms: 60_000 }
    }
}

/// A client write, and what the cluster answered.
#[derive(Debug, Clone)]
struct Write {
    command: Command,
    acked: Option<ApplyResult>,
}

/// Statistics of a run, for the caller to report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub faults: u64,
    pub acked_writes: usize,
    /// Instances that ran (a simulated process was started for them).
    pub instances_run: usize,
    pub virtual_ms: Ms,
}

#[derive(Debug)]
pub struct World {
    seed: u64,
    rng: SplitMix64,
    now: Ms,
    net: Network,
    coordinators: Vec<SimCoordinator>,
    agents: Vec<SimAgent>,
    /// When each crashed coordinator / agent comes back.
    restarts: BTreeMap<Addr, Ms>,
    writes: BTreeMap<String, Write>,
    next_write: u64,
    next_client_op: Ms,
    /// Every instance ID the leaders ever planned, with its app, slot and addresses.
    placements: BTreeMap<InstanceId, Planned>,
    acked_ids: BTreeSet<InstanceId>,
    leaders: BTreeMap<u64, u64>,
    report: Report,
}

impl World {
    pub fn new(seed: u64, scenario: Scenario) -> Self {
        let timing = LeaseTiming::default();
        let ids: Vec<u64> = (1..=scenario.coordinators).collect();
        let members: BTreeMap<u64, String> = ids.iter().map(|&id| (id, format!("sim-coordinator-{id}"))).collect();
        let coordinators = ids
            .iter()
            .map(|&id| {
                let disk = Arc::new(SimulatedDisk::default());
                Node::bootstrap(&RaftLog::new(disk.durable(), disk.clone()), "simulated-cluster", &members)
                    .expect("bootstrap");
                SimCoordinator::new(id, disk, timing)
            })
            .collect();
        let agents = (0..scenario.agents).map(|index| SimAgent::new(index, ids.clone(), timing)).collect();
        let mut world = Self {
            seed,
            rng: SplitMix64::new(seed),
            now: 0,
            net: Network::default(),
            coordinators,
            agents,
            restarts: BTreeMap::new(),
            writes: BTreeMap::new(),
            next_write: 0,
            next_client_op: 500,
            placements: BTreeMap::new(),
            acked_ids: BTreeSet::new(),
            leaders: BTreeMap::new(),
            report: Report::default(),
        };
        for index in 0..world.agents.len() {
            world.agents[index].start(&mut world.net, &mut world.rng, 0);
        }
        world
    }

    fn fail(&self, what: String) -> ! {
        let mut trace: Vec<&String> =
            self.agents.iter().flat_map(|a| &a.trace).chain(self.coordinators.iter().flat_map(|c| &c.trace)).collect();
        trace.sort_by_key(|line| line.trim_start().split(' ').next().and_then(|t| t.parse::<u64>().ok()));
        let trace: Vec<String> = trace.iter().map(|l| format!("  {l}")).collect();
        panic!(
            "cluster simulation seed {} failed at {} ms: {what}\nlast events:\n{}\nreplay it: \
             MIRARI_SIM_SEED={} cargo test -p mirari-sim",
            self.seed,
            self.now,
            trace.join("\n"),
            self.seed
        )
    }

    /// Runs the scenario: faults, then healing and settling, then the final checks.
    pub fn run(mut self, scenario: Scenario) -> Report {
        while self.now < scenario.faults_ms {
            self.nemesis();
            self.step(true);
        }
        self.heal();
        let give_up = self.now + scenario.settle_ms;
        while !self.settled() {
            if self.now >= give_up {
                self.fail(format!(
                    "the cluster did not settle within {} ms of healing: {}",
                    scenario.settle_ms,
                    self.describe()
                ));
            }
            self.step(false);
        }
        self.verify_end();
        self.report.acked_writes = self.writes.values().filter(|w| w.acked.is_some()).count();
        self.report.instances_run = self.agents.iter().map(|a| a.processes.len()).sum();
        self.report.virtual_ms = self.now;
        self.report
    }

    /// One step of virtual time; `faults` while the nemesis is at work.
    fn step(&mut self, faults: bool) {
        self.now += STEP_MS;
        let now = self.now;
        let restarts: Vec<Addr> = self.restarts.iter().filter(|(_, at)| **at <= now).map(|(a, _)| *a).collect();
        for addr in restarts {
            self.restarts.remove(&addr);
            match addr {
                Addr::Coordinator(id) => self.coordinator_mut(id).start(),
                Addr::Agent(index) => self.agents[index].start(&mut self.net, &mut self.rng, now),
            }
        }
        if faults && now >= self.next_client_op {
            self.next_client_op = now + self.rng.between(300, 2_500);
            self.client_write();
        }
        for packet in self.net.deliver(&mut self.rng, now) {
            match packet.to {
                Addr::Coordinator(id) => {
                    let index = self.coordinator_index(id);
                    self.coordinators[index].receive(&mut self.net, &mut self.rng, now, packet.from, packet.payload);
                }
                Addr::Agent(index) => self.agents[index].receive(now, packet.payload),
            }
        }
        for index in 0..self.coordinators.len() {
            let applied = self.coordinators[index].advance(&mut self.net, &mut self.rng, now, &mut self.placements);
            for (request_id, result) in applied.acked {
                self.acknowledge(request_id, result);
            }
        }
        for index in 0..self.agents.len() {
            self.agents[index].advance(&mut self.net, &mut self.rng, now, faults);
            let addr = Addr::Agent(index);
            if !self.agents[index].is_up() && !self.restarts.contains_key(&addr) {
                // Its sockets went with it; it comes back after a while (at once when healing).
                self.net.drop_to(addr);
                let after = if faults { self.rng.between(200, 10_000) } else { 0 };
                self.restarts.insert(addr, now + after);
            }
        }
        self.check();
    }

    fn coordinator_index(&self, id: u64) -> usize {
        self.coordinators.iter().position(|c| c.id == id).expect("a known coordinator")
    }

    fn coordinator_mut(&mut self, id: u64) -> &mut SimCoordinator {
        let index = self.coordinator_index(id);
        &mut self.coordinators[index]
    }

    fn acknowledge(&mut self, request_id: String, result: ApplyResult) {
        let Some(write) = self.writes.get_mut(&request_id) else { return };
        if write.acked.is_some() {
            return;
        }
        if let Ok(Outcome::Placed(ids)) = &result {
            for id in ids {
                if !self.acked_ids.insert(*id) {
                    self.fail(format!("instance ID {id} was minted twice"));
                }
            }
        }
        write.acked = Some(result);
    }

    /// The client: registers the apps (retrying with the same request IDs until they land),
    /// then deploys, scales and stops them.
    fn client_write(&mut self) {
        let setup = APPS.iter().map(|app| format!("setup-{app}")).chain(["setup-network".to_owned()]);
        let registered = setup.clone().all(|request_id| {
            self.writes.get(&request_id).is_some_and(|w| w.acked.as_ref().is_some_and(Result::is_ok))
        });
        let requests: Vec<Request> = if registered {
            let app = APPS[self.rng.below(APPS.len() as u64) as usize].to_owned();
            let command = match self.rng.below(10) {
                0..=3 => Command::Deploy {
                    spec: {
                        let count = self.rng.between(1, 6) as u32;
                        let placement = if self.rng.chance(50) { Placement::Spread } else { Placement::Binpack };
                        DeploymentSpec { placement, ..DeploymentSpec::new(&app, "1", Target::Unix, count) }
                    },
                    at_ms: self.now,
                    by: "test".into(),
                    cause: mirari_core::registry::RevisionCause::Deploy,
                },
                4..=7 => Command::Scale { app, count: self.rng.between(0, 7) as u32 },
                _ => Command::StopDeployment { app },
            };
            self.next_write += 1;
            let request_id = format!("client-{}", self.next_write);
            self.writes.insert(request_id.clone(), Write { command: command.clone(), acked: None });
            vec![Request { request_id, command }]
        } else {
            setup
                .map(|request_id| {
                    let command = match request_id.strip_prefix("setup-") {
                        Some("network") => Command::CreateNetwork { network: network() },
                        Some(app) => Command::RegisterApp { version: app_version(app) },
                        None => unreachable!("setup request IDs start with setup-"),
                    };
                    let write = self.writes.entry(request_id.clone()).or_insert_with(|| Write { command, acked: None });
                    Request { request_id, command: write.command.clone() }
                })
                .collect()
        };
        let Some(leader) = self.coordinators.iter().position(SimCoordinator::is_leader) else { return };
        for request in requests {
            self.coordinators[leader].propose_client(&request);
        }
    }

    /// Faults, at random: coordinators and agents crash (some in the middle of a write) and
    /// come back, hosts are cut off, agents freeze, packets are lost.
    fn nemesis(&mut self) {
        let now = self.now;
        self.net.loss_per_mille = 20;
        let coordinators = self.coordinators.len() as u64;
        let down = self.coordinators.iter().filter(|c| !c.is_up()).count() as u64;
        // Each kind of fault about once every ten to twenty seconds of virtual time.
        if self.rng.chance_per_mille(1) && down < (coordinators - 1) / 2 {
            let leader = self.coordinators.iter().position(SimCoordinator::is_leader);
            let victim = match leader {
                Some(leader) if self.rng.chance(60) => leader,
                _ => self.rng.below(coordinators) as usize,
            };
            if self.coordinators[victim].is_up() {
                let mid_write = self.rng.chance(40);
                self.coordinators[victim].crash(mid_write);
                let id = self.coordinators[victim].id;
                self.net.drop_to(Addr::Coordinator(id));
                self.restarts.insert(Addr::Coordinator(id), now + self.rng.between(500, 6_000));
                self.report.faults += 1;
            }
        }
        if self.rng.chance_per_mille(1) {
            let id = self.coordinators[self.rng.below(coordinators) as usize].id;
            self.net.cut_off(Addr::Coordinator(id), now + self.rng.between(500, 8_000));
            self.report.faults += 1;
        }
        let agents = self.agents.len() as u64;
        if self.rng.chance_per_mille(1) {
            let index = self.rng.below(agents) as usize;
            self.net.cut_off(Addr::Agent(index), now + self.rng.between(500, 12_000));
            self.report.faults += 1;
        }
        if self.rng.chance_per_mille(1) {
            let index = self.rng.below(agents) as usize;
            if self.agents[index].is_up() && !self.restarts.contains_key(&Addr::Agent(index)) {
                // It comes back a while after it went down (see `step`).
                if self.rng.chance(30) {
                    self.agents[index].crash_during_next_effects(&mut self.rng);
                } else {
                    self.agents[index].crash();
                }
                self.report.faults += 1;
            }
        }
        if self.rng.chance_per_mille(1) {
            let index = self.rng.below(agents) as usize;
            if self.agents[index].is_up() && self.agents[index].frozen_until.is_none() {
                self.agents[index].frozen_until = Some(now + self.rng.between(500, 10_000));
                self.report.faults += 1;
            }
        }
    }

    fn heal(&mut self) {
        self.net.heal();
        let now = self.now;
        for at in self.restarts.values_mut() {
            *at = now;
        }
        for agent in &mut self.agents {
            agent.frozen_until = None;
        }
    }

    /// The invariants, after every step.
    fn check(&mut self) {
        // At most one leader per term.
        for coordinator in &self.coordinators {
            let Some(node) = coordinator.node.as_ref().filter(|n| n.is_leader()) else { continue };
            if let Some(other) = self.leaders.insert(node.term(), coordinator.id)
                && other != coordinator.id
            {
                self.fail(format!("two leaders in term {}: {other} and {}", node.term(), coordinator.id));
            }
        }
        // No slot runs on two hosts at once: the simulated processes themselves.
        // Nor does an address answer for two instances at once.
        let mut running: BTreeMap<(String, u32), Vec<(InstanceId, usize)>> = BTreeMap::new();
        let mut addresses: BTreeMap<std::net::Ipv4Addr, Vec<(InstanceId, usize)>> = BTreeMap::new();
        for agent in &self.agents {
            for (id, process) in &agent.processes {
                if process.is_alive()
                    && let Some(planned) = self.placements.get(id)
                {
                    running.entry((planned.app.clone(), planned.slot)).or_default().push((*id, agent.index));
                    for address in &planned.addresses {
                        addresses.entry(*address).or_default().push((*id, agent.index));
                    }
                }
            }
        }
        if let Some(((app, slot), ids)) = running.iter().find(|(_, ids)| ids.len() > 1) {
            let registry = self.coordinators.iter().find(|c| c.is_leader()).and_then(SimCoordinator::registry);
            let entries: Vec<String> =
                ids.iter().filter_map(|(id, _)| registry.as_ref()?.instance(*id).map(|i| format!("{i:?}"))).collect();
            self.fail(format!(
                "slot {slot} of {app} runs {} times at once: {ids:?}\n{}",
                ids.len(),
                entries.join("\n")
            ));
        }
        if let Some((address, ids)) = addresses.iter().find(|(_, ids)| ids.len() > 1) {
            self.fail(format!("address {address} is held by {} running instances at once: {ids:?}", ids.len()));
        }
        // Every placement fits its host, on every node.
        for coordinator in &self.coordinators {
            let Some(node) = &coordinator.node else { continue };
            let machine = node.machine();
            for host in machine.registry.hosts() {
                let used = machine.registry.used(&host.id);
                if used.instances > host.capacity.instances || used.memory_mib > host.capacity.memory_mib {
                    self.fail(format!("coordinator {} overcommits host {}: {used:?}", coordinator.id, host.id));
                }
            }
        }
    }

    /// Healed and quiet: one leader; every node applied all it committed; every host is up
    /// with a lease; every instance that should run runs exactly as the registry says (or
    /// failed for good), and nothing else runs.
    fn settled(&self) -> bool {
        if !self.restarts.is_empty() || self.coordinators.iter().any(|c| !c.is_up()) {
            return false;
        }
        let Some(leader) = self.coordinators.iter().find(|c| c.is_leader()) else { return false };
        let node = leader.node.as_ref().expect("up");
        let applied: BTreeSet<u64> =
            self.coordinators.iter().map(|c| c.node.as_ref().map_or(0, Node::applied_index)).collect();
        if applied.len() != 1 || applied.first() != Some(&node.commit_index()) {
            return false;
        }
        let registry = &node.machine().registry;
        if self.agents.iter().any(|a| !a.has_lease(self.now)) {
            return false;
        }
        if registry.hosts().any(|h| h.status != HostStatus::Up) {
            return false;
        }
        self.mismatch(registry).is_none()
    }

    /// How the processes differ from what the registry wants, if they do.
    fn mismatch(&self, registry: &Registry) -> Option<String> {
        for agent in &self.agents {
            let host = crate::agents::host_name(agent.index);
            for (id, process) in &agent.processes {
                if !process.is_alive() {
                    continue;
                }
                let wanted = registry.instance(*id).is_some_and(|i| i.host == host && i.desired == Desired::Running);
                if !wanted {
                    return Some(format!(
                        "instance {id} runs on {host} though the registry does not want it: {:?}",
                        registry.instance(*id)
                    ));
                }
            }
            for instance in registry.placed_on(&host) {
                let alive = agent.processes.get(&instance.id).is_some_and(|p| p.is_alive());
                let settled = match instance.desired {
                    Desired::Running => {
                        (alive && instance.observed == Phase::Running) || instance.observed == Phase::Failed
                    }
                    Desired::Stopped => false,
                };
                if !settled {
                    return Some(format!("instance on {host} (process alive: {alive}) not settled: {instance:?}"));
                }
            }
        }
        for deployment in registry.deployments().filter(|d| d.desired == Desired::Running) {
            let empty =
                registry.empty_slot_count(&deployment.spec.app, &deployment.spec.version, deployment.spec.count);
            if empty > 0 {
                return Some(format!("{} has {empty} empty slots", deployment.spec.app));
            }
        }
        None
    }

    fn describe(&self) -> String {
        let leader = self.coordinators.iter().find(|c| c.is_leader()).map(|c| c.id);
        let applied: Vec<(u64, u64)> =
            self.coordinators.iter().map(|c| (c.id, c.node.as_ref().map_or(0, Node::applied_index))).collect();
        let leases: Vec<bool> = self.agents.iter().map(|a| a.has_lease(self.now)).collect();
        let mismatch = self
            .coordinators
            .iter()
            .find(|c| c.is_leader())
            .and_then(SimCoordinator::registry)
            .and_then(|r| self.mismatch(&r));
        format!("leader {leader:?}, applied {applied:?}, agent leases {leases:?}, {mismatch:?}")
    }

    /// The end state: every node holds the same registry, and no acknowledged write was lost.
    fn verify_end(&self) {
        let registries: Vec<Registry> = self.coordinators.iter().filter_map(SimCoordinator::registry).collect();
        let reference = &registries[0];
        if registries.iter().any(|r| r != reference) {
            self.fail("the coordinators' registries differ".into());
        }
        for (request_id, write) in &self.writes {
            if write.acked.is_some() && !reference.remembers(request_id) {
                self.fail(format!("acknowledged write {request_id} ({:?}) was lost", write.command));
            }
        }
    }
}

fn app_version(app: &str) -> AppVersion {
    AppVersion {
        app: app.into(),
        version: "1".into(),
        artifacts: [(Target::Unix, Digest::of(app.as_bytes()))].into(),
        files: vec![],
        run: RunPolicy {
            memory_mib: 16,
            stop_timeout_secs: 2,
            restart: RestartPolicy::OnFailure { limit: 5 },
            networks: vec![NETWORK.into()],
            boot_args: vec![format!("--ipv4={{net.{NETWORK}.cidr}}")],
            health: Some(mirari_core::health::HealthCheck {
                probe: mirari_core::health::Probe::Tcp { port: 80 },
                interval_ms: 1_000,
                timeout_ms: 500,
                grace_ms: 0,
                unhealthy_after: 2,
            }),
            ..RunPolicy::default()
        },
        constraints: BTreeMap::new(),
    }
}

fn network() -> mirari_core::network::Network {
    mirari_core::network::Network {
        name: NETWORK.into(),
        subnet: NETWORK_SUBNET.parse().expect("a valid subnet"),
        gateway: None,
        range: None,
        dns: vec![],
    }
}
