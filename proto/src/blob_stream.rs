//! Blobs over gRPC, one way in each direction: a stored blob as a stream of chunks whose first
//! names its digest ([`send`]), and chunks into a store ([`BlobSink`], [`receive`]), bounded
//! by `mirari_core::limits::MAX_BLOB_BYTES`, verified against the digest, and written and
//! fsync'd on blocking threads so no async worker waits for the disk.

use futures::{Stream, StreamExt};
use mirari_blobs::{BlobError, BlobStore, BlobWriter};
use mirari_core::digest::Digest;
use mirari_core::limits::MAX_BLOB_BYTES;
use tokio::io::AsyncReadExt;
use tonic::Status;

use crate::agent::BlobChunk;
use crate::convert::{WireError, parse_digest};

/// Bytes per chunk on the wire (well under the request size limit).
pub const CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("the upload is empty: its first chunk must name the blob's sha256")]
    Empty,
    #[error(transparent)]
    Digest(#[from] WireError),
    #[error("the blob is larger than the limit of {MAX_BLOB_BYTES} bytes")]
    TooLarge,
    #[error("the blob could not be stored")]
    Store(#[from] BlobError),
    #[error("the upload broke off")]
    Stream(#[source] Status),
    #[error("the blob writer stopped")]
    Gone,
}

impl From<ReceiveError> for Status {
    fn from(error: ReceiveError) -> Self {
        let message = mirari_core::errors::chain(&error);
        match error {
            ReceiveError::Empty | ReceiveError::Digest(_) => Status::invalid_argument(message),
            ReceiveError::TooLarge => Status::resource_exhausted(message),
            ReceiveError::Store(BlobError::Mismatch { .. }) => Status::data_loss(message),
            ReceiveError::Stream(status) => status,
            ReceiveError::Store(_) | ReceiveError::Gone => Status::internal(message),
        }
    }
}

/// The chunks of a stored blob, read as they are sent. `None` if the store lacks it.
pub async fn send(
    store: &BlobStore,
    digest: Digest,
) -> Option<impl Stream<Item = Result<BlobChunk, Status>> + Send + use<>> {
    let file = tokio::fs::File::open(store.path(&digest)).await.ok()?;
    Some(futures::stream::unfold((file, true), move |(mut file, first)| async move {
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
    }))
}

/// A blob being received: bytes go to a blocking thread that writes and finally fsyncs them.
#[derive(Debug)]
pub struct BlobSink {
    writer: Option<BlobWriter>,
}

impl BlobSink {
    pub fn new(store: &BlobStore, expected: Option<Digest>) -> Result<Self, ReceiveError> {
        Ok(Self { writer: Some(store.writer(expected)?) })
    }

    pub async fn write(&mut self, data: Vec<u8>) -> Result<(), ReceiveError> {
        let mut writer = self.writer.take().ok_or(ReceiveError::Gone)?;
        if writer.size() + data.len() as u64 > MAX_BLOB_BYTES {
            return Err(ReceiveError::TooLarge);
        }
        let writer = tokio::task::spawn_blocking(move || writer.write(&data).map(|()| writer))
            .await
            .map_err(|_| ReceiveError::Gone)??;
        self.writer = Some(writer);
        Ok(())
    }

    /// Verifies, syncs and publishes the blob.
    pub async fn finish(mut self) -> Result<(Digest, u64), ReceiveError> {
        let writer = self.writer.take().ok_or(ReceiveError::Gone)?;
        Ok(tokio::task::spawn_blocking(move || writer.finish()).await.map_err(|_| ReceiveError::Gone)??)
    }
}

/// Receives an upload whose first chunk names its digest into `store`. A blob already
/// present is not written again.
pub async fn receive(
    store: &BlobStore,
    mut chunks: impl Stream<Item = Result<BlobChunk, Status>> + Unpin,
) -> Result<(Digest, u64), ReceiveError> {
    let first = chunks.next().await.ok_or(ReceiveError::Empty)?.map_err(ReceiveError::Stream)?;
    let digest = parse_digest("sha256", &first.sha256)?;
    if store.contains(&digest) {
        let size = tokio::fs::metadata(store.path(&digest)).await.map_or(0, |m| m.len());
        return Ok((digest, size));
    }
    let mut sink = BlobSink::new(store, Some(digest))?;
    sink.write(first.data).await?;
    while let Some(chunk) = chunks.next().await {
        sink.write(chunk.map_err(ReceiveError::Stream)?.data).await?;
    }
    sink.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_blob_sent_is_received_whole_and_verified() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (from, to) = (BlobStore::open(a.path()).unwrap(), BlobStore::open(b.path()).unwrap());
        let data: Vec<u8> = (0..3 * CHUNK_BYTES + 17).map(|i| i as u8).collect();
        let digest = from.put_bytes(&data).unwrap();
        let chunks = send(&from, digest).await.unwrap().boxed();
        assert_eq!(receive(&to, chunks).await.unwrap(), (digest, data.len() as u64));
        assert_eq!(std::fs::read(to.path(&digest)).unwrap(), data);
        assert!(send(&from, Digest::of(b"absent")).await.is_none());
    }

    #[tokio::test]
    async fn a_wrong_digest_or_an_empty_upload_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let lie = BlobChunk { sha256: Digest::of(b"other").to_string(), data: b"content".to_vec() };
        let error = receive(&store, futures::stream::iter([Ok(lie)])).await.unwrap_err();
        assert!(matches!(error, ReceiveError::Store(BlobError::Mismatch { .. })), "{error}");
        let error = receive(&store, futures::stream::empty()).await.unwrap_err();
        assert!(matches!(error, ReceiveError::Empty));
    }
}
