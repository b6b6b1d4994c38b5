//! A TCP proxy that a test can make slow or deaf: there is no `tc netem` here, so delays and
//! silent drops between two processes go through one of these.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What the proxy does to the bytes passing through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Each chunk waits this long before it is passed on.
    Delay(Duration),
    /// Nothing passes, and nothing says so: as a cut cable, the connections just go quiet.
    Drop,
}

impl Mode {
    fn encode(self) -> u64 {
        match self {
            Mode::Pass => 0,
            Mode::Drop => u64::MAX,
            Mode::Delay(delay) => u64::try_from(delay.as_millis()).unwrap_or(u64::MAX - 1).clamp(1, u64::MAX - 1),
        }
    }

    fn decode(raw: u64) -> Self {
        match raw {
            0 => Mode::Pass,
            u64::MAX => Mode::Drop,
            ms => Mode::Delay(Duration::from_millis(ms)),
        }
    }
}

/// Forwards every connection made to `listen` to `target`, in the given mode.
#[derive(Debug)]
pub struct Proxy {
    pub address: String,
    mode: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on `ip` (a port of its own) and forwards to `target`.
    pub fn start(ip: &str, target: &str) -> Self {
        let listener = TcpListener::bind((ip, 0)).expect("the proxy listens");
        let address = format!("{ip}:{}", listener.local_addr().expect("bound").port());
        let mode = Arc::new(AtomicU64::new(0));
        let (target, shared) = (target.to_owned(), mode.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (from, to, mode) = (from.try_clone(), to.try_clone(), shared.clone());
                    if let (Ok(from), Ok(to)) = (from, to) {
                        std::thread::spawn(move || pump(from, to, &mode));
                    }
                }
            }
        });
        Self { address, mode }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode.encode(), Ordering::Relaxed);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, mode: &AtomicU64) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        loop {
            match Mode::decode(mode.load(Ordering::Relaxed)) {
                Mode::Pass => break,
                Mode::Delay(delay) => {
                    std::thread::sleep(delay);
                    break;
                }
                // Held, not passed: once the drop ends, what was held is gone too.
                Mode::Drop => {
                    std::thread::sleep(Duration::from_millis(50));
                    if Mode::decode(mode.load(Ordering::Relaxed)) != Mode::Drop {
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                        return;
                    }
                }
            }
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}
