//! Blobs on the coordinators: stored locally, replicated to a majority before a write is
//! acknowledged, so a hash committed to the registry names content a majority holds.

use std::time::Duration;

use futures::StreamExt;
use mirari_blobs::{BlobError, BlobStore};
use mirari_core::digest::Digest;
use mirari_proto::agent::BlobChunk;
use mirari_proto::coordinator::peer_client::PeerClient;
use mirari_proto::endpoint::Endpoint;
use tokio::io::AsyncReadExt;
use tonic::Status;

use crate::driver::RaftHandle;
use crate::transport::MAX_RAFT_MESSAGE_BYTES;

const CHUNK_BYTES: usize = 1 << 20;
const REPLICATION_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ReplicatedBlobs {
    store: BlobStore,
    raft: RaftHandle,
}

pub fn blob_status(error: BlobError) -> Status {
    match error {
        BlobError::Mismatch { .. } => Status::data_loss(error.to_string()),
        BlobError::Io { .. } => Status::internal(format!(
            "{error}: {}",
            std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default()
        )),
    }
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
        mut chunks: impl futures::Stream<Item = Result<BlobChunk, Status>> + Unpin,
    ) -> Result<(Digest, u64), Status> {
        let first = chunks.next().await.ok_or_else(|| Status::invalid_argument("empty upload"))??;
        let expected: Digest = first.sha256.parse().map_err(|e| Status::invalid_argument(format!("{e}")))?;
        if self.store.contains(&expected) {
            while chunks.next().await.is_some() {}
            let size = std::fs::metadata(self.store.path(&expected)).map(|m| m.len()).unwrap_or_default();
            return Ok((expected, size));
        }
        let mut writer = self.store.writer(Some(expected)).map_err(blob_status)?;
        writer.write(&first.data).map_err(blob_status)?;
        while let Some(chunk) = chunks.next().await {
            writer.write(&chunk?.data).map_err(blob_status)?;
        }
        writer.finish().map_err(blob_status)
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
        let path = self.store.path(&digest);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|_| Status::not_found(format!("this coordinator has no blob {digest}")))?;
        Ok(read_chunks(file, digest))
    }
}

fn read_chunks(file: tokio::fs::File, digest: Digest) -> impl futures::Stream<Item = Result<BlobChunk, Status>> {
    futures::stream::unfold((file, true), move |(mut file, first)| async move {
        let mut data = vec![0u8; CHUNK_BYTES];
        match file.read(&mut data).await {
            Ok(0) if !first => None,
            Ok(n) => {
                data.truncate(n);
                let sha256 = if first { digest.to_string() } else { String::new() };
                Some((Ok(BlobChunk { sha256, data }), (file, false)))
            }
            Err(e) => Some((Err(Status::internal(format!("reading blob {digest}: {e}"))), (file, false))),
        }
    })
}

async fn push(store: &BlobStore, digest: Digest, address: &str) -> anyhow::Result<()> {
    let endpoint: Endpoint = address.parse()?;
    let mut peer = PeerClient::new(endpoint.connect().await?).max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
    let file = tokio::fs::File::open(store.path(&digest)).await?;
    let chunks = read_chunks(file, digest).filter_map(|c| std::future::ready(c.ok()));
    peer.push_blob(chunks).await?;
    Ok(())
}
