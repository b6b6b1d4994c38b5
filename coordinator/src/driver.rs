//! The raft driver: one task owns the [`Node`]; the rest of the coordinator talks to it through
//! a [`RaftHandle`].
//!
//! The task ticks the node, steps in peer messages, proposes, and after every batch of inputs
//! runs `handle_ready` until nothing is left, sending messages through the [`Transport`] and
//! answering the callers whose entries were applied. Inputs that arrive together are handled
//! together, so many proposals under load become one ready and one durable write, and many
//! read barriers one ReadIndex round.
//!
//! The task runs on a thread of its own: its fsyncs (and snapshots) block that thread only,
//! never the async workers that serve heartbeats and reads.
//!
//! When the data directory cannot be written (a full disk) the node stalls: the driver says so
//! in the status, refuses what needs this node's disk (writes while it leads, linearizable
//! reads) with an error that says why, and tries the write again every second. Reads with
//! `--stale` are served from what it applied; writes that reach it as a follower go on to the
//! leader.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use mirari_core::registry::{ApplyResult, Event, EventKind, HostId, Request};
use raft::StateRole;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::consensus::RaftMessage;
use crate::consensus::machine::Machine;
use crate::consensus::node::{Applied, MembershipChange, Node, NodeError, Refused, Replication};
use crate::consensus::storage::Backing;
use crate::events::{EVENTS_KEPT, EventLog, Filter, Gone, Position};
use crate::host_changes::HostChanges;
use crate::metrics::CoordinatorMetrics;
use crate::transport::Transport;

/// How long a read barrier waits for raft's answer before asking again.
const READ_INDEX_RETRY: Duration = Duration::from_millis(500);
/// How many events a reader of the stream is sent per look at the log.
const EVENT_BATCH: usize = 256;
/// How many inputs may queue for the driver before callers wait.
const INPUT_QUEUE: usize = 4096;
/// How often a stalled node tries its failed write again.
const STALLED_RETRY: Duration = Duration::from_secs(1);

/// This node's view of the group, published after every batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Why the data directory cannot be written, while it cannot.
    pub disk_failure: Option<String>,
    /// Each member's replication, while this node leads.
    pub replication: Vec<Replication>,
}

/// Why a write did not go through here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("this coordinator is not the leader")]
    NotLeader { leader: Option<u64> },
    #[error("leadership changed before the write was applied; it may still apply: retry with the same request ID")]
    LeadershipLost,
    #[error("the raft driver has stopped")]
    Stopped,
    #[error(
        "this coordinator cannot write its data directory ({0}) and retries every second; a write already under way \
         may still apply then (retrying it with the same request ID applies it once). Send writes to another \
         coordinator, or read here with --stale"
    )]
    DiskFailure(String),
    #[error("{0}")]
    Invalid(String),
}

pub type ProposeResult = Result<Applied, ProposeError>;
type ReadReply = oneshot::Sender<Result<(), ProposeError>>;

enum Input {
    /// Messages from peer `from`, which said it is reachable at `address`.
    Step {
        from: u64,
        address: String,
        messages: Vec<RaftMessage>,
    },
    Propose(Box<Request>, oneshot::Sender<ProposeResult>),
    ChangeMembership(MembershipChange, oneshot::Sender<ProposeResult>),
    ReadIndex(oneshot::Sender<Result<(), ProposeError>>),
    /// What the transport learned about delivering to a peer.
    Delivery {
        peer: u64,
        delivered: bool,
        snapshot: bool,
    },
}

/// How the rest of the coordinator reaches the raft node.
#[derive(Debug, Clone)]
pub struct RaftHandle {
    inputs: mpsc::Sender<Input>,
    status: watch::Receiver<RaftStatus>,
    /// The leader this node knows of (changes far less often than the status).
    leader: watch::Receiver<Option<u64>>,
    host_changes: Arc<HostChanges>,
    /// Woken when an applied entry asked for placements ([`EventKind::asks_for_placement`]).
    placement_wanted: Arc<Notify>,
    machine: Arc<RwLock<Machine>>,
    events: Arc<RwLock<EventLog>>,
    metrics: Arc<CoordinatorMetrics>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Input::Step { .. } => "Step",
            Input::Propose(..) => "Propose",
            Input::ChangeMembership(..) => "ChangeMembership",
            Input::ReadIndex(_) => "ReadIndex",
            Input::Delivery { .. } => "Delivery",
        })
    }
}

impl RaftHandle {
    pub fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    /// Waits for the next status change (e.g. a leader elected).
    pub async fn status_changed(&mut self) -> RaftStatus {
        let _ = self.status.changed().await;
        self.status()
    }

    /// The term this node leads in, if it leads (cheaper than [`Self::status`]: no copy).
    pub fn leading_term(&self) -> Option<u64> {
        let status = self.status.borrow();
        (status.role == "leader").then_some(status.term)
    }

    /// The leader this node knows of, if any.
    pub fn leader(&self) -> Option<u64> {
        *self.leader.borrow()
    }

    /// Waits until this node knows of another leader than `leader` (or of none), and returns
    /// it. Unlike [`Self::status_changed`], not woken by every commit.
    pub async fn leader_other_than(&self, leader: Option<u64>) -> Option<u64> {
        let mut watch = self.leader.clone();
        let known = watch.wait_for(|known| *known != leader).await.map(|known| *known);
        match known {
            Ok(known) => known,
            // The driver stopped: there will be no leader here.
            Err(_) => std::future::pending().await,
        }
    }

    /// A wake-up for each applied change to what `host` must run or stop.
    pub fn host_changes(&self, host: &HostId) -> Arc<Notify> {
        self.host_changes.subscribe(host)
    }

    /// Waits until an applied entry asks for placements (a deploy, a scale, a promotion): the
    /// leader plans them at once rather than at its next round. One that came while nobody
    /// waited is kept.
    pub async fn placement_wanted(&self) {
        self.placement_wanted.notified().await;
    }

    /// The counters and histograms the coordinator's loops update.
    pub fn metrics(&self) -> &CoordinatorMetrics {
        &self.metrics
    }

    /// The replicated state as this node has applied it.
    pub fn machine(&self) -> RwLockReadGuard<'_, Machine> {
        self.machine.read().expect("state machine lock")
    }

    /// The events of the entries this node applied (a bounded window of the newest).
    pub fn events(&self) -> RwLockReadGuard<'_, EventLog> {
        self.events.read().expect("event log lock")
    }

    /// The events from `from` on (the oldest held if `None`) that pass `filter`, in order; with
    /// `follow`, then each new one as it is applied. Ends with [`Gone`] if the reader falls
    /// so far behind that the events it would read next were dropped.
    pub fn watch_events(
        &self,
        from: Option<Position>,
        filter: Filter,
        follow: bool,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<Event, Gone>> {
        let (sender, receiver) = mpsc::channel(EVENT_BATCH);
        let mut raft = self.clone();
        tokio::spawn(async move {
            let mut from = from;
            loop {
                // The batch and where the log ends, read together: nothing slips between them.
                let read = {
                    let log = raft.events();
                    log.read(from, &filter, EVENT_BATCH).map(|batch| (batch, log.end()))
                };
                let (batch, end) = match read {
                    Ok(read) => read,
                    Err(gone) => {
                        let _ = sender.send(Err(gone)).await;
                        return;
                    }
                };
                let caught_up = batch.len() < EVENT_BATCH;
                for event in batch {
                    from = Some(Position::after(&event));
                    if sender.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if caught_up {
                    // Events the filter skipped need not be read again.
                    from = Some(from.map_or(end, |from| from.max(end)));
                    if !follow {
                        return;
                    }
                    tokio::select! {
                        _ = raft.status_changed() => {}
                        () = sender.closed() => return,
                    }
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(receiver)
    }

    pub async fn step(&self, from: u64, address: String, messages: Vec<RaftMessage>) -> Result<(), ProposeError> {
        self.inputs.send(Input::Step { from, address, messages }).await.map_err(|_| ProposeError::Stopped)
    }

    /// Commits `request` through raft; resolves once this node has applied it.
    pub async fn propose(&self, request: Request) -> Result<ApplyResult, ProposeError> {
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        self.inputs.send(Input::Propose(Box::new(request), reply)).await.map_err(|_| ProposeError::Stopped)?;
        let applied = answer.await.map_err(|_| ProposeError::Stopped)??;
        self.metrics.proposal_seconds.observe(started.elapsed().as_secs_f64());
        Ok(applied.result)
    }

    pub async fn change_membership(&self, change: MembershipChange) -> Result<ApplyResult, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.inputs.send(Input::ChangeMembership(change, reply)).await.map_err(|_| ProposeError::Stopped)?;
        Ok(answer.await.map_err(|_| ProposeError::Stopped)??.result)
    }

    /// Resolves when this node's state machine reflects every write committed before the
    /// call (raft's ReadIndex), so a read that follows is linearizable. raft drops a read
    /// request it cannot serve yet (no leader known, a lost message) without a word, so an
    /// unanswered request is asked again; callers bound the whole wait.
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        loop {
            let (reply, answer) = oneshot::channel();
            self.inputs.send(Input::ReadIndex(reply)).await.map_err(|_| ProposeError::Stopped)?;
            if let Ok(answer) = tokio::time::timeout(READ_INDEX_RETRY, answer).await {
                return answer.map_err(|_| ProposeError::Stopped)?;
            }
        }
    }

    pub(crate) fn delivery_reporter(&self) -> DeliveryReporter {
        DeliveryReporter { inputs: self.inputs.clone() }
    }
}

/// Lets the transport tell the driver about deliveries without holding a full handle.
#[derive(Debug, Clone)]
pub struct DeliveryReporter {
    inputs: mpsc::Sender<Input>,
}

impl DeliveryReporter {
    pub fn report(&self, peer: u64, delivered: bool, snapshot: bool) {
        let _ = self.inputs.try_send(Input::Delivery { peer, delivered, snapshot });
    }
}

/// Starts the driver for `node` on a thread of its own, counting into `metrics`. The returned
/// receiver gets the driver's end: an error if the node can no longer make progress safely
/// (its disk failed).
pub fn spawn<B: Backing>(
    node: Node<B>,
    transport: Transport,
    tick: Duration,
    metrics: CoordinatorMetrics,
) -> (RaftHandle, oneshot::Receiver<Result<(), NodeError>>) {
    let (inputs, receiver) = mpsc::channel(INPUT_QUEUE);
    let status = watch::channel(RaftStatus::default()).0;
    let leader = watch::channel(None).0;
    let host_changes = Arc::new(HostChanges::default());
    let placement_wanted = Arc::new(Notify::new());
    let metrics = Arc::new(metrics);
    let events = Arc::new(RwLock::new(EventLog::new(EVENTS_KEPT, node.applied_index())));
    let handle = RaftHandle {
        inputs,
        status: status.subscribe(),
        leader: leader.subscribe(),
        host_changes: host_changes.clone(),
        placement_wanted: placement_wanted.clone(),
        machine: node.shared_machine(),
        events: events.clone(),
        metrics: metrics.clone(),
    };
    transport.attach(handle.delivery_reporter());
    let driver = Driver {
        node,
        transport,
        status,
        leader,
        host_changes,
        placement_wanted,
        pending: HashMap::new(),
        reads_to_ask: Vec::new(),
        awaiting_read_state: BTreeMap::new(),
        prune_reads_at: tokio::time::Instant::now(),
        awaiting_apply: Vec::new(),
        next_read: 0,
        next_membership: 0,
        learned_addresses: HashMap::new(),
        disk_failure: None,
        retry_write_at: tokio::time::Instant::now(),
        events,
        metrics,
    };
    let (ended, end) = oneshot::channel();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("the raft driver's runtime");
    std::thread::Builder::new()
        .name("raft-driver".into())
        .spawn(move || {
            let _ = ended.send(runtime.block_on(driver.run(receiver, tick)));
        })
        .expect("the raft driver's thread");
    (handle, end)
}

struct Driver<B: Backing> {
    node: Node<B>,
    transport: Transport,
    status: watch::Sender<RaftStatus>,
    leader: watch::Sender<Option<u64>>,
    host_changes: Arc<HostChanges>,
    placement_wanted: Arc<Notify>,
    /// Callers waiting for their entry to be applied, by request ID.
    pending: HashMap<String, Vec<oneshot::Sender<ProposeResult>>>,
    /// Read barriers that arrived in the current batch of inputs: one ReadIndex asks for all.
    reads_to_ask: Vec<ReadReply>,
    /// Read barriers waiting for raft to confirm an index, by read context.
    awaiting_read_state: BTreeMap<u64, Vec<ReadReply>>,
    /// When those whose callers gave up are next dropped.
    prune_reads_at: tokio::time::Instant,
    /// Read barriers waiting for the state machine to reach an index.
    awaiting_apply: Vec<(u64, ReadReply)>,
    next_read: u64,
    next_membership: u64,
    /// Addresses peers gave in their messages, for peers this node has not yet applied the
    /// membership of (a new member answering the leader that added it).
    learned_addresses: HashMap<u64, String>,
    /// Why the last write failed, while the node is stalled.
    disk_failure: Option<String>,
    /// When a stalled node tries its write again.
    retry_write_at: tokio::time::Instant,
    events: Arc<RwLock<EventLog>>,
    metrics: Arc<CoordinatorMetrics>,
}

impl<B: Backing> Driver<B> {
    async fn run(mut self, mut inputs: mpsc::Receiver<Input>, tick: Duration) -> Result<(), NodeError> {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if self.node.voters() == [self.node.id()] {
            // A lone voter need not wait out an election timeout.
            let _ = self.node.campaign();
        }
        loop {
            tokio::select! {
                _ = ticker.tick() => self.node.tick(),
                input = inputs.recv() => {
                    let Some(input) = input else { return Ok(()) };
                    self.handle(input);
                    while let Ok(input) = inputs.try_recv() {
                        self.handle(input);
                    }
                }
            }
            self.ask_read_index();
            self.drain_ready()?;
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Step { from, address, messages } => {
                self.learned_addresses.insert(from, address);
                for message in messages {
                    if let Err(error) = self.node.step(message) {
                        tracing::debug!(%error, "raft ignored a message");
                    }
                }
            }
            Input::ReadIndex(reply) if self.disk_failure.is_some() => {
                let _ = reply.send(Err(self.stalled_error()));
            }
            Input::Propose(request, reply) => match self.node.propose(&request) {
                Ok(()) => self.pending.entry(request.request_id).or_default().push(reply),
                Err(refused) => {
                    let _ = reply.send(Err(self.refusal(refused)));
                }
            },
            Input::ChangeMembership(change, reply) => {
                self.next_membership += 1;
                let request_id = format!("membership-{}-{}", self.node.id(), self.next_membership);
                match self.node.propose_membership(&request_id, &change) {
                    Ok(()) => self.pending.entry(request_id).or_default().push(reply),
                    Err(refused) => {
                        let _ = reply.send(Err(self.refusal(refused)));
                    }
                }
            }
            Input::ReadIndex(reply) => self.reads_to_ask.push(reply),
            Input::Delivery { peer, delivered, snapshot } => {
                if snapshot {
                    self.node.report_snapshot(peer, delivered);
                }
                if !delivered {
                    self.node.report_unreachable(peer);
                }
            }
        }
    }

    fn refusal(&self, refused: Refused) -> ProposeError {
        match refused {
            Refused::NotLeader(not_leader) => ProposeError::NotLeader { leader: not_leader.leader },
            Refused::Invalid(error) => ProposeError::Invalid(error.to_string()),
            Refused::Stalled => self.stalled_error(),
        }
    }

    fn stalled_error(&self) -> ProposeError {
        ProposeError::DiskFailure(self.disk_failure.clone().unwrap_or_default())
    }

    /// One ReadIndex round for every read barrier of the batch.
    fn ask_read_index(&mut self) {
        if self.reads_to_ask.is_empty() {
            return;
        }
        self.next_read += 1;
        self.node.read_index(self.next_read.to_be_bytes().to_vec());
        self.awaiting_read_state.insert(self.next_read, std::mem::take(&mut self.reads_to_ask));
    }

    fn drain_ready(&mut self) -> Result<(), NodeError> {
        let retry_due = tokio::time::Instant::now() >= self.retry_write_at;
        while self.node.has_ready() && (!self.node.is_stalled() || retry_due) {
            // On their way to the followers while this node writes the same entries.
            let early = self.node.take_early_messages();
            self.send(early);
            let mut output = self.node.handle_ready()?;
            let stalled = output.stalled.take();
            for took in &output.apply_durations {
                self.metrics.apply_seconds.observe(took.as_secs_f64());
            }
            if let Some(snapshot) = output.snapshot {
                self.metrics.snapshot_bytes.set(i64::try_from(snapshot.bytes).unwrap_or(i64::MAX));
                self.metrics.snapshot_seconds.observe(snapshot.duration.as_secs_f64());
            }
            self.send(output.messages);
            {
                let mut events = self.events.write().expect("event log lock");
                if let Some(index) = output.installed_snapshot {
                    events.restart_at(index);
                }
                for entry in output.events {
                    if entry.kinds.iter().any(EventKind::asks_for_placement) {
                        self.placement_wanted.notify_one();
                    }
                    events.append(entry.index, entry.at_ms, entry.kinds);
                }
            }
            match output.installed_snapshot {
                Some(_) => self.host_changes.all_changed(),
                None => self.host_changes.changed(&output.changed_hosts),
            }
            for applied in output.applied {
                for reply in self.pending.remove(&applied.request_id).unwrap_or_default() {
                    let _ = reply.send(Ok(applied.clone()));
                }
            }
            for read in output.read_states {
                let context = read.request_ctx.as_slice().try_into().map(u64::from_be_bytes);
                if let Some(replies) = context.ok().and_then(|c| self.awaiting_read_state.remove(&c)) {
                    self.awaiting_apply.extend(replies.into_iter().map(|reply| (read.index, reply)));
                }
            }
            if let Some(error) = stalled {
                self.on_stalled(&error);
                break;
            }
            if let Some(failure) = self.disk_failure.take() {
                tracing::info!(was = %failure, "the data directory can be written again; this coordinator takes part again");
            }
        }
        // Callers that gave up (their deadline passed) no longer wait. Looked for once a retry
        // period, not after every batch: with thousands of reads waiting under load, that scan
        // was the driver's largest cost, and it delayed its answers to the leader.
        let now = tokio::time::Instant::now();
        if now >= self.prune_reads_at {
            self.prune_reads_at = now + READ_INDEX_RETRY;
            self.awaiting_read_state.retain(|_, replies| {
                replies.retain(|reply| !reply.is_closed());
                !replies.is_empty()
            });
        }
        let applied = self.node.applied_index();
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.awaiting_apply).into_iter().partition(|(index, _)| *index <= applied);
        self.awaiting_apply = waiting;
        for (_, reply) in ready {
            let _ = reply.send(Ok(()));
        }
        if !self.node.is_leader() && !self.pending.is_empty() {
            // Entries proposed while leader may still commit under the next leader; callers
            // retry with the same request ID and the registry applies it once.
            for (_, replies) in self.pending.drain() {
                for reply in replies {
                    let _ = reply.send(Err(ProposeError::LeadershipLost));
                }
            }
        }
        self.publish_status();
        Ok(())
    }

    fn send(&self, messages: Vec<RaftMessage>) {
        if messages.is_empty() {
            return;
        }
        let machine = self.node.machine();
        if let Some(cluster_id) = &machine.cluster_id {
            self.transport.learn_cluster_id(cluster_id);
        }
        for message in messages {
            let address = machine.members.get(&message.to).or_else(|| self.learned_addresses.get(&message.to)).cloned();
            self.transport.send(message, address);
        }
    }

    fn on_stalled(&mut self, error: &crate::consensus::storage::StoreError) {
        let failure = mirari_core::errors::chain(error);
        if self.disk_failure.as_ref() != Some(&failure) {
            tracing::error!(
                error = %failure,
                "cannot write the raft log: this coordinator stops taking part (writes refused while it leads, \
                 linearizable reads refused) and retries every second"
            );
        }
        self.disk_failure = Some(failure);
        self.retry_write_at = tokio::time::Instant::now() + STALLED_RETRY;
        // Whatever waits on this node's progress is told now, not at its deadline.
        for (_, replies) in std::mem::take(&mut self.awaiting_read_state) {
            for reply in replies {
                let _ = reply.send(Err(self.stalled_error()));
            }
        }
        let applied = self.node.applied_index();
        let (served, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.awaiting_apply).into_iter().partition(|(index, _)| *index <= applied);
        self.awaiting_apply = served;
        for (_, reply) in waiting {
            let _ = reply.send(Err(self.stalled_error()));
        }
        for (_, replies) in std::mem::take(&mut self.pending) {
            for reply in replies {
                let _ = reply.send(Err(self.stalled_error()));
            }
        }
    }

    fn publish_status(&self) {
        let status = RaftStatus {
            id: self.node.id(),
            role: match self.node.role() {
                StateRole::Leader => "leader",
                StateRole::Follower => "follower",
                StateRole::Candidate => "candidate",
                StateRole::PreCandidate => "pre-candidate",
            },
            term: self.node.term(),
            leader: self.node.leader(),
            commit_index: self.node.commit_index(),
            applied_index: self.node.applied_index(),
            disk_failure: self.disk_failure.clone(),
            replication: self.node.replication(),
        };
        if status.leader.is_some() && status.leader != self.status.borrow().leader {
            self.metrics.leader_changes.inc();
        }
        self.leader.send_if_modified(|known| std::mem::replace(known, status.leader) != status.leader);
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }
}
