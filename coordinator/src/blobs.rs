//! Blobs on the coordinators: stored locally, replicated to a majority before a write is
//! acknowledged, so a hash committed to the registry names content a majority holds. When
//! members change, the leader copies every blob the registry names to the members that lack
//! it ([`ReplicatedBlobs::repair`]), so replacing coordinators one by one never leaves a blob
//! on a minority. Every coordinator deletes the blobs no registered version names once they are
//! older than [`GARBAGE_GRACE`] ([`ReplicatedBlobs::collect_garbage`]): the registry keeps the
//! versions of each deployment's history (and a few more), so their artifacts stay.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use mirari_blobs::BlobStore;
use mirari_core::digest::Digest;
use mirari_proto::agent::{BlobChunk, MissingBlobsRequest};
use mirari_proto::blob_stream;
use mirari_proto::coordinator::FetchBlobRequest;
use mirari_proto::coordinator::coordinator_client::CoordinatorClient;
use mirari_proto::coordinator::peer_client::PeerClient;
use mirari_proto::endpoint::Endpoint;
use tonic::Status;
use tonic::transport::Channel;

use crate::driver::RaftHandle;
use crate::transport::MAX_RAFT_MESSAGE_BYTES;

const REPLICATION_DEADLINE: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the leader looks whether the members changed.
const REPAIR_CHECK: Duration = Duration::from_secs(2);
/// How often it repairs even when they did not.
const REPAIR_EVERY: Duration = Duration::from_secs(60);
/// A blob no version names is kept this long: a deploy uploads its blobs (and the source
/// bundle, which no version names) before it registers the version, and builds in between.
pub const GARBAGE_GRACE: Duration = Duration::from_secs(3600);
/// How often each coordinator collects garbage.
const COLLECT_EVERY: Duration = Duration::from_secs(600);

/// Every blob the registry's versions name: artifacts and file images.
fn named_blobs(registry: &mirari_core::registry::Registry) -> BTreeSet<Digest> {
    registry.apps().flat_map(|app| app.artifacts.values().copied().chain(app.files.iter().map(|f| f.digest))).collect()
}

/// Which stored blobs (with their ages) are garbage: named by no version, older than `grace`.
fn garbage(stored: &[(Digest, Duration)], named: &BTreeSet<Digest>, grace: Duration) -> Vec<Digest> {
    stored.iter().filter(|(digest, age)| *age > grace && !named.contains(digest)).map(|(digest, _)| *digest).collect()
}

#[derive(Debug, Clone)]
pub struct ReplicatedBlobs {
    store: BlobStore,
    raft: RaftHandle,
}

impl ReplicatedBlobs {
    pub fn new(store: BlobStore, raft: RaftHandle) -> Self {
        Self { store, raft }
    }

    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// Stores an upload whose first chunk names its digest; verifies it.
    pub async fn receive(
        &self,
        chunks: impl futures::Stream<Item = Result<BlobChunk, Status>> + Unpin,
    ) -> Result<(Digest, u64), Status> {
        Ok(blob_stream::receive(&self.store, chunks).await?)
    }

    /// Returns once a majority of the coordinators hold `digest` (this one included); keeps
    /// copying to the rest in the background.
    pub async fn replicate(&self, digest: Digest) -> Result<(), Status> {
        let self_id = self.raft.status().id;
        let peers: Vec<String> =
            self.raft.machine().members.iter().filter(|(id, _)| **id != self_id).map(|(_, a)| a.clone()).collect();
        // A majority of peers + 1, less this node.
        let needed = peers.len().div_ceil(2);
        if needed == 0 {
            return Ok(());
        }
        let (done, mut copies) = tokio::sync::mpsc::channel(peers.len());
        for address in peers {
            let (store, done) = (self.store.clone(), done.clone());
            tokio::spawn(async move {
                let copied = push(&store, digest, &address).await;
                if let Err(error) = &copied {
                    tracing::warn!(%address, %digest, %error, "could not copy a blob to a coordinator");
                }
                let _ = done.send(copied.is_ok()).await;
            });
        }
        drop(done);
        let mut copied = 0;
        let wait = async {
            while let Some(ok) = copies.recv().await {
                copied += usize::from(ok);
                if copied >= needed {
                    return true;
                }
            }
            false
        };
        match tokio::time::timeout(REPLICATION_DEADLINE, wait).await {
            Ok(true) => Ok(()),
            _ => Err(Status::unavailable(format!(
                "blob {} reached {copied} of the {needed} other coordinators a majority needs",
                digest.short()
            ))),
        }
    }

    /// Copies every blob the registry names to each member that lacks it, fetching it first
    /// if this node lacks it too. Returns how many copies it made.
    pub async fn repair(&self) -> usize {
        let (self_id, peers, wanted) = {
            let machine = self.raft.machine();
            (self.raft.status().id, machine.members.clone(), named_blobs(&machine.registry))
        };
        let peers: Vec<&String> = peers.iter().filter(|(id, _)| **id != self_id).map(|(_, a)| a).collect();
        for digest in wanted.iter().filter(|d| !self.store.contains(d)) {
            for peer in &peers {
                if fetch(&self.store, *digest, peer).await.is_ok() {
                    break;
                }
            }
        }
        let mut copied = 0;
        let text: Vec<String> = wanted.iter().map(ToString::to_string).collect();
        for peer in peers {
            let missing = match missing_on(peer, &text).await {
                Ok(missing) => missing,
                Err(error) => {
                    tracing::debug!(%peer, %error, "cannot ask a coordinator which blobs it lacks");
                    continue;
                }
            };
            for digest in missing.iter().filter(|d| self.store.contains(d)) {
                match push(&self.store, *digest, peer).await {
                    Ok(()) => copied += 1,
                    Err(error) => tracing::warn!(%peer, %digest, %error, "could not copy a blob to a coordinator"),
                }
            }
        }
        copied
    }

    /// Runs [`ReplicatedBlobs::repair`] on the leader soon after the members change, and now
    /// and then besides (a member that was down may have missed a copy). Never ends.
    pub async fn keep_replicated(self) {
        let mut repaired_for = None;
        let mut repaired_at = tokio::time::Instant::now();
        let mut interval = tokio::time::interval(REPAIR_CHECK);
        loop {
            interval.tick().await;
            if self.raft.status().role != "leader" {
                repaired_for = None;
                continue;
            }
            let members = self.raft.machine().members.clone();
            if repaired_for.as_ref() == Some(&members) && repaired_at.elapsed() < REPAIR_EVERY {
                continue;
            }
            let copied = self.repair().await;
            if copied > 0 {
                tracing::info!(copied, "copied blobs to coordinators that lacked them");
            }
            repaired_for = Some(members);
            repaired_at = tokio::time::Instant::now();
        }
    }

    /// Deletes this coordinator's blobs that no registered version names, once older than
    /// `grace`; returns how many.
    pub fn collect_garbage(&self, grace: Duration) -> usize {
        let stored = match self.store.list() {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(%error, "cannot list the blob store to collect garbage");
                return 0;
            }
        };
        let named = named_blobs(&self.raft.machine().registry);
        let mut removed = 0;
        for digest in garbage(&stored, &named, grace) {
            match self.store.remove(&digest) {
                Ok(()) => removed += 1,
                Err(error) => tracing::warn!(%digest, %error, "cannot remove an unused blob"),
            }
        }
        removed
    }

    /// Collects garbage now and then, each time only once a read barrier says this node's
    /// registry is current (a node replaying its log after a restart knows fewer versions than
    /// there are). Never ends.
    pub async fn keep_collecting(self) {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + COLLECT_EVERY, COLLECT_EVERY);
        loop {
            interval.tick().await;
            if let Err(error) = self.raft.read_barrier().await {
                tracing::debug!(%error, "not collecting blob garbage: the registry may not be current");
                continue;
            }
            let removed = self.collect_garbage(GARBAGE_GRACE);
            if removed > 0 {
                tracing::info!(removed, "removed blobs no registered version names");
            }
        }
    }

    /// The blob's content in chunks.
    pub async fn chunks(
        &self,
        digest: Digest,
    ) -> Result<impl futures::Stream<Item = Result<BlobChunk, Status>> + use<>, Status> {
        blob_stream::send(&self.store, digest)
            .await
            .ok_or_else(|| Status::not_found(format!("this coordinator has no blob {digest}")))
    }
}

async fn push(store: &BlobStore, digest: Digest, address: &str) -> anyhow::Result<()> {
    let endpoint: Endpoint = address.parse()?;
    let mut peer = PeerClient::new(endpoint.connect().await?).max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
    let chunks = blob_stream::send(store, digest).await.ok_or_else(|| anyhow::anyhow!("blob {digest} is gone"))?;
    peer.push_blob(chunks.filter_map(|c| std::future::ready(c.ok()))).await?;
    Ok(())
}

async fn client(address: &str) -> anyhow::Result<CoordinatorClient<Channel>> {
    let endpoint: Endpoint = address.parse()?;
    Ok(CoordinatorClient::new(tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await??))
}

/// Which of `wanted` the coordinator at `address` lacks.
async fn missing_on(address: &str, wanted: &[String]) -> anyhow::Result<Vec<Digest>> {
    let request = MissingBlobsRequest { sha256: wanted.to_vec() };
    let missing = client(address).await?.missing_blobs(request).await?.into_inner().sha256;
    Ok(missing.iter().filter_map(|d| d.parse().ok()).collect())
}

async fn fetch(store: &BlobStore, digest: Digest, address: &str) -> anyhow::Result<()> {
    let chunks = client(address).await?.fetch_blob(FetchBlobRequest { sha256: digest.to_string() }).await?;
    let (received, _) = blob_stream::receive(store, chunks.into_inner()).await?;
    anyhow::ensure!(received == digest, "{address} sent blob {received} for {digest}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_what_no_version_names_once_past_the_grace() {
        let (named, unnamed, fresh) = (Digest::of(b"artifact"), Digest::of(b"old bundle"), Digest::of(b"new upload"));
        let hour = Duration::from_secs(3600);
        let stored = [(named, 2 * hour), (unnamed, 2 * hour), (fresh, Duration::from_secs(5))];
        assert_eq!(garbage(&stored, &[named].into(), hour), [unnamed]);
    }
}
