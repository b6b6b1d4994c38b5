//! Where a Mirari service listens and how to reach it: `unix:/path/to.sock` or `host:port`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::server::Router;
use tonic::transport::{Channel, Uri};

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

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp(host_port) => f.write_str(host_port),
        }
    }
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("`{0}` is not a valid address")]
    InvalidAddress(Endpoint),
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
            Endpoint::Tcp(host_port) => Channel::from_shared(format!("http://{host_port}"))
                .map_err(|_| ConnectError::InvalidAddress(self.clone()))?
                .connect()
                .await
                .map_err(wrap),
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
    Tcp(TcpListener),
}

impl Listener {
    /// Binds the endpoint. A stale Unix socket file from a dead process is replaced.
    pub async fn bind(endpoint: &Endpoint) -> std::io::Result<Self> {
        match endpoint {
            Endpoint::Tcp(host_port) => Ok(Listener::Tcp(TcpListener::bind(host_port).await?)),
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
                Ok(Listener::Unix(UnixListener::bind(path)?, path.clone()))
            }
        }
    }

    /// The endpoint this listener is bound to (with the real port if port 0 was asked for).
    pub fn local_endpoint(&self) -> std::io::Result<Endpoint> {
        match self {
            Listener::Unix(_, path) => Ok(Endpoint::Unix(path.clone())),
            Listener::Tcp(listener) => Ok(Endpoint::Tcp(listener.local_addr()?.to_string())),
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
            Listener::Unix(listener, path) => {
                let result = router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown).await;
                let _ = std::fs::remove_file(path);
                result
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_and_tcp_forms() {
        assert_eq!("unix:/run/a.sock".parse(), Ok(Endpoint::Unix("/run/a.sock".into())));
        assert_eq!("/run/a.sock".parse(), Ok(Endpoint::Unix("/run/a.sock".into())));
        assert_eq!("127.0.0.1:7070".parse(), Ok(Endpoint::Tcp("127.0.0.1:7070".into())));
        assert_eq!("http://[::1]:7070".parse(), Ok(Endpoint::Tcp("[::1]:7070".into())));
        assert!("localhost".parse::<Endpoint>().is_err());
        assert!("unix:".parse::<Endpoint>().is_err());
    }
}
