//! Simulated agent hosts: the real agent machine (`mirari_agent::machine::Host`) with a
//! simulated disk for its records, simulated calls to the coordinators, and simulated instance
//! processes that behave as shims do: they outlive the agent, and a cluster instance's process
//! is killed once the host's fencing deadline passes, whether or not the agent is alive.

use std::collections::{BTreeMap, BTreeSet};

use mirari_agent::backends::{Ended, Handle};
use mirari_agent::machine::{Cluster, Effect, Host, Input, KeepEnded, Now};
use mirari_agent::state::{InstanceRecord, Origin};
use mirari_core::ids::InstanceId;
use mirari_core::instance::ExitStatus;
use mirari_core::lease::LeaseTiming;
use mirari_core::registry::{self, HostId, HostStatus, Resources};
use mirari_core::rng::SplitMix64;
use mirari_core::target::Target;

use crate::net::{Addr, Answer, Ms, Network, Payload, Rpc};

/// A renewal not answered by then is given up (the real agent's per-attempt deadline).
const RENEW_DEADLINE_MS: Ms = 1_000;
const CALL_DEADLINE_MS: Ms = 5_000;
/// An assignment stream silent this long is reopened on another coordinator.
const QUIET_STREAM_MS: Ms = 3_000;

pub fn host_name(index: usize) -> HostId {
    HostId(format!("host-{index}"))
}

/// One instance's process, as its shim sees it.
#[derive(Debug, Clone)]
pub struct Process {
    pub run: u64,
    pub cluster: bool,
    pub state: ProcessState,
    /// How long the app takes to stop when asked (some ignore it and are forced).
    graceful_ms: Ms,
    watched: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    Starting { ready_at: Ms, fails: bool },
    Running,
    Stopping { ends_at: Ms, forced: bool, timeout_secs: u64 },
    Ended(ExitStatus),
}

impl Process {
    pub fn is_alive(&self) -> bool {
        !matches!(self.state, ProcessState::Ended(_))
    }

    fn handle(&self) -> Handle {
        Handle(serde_json::json!({ "run": self.run }))
    }
}

#[derive(Debug, Clone)]
enum CallKind {
    Register,
    Renew,
    Report(Vec<registry::InstanceReport>),
}

#[derive(Debug, Clone)]
struct Call {
    kind: CallKind,
    sent: Ms,
    deadline: Ms,
}

#[derive(Debug, Clone)]
struct StreamState {
    id: u64,
    epoch: u64,
    heard_at: Ms,
}

#[derive(Debug)]
pub struct SimAgent {
    pub index: usize,
    pub machine: Option<Host>,
    pub frozen_until: Option<Ms>,
    /// The agent's records as its disk holds them.
    disk: BTreeMap<InstanceId, InstanceRecord>,
    /// Records the agent forgot: none of their IDs may be created again.
    forgotten: BTreeSet<InstanceId>,
    /// Inputs waiting for their time (answers, backend events).
    inbox: Vec<(Ms, Input)>,
    coordinators: Vec<u64>,
    current: usize,
    calls: BTreeMap<u64, Call>,
    next_call: u64,
    stream: Option<StreamState>,
    fence_deadline: Ms,
    pub processes: BTreeMap<InstanceId, Process>,
    next_run: u64,
    timing: LeaseTiming,
    /// The next effect list is cut short after this many effects: a crash in the middle.
    crash_after: Option<usize>,
    /// The last things that happened here, for a failure's report.
    pub trace: std::collections::VecDeque<String>,
}

impl SimAgent {
    /// An agent host, not started yet.
    pub fn new(index: usize, coordinators: Vec<u64>, timing: LeaseTiming) -> Self {
        Self {
            index,
            machine: None,
            frozen_until: None,
            disk: BTreeMap::new(),
            forgotten: BTreeSet::new(),
            inbox: Vec::new(),
            coordinators,
            current: index,
            calls: BTreeMap::new(),
            next_call: 0,
            stream: None,
            fence_deadline: 0,
            processes: BTreeMap::new(),
            next_run: 0,
            timing,
            crash_after: None,
            trace: Default::default(),
        }
    }

    fn note(&mut self, now: Ms, what: String) {
        if self.trace.len() == 400 {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{now:>6} host-{}: {what}", self.index));
    }

    pub fn info(&self) -> registry::Host {
        registry::Host {
            id: host_name(self.index),
            address: format!("sim:{}", self.index),
            backends: [Target::Unix].into(),
            capacity: Resources { memory_mib: 1 << 20, vcpus: 1024, instances: 8 },
            labels: Default::default(),
            networks: [crate::world::NETWORK.to_owned()].into(),
            status: HostStatus::Up,
            registered_at_ms: 0,
            status_changed_at_ms: 0,
            drain: None,
            provider: None,
        }
    }

    fn now(now: Ms) -> Now {
        Now { wall_ms: now, boot_ms: now }
    }

    /// Starts (or restarts) the agent from what its disk holds.
    pub fn start(&mut self, net: &mut Network, rng: &mut SplitMix64, now: Ms) {
        let cluster = Cluster { host: self.info(), timing: self.timing, lease_ran_out: now >= self.fence_deadline };
        let (mut machine, first) = Host::open(self.disk.values().cloned().collect(), Some(cluster), Self::now(now));
        // Far shorter than a real agent's, so forgetting runs under every fault too.
        machine.set_keep_ended(KeepEnded { for_ms: 3_000, at_most: 3 });
        self.machine = Some(machine);
        self.perform(net, rng, now, first);
    }

    /// The agent process dies; its instances' processes (under their shims) do not.
    pub fn crash(&mut self) {
        self.trace.push_back("  (crashed)".into());
        self.machine = None;
        self.frozen_until = None;
        self.inbox.clear();
        self.calls.clear();
        self.stream = None;
        for process in self.processes.values_mut() {
            process.watched = false;
        }
    }

    /// The next effects it performs are cut short: it crashes in the middle of them.
    pub fn crash_during_next_effects(&mut self, rng: &mut SplitMix64) {
        self.crash_after = Some(rng.below(3) as usize);
    }

    pub fn is_up(&self) -> bool {
        self.machine.is_some()
    }

    pub fn has_lease(&self, now: Ms) -> bool {
        self.machine.as_ref().is_some_and(|m| m.has_lease(Self::now(now)))
    }

    fn deliver(&mut self, at: Ms, input: Input) {
        if self.machine.is_some() {
            self.inbox.push((at, input));
        }
    }

    /// Handles a packet for this agent.
    pub fn receive(&mut self, now: Ms, payload: Payload) {
        match payload {
            Payload::Answer { call, answer } => {
                let Some(call) = self.calls.remove(&call) else { return };
                let input = match (call.kind, answer) {
                    (CallKind::Register, Answer::Lease(lease)) => {
                        Input::Registered { sent_ms: call.sent, outcome: Ok(lease) }
                    }
                    (CallKind::Register, _) => Input::Registered { sent_ms: call.sent, outcome: Err(()) },
                    (CallKind::Renew, Answer::Lease(lease)) => {
                        Input::Renewed { sent_ms: call.sent, outcome: Ok(lease) }
                    }
                    (CallKind::Renew, _) => Input::Renewed { sent_ms: call.sent, outcome: Err(()) },
                    (CallKind::Report(reports), Answer::Done) => Input::Reported { reports, ok: true },
                    (CallKind::Report(reports), _) => Input::Reported { reports, ok: false },
                };
                if matches!(input, Input::Registered { outcome: Err(()), .. } | Input::Renewed { outcome: Err(()), .. })
                    || matches!(input, Input::Reported { ok: false, .. })
                {
                    self.rotate();
                }
                self.deliver(now, input);
            }
            Payload::Assignments { stream, index, run, stop, unchanged } => {
                let Some(state) = self.stream.as_mut().filter(|s| s.id == stream) else { return };
                state.heard_at = now;
                let epoch = state.epoch;
                if !unchanged {
                    self.deliver(now, Input::Assigned { epoch, index, instances: run, stopping: stop });
                }
            }
            Payload::Raft(_) | Payload::Call { .. } => {}
        }
    }

    fn rotate(&mut self) {
        self.current += 1;
    }

    fn coordinator(&self) -> Addr {
        Addr::Coordinator(self.coordinators[self.current % self.coordinators.len()])
    }

    fn call(&mut self, net: &mut Network, rng: &mut SplitMix64, now: Ms, kind: CallKind, rpc: Rpc) {
        self.next_call += 1;
        let deadline = now + if matches!(kind, CallKind::Renew) { RENEW_DEADLINE_MS } else { CALL_DEADLINE_MS };
        self.calls.insert(self.next_call, Call { kind, sent: now, deadline });
        net.send(rng, now, Addr::Agent(self.index), self.coordinator(), Payload::Call { call: self.next_call, rpc });
    }

    fn open_stream(&mut self, net: &mut Network, rng: &mut SplitMix64, now: Ms, epoch: u64) {
        self.next_call += 1;
        let id = self.next_call;
        self.stream = Some(StreamState { id, epoch, heard_at: now });
        let to = self.coordinator();
        self.note(now, format!("opens assignment stream {id} for epoch {epoch} on {to:?}"));
        net.send(rng, now, Addr::Agent(self.index), to, Payload::Call { call: id, rpc: Rpc::Watch { stream: id } });
    }

    /// One step of time: processes move on (whether or not the agent lives), calls time out,
    /// and a live, thawed agent handles what is due.
    pub fn advance(&mut self, net: &mut Network, rng: &mut SplitMix64, now: Ms, crashes: bool) {
        self.advance_processes(rng, now, crashes);
        if self.machine.is_none() {
            return;
        }
        if let Some(until) = self.frozen_until {
            if now < until {
                return;
            }
            self.frozen_until = None;
        }
        let expired: Vec<u64> = self.calls.iter().filter(|(_, c)| c.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            let call = self.calls.remove(&id).expect("listed");
            self.rotate();
            let input = match call.kind {
                CallKind::Register => Input::Registered { sent_ms: call.sent, outcome: Err(()) },
                CallKind::Renew => Input::Renewed { sent_ms: call.sent, outcome: Err(()) },
                CallKind::Report(reports) => Input::Reported { reports, ok: false },
            };
            self.inbox.push((now, input));
        }
        if let Some(stream) = self.stream.clone()
            && now >= stream.heard_at + QUIET_STREAM_MS
        {
            self.rotate();
            self.open_stream(net, rng, now, stream.epoch);
        }
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.inbox).into_iter().partition(|(at, _)| *at <= now);
        self.inbox = later;
        for (_, input) in due {
            self.handle(net, rng, now, input);
        }
        let wake = self.machine.as_ref().map(|m| m.wake_at(Self::now(now)));
        if wake.is_some_and(|wake| wake <= now) {
            self.handle(net, rng, now, Input::Tick);
        }
    }

    fn handle(&mut self, net: &mut Network, rng: &mut SplitMix64, now: Ms, input: Input) {
        let Some(machine) = self.machine.as_mut() else { return };
        let described = describe_input(&input);
        let effects = machine.handle(Self::now(now), input);
        if let Some(described) = described {
            let what: Vec<String> = effects.iter().filter_map(describe_effect).collect();
            self.note(now, format!("{described} -> {}", what.join(", ")));
        }
        self.perform(net, rng, now, effects);
    }

    fn perform(&mut self, net: &mut Network, rng: &mut SplitMix64, now: Ms, effects: Vec<Effect>) {
        let cut = self.crash_after.take();
        for (done, effect) in effects.into_iter().enumerate() {
            if cut == Some(done) {
                self.crash();
                return;
            }
            self.perform_one(net, rng, now, effect);
            if self.machine.is_none() {
                return;
            }
        }
    }

    fn perform_one(&mut self, net: &mut Network, rng: &mut SplitMix64, now: Ms, effect: Effect) {
        match effect {
            Effect::Persist { new, changed } => {
                for record in new {
                    assert!(
                        !self.disk.contains_key(&record.id) && !self.forgotten.contains(&record.id),
                        "host {}: instance ID {} created twice",
                        self.index,
                        record.id
                    );
                    self.disk.insert(record.id, record);
                }
                for record in changed {
                    self.disk.insert(record.id, record);
                }
            }
            Effect::Forget(ids) => {
                for id in ids {
                    self.disk.remove(&id);
                    self.forgotten.insert(id);
                }
            }
            Effect::Start(record) => {
                self.next_run += 1;
                let graceful_ms = if rng.chance(20) { rng.between(2_500, 6_000) } else { rng.between(0, 800) };
                let process = Process {
                    run: self.next_run,
                    cluster: record.origin == Origin::Cluster,
                    state: ProcessState::Starting { ready_at: now + rng.between(20, 300), fails: rng.chance(2) },
                    graceful_ms,
                    watched: false,
                };
                self.processes.insert(record.id, process);
            }
            Effect::Watch(record) => {
                if let Some(process) = self.processes.get_mut(&record.id) {
                    process.watched = true;
                    if let ProcessState::Ended(status) = process.state {
                        self.deliver(
                            now,
                            Input::Ended { id: record.id, ended: Ended::Exited(status), context: String::new() },
                        );
                    }
                }
            }
            Effect::Stop { record, timeout_secs, .. } => {
                let id = record.id;
                match self.processes.get_mut(&id) {
                    Some(process) if process.is_alive() => {
                        let timeout_ms = timeout_secs * 1000;
                        let forced = process.graceful_ms > timeout_ms;
                        let ends_at = now + process.graceful_ms.min(timeout_ms);
                        process.state = ProcessState::Stopping { ends_at, forced, timeout_secs };
                    }
                    _ => self.deliver(now, Input::StopReturned { id, outcome: Ok(false), timeout_secs }),
                }
            }
            Effect::Release { record, handle } => {
                self.deliver(now + 1, Input::Released { id: record.id, handle, ok: true });
            }
            Effect::Recover(record) => {
                let id = record.id;
                let input = match self.processes.get(&id) {
                    Some(process) if process.is_alive() => Input::Adopted { id, handle: process.handle() },
                    Some(Process { state: ProcessState::Ended(status), .. }) => {
                        Input::Ended { id, ended: Ended::Exited(*status), context: " while the agent was down".into() }
                    }
                    _ => Input::Ended { id, ended: Ended::Lost, context: " while the agent was down".into() },
                };
                self.deliver(now, input);
            }
            Effect::Register(host) => self.call(net, rng, now, CallKind::Register, Rpc::Register(Box::new(host))),
            Effect::Renew => self.call(net, rng, now, CallKind::Renew, Rpc::Renew),
            Effect::Report(reports) => {
                self.call(net, rng, now, CallKind::Report(reports.clone()), Rpc::Report(reports))
            }
            Effect::WatchAssignments { epoch } => self.open_stream(net, rng, now, epoch),
            Effect::StopWatchingAssignments => self.stream = None,
            Effect::FetchBlobs { generation, .. } => {
                let ok = !rng.chance(5);
                let at = now + rng.between(5, 60);
                self.deliver(at, Input::BlobsFetched { generation, ok });
            }
            Effect::FenceDeadline { boot_ms } => self.fence_deadline = boot_ms,
            Effect::Probe { id, run, timeout_ms, .. } => {
                // A live process answers, but one probe in ten is lost (a hung or slow app):
                // two lost in a row make it unhealthy, and it is restarted.
                let answers = self.processes.get(&id).is_some_and(|p| p.is_alive()) && !rng.chance(10);
                let (at, result) = match answers {
                    true => (now + rng.between(1, 20), Ok(())),
                    false => (now + timeout_ms, Err("timed out".into())),
                };
                self.deliver(at, Input::Probed { id, run, result });
            }
        }
    }

    /// Processes start, stop, crash now and then (with `crashes`), and are fenced by their
    /// shims.
    fn advance_processes(&mut self, rng: &mut SplitMix64, now: Ms, crashes: bool) {
        let fence = self.fence_deadline;
        let mut events = Vec::new();
        for (id, process) in &mut self.processes {
            let before = process.state;
            let fenced = process.cluster && process.is_alive() && now >= fence;
            process.state = match process.state {
                _ if fenced => ProcessState::Ended(ExitStatus::Signal(9)),
                ProcessState::Starting { ready_at, fails } if now >= ready_at => {
                    if fails {
                        ProcessState::Ended(ExitStatus::Code(127))
                    } else {
                        ProcessState::Running
                    }
                }
                ProcessState::Running if crashes && rng.chance_per_mille(1) => ProcessState::Ended(ExitStatus::Code(1)),
                ProcessState::Stopping { ends_at, forced, .. } if now >= ends_at => {
                    ProcessState::Ended(if forced { ExitStatus::Signal(9) } else { ExitStatus::Code(0) })
                }
                state => state,
            };
            if process.state != before {
                events.push((*id, before, process.state, process.handle(), process.watched));
            }
        }
        for (id, before, after, handle, watched) in events {
            match (before, after) {
                (ProcessState::Starting { .. }, ProcessState::Running) => {
                    self.deliver(
                        now,
                        Input::Started { id, outcome: Ok((handle, format!("sim run on host {}", self.index))) },
                    );
                }
                (ProcessState::Starting { .. }, ProcessState::Ended(status)) if status != ExitStatus::Signal(9) => {
                    self.deliver(now, Input::Started { id, outcome: Err("the simulated app would not start".into()) });
                }
                (_, ProcessState::Ended(status)) => {
                    if let ProcessState::Stopping { forced, timeout_secs, .. } = before {
                        let forced = forced && status == ExitStatus::Signal(9);
                        self.deliver(now, Input::StopReturned { id, outcome: Ok(forced), timeout_secs });
                    }
                    if watched {
                        self.deliver(now, Input::Ended { id, ended: Ended::Exited(status), context: String::new() });
                    } else if matches!(before, ProcessState::Starting { .. }) {
                        // Fenced before it was seen running: its start failed.
                        self.deliver(now, Input::Started { id, outcome: Err("fenced while starting".into()) });
                    }
                }
                _ => {}
            }
        }
    }
}

/// Inputs worth a line in the trace (not ticks and renewals, which are many).
fn describe_input(input: &Input) -> Option<String> {
    Some(match input {
        Input::Tick | Input::Renewed { outcome: Ok(_), .. } => return None,
        Input::Assigned { epoch, index, instances, stopping } => {
            let run: Vec<String> = instances.iter().map(|(id, _)| id.to_string()[..6].to_owned()).collect();
            let stop: Vec<String> = stopping.iter().map(|id| id.to_string()[..6].to_owned()).collect();
            format!("assigned in epoch {epoch} as of {index}: run {run:?} stop {stop:?}")
        }
        Input::Registered { outcome, .. } => format!("registered: {}", outcome.is_ok()),
        Input::Renewed { .. } => "renewal failed".into(),
        other => format!("{other:?}").chars().take(120).collect(),
    })
}

fn describe_effect(effect: &Effect) -> Option<String> {
    Some(match effect {
        Effect::Start(record) => format!("start {}", &record.id.to_string()[..6]),
        Effect::Stop { record, .. } => format!("stop {}", &record.id.to_string()[..6]),
        Effect::WatchAssignments { epoch } => format!("watch epoch {epoch}"),
        Effect::StopWatchingAssignments => "stop watching".into(),
        Effect::Report(reports) => format!(
            "report {:?}",
            reports
                .iter()
                .map(|r| (r.id.to_string()[..6].to_owned(), r.phase, r.assignments_index))
                .collect::<Vec<_>>()
        ),
        Effect::Persist { .. } | Effect::Renew | Effect::FenceDeadline { .. } => return None,
        other => format!("{other:?}").chars().take(60).collect(),
    })
}
