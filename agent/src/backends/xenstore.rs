//! A small xenstore client: the wire protocol spoken over xenstored's Unix socket (or
//! `/dev/xen/xenbus`).
//!
//! Written for Mirari because the available crate is GPL-3.0-only. Messages are a header of
//! four little-endian u32 (type, request ID, transaction ID, payload length) and a payload;
//! paths are NUL-terminated. Replies come back in order with the request's ID; watch events
//! (`XS_WATCH_EVENT`) may arrive at any time and are handed to the watch's subscriber.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Where xenstored listens in a dom0, most common first.
pub const SOCKET_PATHS: [&str; 3] = ["/run/xenstored/socket", "/var/run/xenstored/socket", "/dev/xen/xenbus"];

/// The largest payload xenstored accepts.
const MAX_PAYLOAD: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Op {
    Directory = 1,
    Read = 2,
    Watch = 4,
    Unwatch = 5,
    Write = 11,
    Rm = 13,
    WatchEvent = 15,
    Error = 16,
}

#[derive(Debug, thiserror::Error)]
pub enum XenstoreError {
    #[error("cannot reach xenstored at {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the xenstore connection failed")]
    Io(#[from] std::io::Error),
    #[error("the xenstore connection closed")]
    Closed,
    #[error("xenstore refused `{path}`: {code}")]
    Refused { path: String, code: String },
    #[error("xenstore payload of {0} bytes is too long")]
    TooLong(usize),
}

/// A watch event: the path that changed and the watch's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

type Replies = Arc<Mutex<HashMap<u32, oneshot::Sender<(u32, Vec<u8>)>>>>;
type Watchers = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<WatchEvent>>>>;

/// A connection to xenstored, shared by its clones.
#[derive(Clone)]
pub struct Xenstore {
    writer: Arc<tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>>,
    replies: Replies,
    watchers: Watchers,
    next_id: Arc<AtomicU32>,
}

impl std::fmt::Debug for Xenstore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xenstore").finish_non_exhaustive()
    }
}

impl Xenstore {
    /// Connects to the first xenstore endpoint that exists.
    pub async fn connect_default() -> Result<Self, XenstoreError> {
        let path = SOCKET_PATHS.iter().map(Path::new).find(|p| p.exists()).unwrap_or(Path::new(SOCKET_PATHS[0]));
        Self::connect(path).await
    }

    pub async fn connect(path: &Path) -> Result<Self, XenstoreError> {
        let connect_error = |source| XenstoreError::Connect { path: path.to_owned(), source };
        if path.starts_with("/dev") {
            let file = tokio::fs::OpenOptions::new().read(true).write(true).open(path).await.map_err(connect_error)?;
            let reader = file.try_clone().await.map_err(connect_error)?;
            Ok(Self::over(reader, file))
        } else {
            let stream = tokio::net::UnixStream::connect(path).await.map_err(connect_error)?;
            let (reader, writer) = stream.into_split();
            Ok(Self::over(reader, writer))
        }
    }

    /// A client over any byte stream (tests use an in-memory one).
    pub fn over(
        reader: impl AsyncRead + Send + Unpin + 'static,
        writer: impl AsyncWrite + Send + Unpin + 'static,
    ) -> Self {
        let client = Self {
            writer: Arc::new(tokio::sync::Mutex::new(Box::new(writer))),
            replies: Arc::default(),
            watchers: Arc::default(),
            next_id: Arc::new(AtomicU32::new(1)),
        };
        tokio::spawn(dispatch(reader, client.replies.clone(), client.watchers.clone()));
        client
    }

    async fn request(&self, op: Op, payload: Vec<u8>, path: &str) -> Result<Vec<u8>, XenstoreError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(XenstoreError::TooLong(payload.len()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.replies.lock().expect("replies lock").insert(id, reply);
        let mut message = Vec::with_capacity(16 + payload.len());
        for word in [op as u32, id, 0, payload.len() as u32] {
            message.extend_from_slice(&word.to_le_bytes());
        }
        message.extend_from_slice(&payload);
        self.writer.lock().await.write_all(&message).await?;
        let (op, body) = answer.await.map_err(|_| XenstoreError::Closed)?;
        if op == Op::Error as u32 {
            let code = String::from_utf8_lossy(&body).trim_end_matches('\0').to_owned();
            return Err(XenstoreError::Refused { path: path.to_owned(), code });
        }
        Ok(body)
    }

    fn path_payload(path: &str) -> Vec<u8> {
        let mut payload = path.as_bytes().to_vec();
        payload.push(0);
        payload
    }

    /// The value at `path`, or `None` if it does not exist.
    pub async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, XenstoreError> {
        match self.request(Op::Read, Self::path_payload(path), path).await {
            Ok(value) => Ok(Some(value)),
            Err(XenstoreError::Refused { code, .. }) if code == "ENOENT" => Ok(None),
            Err(error) => Err(error),
        }
    }

    pub async fn read_string(&self, path: &str) -> Result<Option<String>, XenstoreError> {
        Ok(self.read(path).await?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub async fn write(&self, path: &str, value: &[u8]) -> Result<(), XenstoreError> {
        let mut payload = Self::path_payload(path);
        payload.extend_from_slice(value);
        self.request(Op::Write, payload, path).await.map(|_| ())
    }

    /// The names under `path` (empty if it does not exist).
    pub async fn directory(&self, path: &str) -> Result<Vec<String>, XenstoreError> {
        match self.request(Op::Directory, Self::path_payload(path), path).await {
            Ok(body) => Ok(body
                .split(|b| *b == 0)
                .filter(|n| !n.is_empty())
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect()),
            Err(XenstoreError::Refused { code, .. }) if code == "ENOENT" => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }

    pub async fn rm(&self, path: &str) -> Result<(), XenstoreError> {
        match self.request(Op::Rm, Self::path_payload(path), path).await {
            Ok(_) => Ok(()),
            Err(XenstoreError::Refused { code, .. }) if code == "ENOENT" => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Watches `path` (or a special path such as `@releaseDomain`); events arrive on the
    /// returned receiver, the first one right away (xenstored fires a watch once on creation).
    pub async fn watch(&self, path: &str, token: &str) -> Result<mpsc::UnboundedReceiver<WatchEvent>, XenstoreError> {
        let (events, receiver) = mpsc::unbounded_channel();
        self.watchers.lock().expect("watchers lock").insert(token.to_owned(), events);
        let mut payload = Self::path_payload(path);
        payload.extend_from_slice(token.as_bytes());
        payload.push(0);
        if let Err(error) = self.request(Op::Watch, payload, path).await {
            self.watchers.lock().expect("watchers lock").remove(token);
            return Err(error);
        }
        Ok(receiver)
    }

    pub async fn unwatch(&self, path: &str, token: &str) -> Result<(), XenstoreError> {
        self.watchers.lock().expect("watchers lock").remove(token);
        let mut payload = Self::path_payload(path);
        payload.extend_from_slice(token.as_bytes());
        payload.push(0);
        self.request(Op::Unwatch, payload, path).await.map(|_| ())
    }
}

/// Reads messages and routes them: replies to their requester, events to their watcher.
async fn dispatch(mut reader: impl AsyncRead + Unpin, replies: Replies, watchers: Watchers) {
    loop {
        let mut header = [0u8; 16];
        if reader.read_exact(&mut header).await.is_err() {
            break;
        }
        let word = |i: usize| u32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        let (op, id, len) = (word(0), word(1), word(3) as usize);
        if len > MAX_PAYLOAD {
            break;
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).await.is_err() {
            break;
        }
        if op == Op::WatchEvent as u32 {
            let mut parts = body.split(|b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned());
            let (path, token) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            if let Some(watcher) = watchers.lock().expect("watchers lock").get(&token) {
                let _ = watcher.send(WatchEvent { path, token });
            }
            continue;
        }
        if let Some(reply) = replies.lock().expect("replies lock").remove(&id) {
            let _ = reply.send((op, body));
        }
    }
    // Dropping the senders fails every pending request with `Closed`.
    replies.lock().expect("replies lock").clear();
    watchers.lock().expect("watchers lock").clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Enough of xenstored to test the client: a tree, and watches that fire on writes.
    async fn fake_xenstored(stream: tokio::io::DuplexStream) {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut tree: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut watches: Vec<(String, String)> = Vec::new();
        loop {
            let mut header = [0u8; 16];
            if reader.read_exact(&mut header).await.is_err() {
                return;
            }
            let word = |i: usize| u32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().unwrap());
            let (op, id) = (word(0), word(1));
            let mut body = vec![0u8; word(3) as usize];
            reader.read_exact(&mut body).await.unwrap();
            let mut parts = body.splitn(2, |b| *b == 0);
            let path = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
            let rest = parts.next().unwrap_or_default().to_vec();
            let mut out: Vec<(u32, Vec<u8>)> = Vec::new();
            let reply = match op {
                2 => tree.get(&path).cloned().map_or((16, b"ENOENT\0".to_vec()), |v| (2, v)),
                11 => {
                    tree.insert(path.clone(), rest);
                    for (watched, token) in &watches {
                        if path.starts_with(watched.as_str()) {
                            out.push((15, format!("{path}\0{token}\0").into_bytes()));
                        }
                    }
                    (11, b"OK\0".to_vec())
                }
                1 => {
                    let prefix = format!("{path}/");
                    let names: Vec<String> = tree
                        .keys()
                        .filter_map(|k| k.strip_prefix(&prefix))
                        .map(|k| k.split('/').next().unwrap().to_owned())
                        .collect();
                    (1, names.iter().flat_map(|n| format!("{n}\0").into_bytes()).collect())
                }
                4 => {
                    let token = String::from_utf8(rest.split(|b| *b == 0).next().unwrap().to_vec()).unwrap();
                    out.push((15, format!("{path}\0{token}\0").into_bytes()));
                    watches.push((path, token));
                    (4, b"OK\0".to_vec())
                }
                _ => (16, b"EINVAL\0".to_vec()),
            };
            // The reply first, then events, as xenstored does.
            for (op, payload) in std::iter::once(reply).chain(out) {
                let reply_id = if op == 15 { 0 } else { id };
                let mut message = Vec::new();
                for word in [op, reply_id, 0, payload.len() as u32] {
                    message.extend_from_slice(&word.to_le_bytes());
                }
                message.extend_from_slice(&payload);
                writer.write_all(&message).await.unwrap();
            }
        }
    }

    fn client() -> Xenstore {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(fake_xenstored(theirs));
        let (reader, writer) = tokio::io::split(ours);
        Xenstore::over(reader, writer)
    }

    #[tokio::test]
    async fn reads_writes_lists_and_reports_missing_paths() {
        let xs = client();
        assert_eq!(xs.read("/local/domain/3/console/tty").await.unwrap(), None);
        xs.write("/local/domain/3/console/tty", b"/dev/pts/4").await.unwrap();
        xs.write("/local/domain/3/name", b"mirari-00ff").await.unwrap();
        assert_eq!(xs.read_string("/local/domain/3/console/tty").await.unwrap().as_deref(), Some("/dev/pts/4"));
        assert_eq!(xs.directory("/local/domain/3").await.unwrap(), ["console", "name"]);
        assert!(matches!(xs.rm("/x").await, Err(XenstoreError::Refused { .. })), "the fake has no rm");
    }

    #[tokio::test]
    async fn watches_deliver_events_between_replies() {
        let xs = client();
        let mut events = xs.watch("@releaseDomain", "mirari-release").await.unwrap();
        assert_eq!(
            events.recv().await.unwrap(),
            WatchEvent { path: "@releaseDomain".into(), token: "mirari-release".into() }
        );
        xs.write("@releaseDomain", b"").await.unwrap();
        assert_eq!(events.recv().await.unwrap().token, "mirari-release");
        // Requests keep working while events flow.
        assert_eq!(xs.read("/nothing").await.unwrap(), None);
    }
}
