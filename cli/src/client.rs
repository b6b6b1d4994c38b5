//! Talking to the agent: connect with a helpful error, upload blobs.

use anyhow::Context;
use futures::StreamExt;
use mirari_blobs::BlobStore;
use mirari_core::digest::Digest;
use mirari_proto::agent::agent_client::AgentClient;
use mirari_proto::agent::{BlobChunk, MissingBlobsRequest};
use mirari_proto::endpoint::Endpoint;
use tokio_util::io::ReaderStream;
use tonic::transport::Channel;

const CHUNK_BYTES: usize = 1 << 20;

pub async fn connect(endpoint: &Endpoint) -> anyhow::Result<AgentClient<Channel>> {
    let channel = endpoint.connect().await.with_context(|| {
        format!(
            "cannot reach the agent (is mirari-agent running? start it with `mirari-agent --listen {endpoint}`, \
             or point --agent / MIRARI_AGENT at it)"
        )
    })?;
    Ok(AgentClient::new(channel))
}

/// Uploads the blobs the agent lacks; returns how many were sent.
pub async fn upload_missing(
    client: &mut AgentClient<Channel>,
    store: &BlobStore,
    digests: &[Digest],
) -> anyhow::Result<usize> {
    let request = MissingBlobsRequest { sha256: digests.iter().map(ToString::to_string).collect() };
    let missing = client.missing_blobs(request).await?.into_inner().sha256;
    for text in &missing {
        let digest: Digest = text.parse()?;
        let path = store.path(&digest);
        let file = tokio::fs::File::open(&path)
            .await
            .with_context(|| format!("blob {digest} is not in the local store {}; build again", path.display()))?;
        let header = BlobChunk { sha256: text.clone(), data: Vec::new() };
        // A read error ends the stream early; the agent then rejects the upload by its digest.
        let body = ReaderStream::with_capacity(file, CHUNK_BYTES)
            .take_while(|read| std::future::ready(read.is_ok()))
            .filter_map(|read| std::future::ready(read.ok()))
            .map(|data| BlobChunk { sha256: String::new(), data: data.to_vec() });
        client
            .put_blob(futures::stream::once(std::future::ready(header)).chain(body))
            .await
            .with_context(|| format!("uploading blob {digest}"))?;
    }
    Ok(missing.len())
}
