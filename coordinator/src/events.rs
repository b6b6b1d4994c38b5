//! The events this coordinator applied, kept for the event stream: the newest [`EVENTS_KEPT`],
//! in log order, each at a position (raft index, offset within the entry).
//!
//! Every replica applies the same log and so tells the same events at the same positions: a
//! reader that loses its coordinator resumes on another from the position after the last event
//! it saw. What this node does not hold (older than its window, or before the snapshot it
//! started from or was sent) is refused as [`Gone`], never skipped in silence.

use std::collections::VecDeque;

use mirari_core::registry::{Event, EventKind, HostId};

/// How many events a coordinator keeps (a few MB).
pub const EVENTS_KEPT: usize = 20_000;

/// Where an event is in the log; events are ordered by it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub index: u64,
    pub offset: u32,
}

impl Position {
    pub fn of(event: &Event) -> Self {
        Self { index: event.index, offset: event.offset }
    }

    /// The position right after `event`.
    pub fn after(event: &Event) -> Self {
        Self { index: event.index, offset: event.offset + 1 }
    }
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub app: Option<String>,
    pub host: Option<HostId>,
}

impl Filter {
    pub fn matches(&self, event: &EventKind) -> bool {
        self.app.as_deref().is_none_or(|app| event.app() == Some(app))
            && self.host.as_ref().is_none_or(|host| event.host() == Some(host))
    }
}

/// The events asked for are no longer (or never were) held here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "events up to raft index {complete_after} are not kept by this coordinator (it keeps the newest {EVENTS_KEPT}, \
     from the snapshot it started from on); resume from index {} or later, or read `mirari cluster status`",
    complete_after + 1
)]
pub struct Gone {
    pub complete_after: u64,
}

#[derive(Debug, Clone)]
pub struct EventLog {
    events: VecDeque<Event>,
    capacity: usize,
    /// Every event of an entry after this index is held (until evicted, which raises it).
    complete_after: u64,
    /// The time of the last entry that carried one.
    last_at_ms: u64,
}

impl EventLog {
    /// An empty log for a node whose state machine stands at `applied_index`.
    pub fn new(capacity: usize, applied_index: u64) -> Self {
        Self { events: VecDeque::new(), capacity: capacity.max(1), complete_after: applied_index, last_at_ms: 0 }
    }

    /// Adds the events of entry `index`, which carried the time `at_ms` (or none).
    pub fn append(&mut self, index: u64, at_ms: Option<u64>, kinds: Vec<EventKind>) {
        if let Some(at_ms) = at_ms {
            self.last_at_ms = self.last_at_ms.max(at_ms);
        }
        for (offset, kind) in kinds.into_iter().enumerate() {
            let offset = u32::try_from(offset).unwrap_or(u32::MAX);
            self.events.push_back(Event { index, offset, at_ms: self.last_at_ms, kind });
        }
        while self.events.len() > self.capacity {
            // An entry's events go together, so a reader never gets part of one.
            let Some(oldest) = self.events.front().map(|e| e.index) else { break };
            while self.events.front().is_some_and(|e| e.index == oldest) {
                self.events.pop_front();
            }
            self.complete_after = self.complete_after.max(oldest);
        }
    }

    /// The state machine was replaced by a snapshot at `index`: what came before is not known
    /// here event by event.
    pub fn restart_at(&mut self, index: u64) {
        self.events.clear();
        self.complete_after = index;
    }

    /// Up to `max` events at or after `from` that pass `filter`. `None` asks for the oldest held;
    /// a position this node cannot answer completely is [`Gone`].
    pub fn read(&self, from: Option<Position>, filter: &Filter, max: usize) -> Result<Vec<Event>, Gone> {
        let from = match from {
            Some(from) if from.index <= self.complete_after && self.complete_after > 0 => {
                return Err(Gone { complete_after: self.complete_after });
            }
            Some(from) => from,
            None => Position::default(),
        };
        let start = self.events.partition_point(|event| Position::of(event) < from);
        Ok(self.events.range(start..).filter(|event| filter.matches(&event.kind)).take(max).cloned().collect())
    }

    /// The position the next event will have at the earliest.
    pub fn end(&self) -> Position {
        self.events.back().map_or(Position { index: self.complete_after + 1, offset: 0 }, Position::after)
    }

    /// Where the last `count` events that pass `filter` begin ([`Self::end`] if none does).
    pub fn tail_start(&self, count: usize, filter: &Filter) -> Position {
        let matching = self.events.iter().rev().filter(|event| filter.matches(&event.kind));
        matching.take(count.max(1)).last().map_or_else(|| self.end(), Position::of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaled(app: &str, count: u32) -> EventKind {
        EventKind::Scaled { app: app.into(), count }
    }

    fn positions(events: &[Event]) -> Vec<(u64, u32)> {
        events.iter().map(|e| (e.index, e.offset)).collect()
    }

    #[test]
    fn a_reader_resuming_after_its_last_event_misses_nothing_and_sees_nothing_twice() {
        let mut log = EventLog::new(100, 0);
        log.append(1, Some(10), vec![scaled("a", 1), scaled("b", 1)]);
        log.append(2, None, vec![]);
        log.append(3, None, vec![scaled("a", 2), scaled("a", 3), scaled("b", 2)]);
        let everything = log.read(None, &Filter::default(), usize::MAX).unwrap();
        assert_eq!(positions(&everything), [(1, 0), (1, 1), (3, 0), (3, 1), (3, 2)]);
        assert!(everything.iter().all(|e| e.at_ms == 10), "entries without a time take the last one");
        // Read two at a time, each read resuming after the last event it got.
        let (mut resumed, mut from) = (Vec::new(), None);
        loop {
            let batch = log.read(from, &Filter::default(), 2).unwrap();
            let Some(last) = batch.last() else { break };
            from = Some(Position::after(last));
            resumed.extend(batch);
        }
        assert_eq!(resumed, everything);
        let only_a = Filter { app: Some("a".into()), host: None };
        assert_eq!(positions(&log.read(Some(Position { index: 3, offset: 1 }), &only_a, 10).unwrap()), [(3, 1)]);
        assert_eq!(log.tail_start(2, &only_a), Position { index: 3, offset: 0 });
        assert_eq!(log.tail_start(9, &only_a), Position { index: 1, offset: 0 });
        let none = Filter { app: Some("c".into()), host: None };
        assert_eq!(log.tail_start(2, &none), Position { index: 3, offset: 3 }, "only events still to come");
    }

    #[test]
    fn what_was_evicted_or_came_before_a_snapshot_is_gone_not_skipped() {
        let mut log = EventLog::new(3, 0);
        log.append(1, None, vec![scaled("a", 1), scaled("a", 2)]);
        log.append(2, None, vec![scaled("a", 3), scaled("a", 4)]);
        // Entry 1's events left together; the window holds entry 2's.
        let held = log.read(None, &Filter::default(), 10).unwrap();
        assert_eq!(positions(&held), [(2, 0), (2, 1)]);
        assert_eq!(
            log.read(Some(Position { index: 1, offset: 1 }), &Filter::default(), 10),
            Err(Gone { complete_after: 1 })
        );
        assert_eq!(log.read(Some(Position { index: 2, offset: 1 }), &Filter::default(), 10).unwrap().len(), 1);

        log.restart_at(7);
        let error = log.read(Some(Position { index: 5, offset: 0 }), &Filter::default(), 10).unwrap_err();
        assert!(error.to_string().contains("resume from index 8 or later"), "{error}");
        assert_eq!(log.read(Some(Position { index: 8, offset: 0 }), &Filter::default(), 10), Ok(vec![]));
        // A node that started from a snapshot holds nothing before it either.
        assert!(EventLog::new(10, 4).read(Some(Position { index: 1, offset: 0 }), &Filter::default(), 1).is_err());
        assert!(EventLog::new(10, 0).read(Some(Position { index: 1, offset: 0 }), &Filter::default(), 1).is_ok());
    }
}
