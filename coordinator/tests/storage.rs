//! The raft log storage conformance suite, run by every backing (in memory and redb), plus
//! redb's durability across reopening and its corruption checks.

use std::path::Path;

use mirari_coordinator::consensus::redb_store::RedbBacking;
use std::sync::Arc;

use mirari_coordinator::consensus::storage::{Backing, InMemory, LogState, RaftLog, SimulatedDisk, StoreError};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, Storage, StorageError};

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, data: format!("entry {index} of term {term}").into_bytes().into(), ..Entry::default() }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

fn snapshot(index: u64, term: u64, voters: Vec<u64>, data: &[u8]) -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = index;
    snapshot.mut_metadata().term = term;
    snapshot.mut_metadata().mut_conf_state().voters = voters;
    snapshot.data = data.to_vec().into();
    snapshot
}

fn indexes<B: Backing>(log: &RaftLog<B>, low: u64, high: u64) -> Vec<u64> {
    log.entries(low, high, None, GetEntriesContext::empty(false)).unwrap().iter().map(|e| e.index).collect()
}

fn compare(a: &LogState, b: &LogState) {
    assert_eq!(a.hard_state, b.hard_state);
    assert_eq!(a.conf_state, b.conf_state);
    assert_eq!(a.snapshot, b.snapshot);
    assert_eq!(a.entries, b.entries);
}

/// The suite. `reopen` gives a log that re-read everything from its backing (or the same log
/// for a backing with nothing to re-read); after every phase the reopened state must match.
fn suite<B: Backing>(mut log: RaftLog<B>, mut reopen: impl FnMut(RaftLog<B>) -> RaftLog<B>) {
    let mut check_durable = |log: RaftLog<B>| {
        let before = log.read().clone();
        let reopened = reopen(log);
        compare(&before, &reopened.read());
        reopened
    };

    assert_eq!((log.first_index().unwrap(), log.last_index().unwrap()), (1, 0));
    assert_eq!(log.initial_state().unwrap().hard_state, HardState::default());

    let hard_state = HardState { term: 1, vote: 2, ..HardState::default() };
    log.persist(&entries(1..=10, 1), Some(&hard_state)).unwrap();
    assert_eq!(indexes(&log, 3, 6), [3, 4, 5]);
    assert_eq!(log.term(5).unwrap(), 1);
    assert!(matches!(log.term(11), Err(raft::Error::Store(StorageError::Unavailable))));
    log = check_durable(log);

    // A new leader overwrites a conflicting suffix.
    log.persist(&entries(6..=8, 2), None).unwrap();
    assert_eq!(log.last_index().unwrap(), 8);
    assert_eq!(log.term(7).unwrap(), 2);
    assert_eq!(log.term(5).unwrap(), 1);
    log = check_durable(log);

    // max_size limits the batch, but never below one entry.
    let one = log.entries(1, 9, Some(1), GetEntriesContext::empty(false)).unwrap();
    assert_eq!(one.len(), 1);

    let conf = ConfState { voters: vec![1, 2, 3], ..ConfState::default() };
    log.set_conf_state(&conf).unwrap();
    log.set_commit(7);
    log.save_snapshot(&snapshot(7, 2, vec![1, 2, 3], b"state at 7"), 5).unwrap();
    assert_eq!(log.first_index().unwrap(), 5);
    assert!(matches!(
        log.entries(3, 6, None, GetEntriesContext::empty(false)),
        Err(raft::Error::Store(StorageError::Compacted))
    ));
    assert_eq!(log.term(7).unwrap(), 2);
    assert_eq!(&log.snapshot(0, 0).unwrap().data[..], b"state at 7");
    assert!(log.read().snapshot.data.is_empty(), "the data is the backing's alone");
    assert!(matches!(log.snapshot(8, 0), Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))));
    log = check_durable(log);
    assert_eq!(log.initial_state().unwrap().hard_state.commit, 7);

    // A snapshot from the leader replaces the whole log.
    log.apply_snapshot(&snapshot(20, 3, vec![1, 2, 3, 4], b"state at 20")).unwrap();
    assert_eq!((log.first_index().unwrap(), log.last_index().unwrap()), (21, 20));
    assert_eq!(log.term(20).unwrap(), 3);
    let state = log.initial_state().unwrap();
    assert_eq!((state.hard_state.commit, state.hard_state.term), (20, 3));
    assert_eq!(state.conf_state.voters, [1, 2, 3, 4]);
    log = check_durable(log);
    log.persist(&entries(21..=22, 3), None).unwrap();
    assert_eq!(indexes(&check_durable(log), 21, 23), [21, 22]);
}

#[test]
fn in_memory_log_conforms() {
    suite(RaftLog::new(LogState::default(), InMemory::default()), |log| log);
}

#[test]
fn the_simulated_disk_conforms_and_keeps_only_what_was_written() {
    let disk = Arc::new(SimulatedDisk::default());
    suite(RaftLog::new(LogState::default(), disk.clone()), |_| RaftLog::new(disk.durable(), disk.clone()));
    // A failed write (a crash during its fsync) lands nothing.
    let log = RaftLog::new(disk.durable(), disk.clone());
    let before = disk.durable();
    disk.fail_writes(true);
    let next = log.read().last_index() + 1;
    assert!(log.persist(&entries(next..=next + 2, 9), None).is_err());
    compare(&disk.durable(), &before);
}

fn open(path: &Path) -> Result<RaftLog<RedbBacking>, StoreError> {
    let (backing, state) = RedbBacking::open(path)?;
    Ok(RaftLog::new(state, backing))
}

#[test]
fn redb_log_conforms_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    suite(open(&path).unwrap(), |log| {
        drop(log);
        open(&path).unwrap()
    });
}

#[test]
fn redb_log_refuses_a_flipped_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let marker = b"MIRARI-CORRUPTION-MARKER-0123456789";
    {
        let log = open(&path).unwrap();
        let mut special = entry(2, 1);
        special.data = marker.to_vec().into();
        log.persist(&[entry(1, 1), special, entry(3, 1)], None).unwrap();
    }
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(marker.len()).position(|w| w == marker).expect("entry bytes are in the file");
    bytes[at + 7] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    let error = open(&path).unwrap_err().to_string();
    assert!(error.contains("is corrupt: log entry 2 fails its checksum"), "{error}");
    assert!(error.contains("restore the data directory"), "{error}");
}

#[test]
fn redb_log_refuses_a_truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    {
        let log = open(&path).unwrap();
        log.persist(&entries(1..=200, 1), None).unwrap();
    }
    let length = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(length / 2).unwrap();
    let error = open(&path).unwrap_err().to_string();
    assert!(error.contains("is corrupt: redb: File truncated"), "{error}");
}
