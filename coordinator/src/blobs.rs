//! Blobs on the coordinators: stored locally, replicated to a majority before a write is
//! acknowledged, so a hash committed to the registry names content a majority holds.

use std::time::Duration;

use futures::StreamExt;
use mirari_blobs::BlobStore;
use mirari_core::digest::Digest;
use mirari_proto::agent::BlobChunk;
use mirari_proto::blob_stream;
use mirari_proto::coordinator::peer_client::PeerClient;
use mirari_proto::endpoint::Endpoint;
use tonic::Status;

use crate::driver::RaftHandle;
use crate::transport::MAX_RAFT_MESSAGE_BYTES;

const REPLICATION_DEADLINE: Duration = Duration::from_secs(60);

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
