//! A bounded byte ring for console output.
//!
//! Memory stays at `capacity` however fast a guest prints: the oldest bytes are dropped. Every
//! byte ever written has an offset, so a reader that follows the stream knows exactly how much
//! it missed if it fell behind.

use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct ByteRing {
    bytes: VecDeque<u8>,
    capacity: usize,
    /// Offset (in the whole stream) of `bytes[0]`.
    start: u64,
}

/// What a reader gets: the bytes it missed because they were dropped, then the bytes kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingRead {
    pub dropped: u64,
    pub bytes: Vec<u8>,
    /// Offset to read from next time.
    pub next: u64,
}

impl ByteRing {
    pub fn new(capacity: usize) -> Self {
        Self { bytes: VecDeque::with_capacity(capacity.min(64 * 1024)), capacity, start: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Offset just past the last byte written.
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    pub fn push(&mut self, data: &[u8]) {
        let kept = &data[data.len().saturating_sub(self.capacity)..];
        let skipped = (data.len() - kept.len()) as u64;
        let overflow = (self.bytes.len() + kept.len()).saturating_sub(self.capacity);
        self.bytes.drain(..overflow);
        self.bytes.extend(kept);
        self.start += overflow as u64 + skipped;
    }

    /// Everything kept from `offset` on (at most `max` bytes).
    pub fn read_from(&self, offset: u64, max: usize) -> RingRead {
        let from = offset.max(self.start);
        let skip = usize::try_from(from - self.start).unwrap_or(usize::MAX).min(self.bytes.len());
        let bytes: Vec<u8> = self.bytes.iter().skip(skip).take(max).copied().collect();
        RingRead { dropped: from - offset.min(from), next: from + bytes.len() as u64, bytes }
    }

    /// Everything kept, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        self.bytes.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_newest_bytes() {
        let mut ring = ByteRing::new(8);
        ring.push(b"hello ");
        ring.push(b"world");
        assert_eq!(ring.contents(), b"lo world");
        assert_eq!(ring.end(), 11);
        ring.push(b"0123456789abcdef");
        assert_eq!(ring.contents(), b"89abcdef");
        assert_eq!(ring.end(), 27);
    }

    #[test]
    fn readers_learn_how_much_they_missed() {
        let mut ring = ByteRing::new(4);
        ring.push(b"ab");
        let first = ring.read_from(0, usize::MAX);
        assert_eq!((first.dropped, first.bytes.as_slice(), first.next), (0, &b"ab"[..], 2));
        ring.push(b"cdefgh");
        let second = ring.read_from(first.next, 2);
        assert_eq!((second.dropped, second.bytes.as_slice(), second.next), (2, &b"ef"[..], 6));
        let third = ring.read_from(second.next, usize::MAX);
        assert_eq!((third.dropped, third.bytes.as_slice(), third.next), (0, &b"gh"[..], 8));
        assert_eq!(ring.read_from(8, 10).bytes, b"");
    }

    #[test]
    fn memory_is_bounded_under_a_flood() {
        let mut ring = ByteRing::new(1024);
        for _ in 0..10_000 {
            ring.push(&[b'x'; 100]);
        }
        assert_eq!(ring.contents().len(), 1024);
        assert_eq!(ring.end(), 1_000_000);
    }
}
