//! Simulated coordinators: real raft `Node`s (raft-rs and the registry) on a [`SimulatedDisk`],
//! with the leader's duties (`mirari_core`'s lease table and scheduler rounds) and what the
//! coordinator service does for agents: leases granted only after a ReadIndex round confirms
//! leadership, registrations and reports committed through raft, assignment streams served
//! after read barriers with an "unchanged" message every second.
//!
//! Simplified against the real service: a coordinator that does not lead answers an agent's
//! call with a failure instead of forwarding it (the agent then tries the next one).

use crate::world::Planned;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mirari_agent::machine::Lease;
use mirari_coordinator::consensus::{RaftMessage, logger};
use mirari_coordinator::consensus::node::{Node, NodeConfig, Output};
use mirari_coordinator::consensus::storage::{RaftLog, SimulatedDisk};
use mirari_core::ids::InstanceId;
use mirari_core::lease::{LeaseTable, LeaseTiming};
use mirari_core::registry::{ApplyResult, Command, HostId, HostStatus, HostVersion, Registry, Request};
use mirari_core::retention::{self, Retention};
use mirari_core::rng::SplitMix64;
use mirari_core::{rollout, scheduler};

use crate::net::{Addr, Answer, Ms, Network, Payload, Rpc};

pub const TICK_MS: Ms = 100;
const DUTY_MS: Ms = 200;
/// Ended instances are forgotten 3 s after their release, beyond 3 per app at once.
const SIM_RETENTION: Retention = Retention { keep_for_ms: 3_000, keep_per_app: 3 };
const STREAM_RECHECK_MS: Ms = 1_000;
/// A read barrier not answered by then is asked again (raft drops some silently).
const READ_RETRY_MS: Ms = 500;
/// The leader answers a renewal within this or not at all (the agent's deadline is longer).
const RENEW_DEADLINE_MS: Ms = 800;

/// Something waiting for its raft entry to apply.
#[derive(Debug, Clone)]
enum Waiting {
    Register { agent: usize, call: u64, host: HostId, received: Ms },
    Report { agent: usize, call: u64 },
    Client,
}

/// Something waiting for a read barrier.
#[derive(Debug, Clone)]
enum Reading {
    Renew { agent: usize, call: u64, host: HostId, received: Ms, term: u64 },
    Stream { stream: u64 },
}

#[derive(Debug)]
struct Stream {
    agent: usize,
    host: HostId,
    /// What was last sent, to send changes only.
    last: Option<(Vec<InstanceId>, Vec<InstanceId>)>,
    sent_at: Ms,
    checking: bool,
    /// The host's version when its set was last looked at (`None`: not yet).
    seen_version: Option<HostVersion>,
}

/// What a coordinator applied that the world wants to know.
#[derive(Debug, Default)]
pub struct Applied {
    /// Client writes this node acknowledged (it applied them as the leader it was asked as).
    pub acked: Vec<(String, ApplyResult)>,
}

#[derive(Debug)]
pub struct SimCoordinator {
    pub id: u64,
    pub node: Option<Node<Arc<SimulatedDisk>>>,
    pub disk: Arc<SimulatedDisk>,
    leases: LeaseTable,
    led_in_term: Option<u64>,
    waiting: BTreeMap<String, Waiting>,
    reads_to_ask: Vec<(Ms, Reading)>,
    reads: BTreeMap<u64, Vec<(Ms, Reading)>>,
    awaiting_apply: Vec<(u64, Ms, Reading)>,
    streams: BTreeMap<u64, Stream>,
    next_read: u64,
    next_tick: Ms,
    next_duty: Ms,
    timing: LeaseTiming,
    /// The last things that happened here, for a failure's report.
    pub trace: std::collections::VecDeque<String>,
}

impl SimCoordinator {
    pub fn new(id: u64, disk: Arc<SimulatedDisk>, timing: LeaseTiming) -> Self {
        let mut coordinator = Self {
            id,
            node: None,
            disk,
            leases: LeaseTable::new(timing),
            led_in_term: None,
            waiting: BTreeMap::new(),
            reads_to_ask: Vec::new(),
            reads: BTreeMap::new(),
            awaiting_apply: Vec::new(),
            streams: BTreeMap::new(),
            next_read: 0,
            next_tick: 0,
            next_duty: 0,
            timing,
            trace: Default::default(),
        };
        coordinator.start();
        coordinator
    }

    fn note(&mut self, now: Ms, what: String) {
        if self.trace.len() == 400 {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{now:>6} coordinator-{}: {what}", self.id));
    }

    /// Starts (or restarts) the node from what its disk holds; all else starts empty.
    pub fn start(&mut self) {
        self.disk.fail_writes(false);
        let min = 10 + 3 * self.id as usize;
        let config = NodeConfig {
            snapshot_every: 200,
            keep_entries: 50,
            election_range: Some((min, min + 1)),
            ..NodeConfig::new(self.id)
        };
        let log = RaftLog::new(self.disk.durable(), self.disk.clone());
        self.node = Some(Node::new(config, log, &logger::silent()).expect("a simulated node restarts from its disk"));
        self.leases = LeaseTable::new(self.timing);
        self.led_in_term = None;
        self.waiting.clear();
        self.reads_to_ask.clear();
        self.reads.clear();
        self.awaiting_apply.clear();
        self.streams.clear();
    }

    /// Crashes the node; with `mid_write`, in the middle of its next disk write.
    pub fn crash(&mut self, mid_write: bool) {
        if mid_write {
            self.disk.fail_writes(true);
            if let Some(node) = self.node.as_mut()
                && node.has_ready()
            {
                let _ = node.handle_ready();
            }
        }
        self.node = None;
    }

    pub fn is_up(&self) -> bool {
        self.node.is_some()
    }

    pub fn is_leader(&self) -> bool {
        self.node.as_ref().is_some_and(Node::is_leader)
    }

    pub fn registry(&self) -> Option<Registry> {
        self.node.as_ref().map(|n| n.machine().registry.clone())
    }

    /// Proposes a client's write; false if this node does not lead.
    pub fn propose_client(&mut self, request: &Request) -> bool {
        let Some(node) = self.node.as_mut().filter(|n| n.is_leader()) else { return false };
        if node.propose(request).is_err() {
            return false;
        }
        self.waiting.insert(request.request_id.clone(), Waiting::Client);
        true
    }

    fn answer(net: &mut Network, rng: &mut SplitMix64, now: Ms, from: u64, agent: usize, call: u64, answer: Answer) {
        net.send(rng, now, Addr::Coordinator(from), Addr::Agent(agent), Payload::Answer { call, answer });
    }

    fn lease(ttl: Option<Duration>) -> Answer {
        let ttl_ms = ttl.map_or(0, mirari_core::clock::millis);
        Answer::Lease(Lease { ttl_ms, register_again: ttl.is_none() })
    }

    /// Handles a packet addressed to this coordinator.
    pub fn receive(&mut self, net: &mut Network, rng: &mut SplitMix64, now: Ms, from: Addr, payload: Payload) {
        let Some(node) = self.node.as_mut() else { return };
        let id = self.id;
        match payload {
            Payload::Raft(message) => {
                let _ = node.step(*message);
            }
            Payload::Call { call, rpc } => {
                let Addr::Agent(agent) = from else { return };
                let leads = node.is_leader();
                match rpc {
                    Rpc::Renew if leads => {
                        let host = crate::agents::host_name(agent);
                        let term = node.term();
                        self.reads_to_ask.push((now, Reading::Renew { agent, call, host, received: now, term }));
                    }
                    Rpc::Register(host) if leads => {
                        let request = Request {
                            request_id: format!("register-{id}-{call}-{}", rng.next_u64()),
                            command: Command::RegisterHost { host: (*host).clone() },
                        };
                        if node.propose(&request).is_ok() {
                            self.waiting.insert(
                                request.request_id,
                                Waiting::Register { agent, call, host: host.id, received: now },
                            );
                        } else {
                            Self::answer(net, rng, now, id, agent, call, Answer::Failed);
                        }
                    }
                    Rpc::Report(reports) if leads => {
                        let host = crate::agents::host_name(agent);
                        let request = Request {
                            request_id: format!("report-{id}-{call}-{}", rng.next_u64()),
                            command: Command::ReportInstances { host, reports, at_ms: now },
                        };
                        if node.propose(&request).is_ok() {
                            self.waiting.insert(request.request_id, Waiting::Report { agent, call });
                        } else {
                            Self::answer(net, rng, now, id, agent, call, Answer::Failed);
                        }
                    }
                    Rpc::Watch { stream } => {
                        // An agent follows one stream: the one it opened last (it dropped the
                        // others, which their servers then notice).
                        self.streams.retain(|_, s| s.agent != agent);
                        let host = crate::agents::host_name(agent);
                        self.streams.insert(
                            stream,
                            Stream { agent, host, last: None, sent_at: 0, checking: true, seen_version: None },
                        );
                        self.reads_to_ask.push((now, Reading::Stream { stream }));
                    }
                    _ => Self::answer(net, rng, now, id, agent, call, Answer::Failed),
                }
            }
            Payload::Answer { .. } | Payload::Assignments { .. } => {}
        }
    }

    /// One step of time: ticks, the leader's duties, read barriers, readies, streams.
    pub fn advance(
        &mut self,
        net: &mut Network,
        rng: &mut SplitMix64,
        now: Ms,
        placements: &mut BTreeMap<InstanceId, Planned>,
    ) -> Applied {
        let mut applied = Applied::default();
        if self.node.is_none() {
            return applied;
        }
        if now >= self.next_tick {
            self.next_tick = now + TICK_MS;
            self.node.as_mut().expect("up").tick();
        }
        self.notice_leadership(net, rng, now);
        if now >= self.next_duty && self.is_leader() {
            self.next_duty = now + DUTY_MS;
            self.duties(rng, now, placements);
        }
        self.check_streams(now);
        self.ask_reads(now);
        loop {
            let Some(node) = self.node.as_mut() else { return applied };
            if !node.has_ready() {
                break;
            }
            // As the driver does: the leader's appends leave while it writes them.
            let early = node.take_early_messages();
            self.send_raft(net, rng, now, early);
            let Some(node) = self.node.as_mut() else { return applied };
            match node.handle_ready() {
                Ok(output) => self.handled(net, rng, now, output, &mut applied),
                Err(error) => panic!("coordinator {}: a ready failed with a working disk: {error}", self.id),
            }
        }
        self.complete_reads(net, rng, now);
        self.notice_leadership(net, rng, now);
        applied
    }

    /// Leadership gained: fresh leases for all. Lost: everyone waiting is told to retry.
    fn notice_leadership(&mut self, net: &mut Network, rng: &mut SplitMix64, now: Ms) {
        let Some(node) = self.node.as_ref() else { return };
        let term = node.term();
        if node.is_leader() && self.led_in_term != Some(term) {
            self.led_in_term = Some(term);
            self.leases.start_leading(&node.machine().registry, now);
            self.note(now, format!("leads in term {term}: every host's lease starts now"));
        } else if !node.is_leader() && self.led_in_term.is_some() {
            self.led_in_term = None;
            self.note(now, "no longer leads".into());
            for (_, waiting) in std::mem::take(&mut self.waiting) {
                if let Waiting::Register { agent, call, .. } | Waiting::Report { agent, call } = waiting {
                    Self::answer(net, rng, now, self.id, agent, call, Answer::Failed);
                }
            }
        }
    }

    fn duties(&mut self, rng: &mut SplitMix64, now: Ms, placements: &mut BTreeMap<InstanceId, Planned>) {
        let node = self.node.as_mut().expect("up");
        let (expired, steps, plans, forget) = {
            let machine = node.machine();
            let registry = &machine.registry;
            let expired = self.leases.expired(registry, now);
            // Past the IDs of plans proposed and not yet applied, as a leader's next round is.
            let mut fresh = registry.fresh_ids().filter(|id| !placements.contains_key(id));
            let mut mint = || fresh.next().expect("2^64 instance IDs");
            let plans = scheduler::plan_round(registry, 5000, now, &mut mint);
            // Far shorter than a real cluster's, so forgetting runs under every fault too.
            let forget = retention::forgettable(registry, now, SIM_RETENTION, 5000);
            (expired, rollout::plan(registry, now), plans, forget)
        };
        if !forget.is_empty() {
            let request_id = format!("forget-{}-{}", self.id, rng.next_u64());
            let _ = node.propose(&Request { request_id, command: Command::ForgetInstances { ids: forget } });
        }
        for host in expired {
            self.trace.push_back(format!("{now:>6} coordinator-{}: declares {host} down", self.id));
            let command = Command::SetHostStatus { host, status: HostStatus::Down, at_ms: now };
            let _ = node.propose(&Request { request_id: format!("down-{}-{now}", self.id), command });
        }
        for command in steps {
            let request_id = format!("rollout-{}-{}", self.id, rng.next_u64());
            let _ = node.propose(&Request { request_id, command });
        }
        for plan in plans {
            for placed in &plan.placements {
                let addresses = placed.interfaces.iter().map(|i| i.address.address).collect();
                placements.insert(placed.id, Planned { app: plan.app.clone(), slot: placed.slot, addresses });
            }
            let command = Command::Place {
                app: plan.app.clone(),
                generation: plan.generation,
                placements: plan.placements,
                at_ms: now,
            };
            let _ = node.propose(&Request { request_id: format!("place-{}-{}", self.id, rng.next_u64()), command });
        }
    }

    /// Streams look again every second, or when their host's assignments changed.
    fn check_streams(&mut self, now: Ms) {
        let Some(node) = self.node.as_ref() else { return };
        let machine = node.machine();
        for (id, stream) in &mut self.streams {
            let version = machine.registry.host_version(&stream.host);
            if !stream.checking && (Some(version) != stream.seen_version || now >= stream.sent_at + STREAM_RECHECK_MS) {
                stream.checking = true;
                self.reads_to_ask.push((now, Reading::Stream { stream: *id }));
            }
        }
    }

    fn ask_reads(&mut self, now: Ms) {
        // Reads raft dropped silently are asked again.
        let stale: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, reads)| reads.iter().any(|(at, _)| now >= at + READ_RETRY_MS))
            .map(|(c, _)| *c)
            .collect();
        for context in stale {
            let reads = self.reads.remove(&context).unwrap_or_default();
            self.reads_to_ask.extend(reads.into_iter().map(|(_, reading)| (now, reading)));
        }
        if self.reads_to_ask.is_empty() {
            return;
        }
        self.next_read += 1;
        let node = self.node.as_mut().expect("up");
        node.read_index(self.next_read.to_be_bytes().to_vec());
        self.reads.insert(self.next_read, std::mem::take(&mut self.reads_to_ask));
    }

    fn send_raft(&self, net: &mut Network, rng: &mut SplitMix64, now: Ms, messages: Vec<RaftMessage>) {
        for message in messages {
            let to = message.to;
            net.send(rng, now, Addr::Coordinator(self.id), Addr::Coordinator(to), Payload::Raft(Box::new(message)));
        }
    }

    fn handled(&mut self, net: &mut Network, rng: &mut SplitMix64, now: Ms, output: Output, applied: &mut Applied) {
        self.send_raft(net, rng, now, output.messages);
        let leads = self.is_leader();
        for entry in output.applied {
            let Some(waiting) = self.waiting.remove(&entry.request_id) else { continue };
            match waiting {
                Waiting::Client if leads => applied.acked.push((entry.request_id, entry.result)),
                Waiting::Client => {}
                Waiting::Register { agent, call, host, received } => {
                    let renewed = entry.result.is_ok().then(|| {
                        let node = self.node.as_ref().expect("up");
                        let machine = node.machine();
                        let registry = &machine.registry;
                        registry.host(&host).and_then(|record| self.leases.renew(registry, record, received))
                    });
                    let answer = renewed.flatten().map_or(Answer::Failed, |ttl| Self::lease(Some(ttl)));
                    Self::answer(net, rng, now, self.id, agent, call, answer);
                }
                Waiting::Report { agent, call } => {
                    let answer = if entry.result.is_ok() { Answer::Done } else { Answer::Failed };
                    Self::answer(net, rng, now, self.id, agent, call, answer);
                }
            }
        }
        for read in output.read_states {
            let context = read.request_ctx.as_slice().try_into().map(u64::from_be_bytes);
            if let Some(reads) = context.ok().and_then(|c| self.reads.remove(&c)) {
                self.awaiting_apply.extend(reads.into_iter().map(|(at, reading)| (read.index, at, reading)));
            }
        }
    }

    fn complete_reads(&mut self, net: &mut Network, rng: &mut SplitMix64, now: Ms) {
        let Some(node) = self.node.as_ref() else { return };
        let applied = node.applied_index();
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.awaiting_apply).into_iter().partition(|(index, _, _)| *index <= applied);
        self.awaiting_apply = waiting;
        for (_, _, reading) in ready {
            match reading {
                Reading::Renew { agent, call, host, received, term } => {
                    let node = self.node.as_ref().expect("up");
                    let confirmed = node.is_leader() && node.term() == term && now <= received + RENEW_DEADLINE_MS;
                    if !confirmed {
                        Self::answer(net, rng, now, self.id, agent, call, Answer::Failed);
                        continue;
                    }
                    let renewed = {
                        let machine = node.machine();
                        let record = machine.registry.host(&host).filter(|h| h.status == HostStatus::Up);
                        record.map(|record| self.leases.renew(&machine.registry, record, received))
                    };
                    let answer = match renewed {
                        None => Self::lease(None),
                        Some(Some(ttl)) => {
                            self.note(now, format!("renews {host}'s lease, received at {received}"));
                            Self::lease(Some(ttl))
                        }
                        Some(None) => {
                            self.note(now, format!("refuses {host} a lease: it is being declared down"));
                            Answer::Failed
                        }
                    };
                    Self::answer(net, rng, now, self.id, agent, call, answer);
                }
                Reading::Stream { stream: id } => self.send_assignments(net, rng, now, id),
            }
        }
    }

    fn send_assignments(&mut self, net: &mut Network, rng: &mut SplitMix64, now: Ms, id: u64) {
        let Some(node) = self.node.as_ref() else { return };
        let machine = node.machine();
        let Some(stream) = self.streams.get_mut(&id) else { return };
        // As the service does: the set is built again only when the host's version moved.
        let registry = &machine.registry;
        let set = match stream.seen_version {
            Some(seen) => registry.assignments_since(&stream.host, seen),
            None => Some(registry.assignments(&stream.host)),
        };
        stream.checking = false;
        stream.seen_version = Some(registry.host_version(&stream.host));
        stream.sent_at = now;
        let agent = stream.agent;
        let index = registry.applied_index();
        drop(machine);
        let changed = set.and_then(|(run, stop)| {
            let ids = (run.iter().map(|(id, _)| *id).collect::<Vec<_>>(), stop.clone());
            (self.streams.get(&id)?.last.as_ref() != Some(&ids)).then_some((ids, run, stop))
        });
        let payload = match changed {
            None => Payload::Assignments { stream: id, index, run: Vec::new(), stop: Vec::new(), unchanged: true },
            Some((ids, run, stop)) => {
                let (run_ids, stop_ids) = (ids_short(&ids.0), ids_short(&ids.1));
                self.note(now, format!("sends host-{agent} on stream {id}: run {run_ids:?} stop {stop_ids:?}"));
                if let Some(stream) = self.streams.get_mut(&id) {
                    stream.last = Some(ids);
                }
                Payload::Assignments { stream: id, index, run, stop, unchanged: false }
            }
        };
        net.send(rng, now, Addr::Coordinator(self.id), Addr::Agent(agent), payload);
    }
}

fn ids_short(ids: &[InstanceId]) -> Vec<String> {
    ids.iter().map(|id| id.to_string()[..6].to_owned()).collect()
}
