//! Health probes, performed: a TCP connect, or an HTTP GET whose status line is read. What
//! the results mean is `mirari_core::health`'s to decide; this only says what happened.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use mirari_core::health::Probe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of an HTTP answer read to find its status line.
const MAX_STATUS_LINE: usize = 1024;

/// Probes `address` once, within `timeout`: `Ok` if it passed, else why not, for people.
pub async fn run(address: Ipv4Addr, probe: &Probe, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, attempt(address, probe)).await {
        Ok(result) => result,
        Err(_) => Err(format!("{} timed out after {} ms", describe(address, probe), timeout.as_millis())),
    }
}

fn describe(address: Ipv4Addr, probe: &Probe) -> String {
    match probe {
        Probe::Tcp { port } => format!("TCP {address}:{port}"),
        Probe::Http { port, path, .. } => format!("GET http://{address}:{port}{path}"),
    }
}

async fn attempt(address: Ipv4Addr, probe: &Probe) -> Result<(), String> {
    let what = describe(address, probe);
    let port = match probe {
        Probe::Tcp { port } | Probe::Http { port, .. } => *port,
    };
    let mut stream = TcpStream::connect(SocketAddr::from((address, port))).await.map_err(|e| format!("{what}: {e}"))?;
    let Probe::Http { path, status, .. } = probe else { return Ok(()) };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}:{port}\r\nUser-Agent: mirari-agent\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("{what}: {e}"))?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 256];
    while !answer.contains(&b'\n') && answer.len() < MAX_STATUS_LINE {
        let n = stream.read(&mut buffer).await.map_err(|e| format!("{what}: {e}"))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..n]);
    }
    match status_code(&answer) {
        Some(code) if code == *status => Ok(()),
        Some(code) => Err(format!("{what} answered {code}, not {status}")),
        None => Err(format!("{what}: no HTTP status line in the answer")),
    }
}

/// The status code of an HTTP/1.x answer's first line.
fn status_code(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|&b| b == b'\n').next()?;
    let mut words = std::str::from_utf8(line).ok()?.split_whitespace();
    words.next().filter(|version| version.starts_with("HTTP/1."))?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines_are_read() {
        assert_eq!(status_code(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.1 404 Not Found\r\n"), Some(404));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b""), None);
    }

    #[tokio::test]
    async fn probes_say_what_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for answer in ["HTTP/1.0 200 OK\r\n\r\n", "HTTP/1.0 503 Busy\r\n\r\n"] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 512];
                let _ = stream.read(&mut request).await.unwrap();
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let local = Ipv4Addr::LOCALHOST;
        let http = Probe::Http { port, path: "/".into(), status: 200 };
        assert_eq!(run(local, &http, Duration::from_secs(5)).await, Ok(()));
        let error = run(local, &http, Duration::from_secs(5)).await.unwrap_err();
        assert!(error.ends_with("answered 503, not 200"), "{error}");
        server.await.unwrap();
        let refused = run(local, &Probe::Tcp { port }, Duration::from_secs(5)).await.unwrap_err();
        assert!(refused.starts_with(&format!("TCP 127.0.0.1:{port}: ")), "{refused}");
    }
}
