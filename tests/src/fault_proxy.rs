//! An HTTP/1.1 proxy in front of moto that answers chosen EC2 actions with the errors real EC2
//! gives under load (throttling, no capacity), refuses connections on demand, and counts the
//! requests of each action and keeps their bodies, so a test can check that the SDK retried
//! (and what it sent, where moto ignores it) and how the product classified what it finally
//! got.
//!
//! Each client connection carries one request: the proxy forwards it unchanged (the signature
//! covers the `Host` the client used, which moto checks) on a connection of its own, and both
//! answers say `Connection: close`, so a client never reuses a connection the proxy is about to
//! refuse. EC2's query protocol names the action in the form body (`Action=RunInstances`);
//! requests without one (EBS) pass uncounted.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::coordinators::free_port;

/// An error EC2 answers with, injected instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 503 `RequestLimitExceeded`.
    Throttle,
    /// HTTP 500 `InsufficientInstanceCapacity`.
    NoCapacity,
}

impl Fault {
    fn answer(self) -> String {
        let (status, code, message) = match self {
            Fault::Throttle => ("503 Service Unavailable", "RequestLimitExceeded", "Request limit exceeded."),
            Fault::NoCapacity => (
                "500 Internal Server Error",
                "InsufficientInstanceCapacity",
                "We currently do not have sufficient capacity in the Availability Zone you requested.",
            ),
        };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
             <Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
        );
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }
}

#[derive(Debug, Default)]
struct Shared {
    /// Per action: the fault and how many more requests get it.
    faults: Mutex<BTreeMap<String, (Fault, u32)>>,
    /// Per EC2 action: the form body of every request seen, faulted or forwarded.
    bodies: Mutex<BTreeMap<String, Vec<String>>>,
    refusing: AtomicBool,
    hold: Mutex<Hold>,
    released: Condvar,
}

/// Answers kept back: the request went through, its answer waits for [`FaultProxy::release`].
#[derive(Debug, Default)]
struct Hold {
    action: Option<String>,
    held: u32,
}

/// The proxy: `endpoint` is the URL to give the client instead of moto's.
#[derive(Debug)]
pub struct FaultProxy {
    pub endpoint: String,
    address: String,
    shared: Arc<Shared>,
    accepting: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a port below the ephemeral range) and forwards to `upstream`
    /// (`HOST:PORT`).
    pub fn start(upstream: &str) -> Self {
        Self::start_on("127.0.0.1", upstream)
    }

    /// Like [`FaultProxy::start`], listening on `ip` (where test hosts in namespaces reach
    /// this machine).
    pub fn start_on(ip: &str, upstream: &str) -> Self {
        let port = free_port();
        let listener = TcpListener::bind((ip, port)).expect("the fault proxy listens");
        let address = format!("{ip}:{port}");
        let shared = Arc::new(Shared::default());
        let (upstream, state) = (upstream.to_owned(), shared.clone());
        let accepting = std::thread::spawn(move || {
            for client in listener.incoming() {
                if state.refusing.load(Ordering::SeqCst) {
                    break; // the listener closes: connections are refused from now on
                }
                let Ok(client) = client else { continue };
                let (upstream, state) = (upstream.clone(), state.clone());
                std::thread::spawn(move || {
                    let _ = relay(client, &upstream, &state);
                });
            }
        });
        Self { endpoint: format!("http://{address}"), address, shared, accepting: Some(accepting) }
    }

    /// Answers the next `count` requests for `action` with `fault` (replacing any fault set
    /// for it before).
    pub fn fail_next(&self, action: &str, count: u32, fault: Fault) {
        self.shared.faults.lock().expect("faults").insert(action.to_owned(), (fault, count));
    }

    /// Forwards the requests for `action` but keeps their answers back until [`Self::release`]:
    /// the server acted, the client does not know yet.
    pub fn hold(&self, action: &str) {
        self.shared.hold.lock().expect("hold").action = Some(action.to_owned());
    }

    /// Answers kept back so far.
    pub fn held(&self) -> u32 {
        self.shared.hold.lock().expect("hold").held
    }

    /// Lets the answers kept back go, and keeps no more.
    pub fn release(&self) {
        self.shared.hold.lock().expect("hold").action = None;
        self.shared.released.notify_all();
    }

    /// Requests seen for `action`, faulted or forwarded.
    pub fn requests(&self, action: &str) -> u32 {
        let count = self.bodies(action).len();
        u32::try_from(count).expect("fewer than 2^32 requests")
    }

    /// The form body of every request for `action`, in the order they came.
    pub fn bodies(&self, action: &str) -> Vec<String> {
        self.shared.bodies.lock().expect("bodies").get(action).cloned().unwrap_or_default()
    }

    /// Closes the listening socket: every connection from now on is refused, as by a host
    /// that is down.
    pub fn refuse_connections(&mut self) {
        self.shared.refusing.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag and closes the listener.
        let _ = TcpStream::connect(&self.address);
        if let Some(accepting) = self.accepting.take() {
            accepting.join().expect("the accept loop ends");
        }
    }
}

/// One request: read it, fault it or forward it, answer, close.
fn relay(client: TcpStream, upstream: &str, shared: &Shared) -> io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let (head, body) = read_request(&mut reader)?;
    let action = action_of(&body);
    if !action.is_empty() {
        let form = String::from_utf8_lossy(&body).into_owned();
        shared.bodies.lock().expect("bodies").entry(action.clone()).or_default().push(form);
    }
    let fault = {
        let mut faults = shared.faults.lock().expect("faults");
        match faults.get_mut(&action) {
            Some((fault, left)) if *left > 0 => {
                *left -= 1;
                Some(*fault)
            }
            _ => None,
        }
    };
    let mut client = client;
    match fault {
        Some(fault) => client.write_all(fault.answer().as_bytes())?,
        None => {
            let mut server = TcpStream::connect(upstream)?;
            server.write_all(with_connection_close(&head).as_bytes())?;
            server.write_all(&body)?;
            let mut answer = Vec::new();
            server.read_to_end(&mut answer)?;
            let split = answer.windows(4).position(|w| w == b"\r\n\r\n").map_or(answer.len(), |at| at + 4);
            let (answer_head, answer_body) = answer.split_at(split);
            let mut hold = shared.hold.lock().expect("hold");
            if hold.action.as_deref() == Some(action.as_str()) {
                hold.held += 1;
                let _released = shared.released.wait_while(hold, |hold| hold.action.is_some()).expect("hold");
            }
            client.write_all(with_connection_close(&String::from_utf8_lossy(answer_head)).as_bytes())?;
            client.write_all(answer_body)?;
        }
    }
    client.flush()?;
    client.shutdown(Shutdown::Both)
}

/// The request's head (request line and headers, ending in an empty line) and its body, which
/// must have a `Content-Length` (the SDK's requests do).
fn read_request(reader: &mut impl BufRead) -> io::Result<(String, Vec<u8>)> {
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed before a whole request"));
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| io::Error::other(format!("bad {line:?}")))?;
            }
            if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(io::Error::other("the fault proxy takes no chunked requests"));
            }
        }
        let end = line == "\r\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((head, body))
}

/// `Action=...` from a form body, or `""`.
fn action_of(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .unwrap_or_default()
        .to_owned()
}

/// `head` with its `Connection` header replaced by `Connection: close`.
fn with_connection_close(head: &str) -> String {
    let mut lines: Vec<&str> = head
        .split_inclusive("\r\n")
        .filter(|line| !line.split_once(':').is_some_and(|(name, _)| name.eq_ignore_ascii_case("connection")))
        .collect();
    let blank = lines.pop().unwrap_or("\r\n");
    let mut rewritten: String = lines.concat();
    rewritten.push_str("Connection: close\r\n");
    rewritten.push_str(blank);
    rewritten
}
