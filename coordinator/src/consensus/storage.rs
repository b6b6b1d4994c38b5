//! The raft log store: an in-memory view that raft reads, kept in step with a durable backing.
//!
//! [`RaftLog`] implements `raft::Storage` once, over a [`LogState`] held in memory (entries
//! since the last snapshot, hard state, conf state, the latest snapshot's metadata). Every
//! change goes through [`Backing::write`] first, in one batch, and only then into memory: what
//! raft reads is always what is durable. A snapshot's data (the whole registry) stays on the
//! backing alone, read back when raft sends it to a follower that lags: memory holds the
//! registry once, not once more as its last snapshot. The backing is redb on disk ([`super::redb_store`]); a
//! [`SimulatedDisk`] that loses what was not written when a simulated node crashes; or
//! nothing ([`InMemory`]) where nothing crashes.

use std::sync::{Arc, Mutex, RwLock};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read or write the raft data in {path}")]
    Database {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error(
        "the raft data in {path} is corrupt: {what}; restore the data directory from a backup, or remove this node from the cluster and add it back with an empty one"
    )]
    Corrupt { path: String, what: String },
    #[error(
        "the raft data in {path} belongs to coordinator {owner}, not {id}: start it with --id {owner}, or give coordinator {id} a data directory of its own"
    )]
    WrongNode { path: String, owner: u64, id: u64 },
    #[error("{0}")]
    Failed(String),
    #[error("cannot open the raft data in {path}")]
    Open {
        path: String,
        #[source]
        source: redb::Error,
    },
}

/// Everything the log holds, in memory.
#[derive(Debug, Clone, Default)]
pub struct LogState {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// The latest snapshot: in a [`RaftLog`], its metadata alone (its data is the backing's,
    /// [`Backing::snapshot`]); as a backing's whole content, its data too.
    pub snapshot: Snapshot,
    /// Entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

impl LogState {
    pub fn first_index(&self) -> u64 {
        self.entries.first().map_or(self.snapshot.get_metadata().index + 1, |e| e.index)
    }

    pub fn last_index(&self) -> u64 {
        self.entries.last().map_or(self.snapshot.get_metadata().index, |e| e.index)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let meta = self.snapshot.get_metadata();
        if index == meta.index {
            return Ok(meta.term);
        }
        if index < self.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > self.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(index - self.first_index()) as usize].term)
    }

    /// Applies one write, as a disk that took it would hold it (`data`: the snapshot's data
    /// too, or its metadata alone).
    fn apply(&mut self, batch: &WriteBatch<'_>, data: SnapshotData) {
        if let Some(first) = batch.entries.first() {
            self.entries.retain(|e| e.index < first.index);
            self.entries.extend_from_slice(batch.entries);
        }
        if let Some(compact_to) = batch.compact_to {
            self.entries.retain(|e| e.index >= compact_to);
        }
        if let Some(hard_state) = batch.hard_state {
            self.hard_state = hard_state.clone();
        }
        if let Some(conf_state) = batch.conf_state {
            self.conf_state = conf_state.clone();
        }
        if let Some(snapshot) = batch.snapshot {
            self.snapshot = match data {
                SnapshotData::Keep => snapshot.clone(),
                SnapshotData::Leave => metadata_of(snapshot),
            };
        }
    }
}

/// Whether a [`LogState`] holds its snapshot's data, or leaves it to the backing.
#[derive(Debug, Clone, Copy)]
enum SnapshotData {
    Keep,
    Leave,
}

/// A snapshot with its metadata and no data.
fn metadata_of(snapshot: &Snapshot) -> Snapshot {
    let mut kept = Snapshot::default();
    kept.set_metadata(snapshot.get_metadata().clone());
    kept
}

/// One durable write: everything a `Ready` asks to persist, together.
#[derive(Debug, Default)]
pub struct WriteBatch<'a> {
    /// New entries; any stored entries from the first one's index on are replaced.
    pub entries: &'a [Entry],
    pub hard_state: Option<&'a HardState>,
    pub conf_state: Option<&'a ConfState>,
    /// A snapshot to store; entries it covers are dropped.
    pub snapshot: Option<&'a Snapshot>,
    /// Drop entries before this index (they are covered by `snapshot`); `u64::MAX` drops all.
    pub compact_to: Option<u64>,
}

/// Where the log is made durable.
pub trait Backing: Send + Sync + 'static {
    /// Makes `batch` durable (fsync'd) before returning.
    fn write(&self, batch: &WriteBatch<'_>) -> Result<(), StoreError>;

    /// The snapshot written last, data and all (an empty one before any).
    fn snapshot(&self) -> Result<Snapshot, StoreError>;
}

/// No disk: memory is the disk (tests of raft itself, where nothing crashes). It holds only
/// the snapshot, which the log leaves to its backing.
#[derive(Debug, Default)]
pub struct InMemory {
    snapshot: Mutex<Snapshot>,
}

impl Backing for InMemory {
    fn write(&self, batch: &WriteBatch<'_>) -> Result<(), StoreError> {
        if let Some(snapshot) = batch.snapshot {
            *self.snapshot.lock().expect("snapshot lock") = snapshot.clone();
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Ok(self.snapshot.lock().expect("snapshot lock").clone())
    }
}

/// A disk for simulations that crash nodes: it keeps its own copy of the log, updated only by
/// writes, so a node restarted from [`SimulatedDisk::durable`] has exactly what was written
/// through the backing and loses the rest (what a missed or misordered write would lose on
/// a real disk). Writes can be made to fail, as a crash in the middle of an fsync: nothing of
/// the batch lands.
#[derive(Debug, Default)]
pub struct SimulatedDisk {
    durable: std::sync::Mutex<LogState>,
    failing: std::sync::atomic::AtomicBool,
}

impl SimulatedDisk {
    /// What survives a crash.
    pub fn durable(&self) -> LogState {
        self.durable.lock().expect("disk lock").clone()
    }

    /// From now on every write fails (or, with `false`, succeeds again).
    pub fn fail_writes(&self, failing: bool) {
        self.failing.store(failing, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Backing for Arc<SimulatedDisk> {
    fn write(&self, batch: &WriteBatch<'_>) -> Result<(), StoreError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Failed("the simulated disk failed the write".into()));
        }
        self.durable.lock().expect("disk lock").apply(batch, SnapshotData::Keep);
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Ok(self.durable.lock().expect("disk lock").snapshot.clone())
    }
}

#[derive(Debug)]
pub struct RaftLog<B> {
    state: Arc<RwLock<LogState>>,
    backing: Arc<B>,
}

impl<B> Clone for RaftLog<B> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone(), backing: self.backing.clone() }
    }
}

impl<B: Backing> RaftLog<B> {
    /// A log over what `backing` holds (`state`, read from it), keeping the snapshot's
    /// metadata alone in memory.
    pub fn new(mut state: LogState, backing: B) -> Self {
        state.snapshot = metadata_of(&state.snapshot);
        Self { state: Arc::new(RwLock::new(state)), backing: Arc::new(backing) }
    }

    /// The durable backing the log writes through.
    pub fn backing(&self) -> Arc<B> {
        self.backing.clone()
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, LogState> {
        self.state.read().expect("raft log lock")
    }

    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, LogState> {
        self.state.write().expect("raft log lock")
    }

    /// Makes `batch` durable, then holds it in memory.
    fn write(&self, batch: &WriteBatch<'_>) -> Result<(), StoreError> {
        self.backing.write(batch)?;
        self.write_lock().apply(batch, SnapshotData::Leave);
        Ok(())
    }

    /// The latest snapshot, data and all, as the backing holds it.
    pub fn snapshot_with_data(&self) -> Result<Snapshot, StoreError> {
        self.backing.snapshot()
    }

    /// Appends entries (replacing a conflicting suffix) and records the hard state. A hard
    /// state that only moves the commit index forward is not worth a disk write of its own
    /// (an fsync on every commit, on the leader's path to answering): it is kept as
    /// [`Self::set_commit`] keeps it.
    pub fn persist(&self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<(), StoreError> {
        if entries.is_empty()
            && let Some(hs) = hard_state
        {
            let commit_only = {
                let stored = &self.read().hard_state;
                hs.term == stored.term && hs.vote == stored.vote && hs.commit >= stored.commit
            };
            if commit_only {
                self.set_commit(hs.commit);
                return Ok(());
            }
        }
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        self.write(&WriteBatch { entries, hard_state, ..WriteBatch::default() })
    }

    /// Records a newer commit index. It is made durable with the next write: losing it in a
    /// crash only means re-learning it from the leader.
    pub fn set_commit(&self, commit: u64) {
        self.write_lock().hard_state.commit = commit;
    }

    pub fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), StoreError> {
        self.write(&WriteBatch { conf_state: Some(conf_state), ..WriteBatch::default() })
    }

    /// Installs a snapshot received from the leader: it replaces the whole log.
    pub fn apply_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let meta = snapshot.get_metadata();
        let mut hard_state = self.read().hard_state.clone();
        hard_state.term = hard_state.term.max(meta.term);
        hard_state.commit = hard_state.commit.max(meta.index);
        self.write(&WriteBatch {
            hard_state: Some(&hard_state),
            conf_state: Some(meta.get_conf_state()),
            snapshot: Some(snapshot),
            compact_to: Some(u64::MAX),
            ..WriteBatch::default()
        })
    }

    /// Stores a snapshot of our own state machine and drops entries before `compact_to`.
    pub fn save_snapshot(&self, snapshot: &Snapshot, compact_to: u64) -> Result<(), StoreError> {
        let hard_state = self.read().hard_state.clone();
        self.write(&WriteBatch {
            hard_state: Some(&hard_state),
            snapshot: Some(snapshot),
            compact_to: Some(compact_to),
            ..WriteBatch::default()
        })
    }
}

impl<B: Backing> raft::Storage for RaftLog<B> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let state = self.read();
        Ok(RaftState::new(state.hard_state.clone(), state.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let state = self.read();
        if low < state.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > state.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = state.first_index();
        let slice = &state.entries[(low - offset) as usize..(high - offset) as usize];
        let max_size = max_size.into().unwrap_or(u64::MAX);
        // Always at least one entry, then as many as fit in max_size.
        let mut size = 0u64;
        let taken = slice
            .iter()
            .take_while(|e| {
                size += u64::from(e.compute_size());
                size <= max_size
            })
            .count()
            .max(1)
            .min(slice.len());
        Ok(slice[..taken].to_vec())
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        self.read().term(index)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read().last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.read().snapshot.get_metadata().index < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        self.snapshot_with_data().map_err(|error| raft::Error::Store(StorageError::Other(Box::new(error))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState { term, vote, commit, ..HardState::default() }
    }

    #[test]
    fn a_commit_alone_is_held_in_memory_and_a_vote_is_written() {
        let disk = Arc::new(SimulatedDisk::default());
        let log = RaftLog::new(LogState::default(), disk.clone());
        log.persist(&[], Some(&hard_state(2, 1, 0))).unwrap();
        assert_eq!(disk.durable().hard_state, hard_state(2, 1, 0));

        log.persist(&[], Some(&hard_state(2, 1, 5))).unwrap();
        assert_eq!(log.read().hard_state.commit, 5, "raft reads the commit it was told");
        assert_eq!(disk.durable().hard_state.commit, 0, "no write for a commit alone");

        // A new term (with its vote) must survive a crash; the commit goes along with it.
        log.persist(&[], Some(&hard_state(3, 2, 5))).unwrap();
        assert_eq!(disk.durable().hard_state, hard_state(3, 2, 5));
    }
}
