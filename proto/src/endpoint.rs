//! Where a Mirari service listens and how to reach it: `unix:/path/to.sock` or `host:port`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use hyper_util::rt::TokioIo;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::server::Router;
use tonic::transport::{Channel, Uri};

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use crate::auth::{Caller, CallerInfo};
use crate::tls::{PreflightError, ServerTls, client_identity, identity_of, preflight};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an endpoint: use unix:/path/to.sock or host:port")]
pub struct ParseEndpointError(String);

impl FromStr for Endpoint {
    type Err = ParseEndpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("unix:") {
            return if path.is_empty() {
                Err(ParseEndpointError(text.to_owned()))
            } else {
                Ok(Endpoint::Unix(path.into()))
            };
        }
        if text.starts_with('/') {
            return Ok(Endpoint::Unix(text.into()));
        }
        let host_port = text.strip_prefix("http://").unwrap_or(text);
        match host_port.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Endpoint::Tcp(host_port.to_owned()))
            }
            _ => Err(ParseEndpointError(text.to_owned())),
        }
    }
}

/// In a config file an endpoint is written as on the command line.
impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        mirari_core::config::deserialize_from_str(deserializer)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp(host_port) => f.write_str(host_port),
        }
    }
}

/// Every connection pings its peer this often when idle, and gives up on it when a ping goes
/// unanswered for [`KEEPALIVE_TIMEOUT`]: a peer cut off the network (whose packets are dropped,
/// so no error ever arrives) is noticed in seconds, by clients and servers alike.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Streams one connection may have open at once. A coordinator forwards every follower's
/// agents' calls to the leader over one connection: thousands of hosts' heartbeats and
/// assignment streams.
const MAX_CONCURRENT_STREAMS: u32 = 16_384;
/// Streams a client may reset before the server accepted them, per connection, before the
/// server closes it (the HTTP/2 "rapid reset" guard; h2's default of 20 closed the one
/// connection a follower forwards on whenever 20 forwarded calls gave up under load). Every
/// client here has passed mutual TLS.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 4_096;

/// How long a client remembers a call it gave up on, so the rest of that call arriving late
/// (the server had answered before it heard) is dropped quietly. Frames for a stream h2 has
/// forgotten count against the connection: at 1,024 it closes the connection with every call
/// on it. h2's default memory is 50 streams for 1 s; a follower forwarding thousands of
/// agents' calls to a loaded leader gives up on more than that.
const GIVEN_UP_MEMORY: Duration = Duration::from_secs(30);

/// A gRPC server with the keepalives and stream limits every Mirari server uses.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("`{0}` is not a valid address")]
    InvalidAddress(Endpoint),
    #[error("{endpoint} refused this client's TLS certificate: {reason}")]
    Refused { endpoint: Endpoint, reason: String },
    #[error("the TLS certificate of {endpoint} is not trusted: {reason}")]
    Untrusted { endpoint: Endpoint, reason: String },
    #[error("cannot connect to {endpoint}")]
    NoConnection {
        endpoint: Endpoint,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {endpoint}")]
    Unreachable {
        endpoint: Endpoint,
        #[source]
        source: tonic::transport::Error,
    },
}

impl Endpoint {
    /// Connects a gRPC channel. The connection is made now, so a wrong address fails here.
    pub async fn connect(&self) -> Result<Channel, ConnectError> {
        let wrap = |source| ConnectError::Unreachable { endpoint: self.clone(), source };
        match self {
            Endpoint::Tcp(host_port) => {
                let invalid = |_| ConnectError::InvalidAddress(self.clone());
                let endpoint = match client_identity() {
                    Some(tls) => {
                        preflight(tls, host_port).await.map_err(|error| match error {
                            PreflightError::Unreachable(source) => {
                                ConnectError::NoConnection { endpoint: self.clone(), source }
                            }
                            PreflightError::Refused(reason) => ConnectError::Refused { endpoint: self.clone(), reason },
                            PreflightError::Untrusted(reason) => {
                                ConnectError::Untrusted { endpoint: self.clone(), reason }
                            }
                        })?;
                        Channel::from_shared(format!("https://{host_port}"))
                            .map_err(invalid)?
                            .tls_config(tls.config.clone())
                            .map_err(wrap)?
                    }
                    None => Channel::from_shared(format!("http://{host_port}")).map_err(invalid)?,
                };
                endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                    .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                    .keep_alive_while_idle(true)
                    .http2_max_concurrent_reset_streams(MAX_CONCURRENT_STREAMS as usize)
                    .http2_reset_stream_duration(GIVEN_UP_MEMORY)
                    .connect()
                    .await
                    .map_err(wrap)
            }
            Endpoint::Unix(path) => {
                let path = path.clone();
                // The URI is unused: the connector below decides where bytes go.
                Channel::from_static("http://localhost")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
                    }))
                    .await
                    .map_err(wrap)
            }
        }
    }
}

/// A bound listening socket, ready to serve.
#[derive(Debug)]
pub enum Listener {
    Unix(UnixListener, PathBuf),
    /// Without TLS: only `mirari dev`, on loopback.
    Tcp(TcpListener),
    Tls(TcpListener, ServerTls),
}

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Listener {
    /// Binds the endpoint, with TLS on TCP if `tls` is given. A Unix socket is its owner's
    /// only (0600); a stale socket file from a dead process is replaced.
    pub async fn bind(endpoint: &Endpoint, tls: Option<ServerTls>) -> std::io::Result<Self> {
        match endpoint {
            Endpoint::Tcp(host_port) => {
                let listener = TcpListener::bind(host_port).await?;
                Ok(match tls {
                    Some(tls) => Listener::Tls(listener, tls),
                    None => Listener::Tcp(listener),
                })
            }
            Endpoint::Unix(path) => {
                if UnixStream::connect(path).await.is_ok() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!("{} is in use by a running server", path.display()),
                    ));
                }
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                // Only the owner may connect: whoever reaches a local socket acts with the
                // server's rights (starts processes as its user), with no certificate asked.
                let listener = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                Ok(Listener::Unix(listener, path.clone()))
            }
        }
    }

    /// The endpoint this listener is bound to (with the real port if port 0 was asked for).
    pub fn local_endpoint(&self) -> std::io::Result<Endpoint> {
        match self {
            Listener::Unix(_, path) => Ok(Endpoint::Unix(path.clone())),
            Listener::Tcp(listener) | Listener::Tls(listener, _) => {
                Ok(Endpoint::Tcp(listener.local_addr()?.to_string()))
            }
        }
    }

    /// Serves `router` until `shutdown` resolves.
    pub async fn serve(
        self,
        router: Router,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        match self {
            Listener::Tcp(listener) => {
                router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown).await
            }
            Listener::Tls(listener, tls) => {
                router.serve_with_incoming_shutdown(accept_tls(listener, tls), shutdown).await
            }
            Listener::Unix(listener, path) => {
                let result = router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown).await;
                let _ = std::fs::remove_file(path);
                result
            }
        }
    }
}

/// A server's TLS connection with its caller read from the client certificate once, at the
/// handshake; every request on it carries that [`CallerInfo`] in its extensions.
#[derive(Debug)]
pub struct AuthenticatedStream {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    caller: CallerInfo,
}

impl AuthenticatedStream {
    fn new(stream: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        let (tcp, session) = stream.get_ref();
        let identity = session.peer_certificates().and_then(|c| c.first()).map(|c| identity_of(c)).unwrap_or_default();
        let caller = Arc::new(Caller { identity, remote: tcp.peer_addr().ok() });
        Self { stream, caller }
    }
}

impl Connected for AuthenticatedStream {
    type ConnectInfo = CallerInfo;

    fn connect_info(&self) -> CallerInfo {
        self.caller.clone()
    }
}

impl AsyncRead for AuthenticatedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AuthenticatedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepted connections after a completed TLS handshake. A refused handshake (no client
/// certificate, an expired one, one from another CA, plaintext) is logged with the reason and
/// the connection dropped.
fn accept_tls(
    listener: TcpListener,
    tls: ServerTls,
) -> impl futures::Stream<Item = std::io::Result<AuthenticatedStream>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if sender.is_closed() {
                return;
            }
            let (acceptor, accepted) = (tls.acceptor.clone(), sender.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = accepted.send(Ok(AuthenticatedStream::new(stream))).await;
                    }
                    Ok(Err(error)) if error.to_string().contains("InvalidContentType") => {
                        tracing::warn!(%peer, "refused a TLS connection: the client does not speak TLS (plaintext?)")
                    }
                    Ok(Err(error)) => tracing::warn!(%peer, %error, "refused a TLS connection"),
                    Err(_) => {
                        tracing::warn!(%peer, "refused a TLS connection: no handshake within {HANDSHAKE_TIMEOUT:?}")
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;
    use crate::agent::agent_client::AgentClient;
    use crate::agent::agent_server::{Agent, AgentServer};
    use crate::agent::*;

    #[test]
    fn parses_unix_and_tcp_forms() {
        assert_eq!("unix:/run/a.sock".parse(), Ok(Endpoint::Unix("/run/a.sock".into())));
        assert_eq!("/run/a.sock".parse(), Ok(Endpoint::Unix("/run/a.sock".into())));
        assert_eq!("127.0.0.1:7070".parse(), Ok(Endpoint::Tcp("127.0.0.1:7070".into())));
        assert_eq!("http://[::1]:7070".parse(), Ok(Endpoint::Tcp("[::1]:7070".into())));
        assert!("localhost".parse::<Endpoint>().is_err());
        assert!("unix:".parse::<Endpoint>().is_err());
    }

    /// Consoles that stay open until `ended` turns true, and uploads answered when they end.
    struct Consoles {
        ended: tokio::sync::watch::Receiver<bool>,
    }

    #[tonic::async_trait]
    impl Agent for Consoles {
        type StreamConsoleStream = futures::stream::BoxStream<'static, Result<ConsoleChunk, Status>>;
        type BuildStream = futures::stream::BoxStream<'static, Result<BuildEvent, Status>>;

        async fn stream_console(
            &self,
            _: Request<ConsoleRequest>,
        ) -> Result<Response<Self::StreamConsoleStream>, Status> {
            let mut ended = self.ended.clone();
            let until_ended = async move {
                let _ = ended.wait_for(|ended| *ended).await;
            };
            Ok(Response::new(futures::stream::once(until_ended).filter_map(|()| async { None }).boxed()))
        }

        async fn put_blob(&self, request: Request<Streaming<BlobChunk>>) -> Result<Response<PutBlobResponse>, Status> {
            let mut chunks = request.into_inner();
            while chunks.message().await?.is_some() {}
            Ok(Response::new(PutBlobResponse::default()))
        }

        async fn get_host_info(&self, _: Request<GetHostInfoRequest>) -> Result<Response<HostInfo>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn missing_blobs(
            &self,
            _: Request<MissingBlobsRequest>,
        ) -> Result<Response<MissingBlobsResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn run_instances(
            &self,
            _: Request<RunInstancesRequest>,
        ) -> Result<Response<RunInstancesResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn list_instances(
            &self,
            _: Request<ListInstancesRequest>,
        ) -> Result<Response<ListInstancesResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn stop_instance(
            &self,
            _: Request<StopInstanceRequest>,
        ) -> Result<Response<StopInstanceResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn get_events(&self, _: Request<EventsRequest>) -> Result<Response<EventsResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn build(&self, _: Request<BuildJob>) -> Result<Response<Self::BuildStream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    /// A TCP proxy to `to` that holds back what the server sends while `held` is true, and
    /// counts the bytes it holds.
    async fn holding_proxy(to: String, held: tokio::sync::watch::Receiver<bool>) -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let address = listener.local_addr().expect("the proxy's address").to_string();
        let held_bytes = Arc::new(AtomicUsize::new(0));
        let counted = held_bytes.clone();
        tokio::spawn(async move {
            let (client, _) = listener.accept().await.expect("accept");
            let server = TcpStream::connect(to).await.expect("reach the server");
            let ((mut client_read, mut client_write), (mut server_read, mut server_write)) =
                (client.into_split(), server.into_split());
            tokio::spawn(async move { tokio::io::copy(&mut client_read, &mut server_write).await });
            let (bytes, mut to_forward) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
            let holding = held.clone();
            tokio::spawn(async move {
                while let Some(bytes) = to_forward.recv().await {
                    holding.clone().wait_for(|held| !held).await.expect("the test holds the switch");
                    client_write.write_all(&bytes).await.expect("write to the client");
                }
            });
            let mut buffer = vec![0; 64 << 10];
            loop {
                let read = server_read.read(&mut buffer).await.expect("read from the server");
                if read == 0 || bytes.send(buffer[..read].to_vec()).is_err() {
                    return;
                }
                if *held.borrow() {
                    counted.fetch_add(read, Ordering::Relaxed);
                }
            }
        });
        (address, held_bytes)
    }

    /// A caller that gives up on many calls whose ends were already on their way (a loaded
    /// leader finishing forwarded heartbeats just late) keeps its connection, and the other
    /// calls on it. h2 by default remembers 50 given-up streams for 1 s and closes the whole
    /// connection once 1,024 frames came for streams it forgot: every forwarded call and
    /// agent stream on it failed at once, and leaders stepped down under placement load.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn late_ends_of_calls_given_up_on_leave_the_connection_and_its_other_calls_alone() {
        const GIVEN_UP: usize = 1_500;
        let listener = Listener::bind(&Endpoint::Tcp("127.0.0.1:0".into()), None).await.expect("bind");
        let server = listener.local_endpoint().expect("the server's address").to_string();
        let (end_consoles, ended) = tokio::sync::watch::channel(false);
        let router = super::server().add_service(AgentServer::new(Consoles { ended }));
        tokio::spawn(listener.serve(router, std::future::pending()));
        let (hold, held) = tokio::sync::watch::channel(false);
        let (proxy, held_bytes) = holding_proxy(server, held).await;
        let channel = Endpoint::Tcp(proxy).connect().await.expect("connect through the proxy");

        let (chunks, upload_stream) = tokio::sync::mpsc::channel(1);
        let mut uploader = AgentClient::new(channel.clone());
        let upload =
            tokio::spawn(
                async move { uploader.put_blob(tokio_stream::wrappers::ReceiverStream::new(upload_stream)).await },
            );
        chunks.send(BlobChunk::default()).await.expect("the upload is open");
        let opened = (0..GIVEN_UP).map(|_| {
            let mut client = AgentClient::new(channel.clone());
            async move { client.stream_console(ConsoleRequest::default()).await.expect("a console opens") }
        });
        let consoles = futures::future::join_all(opened).await;

        // The consoles' ends are sent, and held back until their callers gave up on them.
        hold.send_replace(true);
        end_consoles.send_replace(true);
        let (frame_header, deadline) = (9, tokio::time::Instant::now() + Duration::from_secs(10));
        while held_bytes.load(Ordering::Relaxed) < GIVEN_UP * frame_header {
            assert!(tokio::time::Instant::now() < deadline, "the consoles' ends never reached the proxy");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(consoles);
        hold.send_replace(false);

        let answer = AgentClient::new(channel.clone()).get_host_info(GetHostInfoRequest::default()).await;
        assert_eq!(answer.expect_err("not in this test").code(), tonic::Code::Unimplemented);
        drop(chunks);
        upload.await.expect("the upload's task").expect("the upload open across the late ends");
    }
}
