//! The end-to-end harness: real `mirari` and `mirari-agent` processes, a private agent state
//! directory and artifact store per test, and the example app copied so tests can change it.
//!
//! [`netns`] makes test hosts out of network namespaces; [`coordinators`] runs coordinator
//! processes on them; [`sampler`] watches the real instance processes on every host;
//! [`disk`] gives a coordinator a small disk to fill up; [`metrics`] scrapes the daemons'
//! `/metrics`; with the `ec2` feature, [`moto`] runs the EC2 stand-in and [`fault_proxy`] puts
//! EC2's errors under load between it and the product.
//!
//! The binaries come from the cargo target directory; `./test.sh` builds them before the tests.
//! Waiting is always a poll with a deadline ([`eventually`]), never a fixed sleep.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod cluster;
pub mod coordinators;
pub mod disk;
#[cfg(feature = "ec2")]
pub mod fault_proxy;
pub mod linearizability;
pub mod metrics;
#[cfg(feature = "ec2")]
pub mod moto;
pub mod netns;
pub mod pki;
pub mod proxy;
pub mod sampler;

/// A real binary of the workspace, built by `cargo build --workspace --bins`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test binary>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target directory layout");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (./test.sh does: cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Polls `probe` every 100 ms until it returns `Some`, or panics after `deadline` describing
/// what was awaited and the last thing seen.
pub fn eventually<T>(deadline: Duration, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let until = Instant::now() + deadline;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= until => {
                panic!("timed out after {deadline:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One test's world: a scratch directory with an agent state dir, a store and an app copy,
/// and (as root) a bridge carrying the `service` network the example asks for.
#[derive(Debug)]
pub struct World {
    pub root: tempfile::TempDir,
    agent: Option<Child>,
    pub bridge: Option<netns::TestBridge>,
}

/// Copies the example app to `to`, without build outputs. Where no bridge can be made (not
/// root), its network and health check are taken out: instances then run without interfaces.
pub fn copy_example(to: &Path, networked: bool) {
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello"), to);
    let _ = fs::remove_dir_all(to.join("_build"));
    let _ = fs::remove_dir_all(to.join("_mirari"));
    if !networked {
        let path = to.join("mirari.toml");
        let text = fs::read_to_string(&path).expect("config");
        let text = text
            .split("\n[[network]]")
            .next()
            .unwrap_or_default()
            .replace(r#"args = ["--ipv4={net.service.cidr}", "--ipv4-gateway={net.service.gateway}", "#, "args = [");
        fs::write(&path, text).expect("write config");
    }
}

impl World {
    pub fn new() -> Self {
        let root = tempfile::Builder::new().prefix("mirari-e2e-").tempdir().expect("scratch dir");
        let world = Self { root, agent: None, bridge: netns::TestBridge::new() };
        copy_example(&world.app_dir(), world.bridge.is_some());
        world
    }

    pub fn app_dir(&self) -> PathBuf {
        self.root.path().join("hello")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("agent")
    }

    pub fn socket(&self) -> PathBuf {
        self.root.path().join("agent.sock")
    }

    /// Rewrites the app's `mirari.toml`, replacing `from` (which must occur) with `to`.
    pub fn edit_config(&self, from: &str, to: &str) {
        let path = self.app_dir().join("mirari.toml");
        let text = fs::read_to_string(&path).expect("config");
        assert!(text.contains(from), "mirari.toml has no {from:?}");
        fs::write(&path, text.replace(from, to)).expect("write config");
    }

    /// Starts `mirari-agent` and waits until it answers.
    pub fn start_agent(&mut self) {
        self.start_agent_with(&[]);
    }

    /// Starts `mirari-agent` with extra flags and waits until it answers.
    pub fn start_agent_with(&mut self, flags: &[&str]) {
        assert!(self.agent.is_none(), "agent already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("agent.log"))
            .expect("agent log");
        let mut command = Command::new(bin("mirari-agent"));
        if let Some(bridge) = &self.bridge {
            let flag = format!("service={},subnet={},gateway={}", bridge.name, bridge.subnet, bridge.gateway);
            command.args(["--network", &flag]);
        }
        let child = command
            .args(flags)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--listen")
            .arg(format!("unix:{}", self.socket().display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start mirari-agent");
        self.agent = Some(child);
        eventually(Duration::from_secs(30), "the agent to answer", || {
            let out = self.mirari(&["host"]);
            if out.status.success() { Ok(()) } else { Err(stderr(&out)) }
        });
    }

    /// Kills the agent with SIGKILL, as a crash would; its instances keep running.
    pub fn kill_agent(&mut self) {
        let mut child = self.agent.take().expect("agent running");
        child.kill().expect("kill -9 the agent");
        child.wait().expect("reap the agent");
    }

    pub fn agent_log(&self) -> String {
        fs::read_to_string(self.root.path().join("agent.log")).unwrap_or_default()
    }

    /// Runs `mirari` against this world's agent and store, in the app directory.
    pub fn mirari(&self, args: &[&str]) -> Output {
        Command::new(bin("mirari"))
            .args(args)
            .current_dir(self.app_dir())
            .env("MIRARI_AGENT", format!("unix:{}", self.socket().display()))
            .env("MIRARI_STORE", self.root.path().join("store"))
            .stdin(Stdio::null())
            .output()
            .expect("run mirari")
    }

    /// Runs `mirari ARGS --output json`, asserts success and parses stdout.
    pub fn mirari_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let out = self.mirari(&args);
        assert!(out.status.success(), "mirari {args:?} failed: {}", stderr(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("mirari {args:?} printed no JSON ({e}): {}", stdout(&out)))
    }

    /// `mirari ps` as JSON, one object per instance.
    pub fn instances(&self) -> Vec<Value> {
        self.mirari_json(&["ps"]).as_array().cloned().unwrap_or_default()
    }

    pub fn instance(&self, id: &str) -> Value {
        self.instances().into_iter().find(|i| i["id"] == id).unwrap_or_else(|| panic!("no instance {id}"))
    }

    /// configure + build, returning the built artifacts by target.
    pub fn build(&self) -> Value {
        let out = self.mirari(&["configure"]);
        assert!(out.status.success(), "configure failed: {}{}", stdout(&out), stderr(&out));
        self.mirari_json(&["build"])
    }

    /// Starts `count` instances of `target`; returns their IDs.
    pub fn run(&self, target: &str, count: u32) -> Vec<String> {
        let started = self.mirari_json(&["run", "-t", target, "--count", &count.to_string()]);
        started["ids"].as_array().expect("ids").iter().map(|v| v.as_str().expect("id").to_owned()).collect()
    }

    /// Waits until the instance's console contains `needle`; returns the console.
    pub fn console_until(&self, id: &str, needle: &str) -> String {
        eventually(Duration::from_secs(60), &format!("{needle:?} on the console of {id}"), || {
            let text = stdout(&self.mirari(&["console", id]));
            if text.contains(needle) { Ok(text) } else { Err(text) }
        })
    }

    /// Waits until the instance reaches `phase`; returns it.
    pub fn wait_phase(&self, id: &str, phase: &str) -> Value {
        eventually(Duration::from_secs(60), &format!("{id} to be {phase}"), || {
            let instance = self.instance(id);
            if instance["phase"] == phase { Ok(instance) } else { Err(instance.to_string()) }
        })
    }

    /// The live shims of this world's instances (each owns one instance's process).
    pub fn live_shims(&self) -> Vec<(String, u32)> {
        let Ok(entries) = fs::read_dir(self.state_dir().join("instances")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let info: Value = serde_json::from_slice(&fs::read(entry.path().join("shim.json")).ok()?).ok()?;
                let pid = u32::try_from(info["payload"]["pid"].as_u64()?).ok()?;
                let alive = fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
                alive.then(|| (entry.file_name().to_string_lossy().into_owned(), pid))
            })
            .collect()
    }

    /// The pid of every process whose command line mentions this world's instance `id`
    /// (its shim and its payload), to count duplicates.
    pub fn processes_of(&self, id: &str) -> Vec<u32> {
        let dir = self.state_dir().join("instances").join(id);
        let needle = dir.display().to_string();
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).replace('\0', " ").contains(&needle))
            })
            .collect()
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for World {
    /// Leaves nothing running: the agent, then every shim and payload of this world, and
    /// nothing of theirs on the network.
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        let Ok(entries) = fs::read_dir(self.state_dir().join("instances")) else {
            return;
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            for pid in self.processes_of(&id) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
        netns::remove_instance_links(&self.state_dir(), None);
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create dir");
    for entry in fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// `GET path` from `address` (an IP, port 80), as a client on this machine: the status code
/// and the body, or why not. Times out after 3 s.
pub fn http_get(address: &str, path: &str) -> Result<(u16, String), String> {
    http_request(&format!("{address}:80"), path).map(|answer| (answer.status, answer.body))
}

/// An HTTP answer: its status, its head (status line and headers) and its body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// `GET path` over HTTP/1.0 at `socket` (`IP:PORT`), within 3 s per step.
pub fn http_request(socket: &str, path: &str) -> Result<HttpAnswer, String> {
    use std::io::{Read, Write};
    let socket: std::net::SocketAddr = socket.parse().map_err(|e| format!("{socket}: {e}"))?;
    let timeout = Duration::from_secs(3);
    let mut stream = std::net::TcpStream::connect_timeout(&socket, timeout).map_err(|e| format!("{socket}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", socket.ip()).as_bytes())
        .map_err(|e| format!("{socket}: {e}"))?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| format!("{socket}: {e}"))?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{socket}: no HTTP answer: {text:?}"))?;
    let status =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("{socket}: {head:?}"))?;
    Ok(HttpAnswer { status, head: head.to_owned(), body: body.to_owned() })
}

/// Asks the DNS server at `server` (`IP:PORT`, over UDP) for the A records of `name`: the
/// addresses, sorted, or why not (the response code when it is not NOERROR).
pub fn resolve(server: &str, name: &str) -> Result<Vec<std::net::Ipv4Addr>, String> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut query = Message::new(0x4d49, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(Name::from_ascii(name).map_err(|e| e.to_string())?, RecordType::A));
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    socket.send_to(&query.to_vec().map_err(|e| e.to_string())?, server).map_err(|e| format!("{server}: {e}"))?;
    let mut buffer = [0u8; 4096];
    let (length, _) = socket.recv_from(&mut buffer).map_err(|e| format!("{server}: {e}"))?;
    let answer = Message::from_vec(&buffer[..length]).map_err(|e| e.to_string())?;
    if answer.metadata.response_code != ResponseCode::NoError {
        return Err(format!("{server}: {name}: {}", answer.metadata.response_code));
    }
    let mut addresses: Vec<std::net::Ipv4Addr> = answer
        .answers
        .iter()
        .filter_map(|record| match record.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    addresses.sort();
    Ok(addresses)
}
