//! Talking to the agent: connect with a helpful error, upload blobs.

use anyhow::Context;
use futures::StreamExt;
use mirari_blobs::BlobStore;
use mirari_core::digest::Digest;
use mirari_proto::agent::MissingBlobsRequest;
use mirari_proto::agent::agent_client::AgentClient;
use mirari_proto::blob_stream;
use mirari_proto::endpoint::Endpoint;
use tonic::transport::Channel;

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
        let chunks = blob_stream::send(store, digest).await.with_context(|| {
            format!("blob {digest} is not in the local store {}; build again", store.path(&digest).display())
        })?;
        client
            .put_blob(chunks.filter_map(|c| std::future::ready(c.ok())))
            .await
            .with_context(|| format!("uploading blob {digest}"))?;
    }
    Ok(missing.len())
}
