//! One raft node and its state machine, driven from outside: no threads, timers or sockets.
//!
//! The caller ticks it, steps in messages, proposes, and calls [`Node::handle_ready`], which
//! follows raft-rs's `five_mem_node` order exactly: send the leader's messages, install an
//! incoming snapshot, apply committed entries, persist entries and hard state, and only then
//! hand out the messages that depend on them. A caller that can send while the node writes
//! takes the leader's messages first ([`Node::take_early_messages`]): the leader's disk write
//! and its followers' then overlap, as raft allows. The async driver and the deterministic
//! simulation both drive this same type.
//!
//! A write that fails (a full disk) stalls the node rather than stopping it: the `Ready` is
//! kept, nothing that depends on it is handed out, and the next `handle_ready` writes it again.
//! raft-rs allows no other input between a ready and its advance, so a stalled node is frozen
//! as if cut off: it does not tick, drops what it is sent and refuses proposals; the others
//! elect a leader without it, and it catches up once its writes go through. A failed snapshot
//! of our own state is retried later. A membership change that cannot be stored still stops
//! the node (it fails halfway through applying entries, which cannot be taken again).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use mirari_core::registry::{ApplyResult, Outcome, Rejection, Request};
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, Snapshot};
use raft::{RawNode, ReadState, Ready, StateRole};

use super::machine::{Machine, SnapshotError};
use super::storage::{Backing, RaftLog, StoreError};

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    /// Ticks without hearing from a leader before an election (randomized up to twice this).
    pub election_tick: usize,
    /// Pins the randomized election timeout to `[min, max)` ticks. raft-rs draws it from the
    /// thread's RNG; a simulation pins distinct ranges per node to stay deterministic.
    pub election_range: Option<(usize, usize)>,
    pub heartbeat_tick: usize,
    /// Take a snapshot after this many applied entries, or more for a large state machine
    /// ([`snapshot_interval`]).
    pub snapshot_every: u64,
    /// Entries kept before a snapshot, so a slightly lagging follower gets entries, not a
    /// snapshot.
    pub keep_entries: u64,
}

impl NodeConfig {
    pub fn new(id: u64) -> Self {
        Self {
            id,
            election_tick: 12,
            election_range: None,
            heartbeat_tick: 2,
            snapshot_every: 10_000,
            keep_entries: 1_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("raft refused: {0}")]
    Raft(#[from] raft::Error),
    #[error("the snapshot data is unreadable")]
    Snapshot(#[from] SnapshotError),
}

/// Proposals go to the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not the leader (the leader is {})", leader.map_or("unknown".to_owned(), |l| l.to_string()))]
pub struct NotLeader {
    pub leader: Option<u64>,
}

/// Why a proposal was not taken into the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// The entry would not decode where it is applied (a value above a limit): refused here,
    /// so it never reaches the log.
    #[error("the request is invalid: {0}")]
    Invalid(#[from] mirari_proto::convert::WireError),
    /// The leader cannot write its log (see [`Node::is_stalled`]).
    #[error("this node cannot write its log right now")]
    Stalled,
}

/// A committed entry that carried a client request, and what applying it did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub index: u64,
    pub request_id: String,
    pub result: ApplyResult,
}

/// What one `handle_ready` produced for the caller to act on.
#[derive(Debug, Default)]
pub struct Output {
    /// To send to peers, in this order.
    pub messages: Vec<Message>,
    pub applied: Vec<Applied>,
    /// Read-index results: a linearizable read with this context may be served once the
    /// applied index reaches the index.
    pub read_states: Vec<ReadState>,
    /// The log could not be written: the node stalled, and the next `handle_ready` writes it
    /// again. What it applied before the write is in `applied` all the same.
    pub stalled: Option<StoreError>,
    /// How long applying each entry took, in the order applied (for the apply latency metric).
    pub apply_durations: Vec<Duration>,
    /// The snapshot this ready took and stored, if it took one.
    pub snapshot: Option<SnapshotTaken>,
    /// What the applied entries changed, entry by entry.
    pub events: Vec<EntryEvents>,
    /// The index of the snapshot (sent by the leader) that replaced the state machine, if one did.
    pub installed_snapshot: Option<u64>,
    /// The hosts whose assignments the applied entries changed (after an installed snapshot,
    /// those changed since it: every host may have changed).
    pub changed_hosts: BTreeSet<mirari_core::registry::HostId>,
}

/// The events of one applied entry, and the time the entry carried.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryEvents {
    pub index: u64,
    pub at_ms: Option<u64>,
    pub kinds: Vec<mirari_core::registry::EventKind>,
}

/// A snapshot of the state machine that was taken and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotTaken {
    /// The encoded state machine's size.
    pub bytes: u64,
    /// Encoding it and storing it (with the log compaction) together.
    pub duration: Duration,
}

/// The leader's view of one member's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    pub id: u64,
    /// The last index known to match the leader's log.
    pub matched: u64,
    /// probe (finding where the logs agree), replicate (streaming entries) or snapshot (being
    /// sent one).
    pub state: &'static str,
}

/// A change to the raft membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    Add { id: u64, address: String },
    Remove { id: u64 },
}

pub struct Node<B: Backing> {
    raw: RawNode<RaftLog<B>>,
    log: RaftLog<B>,
    /// Shared so readers need not go through the task that drives the node.
    machine: Arc<RwLock<Machine>>,
    config: NodeConfig,
    /// A membership change was applied: the stored snapshot's configuration is outdated, and a
    /// member that needs a snapshot (a new one) would refuse it as not naming it.
    snapshot_due: bool,
    /// A ready whose write failed, to be written again before anything else.
    stalled: Option<Stalled>,
    /// A ready whose early messages were handed out, finished by the next `handle_ready`.
    started: Option<Stalled>,
    /// While snapshots of our own state fail to be stored: the applied index to try again at.
    snapshot_retry_at: Option<u64>,
    /// The size of the last snapshot this node took (0 before its first since it started).
    snapshot_bytes: u64,
}

/// A ready taken from raft and not yet finished (its early messages handed out, or its write
/// failed), and how far it got. raft hands a ready's entries out once, so it must be
/// finished, not taken again.
struct Stalled {
    ready: Ready,
    /// Its snapshot is installed and its committed entries applied; only the write is left.
    applied: bool,
    /// Snapshot delivery reports that came meanwhile, given to raft once the ready is done.
    snapshot_reports: Vec<(u64, raft::SnapshotStatus)>,
}

impl<B: Backing> std::fmt::Debug for Node<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.config.id)
            .field("term", &self.term())
            .field("role", &self.role())
            .finish()
    }
}

impl<B: Backing> Node<B> {
    /// Makes `log` the start of a new cluster `cluster_id` of `members` (ID -> address), if it
    /// is empty. Returns whether it did. Bootstrapping is explicit: a node never starts a
    /// cluster by accident; others join through membership changes.
    pub fn bootstrap(log: &RaftLog<B>, cluster_id: &str, members: &BTreeMap<u64, String>) -> Result<bool, StoreError> {
        {
            let state = log.read();
            if state.last_index() > 0 || !state.conf_state.voters.is_empty() {
                return Ok(false);
            }
        }
        let machine =
            Machine { members: members.clone(), cluster_id: Some(cluster_id.to_owned()), ..Machine::default() };
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = 1;
        meta.term = 1;
        meta.mut_conf_state().voters = members.keys().copied().collect();
        snapshot.data = machine.encode().into();
        log.apply_snapshot(&snapshot)?;
        Ok(true)
    }

    /// Starts the node from whatever the log holds (its latest snapshot, then its entries).
    pub fn new(config: NodeConfig, log: RaftLog<B>, logger: &slog::Logger) -> Result<Self, NodeError> {
        let snapshot = log.snapshot_with_data()?;
        let machine = if snapshot.data.is_empty() { Machine::default() } else { Machine::decode(&snapshot.data)? };
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            min_election_tick: config.election_range.map_or(0, |r| r.0),
            max_election_tick: config.election_range.map_or(0, |r| r.1),
            applied: snapshot.get_metadata().index,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..raft::Config::default()
        };
        let raw = RawNode::new(&raft_config, log.clone(), logger)?;
        Ok(Self {
            raw,
            log,
            machine: Arc::new(RwLock::new(machine)),
            config,
            snapshot_due: false,
            stalled: None,
            started: None,
            snapshot_retry_at: None,
            snapshot_bytes: 0,
        })
    }

    pub fn id(&self) -> u64 {
        self.config.id
    }

    pub fn machine(&self) -> RwLockReadGuard<'_, Machine> {
        self.machine.read().expect("state machine lock")
    }

    /// The state machine, for readers outside the driving task.
    pub fn shared_machine(&self) -> Arc<RwLock<Machine>> {
        self.machine.clone()
    }

    fn machine_mut(&self) -> RwLockWriteGuard<'_, Machine> {
        self.machine.write().expect("state machine lock")
    }

    pub fn log(&self) -> &RaftLog<B> {
        &self.log
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    pub fn leader(&self) -> Option<u64> {
        Some(self.raw.raft.leader_id).filter(|&id| id != raft::INVALID_ID)
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    pub fn applied_index(&self) -> u64 {
        self.machine().registry.applied_index()
    }

    /// The voters and learners of the current configuration.
    pub fn voters(&self) -> Vec<u64> {
        let mut voters: Vec<u64> = self.raw.raft.prs().conf().voters().ids().iter().collect();
        voters.sort_unstable();
        voters
    }

    /// How far each member's log matches the leader's (empty unless this node leads), by ID.
    pub fn replication(&self) -> Vec<Replication> {
        if !self.is_leader() {
            return Vec::new();
        }
        let mut members: Vec<Replication> = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(&id, progress)| Replication {
                id,
                matched: progress.matched,
                state: match progress.state {
                    raft::ProgressState::Probe => "probe",
                    raft::ProgressState::Replicate => "replicate",
                    raft::ProgressState::Snapshot => "snapshot",
                },
            })
            .collect();
        members.sort_by_key(|r| r.id);
        members
    }

    /// The leader's view of each peer's replication, for diagnostics.
    pub fn describe_progress(&self) -> String {
        let mut peers: Vec<String> = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(id, p)| {
                format!(
                    "{id}: {:?} matched {} next {} pending snapshot {}",
                    p.state, p.matched, p.next_idx, p.pending_snapshot
                )
            })
            .collect();
        peers.sort();
        peers.join("; ")
    }

    /// Time passes (not for a stalled node: it is frozen until its write goes through).
    pub fn tick(&mut self) {
        if self.stalled.is_none() {
            self.raw.tick();
        }
    }

    /// Campaigns at once (used to make a freshly bootstrapped single node leader quickly).
    pub fn campaign(&mut self) -> Result<(), NodeError> {
        if self.stalled.is_some() {
            return Ok(());
        }
        Ok(self.raw.campaign()?)
    }

    /// Steps in a peer's message; a stalled node drops it, as a lost message.
    pub fn step(&mut self, message: Message) -> Result<(), NodeError> {
        if self.stalled.is_some() {
            return Ok(());
        }
        Ok(self.raw.step(message)?)
    }

    fn not_leader(&self) -> NotLeader {
        NotLeader { leader: self.leader() }
    }

    /// Why a proposal cannot be taken here, if it cannot.
    fn refusal(&self) -> Option<Refused> {
        if !self.is_leader() {
            Some(self.not_leader().into())
        } else if self.stalled.is_some() {
            Some(Refused::Stalled)
        } else {
            None
        }
    }

    pub fn propose(&mut self, request: &Request) -> Result<(), Refused> {
        if let Some(refused) = self.refusal() {
            return Err(refused);
        }
        let data = mirari_proto::log_codec::encode(request);
        mirari_proto::log_codec::decode(&data)?;
        self.raw.propose(Vec::new(), data).map_err(|_| self.not_leader().into())
    }

    /// Proposes a membership change; it takes effect when applied. `request_id` comes back in
    /// [`Output::applied`].
    pub fn propose_membership(&mut self, request_id: &str, change: &MembershipChange) -> Result<(), Refused> {
        if let Some(refused) = self.refusal() {
            return Err(refused);
        }
        let (change_type, node_id, address) = match change {
            MembershipChange::Add { id, address } => (ConfChangeType::AddNode, *id, address.as_str()),
            MembershipChange::Remove { id } => (ConfChangeType::RemoveNode, *id, ""),
        };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = node_id;
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        cc.context = address.as_bytes().to_vec().into();
        self.raw.propose_conf_change(request_id.as_bytes().to_vec(), cc).map_err(|_| self.not_leader().into())
    }

    /// Starts a linearizable read; its [`ReadState`] comes back in a later [`Output`].
    pub fn read_index(&mut self, context: Vec<u8>) {
        if self.stalled.is_none() {
            self.raw.read_index(context);
        }
    }

    /// Tells raft a message to `peer` could not be delivered.
    pub fn report_unreachable(&mut self, peer: u64) {
        if self.stalled.is_none() {
            self.raw.report_unreachable(peer);
        }
    }

    /// Tells raft whether a snapshot sent to `peer` arrived.
    pub fn report_snapshot(&mut self, peer: u64, delivered: bool) {
        let status = if delivered { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
        match &mut self.stalled {
            // A leader waits for this report before it sends the peer anything else: kept.
            Some(stalled) => stalled.snapshot_reports.push((peer, status)),
            None => self.raw.report_snapshot(peer, status),
        }
    }

    pub fn has_ready(&self) -> bool {
        self.stalled.is_some() || self.started.is_some() || self.raw.has_ready()
    }

    /// Whether a write failed and is waiting to be tried again.
    pub fn is_stalled(&self) -> bool {
        self.stalled.is_some()
    }

    /// Takes the next `Ready` and hands out the messages that need not wait for this node's
    /// disk write: a leader's appends and heartbeats (raft-rs lets a leader send them before
    /// it persists). The next [`Node::handle_ready`] finishes that ready. Nothing is taken from
    /// a stalled node, or while a taken ready is unfinished.
    pub fn take_early_messages(&mut self) -> Vec<Message> {
        if self.stalled.is_some() || self.started.is_some() || !self.raw.has_ready() {
            return Vec::new();
        }
        let mut ready = self.raw.ready();
        let messages = ready.take_messages();
        self.started = Some(Stalled { ready, applied: false, snapshot_reports: Vec::new() });
        messages
    }

    /// Processes one `Ready` (or finishes a stalled or started one): see the module docs for
    /// the order.
    pub fn handle_ready(&mut self) -> Result<Output, NodeError> {
        let mut output = Output::default();
        let mut stalled = match self.stalled.take().or_else(|| self.started.take()) {
            Some(stalled) => stalled,
            None if self.raw.has_ready() => {
                let mut ready = self.raw.ready();
                output.messages.extend(ready.take_messages());
                Stalled { ready, applied: false, snapshot_reports: Vec::new() }
            }
            None => return Ok(output),
        };
        if !stalled.applied {
            if !stalled.ready.snapshot().is_empty() {
                let snapshot = stalled.ready.snapshot().clone();
                if let Err(error) = self.log.apply_snapshot(&snapshot) {
                    return Ok(self.stall(stalled, output, error));
                }
                *self.machine_mut() = Machine::decode(&snapshot.data)?;
                output.installed_snapshot = Some(snapshot.get_metadata().index);
            }
            self.apply(stalled.ready.take_committed_entries(), &mut output)?;
            stalled.applied = true;
        }
        fail::fail_point!("raft::persist");
        if let Err(error) = self.log.persist(stalled.ready.entries(), stalled.ready.hs()) {
            // What was applied is handed out; what depends on the write waits for it.
            return Ok(self.stall(stalled, output, error));
        }
        let Stalled { mut ready, snapshot_reports, .. } = stalled;
        output.messages.extend(ready.take_persisted_messages());
        output.read_states.extend(ready.take_read_states());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.log.set_commit(commit);
        }
        output.messages.extend(light.take_messages());
        self.apply(light.take_committed_entries(), &mut output)?;
        self.raw.advance_apply();
        for (peer, status) in snapshot_reports {
            self.raw.report_snapshot(peer, status);
        }
        output.snapshot = self.maybe_snapshot();
        Ok(output)
    }

    fn stall(&mut self, stalled: Stalled, mut output: Output, error: StoreError) -> Output {
        self.stalled = Some(stalled);
        output.stalled = Some(error);
        output
    }

    fn apply(&mut self, entries: Vec<Entry>, output: &mut Output) -> Result<(), NodeError> {
        for entry in entries {
            fail::fail_point!("raft::apply");
            let started = Instant::now();
            let index = entry.index;
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => self.machine_mut().registry.skip(index),
                EntryType::EntryNormal => match mirari_proto::log_codec::decode(&entry.data) {
                    Ok(request) => {
                        let mut machine = self.machine_mut();
                        let result = machine.registry.apply(index, &request);
                        let kinds = machine.registry.take_events();
                        output.changed_hosts.append(&mut machine.registry.take_changed_hosts());
                        drop(machine);
                        output.events.push(EntryEvents { index, at_ms: request.command.at_ms(), kinds });
                        output.applied.push(Applied { index, request_id: request.request_id, result });
                    }
                    Err(error) => {
                        // Proposals are checked before they enter the log, so this is a bug or
                        // an entry from a version with larger limits. Every replica decodes the
                        // same bytes the same way, so skipping it keeps them in step, and one
                        // bad entry cannot stop every node in turn.
                        tracing::error!(index, %error, "skipped a log entry that does not decode");
                        self.machine_mut().registry.skip(index);
                    }
                },
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let result = self.apply_membership(&entry)?;
                    self.machine_mut().registry.skip(index);
                    let request_id = String::from_utf8_lossy(&entry.context).into_owned();
                    output.applied.push(Applied { index, request_id, result });
                }
            }
            output.apply_durations.push(started.elapsed());
        }
        Ok(())
    }

    /// Applies a membership change. A change raft refuses is a rejection (every replica
    /// refuses it alike); a storage failure stops the node like every other.
    fn apply_membership(&mut self, entry: &Entry) -> Result<ApplyResult, NodeError> {
        if entry.get_entry_type() != EntryType::EntryConfChangeV2 {
            return Ok(Err(Rejection::Invalid("membership changes are proposed as ConfChangeV2 only".into())));
        }
        let cc = match ConfChangeV2::parse_from_bytes(&entry.data) {
            Ok(cc) => cc,
            Err(error) => return Ok(Err(Rejection::Invalid(error.to_string()))),
        };
        let conf_state = match self.raw.apply_conf_change(&cc) {
            Ok(conf_state) => conf_state,
            Err(error) => return Ok(Err(Rejection::Invalid(error.to_string()))),
        };
        self.log.set_conf_state(&conf_state)?;
        self.snapshot_due = true;
        let address = String::from_utf8_lossy(&cc.context).into_owned();
        let mut machine = self.machine_mut();
        for change in cc.get_changes() {
            match change.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    machine.members.insert(change.node_id, address.clone());
                }
                ConfChangeType::RemoveNode => {
                    machine.members.remove(&change.node_id);
                }
            }
        }
        Ok(Ok(Outcome::Done))
    }

    /// Takes and stores a snapshot when one is due. A failure is logged and the snapshot tried
    /// again once a tenth of the snapshot interval more has been applied: the log only grows
    /// meanwhile.
    fn maybe_snapshot(&mut self) -> Option<SnapshotTaken> {
        let applied = self.applied_index();
        if self.snapshot_retry_at.is_some_and(|at| applied < at) {
            return None;
        }
        match self.snapshot_if_due() {
            Ok(stored) => {
                if stored.is_some() && self.snapshot_retry_at.take().is_some() {
                    tracing::info!("a snapshot of the state machine was stored again");
                }
                stored
            }
            Err(error) => {
                if self.snapshot_retry_at.is_none() {
                    tracing::warn!(error = %mirari_core::errors::chain(&error), "cannot store a snapshot of the state machine; retrying later");
                }
                // Encoding the whole state machine is not free: not again at every ready.
                self.snapshot_retry_at = Some(applied + (self.config.snapshot_every / 10).max(1));
                None
            }
        }
    }

    /// Takes and stores a snapshot if one is due; returns it if it did.
    fn snapshot_if_due(&mut self) -> Result<Option<SnapshotTaken>, NodeError> {
        let applied = self.applied_index();
        let (last_snapshot, first_index) = {
            let state = self.log.read();
            (state.snapshot.get_metadata().index, state.first_index())
        };
        let every = snapshot_interval(self.config.snapshot_every, self.snapshot_bytes);
        if !self.snapshot_due && applied < next_snapshot_at(last_snapshot, every, self.config.id) {
            return Ok(None);
        }
        let started = Instant::now();
        let term = raft::Storage::term(&self.log, applied)?;
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(self.log.read().conf_state.clone());
        snapshot.data = self.machine().encode().into();
        let compact_to = applied.saturating_sub(self.config.keep_entries).max(first_index);
        fail::fail_point!("raft::snapshot");
        self.log.save_snapshot(&snapshot, compact_to)?;
        self.snapshot_due = false;
        self.snapshot_bytes = snapshot.data.len() as u64;
        Ok(Some(SnapshotTaken { bytes: self.snapshot_bytes, duration: started.elapsed() }))
    }
}

/// Snapshot bytes a base interval of entries may pay for: past this size, the interval grows.
const SNAPSHOT_BYTES_PER_INTERVAL: u64 = 4 << 20;

/// Entries between snapshots when the last one took `bytes`: `every`, doubled as often as it
/// takes to encode no more than [`SNAPSHOT_BYTES_PER_INTERVAL`] per `every` entries. A snapshot
/// encodes the whole state machine, so a fixed interval would make every entry cost in
/// proportion to the registry (at 100,000 instances under load, tens of MB every few seconds,
/// each holding the raft task up); this way the encoding per entry stays bounded, and the log
/// kept meanwhile grows with the state it is replayed onto.
/// Powers of two, so members whose snapshots are about as large keep their staggered indexes.
fn snapshot_interval(every: u64, bytes: u64) -> u64 {
    let every = every.max(1);
    let mut interval = every;
    while interval / every * SNAPSHOT_BYTES_PER_INTERVAL < bytes && interval < u64::MAX / 2 {
        interval *= 2;
    }
    interval
}

/// The applied index of this member's next snapshot after one at `last`: every `every`
/// entries, each member at its own offset. Taking a snapshot holds a member's raft task up;
/// members that took theirs at the same index would all stop answering at once, and the
/// leader, hearing from no majority, would step down.
fn next_snapshot_at(last: u64, every: u64, id: u64) -> u64 {
    let every = every.max(1);
    let offset = (id % 8) * every / 8;
    (last.saturating_sub(offset) / every + 1) * every + offset
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::logger;
    use crate::consensus::storage::{InMemory, LogState};
    use mirari_core::registry::Command;

    #[test]
    fn members_take_snapshots_at_indexes_of_their_own() {
        let at = |id| next_snapshot_at(0, 10_000, id);
        assert_eq!([at(1), at(2), at(3)], [11_250, 12_500, 13_750]);
        assert_eq!(next_snapshot_at(1_250, 10_000, 1), 11_250);
        assert_eq!(next_snapshot_at(2_500, 10_000, 2), 12_500);
        // Off schedule (after a membership change): back on it at the next of its own.
        assert_eq!(next_snapshot_at(12_000, 10_000, 1), 21_250);
        assert_eq!(next_snapshot_at(11_000, 10_000, 1), 11_250);
    }

    #[test]
    fn a_larger_state_machine_is_snapshotted_less_often() {
        assert_eq!(snapshot_interval(10_000, 0), 10_000);
        assert_eq!(snapshot_interval(10_000, 4 << 20), 10_000);
        assert_eq!(snapshot_interval(10_000, (4 << 20) + 1), 20_000);
        assert_eq!(snapshot_interval(10_000, 40 << 20), 160_000);
        assert_eq!(snapshot_interval(0, 1 << 40), 1 << 18);
    }

    /// A bootstrapped single node, elected.
    fn leader() -> Node<InMemory> {
        let log = RaftLog::new(LogState::default(), InMemory::default());
        Node::bootstrap(&log, "test", &BTreeMap::from([(1, "node-1".to_owned())])).unwrap();
        let mut node = Node::new(NodeConfig::new(1), log, &logger::silent()).unwrap();
        node.campaign().unwrap();
        while node.has_ready() {
            node.handle_ready().unwrap();
        }
        assert!(node.is_leader());
        node
    }

    #[test]
    fn a_request_that_would_not_decode_never_enters_the_log() {
        let mut node = leader();
        let last = node.log().read().last_index();
        let huge = Request { request_id: "r".into(), command: Command::Scale { app: "a".into(), count: u32::MAX } };
        assert!(matches!(node.propose(&huge), Err(Refused::Invalid(_))));
        assert!(!node.has_ready() || node.handle_ready().unwrap().applied.is_empty());
        assert_eq!(node.log().read().last_index(), last);
    }

    /// A disk whose writes of a new membership (outside a snapshot) fail once it is armed.
    #[derive(Debug, Default)]
    struct FailingDisk(std::sync::atomic::AtomicBool, InMemory);

    impl Backing for FailingDisk {
        fn write(&self, batch: &crate::consensus::storage::WriteBatch<'_>) -> Result<(), StoreError> {
            let membership = batch.conf_state.is_some() && batch.snapshot.is_none();
            match membership && self.0.load(std::sync::atomic::Ordering::SeqCst) {
                true => Err(StoreError::Corrupt { path: "disk".into(), what: "the disk failed".into() }),
                false => self.1.write(batch),
            }
        }

        fn snapshot(&self) -> Result<Snapshot, StoreError> {
            self.1.snapshot()
        }
    }

    #[test]
    fn a_storage_failure_during_a_membership_change_stops_the_node() {
        let log = RaftLog::new(LogState::default(), FailingDisk::default());
        Node::bootstrap(&log, "test", &BTreeMap::from([(1, "node-1".to_owned())])).unwrap();
        let disk = log.backing();
        let mut node = Node::new(NodeConfig::new(1), log, &logger::silent()).unwrap();
        node.campaign().unwrap();
        while node.has_ready() {
            node.handle_ready().unwrap();
        }
        disk.0.store(true, std::sync::atomic::Ordering::SeqCst);
        node.propose_membership("add-2", &MembershipChange::Add { id: 2, address: "node-2".into() }).unwrap();
        let mut outcome = Ok(());
        while node.has_ready() && outcome.is_ok() {
            outcome = node.handle_ready().map(|_| ());
        }
        assert!(matches!(outcome, Err(NodeError::Store(_))), "{outcome:?}");
    }

    fn register(request_id: &str) -> Request {
        let host = mirari_core::registry::Host {
            id: mirari_core::registry::HostId(request_id.into()),
            address: "h:1".into(),
            backends: Default::default(),
            capacity: Default::default(),
            labels: Default::default(),
            networks: Default::default(),
            status: mirari_core::registry::HostStatus::Up,
            registered_at_ms: 0,
            status_changed_at_ms: 0,
            drain: None,
            provider: None,
        };
        Request { request_id: request_id.into(), command: Command::RegisterHost { host } }
    }

    #[test]
    fn a_failed_write_stalls_the_node_until_the_disk_takes_it() {
        use crate::consensus::storage::SimulatedDisk;
        let disk = Arc::new(SimulatedDisk::default());
        let log = RaftLog::new(LogState::default(), disk.clone());
        Node::bootstrap(&log, "test", &BTreeMap::from([(1, "node-1".to_owned())])).unwrap();
        let mut node = Node::new(NodeConfig::new(1), log, &logger::silent()).unwrap();
        node.campaign().unwrap();
        while node.has_ready() {
            assert!(node.handle_ready().unwrap().stalled.is_none());
        }

        disk.fail_writes(true);
        node.propose(&register("while-full")).unwrap();
        let output = node.handle_ready().unwrap();
        assert!(output.stalled.is_some() && output.applied.is_empty());
        assert!(node.is_stalled() && node.has_ready());
        // Trying again on a full disk changes nothing, however often.
        for _ in 0..3 {
            assert!(node.handle_ready().unwrap().stalled.is_some());
        }
        assert!(!disk.durable().entries.iter().any(|e| !e.data.is_empty()));

        disk.fail_writes(false);
        let mut applied = Vec::new();
        while node.has_ready() {
            let output = node.handle_ready().unwrap();
            assert!(output.stalled.is_none());
            applied.extend(output.applied.into_iter().map(|a| a.request_id));
        }
        assert_eq!(applied, ["while-full"]);
        assert!(!node.is_stalled());
        assert!(disk.durable().entries.iter().any(|e| !e.data.is_empty()), "the entry reached the disk");
    }
}
