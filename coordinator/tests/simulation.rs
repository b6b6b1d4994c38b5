//! Deterministic simulation of 3- and 5-node coordinator groups.
//!
//! Real `Node`s (raft-rs plus the registry) on an in-memory network, driven by logical steps
//! and a seeded RNG: messages are lost, delayed and reordered, nodes are partitioned off, and
//! nodes (leaders most of all) crash and restart from their durable log: a `SimulatedDisk`
//! keeps only what was written through it, and some crashes happen in the middle of a write,
//! which then lands nothing; some disks fill up for a while, so their nodes stall (write
//! nothing, send nothing that depends on it) and go on once writes succeed again. After every step the
//! invariants are checked: at most one leader per term, committed entries agree on every node.
//! At the end, with the faults healed: every acknowledged write is present on every node, all
//! nodes hold the same registry, and no instance ID was ever minted twice.
//!
//! A failure prints its seed. Run more seeds with
//! `MIRARI_SIM_SEEDS=5000 cargo test --release -p mirari-coordinator --test simulation`,
//! or one seed with `MIRARI_SIM_SEED=1234`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mirari_coordinator::consensus::RaftMessage;
use mirari_coordinator::consensus::logger;
use mirari_coordinator::consensus::node::{Node, NodeConfig};
use mirari_coordinator::consensus::storage::{RaftLog, SimulatedDisk};
use mirari_core::digest::Digest;
use mirari_core::ids::InstanceId;
use mirari_core::registry::{
    AppVersion, Command, DeploymentSpec, Host, HostId, HostStatus, Outcome, PlacedInstance, Placement, Rejection,
    Request, Resources,
};
use mirari_core::rng::SplitMix64;
use mirari_core::spec::RunPolicy;
use mirari_core::target::Target;
use raft::eraftpb::MessageType;

/// The ID every node is bootstrapped with; the client mints from its serial base as a leader would.
const CLUSTER_ID: &str = "simulation";
const STEPS: u64 = 500;
const SETTLE_STEPS: u64 = 3_000;
const SLOTS: u32 = mirari_core::limits::MAX_INSTANCES_PER_DEPLOYMENT;

struct InFlight {
    deliver_at: u64,
    message: RaftMessage,
}

/// A write the client made, and (once acknowledged by a leader) its result.
#[derive(Debug, Clone)]
struct Write {
    command: Command,
    proposed_to: u64,
    acked: Option<Result<Outcome, Rejection>>,
}

struct Sim {
    seed: u64,
    rng: SplitMix64,
    step: u64,
    ids: Vec<u64>,
    nodes: BTreeMap<u64, Option<Node<Arc<SimulatedDisk>>>>,
    disks: BTreeMap<u64, Arc<SimulatedDisk>>,
    network: Vec<InFlight>,
    /// Nodes cut off from everyone, until the given step.
    isolated: BTreeMap<u64, u64>,
    /// Nodes whose disk is full (every write fails), until the given step.
    full: BTreeMap<u64, u64>,
    stalls: u64,
    writes: BTreeMap<String, Write>,
    next_write: u64,
    next_serial: u64,
    minted: Vec<u64>,
    leaders: BTreeMap<u64, u64>,
    committed: BTreeMap<u64, (u64, Digest)>,
    /// Per node, the highest committed index already compared.
    checked: BTreeMap<u64, u64>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let size = if seed.is_multiple_of(2) { 3 } else { 5 };
        let ids: Vec<u64> = (1..=size).collect();
        let members: BTreeMap<u64, String> = ids.iter().map(|&id| (id, format!("node-{id}"))).collect();
        let mut sim = Self {
            seed,
            rng: SplitMix64::new(seed),
            step: 0,
            ids: ids.clone(),
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            network: Vec::new(),
            isolated: BTreeMap::new(),
            full: BTreeMap::new(),
            stalls: 0,
            writes: BTreeMap::new(),
            next_write: 0,
            next_serial: 0,
            minted: Vec::new(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            checked: BTreeMap::new(),
        };
        for &id in &ids {
            let disk = Arc::new(SimulatedDisk::default());
            Node::bootstrap(&RaftLog::new(disk.durable(), disk.clone()), CLUSTER_ID, &members).expect("bootstrap");
            sim.disks.insert(id, disk);
            sim.start(id);
        }
        sim
    }

    fn fail(&self, what: String) -> ! {
        panic!("simulation seed {} failed at step {}: {what}", self.seed, self.step)
    }

    fn start(&mut self, id: u64) {
        // Distinct fixed election timeouts keep raft-rs's own randomness out of the run.
        let min = 10 + 3 * (id as usize) + (self.seed % 3) as usize;
        let config = NodeConfig {
            snapshot_every: 40,
            keep_entries: 10,
            election_range: Some((min, min + 1)),
            ..NodeConfig::new(id)
        };
        // A restarted node has exactly what reached its disk.
        let disk = self.disks[&id].clone();
        disk.fail_writes(self.full.contains_key(&id));
        let node = Node::new(config, RaftLog::new(disk.durable(), disk), &logger::silent())
            .unwrap_or_else(|e| self.fail(format!("node {id} cannot restart: {e}")));
        self.nodes.insert(id, Some(node));
    }

    fn live(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.is_some()).map(|(&id, _)| id).collect()
    }

    fn leader(&self) -> Option<u64> {
        self.nodes.iter().find(|(_, n)| n.as_ref().is_some_and(Node::is_leader)).map(|(&id, _)| id)
    }

    fn connected(&self, a: u64, b: u64) -> bool {
        !self.isolated.contains_key(&a) && !self.isolated.contains_key(&b)
    }

    /// One logical step: faults, client writes, ticks, deliveries, readies, checks.
    fn run_step(&mut self, faults: bool) {
        self.step += 1;
        if faults {
            self.inject_faults();
        }
        self.isolated.retain(|_, until| *until > self.step);
        let step = self.step;
        let disks = &self.disks;
        self.full.retain(|id, until| {
            let still = *until > step;
            if !still {
                disks[id].fail_writes(false);
            }
            still
        });
        if self.rng.chance(60) {
            self.client_write();
        }
        for id in self.live() {
            if let Some(node) = self.nodes.get_mut(&id).and_then(Option::as_mut) {
                node.tick();
            }
        }
        self.deliver(faults);
        for id in self.live() {
            self.process_ready(id);
        }
        self.check();
    }

    fn inject_faults(&mut self) {
        let live = self.live();
        // Crash a node now and then, the leader more often; never more than a minority.
        let down = self.ids.len() - live.len();
        if down < (self.ids.len() - 1) / 2 && self.rng.chance(2) {
            let victim = match self.leader() {
                Some(leader) if self.rng.chance(60) => leader,
                _ => live[self.rng.below(live.len() as u64) as usize],
            };
            if self.rng.chance(40) {
                // Crash in the middle of its next write: the write lands nothing.
                // Its leader's appends may already be on their way to the others.
                self.disks[&victim].fail_writes(true);
                if let Some(node) = self.nodes.get_mut(&victim).and_then(Option::as_mut)
                    && node.has_ready()
                {
                    let early = node.take_early_messages();
                    let _ = node.handle_ready();
                    self.send(early);
                }
            }
            self.nodes.insert(victim, None);
            // Messages to the dead node are lost; a transport reports a lost snapshot.
            let (lost, kept): (Vec<InFlight>, Vec<InFlight>) =
                std::mem::take(&mut self.network).into_iter().partition(|m| m.message.to == victim);
            self.network = kept;
            for InFlight { message, .. } in lost {
                if message.get_msg_type() == MessageType::MsgSnapshot
                    && let Some(sender) = self.nodes.get_mut(&message.from).and_then(Option::as_mut)
                {
                    sender.report_snapshot(victim, false);
                }
            }
        }
        for id in self.ids.clone() {
            if self.nodes[&id].is_none() && self.rng.chance(4) {
                self.start(id);
            }
        }
        if self.full.is_empty() && self.rng.chance(1) {
            // A disk fills up for a while: its node stalls, alive, and must go on afterwards.
            let victim = self.ids[self.rng.below(self.ids.len() as u64) as usize];
            self.full.insert(victim, self.step + 10 + self.rng.below(60));
            self.disks[&victim].fail_writes(true);
        }
        if self.isolated.is_empty() && self.rng.chance(2) {
            let victim = self.ids[self.rng.below(self.ids.len() as u64) as usize];
            let until = self.step + 20 + self.rng.below(80);
            self.isolated.insert(victim, until);
        }
    }

    fn client_write(&mut self) {
        self.next_write += 1;
        let n = self.next_write;
        let command = match n {
            1 => Command::RegisterHost { host: host("big") },
            2 => Command::RegisterApp { version: app() },
            3 => Command::Deploy {
                spec: DeploymentSpec {
                    placement: Placement::Spread,
                    ..DeploymentSpec::new("app", "1", Target::Unix, SLOTS)
                },
                at_ms: 0,
                by: "test".into(),
                cause: mirari_core::registry::RevisionCause::Deploy,
            },
            _ if self.rng.chance(50) => Command::RegisterHost { host: host(&format!("h-{n}")) },
            _ => {
                // Sometimes try to reuse an ID minted before: it must be refused. Otherwise the
                // next serial, as a leader mints (skipping some, as lost plans do), or an ID
                // from elsewhere, which the registry keeps apart.
                let id = if !self.minted.is_empty() && self.rng.chance(10) {
                    self.minted[self.rng.below(self.minted.len() as u64) as usize]
                } else if self.rng.chance(50) {
                    self.next_serial += 1 + self.rng.below(3);
                    let base = mirari_coordinator::consensus::machine::serial_base(Some(CLUSTER_ID));
                    InstanceId::from_serial(base.wrapping_add(self.next_serial)).as_u64()
                } else {
                    self.rng.next_u64()
                };
                let slot = u32::try_from(n).expect("few writes");
                Command::Place {
                    app: "app".into(),
                    generation: 1,
                    placements: vec![PlacedInstance {
                        id: InstanceId::from_u64(id),
                        slot,
                        host: HostId("big".into()),
                        interfaces: vec![],
                    }],
                    at_ms: n,
                }
            }
        };
        // The setup writes are retried until they land (a client retries with the same ID).
        let retries: Vec<String> = self
            .writes
            .iter()
            .filter(|(_, w)| {
                w.acked.is_none() && matches!(w.command, Command::RegisterApp { .. } | Command::Deploy { .. })
            })
            .map(|(id, _)| id.clone())
            .collect();
        let target = self.leader().or_else(|| self.live().first().copied());
        let Some(target) = target else { return };
        let request_id = format!("w-{n}");
        self.writes.insert(request_id.clone(), Write { command, proposed_to: target, acked: None });
        for request_id in std::iter::once(request_id).chain(retries) {
            let write = self.writes.get_mut(&request_id).expect("known write");
            write.proposed_to = target;
            let request = Request { request_id, command: write.command.clone() };
            if let Some(node) = self.nodes.get_mut(&target).and_then(Option::as_mut) {
                let _ = node.propose(&request);
            }
        }
    }

    fn deliver(&mut self, faults: bool) {
        let step = self.step;
        let (due, later): (Vec<InFlight>, Vec<InFlight>) =
            std::mem::take(&mut self.network).into_iter().partition(|m| m.deliver_at <= step);
        self.network = later;
        for InFlight { message, .. } in due {
            let (from, to) = (message.from, message.to);
            let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let delivered = self.connected(from, to) && !(faults && self.rng.chance(5));
            if delivered && let Some(node) = self.nodes.get_mut(&to).and_then(Option::as_mut) {
                let _ = node.step(message);
            }
            if snapshot && let Some(sender) = self.nodes.get_mut(&from).and_then(Option::as_mut) {
                sender.report_snapshot(to, delivered);
            }
        }
    }

    /// Puts messages on the network, each delivered 1 to 3 steps later.
    fn send(&mut self, messages: Vec<RaftMessage>) {
        for message in messages {
            let delay = 1 + self.rng.below(3);
            self.network.push(InFlight { deliver_at: self.step + delay, message });
        }
    }

    fn process_ready(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id).and_then(Option::as_mut) else {
            return;
        };
        // As the driver does: the leader's appends leave while it writes them.
        let early = node.take_early_messages();
        let output = match node.handle_ready() {
            Ok(output) => output,
            Err(e) => self.fail(format!("node {id} ready failed: {e}")),
        };
        self.send(early);
        if output.stalled.is_some() {
            self.stalls += 1;
        }
        let was_leader = self.nodes[&id].as_ref().is_some_and(Node::is_leader);
        self.send(output.messages);
        for applied in output.applied {
            let Some(write) = self.writes.get_mut(&applied.request_id) else {
                continue;
            };
            // The node the client asked acknowledges once it applied the entry as leader.
            if write.proposed_to == id && was_leader && write.acked.is_none() {
                write.acked = Some(applied.result.clone());
                if let Ok(Outcome::Placed(ids)) = &applied.result {
                    for placed in ids {
                        if self.minted.contains(&placed.as_u64()) {
                            self.fail(format!("instance ID {placed} was minted twice"));
                        }
                        self.minted.push(placed.as_u64());
                    }
                }
            }
        }
    }

    fn check(&mut self) {
        for (&id, node) in &self.nodes {
            let Some(node) = node else { continue };
            if node.is_leader() {
                let term = node.term();
                if let Some(&other) = self.leaders.get(&term)
                    && other != id
                {
                    self.fail(format!("two leaders in term {term}: {other} and {id}"));
                }
                self.leaders.insert(term, id);
            }
            // What the node's log says is committed: raft may know of a later commit whose
            // entries are still to be written (a stalled node's ready).
            let log = node.log().read();
            let commit = log.hard_state.commit.min(log.last_index());
            let from = self.checked.get(&id).map_or(0, |c| c + 1).max(log.first_index());
            let first = log.first_index();
            let new = log
                .entries
                .get((from - first) as usize..(commit + 1).saturating_sub(first) as usize)
                .unwrap_or_default();
            self.checked.insert(id, commit.max(self.checked.get(&id).copied().unwrap_or(0)));
            for entry in new {
                let seen = (entry.term, Digest::of(&entry.data));
                match self.committed.get(&entry.index) {
                    Some(known) if *known != seen => {
                        self.fail(format!("node {id} committed a different entry at index {}", entry.index))
                    }
                    Some(_) => {}
                    None => {
                        self.committed.insert(entry.index, seen);
                    }
                }
            }
        }
    }

    /// Heals every fault and runs until all nodes agree, then checks the end state.
    fn settle_and_verify(&mut self) {
        self.isolated.clear();
        for id in std::mem::take(&mut self.full).into_keys() {
            self.disks[&id].fail_writes(false);
        }
        for id in self.ids.clone() {
            if self.nodes[&id].is_none() {
                self.start(id);
            }
        }
        for _ in 0..SETTLE_STEPS {
            self.run_step(false);
            if self.converged() {
                break;
            }
        }
        if !self.converged() {
            let applied: Vec<(u64, u64)> =
                self.nodes.iter().map(|(&id, n)| (id, n.as_ref().map_or(0, Node::applied_index))).collect();
            let detail: Vec<String> = self
                .nodes
                .iter()
                .filter_map(|(id, n)| n.as_ref().map(|n| (id, n)))
                .map(|(id, n)| {
                    let log = n.log().read();
                    format!(
                        "node {id}: term {} {:?} commit {} log {}..{} snapshot {} progress [{}]",
                        n.term(),
                        n.role(),
                        n.commit_index(),
                        log.first_index(),
                        log.last_index(),
                        log.snapshot.get_metadata().index,
                        n.describe_progress()
                    )
                })
                .collect();
            self.fail(format!(
                "did not converge; applied indexes {applied:?}, leader {:?}\n{}",
                self.leader(),
                detail.join("\n")
            ));
        }
        let reference = self.nodes[&self.ids[0]].as_ref().expect("all started").machine().registry.clone();
        for id in &self.ids {
            let registry = &self.nodes[id].as_ref().expect("all started").machine().registry;
            if *registry != reference {
                self.fail(format!("node {id}'s registry differs from node {}'s", self.ids[0]));
            }
        }
        for (request_id, write) in &self.writes {
            let Some(result) = &write.acked else { continue };
            match (&write.command, result) {
                (Command::RegisterHost { host }, Ok(_)) if reference.host(&host.id).is_none() => {
                    self.fail(format!("acknowledged {request_id} (host {}) was lost", host.id));
                }
                (Command::Place { placements, .. }, Ok(_)) => {
                    for placed in placements {
                        if reference.instance(placed.id).is_none_or(|i| i.slot != placed.slot) {
                            self.fail(format!("acknowledged placement {} was lost", placed.id));
                        }
                    }
                }
                _ => {}
            }
        }
        let ids: BTreeSet<InstanceId> = reference.instances().map(|i| i.id).collect();
        if ids.len() != reference.instances().count() {
            self.fail("an instance ID appears twice".into());
        }
    }

    fn converged(&self) -> bool {
        let applied: BTreeSet<u64> = self.nodes.values().map(|n| n.as_ref().map_or(0, Node::applied_index)).collect();
        let commit = self.nodes.values().flatten().map(Node::commit_index).max().unwrap_or(0);
        self.leader().is_some() && applied.len() == 1 && applied.first() == Some(&commit)
    }
}

fn host(name: &str) -> Host {
    Host {
        id: HostId(name.into()),
        address: format!("{name}:1"),
        backends: [Target::Unix].into(),
        capacity: Resources { memory_mib: u64::MAX / 4, vcpus: u32::MAX / 4, instances: u32::MAX / 4 },
        labels: BTreeMap::new(),
        networks: Default::default(),
        status: HostStatus::Up,
        registered_at_ms: 0,
        status_changed_at_ms: 0,
        drain: None,
        provider: None,
    }
}

fn app() -> AppVersion {
    AppVersion {
        app: "app".into(),
        version: "1".into(),
        artifacts: [(Target::Unix, Digest::of(b"app"))].into(),
        files: vec![],
        run: RunPolicy { memory_mib: 1, ..RunPolicy::default() },
        constraints: BTreeMap::new(),
    }
}

/// Runs one seed; returns how many ready cycles stalled on a full disk.
fn run_seed(seed: u64) -> u64 {
    let mut sim = Sim::new(seed);
    for _ in 0..STEPS {
        sim.run_step(true);
    }
    sim.settle_and_verify();
    let acked = sim.writes.values().filter(|w| w.acked.is_some()).count();
    if acked < 5 {
        sim.fail(format!("only {acked} writes were acknowledged: the cluster made too little progress to test much"));
    }
    sim.stalls
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number")))
}

#[test]
fn raft_group_keeps_its_invariants_under_faults() {
    if let Some(seed) = env_u64("MIRARI_SIM_SEED") {
        run_seed(seed);
        return;
    }
    let seeds = env_u64("MIRARI_SIM_SEEDS").unwrap_or(200);
    let stalls: u64 = (0..seeds).map(run_seed).sum();
    assert!(stalls > seeds, "full disks stalled only {stalls} ready cycles in {seeds} seeds");
}
