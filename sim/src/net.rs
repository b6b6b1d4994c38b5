//! The simulated network: packets with latency, loss, and hosts cut off for a while.

use std::collections::BTreeMap;

use mirari_agent::machine::Lease;
use mirari_coordinator::consensus::RaftMessage;
use mirari_core::ids::InstanceId;
use mirari_core::registry::{Host, InstanceReport};
use mirari_core::rng::SplitMix64;
use mirari_core::spec::InstanceSpec;

/// Virtual milliseconds.
pub type Ms = u64;

/// A process on the network: a coordinator (by raft ID) or an agent host (by index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Addr {
    Coordinator(u64),
    Agent(usize),
}

/// What an agent asks a coordinator.
#[derive(Debug, Clone)]
pub enum Rpc {
    Register(Box<Host>),
    Renew,
    Report(Vec<InstanceReport>),
    /// Open assignment stream `stream`.
    Watch {
        stream: u64,
    },
}

#[derive(Debug, Clone)]
pub enum Answer {
    Lease(Lease),
    Done,
    Failed,
}

#[derive(Debug, Clone)]
pub enum Payload {
    Raft(Box<RaftMessage>),
    Call {
        call: u64,
        rpc: Rpc,
    },
    Answer {
        call: u64,
        answer: Answer,
    },
    Assignments {
        stream: u64,
        index: u64,
        run: Vec<(InstanceId, InstanceSpec)>,
        stop: Vec<InstanceId>,
        unchanged: bool,
    },
}

#[derive(Debug)]
pub struct Packet {
    pub deliver_at: Ms,
    pub from: Addr,
    pub to: Addr,
    pub payload: Payload,
}

#[derive(Debug, Default)]
pub struct Network {
    in_flight: Vec<Packet>,
    /// Processes cut off from every other, until the given time.
    cut: BTreeMap<Addr, Ms>,
    /// Packets lost in a thousand, while faults are on.
    pub loss_per_mille: u64,
    /// Assignment streams that lost a message. A stream rides one TCP connection: it does not
    /// lose a message and go on, it breaks, and nothing more arrives on it.
    broken_streams: std::collections::BTreeSet<u64>,
    /// When each stream's last message arrives: a stream delivers in order.
    stream_tail: BTreeMap<u64, Ms>,
}

impl Network {
    pub fn send(&mut self, rng: &mut SplitMix64, now: Ms, from: Addr, to: Addr, payload: Payload) {
        let latency = if rng.chance(5) { rng.between(20, 80) } else { rng.between(1, 8) };
        let mut deliver_at = now + latency;
        if let Payload::Assignments { stream, .. } = &payload {
            let tail = self.stream_tail.entry(*stream).or_default();
            deliver_at = deliver_at.max(*tail);
            *tail = deliver_at;
        }
        self.in_flight.push(Packet { deliver_at, from, to, payload });
    }

    pub fn cut_off(&mut self, addr: Addr, until: Ms) {
        self.cut.insert(addr, until);
    }

    pub fn is_cut(&self, addr: Addr, now: Ms) -> bool {
        self.cut.get(&addr).is_some_and(|until| *until > now)
    }

    pub fn heal(&mut self) {
        self.cut.clear();
        self.loss_per_mille = 0;
    }

    /// Packets due by `now` that get through, in the order they were sent.
    pub fn deliver(&mut self, rng: &mut SplitMix64, now: Ms) -> Vec<Packet> {
        let (due, later): (Vec<Packet>, Vec<Packet>) =
            std::mem::take(&mut self.in_flight).into_iter().partition(|p| p.deliver_at <= now);
        self.in_flight = later;
        self.cut.retain(|_, until| *until > now);
        let mut delivered = Vec::new();
        for packet in due {
            let lost = self.is_cut(packet.from, now)
                || self.is_cut(packet.to, now)
                || (self.loss_per_mille > 0 && rng.chance_per_mille(self.loss_per_mille));
            if let Payload::Assignments { stream, .. } = &packet.payload
                && (lost || self.broken_streams.contains(stream))
            {
                self.broken_streams.insert(*stream);
                continue;
            }
            if !lost {
                delivered.push(packet);
            }
        }
        delivered
    }

    /// Forgets what is in flight to `addr` (it crashed: its sockets are gone).
    pub fn drop_to(&mut self, addr: Addr) {
        self.in_flight.retain(|p| p.to != addr);
    }
}
