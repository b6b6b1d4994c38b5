//! Crashes at the raft log's failpoints, on the real redb log.
//!
//! Three `Node`s on `RedbBacking` data directories, delivering messages in process. A
//! failpoint makes one node panic in the middle of its ready cycle (before the log is
//! persisted, while entries are applied, while a snapshot is saved, before or after redb's
//! fsync'd commit, leader and follower in turn); the node is dropped and restarted from its
//! data directory, as a process would be. Every write a leader acknowledged must survive on
//! every node, and the nodes must end with one registry. An entry whose bytes the disk
//! corrupted is refused at the next start with an error that names it.
//!
//! `cargo test -p mirari-coordinator --features failpoints --test failpoints`
#![cfg(feature = "failpoints")]

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use fail::FailScenario;
use mirari_coordinator::consensus::RaftMessage;
use mirari_coordinator::consensus::logger;
use mirari_coordinator::consensus::node::{Node, NodeConfig, Output};
use mirari_coordinator::consensus::redb_store::RedbBacking;
use mirari_coordinator::consensus::storage::{RaftLog, StoreError};
use mirari_core::registry::{Command, Host, HostId, HostStatus, Request, Resources};
use mirari_core::target::Target;

const NODES: u64 = 3;
/// Crash rounds per failpoint; the victim alternates between the leader and a follower.
const ROUNDS: usize = 6;
const WRITES_PER_ROUND: usize = 8;

struct Cluster {
    _dir: tempfile::TempDir,
    paths: BTreeMap<u64, PathBuf>,
    nodes: BTreeMap<u64, Option<Node<RedbBacking>>>,
    inbox: Vec<RaftMessage>,
    /// Request ID -> host it registered, for every write a leader acknowledged.
    acked: BTreeMap<String, String>,
    next_write: usize,
    crashes: usize,
}

impl Cluster {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let members: BTreeMap<u64, String> = (1..=NODES).map(|id| (id, format!("node-{id}"))).collect();
        let mut paths = BTreeMap::new();
        for id in 1..=NODES {
            let path = dir.path().join(format!("node-{id}.redb"));
            let (backing, state) = RedbBacking::open(&path).expect("open");
            Node::bootstrap(&RaftLog::new(state, backing), "failpoints", &members).expect("bootstrap");
            paths.insert(id, path);
        }
        let mut cluster = Self {
            _dir: dir,
            paths,
            nodes: BTreeMap::new(),
            inbox: Vec::new(),
            acked: BTreeMap::new(),
            next_write: 0,
            crashes: 0,
        };
        for id in 1..=NODES {
            cluster.start(id).expect("first start");
        }
        cluster
    }

    /// Starts node `id` from what its data directory holds.
    fn start(&mut self, id: u64) -> Result<(), StoreError> {
        let (backing, state) = RedbBacking::open(&self.paths[&id])?;
        let config = NodeConfig {
            snapshot_every: 5,
            keep_entries: 3,
            election_range: Some((10 + 4 * id as usize, 11 + 4 * id as usize)),
            ..NodeConfig::new(id)
        };
        let node = Node::new(config, RaftLog::new(state, backing), &logger::silent()).expect("node starts");
        self.nodes.insert(id, Some(node));
        Ok(())
    }

    fn leader(&self) -> Option<u64> {
        self.nodes.iter().find(|(_, n)| n.as_ref().is_some_and(Node::is_leader)).map(|(&id, _)| id)
    }

    fn follower(&self) -> Option<u64> {
        self.nodes.iter().find(|(_, n)| n.as_ref().is_some_and(|n| !n.is_leader())).map(|(&id, _)| id)
    }

    /// One round of ticks, deliveries and readies. `armed` is a node whose ready cycle runs
    /// with a failpoint set to an action (`fail` syntax); returns whether a node crashed.
    fn step(&mut self, armed: Option<(u64, &str, &str)>) -> bool {
        let mut crashed = false;
        for node in self.nodes.values_mut().flatten() {
            node.tick();
        }
        for message in std::mem::take(&mut self.inbox) {
            if let Some(node) = self.nodes.get_mut(&message.to).and_then(Option::as_mut) {
                let _ = node.step(message);
            }
        }
        for id in 1..=NODES {
            let Some(node) = self.nodes.get_mut(&id).and_then(Option::as_mut) else { continue };
            if !node.has_ready() {
                continue;
            }
            let was_leader = node.is_leader();
            let arm = armed.filter(|(victim, ..)| *victim == id);
            if let Some((_, failpoint, action)) = arm {
                fail::cfg(failpoint, action).expect("failpoint configures");
            }
            let result = catch_unwind(AssertUnwindSafe(|| node.handle_ready()));
            if let Some((_, failpoint, _)) = arm {
                fail::remove(failpoint);
            }
            match result {
                Ok(Ok(output)) => self.take(output, was_leader),
                Ok(Err(e)) => panic!("node {id}'s ready cycle failed: {e}"),
                Err(_) => {
                    // The process died here: all it had in memory is gone.
                    self.nodes.insert(id, None);
                    self.crashes += 1;
                    crashed = true;
                }
            }
        }
        crashed
    }

    fn take(&mut self, output: Output, was_leader: bool) {
        self.inbox.extend(output.messages);
        if !was_leader {
            return;
        }
        for applied in output.applied {
            if applied.result.is_ok()
                && let Some(host) = applied.request_id.strip_prefix("register-")
            {
                self.acked.insert(applied.request_id.clone(), host.to_string());
            }
        }
    }

    fn write(&mut self) {
        let Some(leader) = self.leader() else { return };
        self.next_write += 1;
        let name = format!("h-{}", self.next_write);
        let request =
            Request { request_id: format!("register-{name}"), command: Command::RegisterHost { host: host(&name) } };
        if let Some(node) = self.nodes.get_mut(&leader).and_then(Option::as_mut) {
            let _ = node.propose(&request);
        }
    }

    fn run_until(&mut self, mut done: impl FnMut(&Self) -> bool) {
        for _ in 0..2_000 {
            if done(self) {
                return;
            }
            self.step(None);
        }
        panic!("the cluster did not get there in 2000 steps; leader {:?}", self.leader());
    }

    /// Writes until `failpoint` crashes `victim`'s next ready cycle, then restarts it.
    fn crash_round(&mut self, failpoint: &str, victim_is_leader: bool) {
        self.run_until(|c| c.leader().is_some());
        for _ in 0..WRITES_PER_ROUND {
            self.write();
            self.step(None);
        }
        let victim = if victim_is_leader { self.leader() } else { self.follower() }.expect("a victim");
        let mut crashed = false;
        for _ in 0..200 {
            self.write();
            if self.step(Some((victim, failpoint, "1*panic"))) {
                crashed = true;
                break;
            }
        }
        assert!(crashed, "{failpoint} never fired on node {victim}");
        // Another node may run ahead while the victim is down.
        for _ in 0..30 {
            self.write();
            self.step(None);
        }
        self.start(victim).unwrap_or_else(|e| panic!("node {victim} cannot restart after {failpoint}: {e}"));
    }

    fn verify(&mut self, failpoint: &str) {
        self.run_until(|c| {
            let applied: Vec<u64> = c.nodes.values().flatten().map(Node::applied_index).collect();
            let commit = c.nodes.values().flatten().map(Node::commit_index).max().unwrap_or(0);
            c.leader().is_some() && applied.len() == NODES as usize && applied.iter().all(|&a| a == commit)
        });
        let reference = self.nodes[&1].as_ref().expect("running").machine().registry.clone();
        for (id, node) in &self.nodes {
            let node = node.as_ref().expect("running");
            assert!(
                node.machine().registry == reference,
                "after {failpoint}, node {id}'s registry differs from node 1's"
            );
        }
        for (request_id, name) in &self.acked {
            assert!(
                reference.host(&HostId(name.clone())).is_some(),
                "after {failpoint}, the acknowledged write {request_id} was lost"
            );
        }
        assert!(self.acked.len() >= ROUNDS * WRITES_PER_ROUND / 2, "too few writes acknowledged to test much");
        assert_eq!(self.crashes, ROUNDS, "every round crashed one node");
    }
}

fn host(name: &str) -> Host {
    Host {
        id: HostId(name.into()),
        address: format!("{name}:1"),
        backends: [Target::Unix].into(),
        capacity: Resources { memory_mib: 1024, vcpus: 4, instances: 16 },
        labels: BTreeMap::new(),
        networks: Default::default(),
        status: HostStatus::Up,
        registered_at_ms: 0,
        status_changed_at_ms: 0,
        drain: None,
        provider: None,
    }
}

fn crash_repeatedly_at(failpoint: &str) {
    let scenario = FailScenario::setup();
    let mut cluster = Cluster::new();
    for round in 0..ROUNDS {
        cluster.crash_round(failpoint, round % 2 == 0);
    }
    cluster.verify(failpoint);
    scenario.teardown();
}

#[test]
fn crash_before_the_log_is_persisted() {
    crash_repeatedly_at("raft::persist");
}

#[test]
fn crash_while_applying() {
    crash_repeatedly_at("raft::apply");
}

#[test]
fn crash_while_saving_a_snapshot() {
    crash_repeatedly_at("raft::snapshot");
}

#[test]
fn crash_before_the_redb_commit() {
    crash_repeatedly_at("redb::commit");
}

#[test]
fn crash_after_the_redb_commit() {
    crash_repeatedly_at("redb::committed");
}

#[test]
fn an_entry_the_disk_corrupted_is_refused_at_start() {
    let scenario = FailScenario::setup();
    let mut cluster = Cluster::new();
    cluster.run_until(|c| c.leader().is_some());
    let follower = cluster.follower().expect("a follower");
    cluster.write();
    let mut corrupted = false;
    for _ in 0..50 {
        let before = cluster.nodes[&follower].as_ref().map(|n| n.log().read().last_index());
        cluster.step(Some((follower, "redb::corrupt_entry", "1*return")));
        if cluster.nodes[&follower].as_ref().map(|n| n.log().read().last_index()) != before {
            corrupted = true;
            break;
        }
    }
    assert!(corrupted, "the follower never appended");
    cluster.nodes.insert(follower, None);
    match cluster.start(follower) {
        Err(e @ StoreError::Corrupt { .. }) => {
            let message = e.to_string();
            assert!(message.contains("fails its checksum"), "unclear error: {message}");
            assert!(message.contains(&format!("node-{follower}.redb")), "error does not name the file: {message}");
        }
        Err(other) => panic!("a corrupt entry gave the wrong error: {other}"),
        Ok(()) => panic!("a node started on a log with a corrupt entry"),
    }
    scenario.teardown();
}
