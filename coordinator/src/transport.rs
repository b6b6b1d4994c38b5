//! The raft transport: messages to peers over gRPC, one sender task and queue per peer.
//!
//! Sending never blocks the raft driver: a full queue drops the message (raft retransmits).
//! The senders and their connections run on a thread of their own, so heartbeats leave on
//! time however busy the coordinator's API is (thousands of agents' calls would otherwise
//! delay them past the election timeout, and leaders would step down under load).
//! Each sender batches what is queued into one RPC, and reports back whether a snapshot
//! arrived and when a peer is unreachable, as raft-rs needs to know.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mirari_proto::coordinator::RaftBatch;
use mirari_proto::coordinator::peer_client::PeerClient;
use mirari_proto::endpoint::Endpoint;
use raft::eraftpb::MessageType;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::consensus::{RaftMessage, encode_message};
use crate::driver::DeliveryReporter;

const PEER_QUEUE: usize = 1024;
const MAX_BATCH: usize = 256;
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Raft snapshots of a large registry are big; the peer API accepts this much in one message.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 512 << 20;

#[derive(Debug, Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    self_id: u64,
    self_address: String,
    peers: Mutex<HashMap<u64, Peer>>,
    reporter: OnceLock<DeliveryReporter>,
    /// The runtime the senders run on: its own thread (not the raft driver's, whose disk
    /// writes must not hold up sending, nor the API's).
    runtime: tokio::runtime::Handle,
    /// Dropped with the transport, which ends the senders' thread.
    _stop: tokio::sync::oneshot::Sender<()>,
    /// This node's cluster, once it knows it (from its bootstrap or first snapshot).
    cluster_id: OnceLock<String>,
}

#[derive(Debug)]
struct Peer {
    address: String,
    queue: mpsc::Sender<RaftMessage>,
}

impl Transport {
    /// A transport whose senders run on a thread of their own, until it is dropped.
    pub fn new(self_id: u64, self_address: String) -> Self {
        let (runtime, stop) = senders_thread();
        Self {
            inner: Arc::new(Inner {
                self_id,
                self_address,
                peers: Mutex::new(HashMap::new()),
                reporter: OnceLock::new(),
                runtime,
                _stop: stop,
                cluster_id: OnceLock::new(),
            }),
        }
    }

    pub(crate) fn attach(&self, reporter: DeliveryReporter) {
        let _ = self.inner.reporter.set(reporter);
    }

    /// Stamps every batch from now on with this cluster ID. A node belongs to one cluster for
    /// its whole life, so only the first call counts.
    pub fn learn_cluster_id(&self, cluster_id: &str) {
        if self.inner.cluster_id.get().is_none() {
            let _ = self.inner.cluster_id.set(cluster_id.to_owned());
        }
    }

    fn report(&self, peer: u64, delivered: bool, snapshot: bool) {
        if let Some(reporter) = self.inner.reporter.get() {
            reporter.report(peer, delivered, snapshot);
        }
    }

    /// Queues `message` for its peer at `address` (`None` if no address is known yet).
    pub fn send(&self, message: RaftMessage, address: Option<String>) {
        let to = message.to;
        let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        let Some(address) = address else {
            self.report(to, false, snapshot);
            return;
        };
        let mut peers = self.inner.peers.lock().expect("peers lock");
        let peer = match peers.get(&to) {
            Some(peer) if peer.address == address && !peer.queue.is_closed() => peer,
            _ => {
                let (queue, receiver) = mpsc::channel(PEER_QUEUE);
                self.inner.runtime.spawn(self.clone().send_loop(to, address.clone(), receiver));
                peers.insert(to, Peer { address, queue });
                &peers[&to]
            }
        };
        if peer.queue.try_send(message).is_err() {
            drop(peers);
            self.report(to, false, snapshot);
        }
    }

    async fn send_loop(self, to: u64, address: String, mut queue: mpsc::Receiver<RaftMessage>) {
        let mut client: Option<PeerClient<Channel>> = None;
        // Whether the peer's last answer was a refusal (logged once, not per batch).
        let mut refused = false;
        while let Some(first) = queue.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            let snapshots = batch.iter().any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
            let request = RaftBatch {
                from: self.inner.self_id,
                from_address: self.inner.self_address.clone(),
                messages: batch.iter().map(encode_message).collect(),
                cluster_id: self.inner.cluster_id.get().cloned().unwrap_or_default(),
            };
            let outcome = match self.connect(&mut client, &address).await {
                Some(peer) => tokio::time::timeout(SEND_TIMEOUT, peer.send(request)).await.ok(),
                None => None,
            };
            let delivered = matches!(outcome, Some(Ok(_)));
            match outcome {
                Some(Err(refusal)) if refusal.code() == tonic::Code::FailedPrecondition => {
                    if !refused {
                        tracing::error!(peer = to, %address, reason = refusal.message(), "a peer refuses this node's raft messages");
                    }
                    refused = true;
                }
                _ if !delivered => tracing::debug!(peer = to, %address, "raft messages not delivered"),
                _ => refused = false,
            }
            if !delivered {
                client = None;
            }
            self.report(to, delivered, snapshots);
        }
    }

    async fn connect<'a>(
        &self,
        client: &'a mut Option<PeerClient<Channel>>,
        address: &str,
    ) -> Option<&'a mut PeerClient<Channel>> {
        if client.is_none() {
            let endpoint: Endpoint = address.parse().ok()?;
            let channel = tokio::time::timeout(SEND_TIMEOUT, endpoint.connect()).await.ok()?.ok()?;
            *client = Some(
                PeerClient::new(channel)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                    .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES),
            );
        }
        client.as_mut()
    }
}

/// Starts the senders' thread and runtime; it runs until the returned sender is dropped.
fn senders_thread() -> (tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("the raft senders' runtime");
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("raft-transport".into())
        .spawn(move || {
            let _ = runtime.block_on(stopped);
        })
        .expect("the raft senders' thread");
    (handle, stop)
}
