//! Coordinator processes for end-to-end tests: start, kill -9, restart from the data directory.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::netns::TestHost;
use crate::pki::{Identity, Pki};
use crate::{bin, eventually};

/// A port free on 127.0.0.1 (TCP and UDP) below Linux's ephemeral range (32768 and up), the one
/// source of every port the harness gives a daemon: the address goes into a config file before
/// its process starts, and an ephemeral port may meanwhile be given to any outgoing connection
/// (in that host's namespace too), one below the range only to another listener. Each call in a
/// test process tries the next port, from a start that differs per process, so no two calls in
/// one process return the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 32_768 - FIRST;
    static TRIED: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % COUNT;
    loop {
        let tried = TRIED.fetch_add(1, Ordering::Relaxed);
        assert!(tried < COUNT, "no free port from {FIRST} to 32767 on 127.0.0.1");
        let port = (FIRST + (start + tried) % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

#[derive(Debug)]
pub struct Coordinator {
    pub id: u64,
    pub host: TestHost,
    pub address: String,
    /// Where it answers DNS for the apps' healthy instances (`--dns-listen`).
    pub dns_address: String,
    /// Where it serves `GET /metrics` (`--http-listen`).
    pub metrics_address: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    identity: Identity,
    /// The identity `cli_json` uses.
    operator: Identity,
    /// Set in its environment besides this process's own (a cloud provider's credentials).
    pub env: Vec<(String, String)>,
}

impl Coordinator {
    /// Starts coordinator `id` on `host`, keeping its data and log under `dir`, with a
    /// certificate from `pki`.
    pub fn start(id: u64, host: &TestHost, dir: &std::path::Path, bootstrap: bool, pki: &Pki) -> Self {
        let identity = pki.issue("coordinator", &format!("coordinator-{id}"), &[&host.ip]);
        Self::start_with_identity(id, host, dir, bootstrap, pki, identity, Vec::new())
    }

    /// Like [`Coordinator::start`], with a certificate made by the caller and `env` added to
    /// its environment.
    pub fn start_with_identity(
        id: u64,
        host: &TestHost,
        dir: &std::path::Path,
        bootstrap: bool,
        pki: &Pki,
        identity: Identity,
        env: Vec<(String, String)>,
    ) -> Self {
        Self::start_at(id, host, free_port(), dir, bootstrap, pki, identity, env)
    }

    /// Like [`Coordinator::start_with_identity`], listening on `port`.
    #[allow(clippy::too_many_arguments)]
    pub fn start_at(
        id: u64,
        host: &TestHost,
        port: u16,
        dir: &std::path::Path,
        bootstrap: bool,
        pki: &Pki,
        identity: Identity,
        env: Vec<(String, String)>,
    ) -> Self {
        let address = format!("{}:{port}", host.ip);
        let mut coordinator = Self {
            identity,
            operator: pki.issue("operator", "operator", &[]),
            id,
            host: host.clone(),
            data_dir: dir.join(format!("coordinator-{id}")),
            log: dir.join(format!("coordinator-{id}.log")),
            address,
            dns_address: format!("{}:{}", host.ip, free_port()),
            metrics_address: format!("{}:{}", host.ip, free_port()),
            child: None,
            env,
        };
        coordinator.spawn(bootstrap);
        coordinator
    }

    fn spawn(&mut self, bootstrap: bool) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("coordinator log");
        let mut command = self.host.command(&bin("mirari-coordinator"));
        command
            .arg("--id")
            .arg(self.id.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(&self.address)
            .arg("--dns-listen")
            .arg(&self.dns_address)
            .arg("--http-listen")
            .arg(&self.metrics_address)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.identity.apply(&mut command);
        if bootstrap {
            command.arg("--bootstrap");
        }
        self.child = Some(command.spawn().expect("start mirari-coordinator"));
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the process.
    pub fn freeze(&self, frozen: bool) {
        self.signal(if frozen { "-STOP" } else { "-CONT" });
    }

    /// SIGKILL, as a crash, from a test that holds the cluster shared; [`Coordinator::kill`]
    /// reaps it later.
    pub fn crash(&self) {
        self.signal("-KILL");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(std::process::Command::new("kill").args([signal, &pid]).status().is_ok_and(|s| s.success()));
    }

    /// Starts it again from its data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn(false);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit on its own; returns its exit status.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = eventually(deadline, "the coordinator to exit", || {
            child.try_wait().map_err(|e| e.to_string())?.ok_or_else(|| "running".to_owned())
        });
        self.child = None;
        status
    }

    /// `mirari ARGS --output json` against this coordinator.
    pub fn cli_json(&self, args: &[&str]) -> Result<Value, String> {
        let mut command = std::process::Command::new(bin("mirari"));
        command.args(args).args(["--output", "json", "--coordinator", &self.address]);
        self.operator.apply(&mut command);
        let out = command.output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// Starts `mirari ARGS` against this coordinator in the background, its stderr to `stderr`.
    pub fn cli_spawn(&self, args: &[&str], stderr: &std::path::Path) -> Child {
        let mut command = std::process::Command::new(bin("mirari"));
        command.args(args).args(["--coordinator", &self.address]);
        self.operator.apply(&mut command);
        command
            .stdout(Stdio::null())
            .stderr(fs::File::create(stderr).expect("stderr file"))
            .spawn()
            .expect("start mirari")
    }

    pub fn info(&self) -> Result<Value, String> {
        self.cli_json(&["cluster", "info"])
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill();
    }
}
