//! Each instance's console in the agent: a bounded ring that followers read from.
//!
//! Console output of every run of an instance is appended here, so it outlives the run. A
//! follower reads from an offset and learns how many bytes it missed if the ring overtook it;
//! the ring's size bounds memory however fast the guest prints.

use std::sync::Mutex;

use futures::Stream;
use mirari_core::ring::{ByteRing, RingRead};
use tokio::sync::watch;

/// The most one read hands out.
const MAX_READ: usize = 64 * 1024;

#[derive(Debug)]
pub struct ConsoleBuffer {
    ring: Mutex<ByteRing>,
    /// Bumped on every change; `finished` once the instance will print no more.
    state: watch::Sender<(u64, bool)>,
}

impl ConsoleBuffer {
    pub fn new(capacity: usize) -> Self {
        Self { ring: Mutex::new(ByteRing::new(capacity)), state: watch::channel((0, false)).0 }
    }

    pub fn push(&self, data: &[u8]) {
        let mut ring = self.ring.lock().expect("console lock");
        ring.push(data);
        let end = ring.end();
        self.state.send_modify(|state| state.0 = end);
    }

    /// Marks whether more output may come (a restart makes it unfinished again).
    pub fn set_finished(&self, finished: bool) {
        self.state.send_modify(|state| state.1 = finished);
    }

    pub fn contents(&self) -> Vec<u8> {
        self.ring.lock().expect("console lock").contents()
    }

    /// What is kept, then (if `follow`) new output until the instance is finished.
    pub fn read(self: std::sync::Arc<Self>, follow: bool) -> impl Stream<Item = RingRead> + Send {
        self.read_from(0, follow)
    }

    /// The same from stream offset `from` on (or the oldest kept).
    pub fn read_from(self: std::sync::Arc<Self>, from: u64, follow: bool) -> impl Stream<Item = RingRead> + Send {
        let updates = self.state.subscribe();
        futures::stream::unfold((self, updates, from), move |(console, mut updates, next)| async move {
            loop {
                let (_, finished) = *updates.borrow_and_update();
                let read = console.ring.lock().expect("console lock").read_from(next, MAX_READ);
                if !read.bytes.is_empty() || read.dropped > 0 {
                    let next = read.next;
                    return Some((read, (console, updates, next)));
                }
                if !follow || finished || updates.changed().await.is_err() {
                    return None;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::Arc;

    #[tokio::test]
    async fn followers_get_history_then_live_output_until_finished() {
        let console = Arc::new(ConsoleBuffer::new(1024));
        console.push(b"boot\n");
        let reader = tokio::spawn(console.clone().read(true).map(|r| r.bytes).concat());
        tokio::task::yield_now().await;
        console.push(b"heartbeat 1\n");
        console.set_finished(true);
        assert_eq!(reader.await.unwrap(), b"boot\nheartbeat 1\n");

        let snapshot: Vec<u8> = console.read(false).map(|r| r.bytes).concat().await;
        assert_eq!(snapshot, b"boot\nheartbeat 1\n");
    }

    #[tokio::test]
    async fn reads_from_an_offset_or_the_oldest_kept() {
        let console = Arc::new(ConsoleBuffer::new(8));
        console.push(b"0123456789");
        console.set_finished(true);
        let from_offset: Vec<u8> = console.clone().read_from(7, true).map(|r| r.bytes).concat().await;
        assert_eq!(from_offset, b"789");
        let overtaken: Vec<RingRead> = console.read_from(1, false).collect().await;
        assert_eq!((overtaken[0].dropped, overtaken[0].bytes.as_slice()), (1, b"23456789".as_slice()));
    }
}
