//! Wakes the watchers of a host's assignments when an applied entry changed what that host
//! must run or stop, and nobody else: with 10,000 hosts watching, a write wakes the few
//! watchers it concerns, not every one of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use mirari_core::registry::HostId;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct HostChanges {
    watchers: Mutex<HashMap<HostId, Vec<Weak<Notify>>>>,
}

impl HostChanges {
    /// A wake-up for changes to `host` from now on; dropping it unsubscribes. A change that
    /// comes while nobody waits is kept, so none is missed between two waits.
    pub fn subscribe(&self, host: &HostId) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        let mut watchers = self.watchers.lock().expect("host watchers lock");
        let list = watchers.entry(host.clone()).or_default();
        list.retain(|watcher| watcher.strong_count() > 0);
        list.push(Arc::downgrade(&notify));
        notify
    }

    /// Wakes the watchers of these hosts.
    pub fn changed<'a>(&self, hosts: impl IntoIterator<Item = &'a HostId>) {
        let mut watchers = self.watchers.lock().expect("host watchers lock");
        for host in hosts {
            if let Some(list) = watchers.get_mut(host) {
                wake(list);
                if list.is_empty() {
                    watchers.remove(host);
                }
            }
        }
    }

    /// Wakes every watcher (the state machine was replaced by a snapshot).
    pub fn all_changed(&self) {
        let mut watchers = self.watchers.lock().expect("host watchers lock");
        watchers.retain(|_, list| {
            wake(list);
            !list.is_empty()
        });
    }
}

/// Wakes the live watchers in `list` and drops the gone ones.
fn wake(list: &mut Vec<Weak<Notify>>) {
    list.retain(|watcher| match watcher.upgrade() {
        Some(notify) => {
            notify.notify_one();
            true
        }
        None => false,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `notify` holds a wake-up now.
    fn woken(notify: &Notify) -> bool {
        futures::FutureExt::now_or_never(notify.notified()).is_some()
    }

    #[test]
    fn a_change_wakes_the_watchers_of_that_host_only() {
        let changes = HostChanges::default();
        let (a, b) = (HostId("a".into()), HostId("b".into()));
        let watch_a = changes.subscribe(&a);
        let watch_b = changes.subscribe(&b);
        changes.changed([&a]);
        // Kept although nobody was waiting yet.
        assert!(woken(&watch_a), "a woken");
        assert!(!woken(&watch_b), "b's watcher stays asleep");

        drop(watch_a);
        changes.changed([&a]);
        assert!(!changes.watchers.lock().unwrap().contains_key(&a), "a gone watcher is forgotten");
        changes.all_changed();
        assert!(woken(&watch_b), "b woken");
    }
}
