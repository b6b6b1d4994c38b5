//! The agent's durable state: one record per instance, in a redb database.
//!
//! Every change to a record is committed (fsync'd) before the agent acts on it, so after a
//! crash the agent knows every instance it ever started. IDs ever minted are kept apart, so an
//! ID is never reused, even after its instance is gone.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use mirari_core::health::Health;
use mirari_core::ids::InstanceId;
use mirari_core::reconcile::Lifecycle;
use mirari_core::spec::InstanceSpec;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::backends::Handle;

const INSTANCES: TableDefinition<u64, &[u8]> = TableDefinition::new("instances");
const MINTED_IDS: TableDefinition<u64, ()> = TableDefinition::new("minted_ids");
/// Events kept per instance; older ones are dropped.
const MAX_EVENTS: usize = 200;
/// redb's page cache. The agent reads its records once, at start (and the minted IDs when it
/// mints one); the default (1 GiB) would keep every page it ever wrote in memory.
const CACHE_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub message: String,
}

/// Who wants the instance: a person on this host (`mirari run`), or the cluster's coordinators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    #[default]
    Local,
    Cluster,
}

/// Everything the agent knows about one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: InstanceId,
    #[serde(default)]
    pub origin: Origin,
    pub spec: InstanceSpec,
    pub lifecycle: Lifecycle,
    /// The backend's handle of the current run, once started.
    pub handle: Option<Handle>,
    /// What the backend said about the current run, for people.
    pub detail: String,
    pub created_at_ms: u64,
    /// Whether the last stop had to force the instance off.
    pub stop_forced: Option<bool>,
    pub events: VecDeque<Event>,
    /// Bumped by every change; reports carry it, so the cluster can tell an old one.
    #[serde(default)]
    pub revision: u64,
    /// What the health checks of the current run say (`None` without a check or a run).
    #[serde(default)]
    pub health: Health,
    /// Why the last health check failed ("" once one passes).
    #[serde(default)]
    pub health_message: String,
}

impl InstanceRecord {
    pub fn new(id: InstanceId, origin: Origin, spec: InstanceSpec, now_ms: u64) -> Self {
        let mut record = Self {
            id,
            origin,
            spec,
            lifecycle: Lifecycle::new(),
            handle: None,
            detail: String::new(),
            created_at_ms: now_ms,
            stop_forced: None,
            events: VecDeque::new(),
            health: Health::None,
            health_message: String::new(),
            revision: 1,
        };
        record.log(now_ms, "created");
        record
    }

    pub fn log(&mut self, at_ms: u64, message: impl Into<String>) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(Event { at_ms, message: message.into() });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open the agent state database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("agent state database failure")]
    Database(#[from] redb::Error),
    #[error("instance record {key:016x} is unreadable")]
    Corrupt {
        key: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("instance ID {0} was minted before")]
    IdReused(InstanceId),
}

#[derive(Debug)]
pub struct StateStore {
    db: Database,
}

impl StateStore {
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let open_error = |e: redb::Error| StateError::Open { path: path.to_owned(), source: e };
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(|e| open_error(e.into()))?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(INSTANCES).map_err(db_err)?;
        txn.open_table(MINTED_IDS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    pub fn load_all(&self) -> Result<Vec<InstanceRecord>, StateError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(INSTANCES).map_err(db_err)?;
        let mut records = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let record = serde_json::from_slice(value.value())
                .map_err(|source| StateError::Corrupt { key: key.value(), source })?;
            records.push(record);
        }
        Ok(records)
    }

    pub fn was_minted(&self, id: InstanceId) -> Result<bool, StateError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(MINTED_IDS).map_err(db_err)?;
        Ok(table.get(id.as_u64()).map_err(db_err)?.is_some())
    }

    /// Stores new records (marking their IDs minted) and changed ones, all or nothing, in one
    /// fsync'd transaction.
    pub fn write(&self, new: &[InstanceRecord], changed: &[InstanceRecord]) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut minted = txn.open_table(MINTED_IDS).map_err(db_err)?;
            let mut instances = txn.open_table(INSTANCES).map_err(db_err)?;
            for record in new {
                if minted.insert(record.id.as_u64(), ()).map_err(db_err)?.is_some() {
                    return Err(StateError::IdReused(record.id));
                }
            }
            for record in new.iter().chain(changed) {
                instances.insert(record.id.as_u64(), encode(record).as_slice()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Deletes records, in one fsync'd transaction; their IDs stay minted.
    pub fn forget(&self, ids: &[InstanceId]) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut instances = txn.open_table(INSTANCES).map_err(db_err)?;
            for id in ids {
                instances.remove(id.as_u64()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }
}

fn db_err<E: Into<redb::Error>>(error: E) -> StateError {
    StateError::Database(error.into())
}

fn encode(record: &InstanceRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("instance records serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirari_core::digest::Digest;
    use mirari_core::spec::RunPolicy;
    use mirari_core::target::Target;

    fn record(id: u64) -> InstanceRecord {
        let spec = InstanceSpec {
            app: "hello".into(),
            version: "1".into(),
            target: Target::Unix,
            artifact: Digest::of(b"x"),
            files: vec![],
            run: RunPolicy::default(),
            interfaces: vec![],
        };
        InstanceRecord::new(InstanceId::from_u64(id), Origin::Local, spec, 1)
    }

    #[test]
    fn records_survive_reopening_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        {
            let store = StateStore::open(&path).unwrap();
            store.write(&[record(1), record(2)], &[]).unwrap();
            let mut changed = record(2);
            changed.detail = "pid 7".into();
            store.write(&[], &[changed]).unwrap();
        }
        let store = StateStore::open(&path).unwrap();
        let records = store.load_all().unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].detail, "pid 7");
        assert!(store.was_minted(InstanceId::from_u64(1)).unwrap());
        assert!(matches!(store.write(&[record(3), record(1)], &[]), Err(StateError::IdReused(_))));
        assert_eq!(store.load_all().unwrap().len(), 2, "a failed create stores nothing");
    }
}
