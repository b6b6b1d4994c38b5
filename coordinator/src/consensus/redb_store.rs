//! The durable backing of the raft log: redb, with a crc32 on every stored value.
//!
//! redb commits are fsync'd, so a `write` that returned is on disk. Our own checksums catch what
//! a storage stack can do behind redb's back (a flipped bit in a page redb reads without
//! complaint): every value is stored as `crc32 (4 bytes LE) ++ bytes` and checked when the node
//! starts. A node whose data fails a check refuses to start and says where.
//!
//! After a failed write (a full disk, an I/O error) redb refuses every later operation until
//! the database is reopened, so the backing closes it and the next write reopens it: a node
//! whose disk fills up goes on once space returns.
//!
//! The time each write's commit takes (redb's fsync) goes into the histogram given with
//! [`RedbBacking::observe_commits`], the `fsync` latency of the coordinator's metrics.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::storage::{Backing, LogState, StoreError, WriteBatch};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
const SNAPSHOT: &str = "snapshot";
const NODE_ID: &str = "node_id";
/// redb's page cache. Its default (1 GiB) fills with every page the log ever wrote (entries
/// written once and read back rarely, a snapshot rewritten every few thousand entries), so
/// the coordinator's memory grew by a hundred MiB under churn; raft reads entries from memory.
const CACHE_BYTES: usize = 16 << 20;

#[derive(Debug)]
pub struct RedbBacking {
    /// `None` after a failed write, until the next write reopens it.
    db: Mutex<Option<Database>>,
    path: PathBuf,
    /// Where the commit latency of every write goes, if anywhere.
    commits: Option<Histogram>,
}

fn seal(bytes: &[u8]) -> Vec<u8> {
    let mut sealed = crc32fast::hash(bytes).to_le_bytes().to_vec();
    sealed.extend_from_slice(bytes);
    sealed
}

impl RedbBacking {
    /// Opens (or creates) the log at `path` and loads it, verifying every checksum.
    pub fn open(path: &Path) -> Result<(Self, LogState), StoreError> {
        let backing = Self { db: Mutex::new(None), path: path.to_owned(), commits: None };
        let state = {
            let db = backing.database()?;
            let db = db.as_ref().expect("just opened");
            let txn = db.begin_write().map_err(|e| backing.db_error(e))?;
            txn.open_table(ENTRIES).map_err(|e| backing.db_error(e))?;
            txn.open_table(META).map_err(|e| backing.db_error(e))?;
            txn.commit().map_err(|e| backing.db_error(e))?;
            backing.load(db)?
        };
        Ok((backing, state))
    }

    /// Observes the duration of every write's commit (its fsync), in seconds, in `histogram`.
    pub fn observe_commits(mut self, histogram: Histogram) -> Self {
        self.commits = Some(histogram);
        self
    }

    /// The open database, opening it if it is not (at start, or after a failed write).
    fn database(&self) -> Result<MutexGuard<'_, Option<Database>>, StoreError> {
        let mut db = self.db.lock().expect("redb lock");
        if db.is_none() {
            let display = self.path.display().to_string();
            *db = Some(Database::builder().set_cache_size(CACHE_BYTES).create(&self.path).map_err(|e| match e {
                redb::DatabaseError::Storage(redb::StorageError::Corrupted(what)) => {
                    StoreError::Corrupt { path: display.clone(), what: format!("redb: {what}") }
                }
                other => StoreError::Open { path: display.clone(), source: other.into() },
            })?);
        }
        Ok(db)
    }

    fn db_error<E: Into<redb::Error>>(&self, error: E) -> StoreError {
        StoreError::Database { path: self.path.display().to_string(), source: error.into() }
    }

    /// Records that this data directory is raft node `id`'s, or refuses if it is another's:
    /// a node started with another's data would vote and append as someone it is not.
    pub fn claim_node_id(&self, id: u64) -> Result<(), StoreError> {
        let db = self.database()?;
        let txn = db.as_ref().expect("open").begin_write().map_err(|e| self.db_error(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.db_error(e))?;
            let stored = match meta.get(NODE_ID).map_err(|e| self.db_error(e))? {
                Some(value) => {
                    let bytes = self.unseal("the node ID", value.value())?;
                    Some(u64::from_le_bytes(
                        bytes.try_into().map_err(|_| self.corrupt("the node ID is truncated".into()))?,
                    ))
                }
                None => None,
            };
            match stored {
                Some(owner) if owner != id => {
                    return Err(StoreError::WrongNode { path: self.path.display().to_string(), owner, id });
                }
                Some(_) => return Ok(()),
                None => {
                    meta.insert(NODE_ID, seal(&id.to_le_bytes()).as_slice()).map_err(|e| self.db_error(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.db_error(e))
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt { path: self.path.display().to_string(), what }
    }

    fn unseal<'a>(&self, what: &str, sealed: &'a [u8]) -> Result<&'a [u8], StoreError> {
        if sealed.len() < 4 {
            return Err(self.corrupt(format!("{what} is truncated")));
        }
        let (crc, bytes) = sealed.split_at(4);
        if crc32fast::hash(bytes).to_le_bytes() != crc {
            return Err(self.corrupt(format!("{what} fails its checksum")));
        }
        Ok(bytes)
    }

    fn decode<M: protobuf::Message>(&self, what: &str, sealed: &[u8]) -> Result<M, StoreError> {
        let bytes = self.unseal(what, sealed)?;
        M::parse_from_bytes(bytes).map_err(|e| self.corrupt(format!("{what} does not decode: {e}")))
    }

    fn load(&self, db: &Database) -> Result<LogState, StoreError> {
        let txn = db.begin_read().map_err(|e| self.db_error(e))?;
        let meta = txn.open_table(META).map_err(|e| self.db_error(e))?;
        let mut state = LogState::default();
        if let Some(value) = meta.get(HARD_STATE).map_err(|e| self.db_error(e))? {
            state.hard_state = self.decode::<HardState>("the hard state", value.value())?;
        }
        if let Some(value) = meta.get(CONF_STATE).map_err(|e| self.db_error(e))? {
            state.conf_state = self.decode::<ConfState>("the conf state", value.value())?;
        }
        if let Some(value) = meta.get(SNAPSHOT).map_err(|e| self.db_error(e))? {
            state.snapshot = self.decode::<Snapshot>("the snapshot", value.value())?;
        }
        let entries = txn.open_table(ENTRIES).map_err(|e| self.db_error(e))?;
        for row in entries.iter().map_err(|e| self.db_error(e))? {
            let (key, value) = row.map_err(|e| self.db_error(e))?;
            let what = format!("log entry {}", key.value());
            let entry: Entry = self.decode(&what, value.value())?;
            if entry.index != key.value() {
                return Err(self.corrupt(format!("{what} holds entry {}", entry.index)));
            }
            if let Some(last) = state.entries.last()
                && last.index + 1 != entry.index
            {
                return Err(self.corrupt(format!("the log jumps from entry {} to {}", last.index, entry.index)));
            }
            state.entries.push(entry);
        }
        let snapshot_index = state.snapshot.get_metadata().index;
        if let Some(first) = state.entries.first()
            && first.index > snapshot_index + 1
        {
            return Err(self.corrupt(format!("entries {}..{} are missing", snapshot_index + 1, first.index)));
        }
        Ok(state)
    }
}

impl Backing for RedbBacking {
    fn write(&self, batch: &WriteBatch<'_>) -> Result<(), StoreError> {
        let mut db = self.database()?;
        let written = self.write_to(db.as_ref().expect("open"), batch);
        if written.is_err() {
            // redb refuses everything after a failed write until it is reopened.
            *db = None;
        }
        written
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let db = self.database()?;
        let txn = db.as_ref().expect("open").begin_read().map_err(|e| self.db_error(e))?;
        let meta = txn.open_table(META).map_err(|e| self.db_error(e))?;
        match meta.get(SNAPSHOT).map_err(|e| self.db_error(e))? {
            Some(value) => self.decode("the snapshot", value.value()),
            None => Ok(Snapshot::default()),
        }
    }
}

impl RedbBacking {
    fn write_to(&self, db: &Database, batch: &WriteBatch<'_>) -> Result<(), StoreError> {
        let txn = db.begin_write().map_err(|e| self.db_error(e))?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(|e| self.db_error(e))?;
            if let Some(first) = batch.entries.first() {
                entries.retain_in(first.index.., |_, _| false).map_err(|e| self.db_error(e))?;
                for entry in batch.entries {
                    let bytes = entry.write_to_bytes().expect("raft entries encode");
                    #[allow(unused_mut)]
                    let mut sealed = seal(&bytes);
                    // A disk that writes garbage: the checksum must catch it at the next start.
                    #[cfg(feature = "failpoints")]
                    if fail::eval("redb::corrupt_entry", |_| ()).is_some()
                        && let Some(byte) = sealed.last_mut()
                    {
                        *byte ^= 0x01;
                    }
                    entries.insert(entry.index, sealed.as_slice()).map_err(|e| self.db_error(e))?;
                }
            }
            if let Some(compact_to) = batch.compact_to {
                entries.retain_in(..compact_to, |_, _| false).map_err(|e| self.db_error(e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| self.db_error(e))?;
            let mut put = |key: &str, message: &dyn protobuf::Message| -> Result<(), StoreError> {
                let bytes = message.write_to_bytes().expect("raft state encodes");
                meta.insert(key, seal(&bytes).as_slice()).map_err(|e| self.db_error(e))?;
                Ok(())
            };
            if let Some(hard_state) = batch.hard_state {
                put(HARD_STATE, hard_state)?;
            }
            if let Some(conf_state) = batch.conf_state {
                put(CONF_STATE, conf_state)?;
            }
            if let Some(snapshot) = batch.snapshot {
                put(SNAPSHOT, snapshot)?;
            }
        }
        fail::fail_point!("redb::commit");
        let started = Instant::now();
        txn.commit().map_err(|e| self.db_error(e))?;
        if let Some(commits) = &self.commits {
            commits.observe(started.elapsed().as_secs_f64());
        }
        fail::fail_point!("redb::committed");
        Ok(())
    }
}
