//! A whole cluster for end-to-end tests: coordinators and agents, each on its own test host.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::coordinators::{Coordinator, free_port};
use crate::netns::{Network, TestHost};
use crate::pki::{Identity, Pki};
use crate::proxy::Proxy;
use crate::{bin, eventually};

pub const DEADLINE: Duration = Duration::from_secs(90);

/// An agent process joined to the cluster.
#[derive(Debug)]
pub struct ClusterAgent {
    pub name: String,
    pub host: TestHost,
    pub state_dir: PathBuf,
    /// Where it serves `GET /metrics` (`--http-listen`).
    pub metrics_address: String,
    address: String,
    join: String,
    log: PathBuf,
    child: Option<Child>,
    identity: Identity,
    max_instances: u32,
}

impl ClusterAgent {
    fn start(name: &str, host: &TestHost, dir: &Path, join: &str, pki: &Pki, max_instances: u32) -> Self {
        let mut agent = Self {
            max_instances,
            identity: pki.issue("agent", name, &[&host.ip]),
            name: name.to_owned(),
            host: host.clone(),
            state_dir: dir.join(name),
            address: format!("{}:{}", host.ip, free_port()),
            metrics_address: format!("{}:{}", host.ip, free_port()),
            join: join.to_owned(),
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("agent log");
        let mut command = self.host.command(&bin("mirari-agent"));
        self.identity.apply(&mut command);
        fs::create_dir_all(self.tools_dir()).expect("tools dir");
        let path = std::env::var("PATH").unwrap_or_default();
        command.env("PATH", format!("{}:{path}", self.tools_dir().display()));
        if self.host.netns.is_some() {
            command.args(["--network", &format!("service={}", crate::netns::HOST_BRIDGE)]);
        }
        let child = command
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--listen", &self.address, "--join", &self.join, "--name", &self.name])
            .args(["--max-instances", &self.max_instances.to_string()])
            .args(["--http-listen", &self.metrics_address])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start mirari-agent");
        self.child = Some(child);
    }

    /// SIGKILL the agent only; its instances keep running.
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the agent process: alive, but doing nothing.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        assert!(Command::new("kill").args([signal, &pid]).status().is_ok_and(|s| s.success()));
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    /// The whole host dies: the agent and every instance on it.
    pub fn kill_host(&mut self) {
        self.kill_agent();
        for pid in processes_under(&self.state_dir) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        crate::netns::remove_instance_links(&self.state_dir, self.host.netns.as_deref());
    }

    /// A directory first on this agent's PATH: tools placed here exist on this host only.
    pub fn tools_dir(&self) -> PathBuf {
        self.state_dir.with_extension("tools")
    }

    /// Where its API listens (TLS, coordinators only).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// IDs of the instances whose process is alive on this host.
    pub fn live_instances(&self) -> Vec<String> {
        crate::sampler::live_processes(&self.state_dir).into_keys().collect()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many assignment sets the agent has applied (across restarts).
    pub fn assignments_applied(&self) -> usize {
        self.log().matches("applied the cluster's assignments").count()
    }

    /// Waits until the agent applies an assignment set after `seen` were applied: whatever it
    /// decides to run has then been started.
    pub fn wait_assignments_after(&self, seen: usize) {
        eventually(DEADLINE, &format!("{} to apply its assignments", self.name), || {
            let applied = self.assignments_applied();
            if applied > seen { Ok(()) } else { Err(format!("{applied} applied")) }
        });
    }
}

impl Drop for ClusterAgent {
    fn drop(&mut self) {
        self.kill_host();
    }
}

/// Processes whose command line mentions `dir` (an agent's shims and QEMUs).
fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(&needle))
        })
        .collect()
}

/// How a [`Cluster`] is made.
#[derive(Debug, Clone)]
pub struct Options {
    pub coordinators: usize,
    pub agents: usize,
    /// Agents that reach the coordinators through a [`Proxy`] (the first ones).
    pub proxied: usize,
    /// Each agent's `--max-instances`.
    pub agent_max_instances: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self { coordinators: 3, agents: 2, proxied: 0, agent_max_instances: 16 }
    }
}

#[derive(Debug)]
pub struct Cluster {
    pub coordinators: Vec<Coordinator>,
    pub agents: Vec<ClusterAgent>,
    pub app_dir: PathBuf,
    pub dir: tempfile::TempDir,
    // Declared last: namespaces go after the processes in them.
    pub network: Network,
}

impl Cluster {
    /// `coordinators` coordinators and `agents` agents, each on its own host.
    pub fn start(coordinators: usize, agents: usize) -> Self {
        Self::start_with(Options { coordinators, agents, ..Options::default() }).0
    }

    /// Like [`Cluster::start`]; the first `proxied` agents reach the coordinators through a
    /// [`Proxy`] each (on this machine, returned per agent and coordinator), so a test can slow
    /// their links down or silence them.
    pub fn start_proxied(coordinators: usize, agents: usize, proxied: usize) -> (Self, Vec<Vec<Proxy>>) {
        Self::start_with(Options { coordinators, agents, proxied, ..Options::default() })
    }

    /// A cluster as `options` say; see [`Cluster::start_proxied`] for the proxies.
    pub fn start_with(options: Options) -> (Self, Vec<Vec<Proxy>>) {
        let Options { coordinators, agents, proxied, agent_max_instances } = options;
        let network = Network::new(coordinators + agents);
        let dir = tempfile::Builder::new().prefix("mirari-cluster-").tempdir().expect("scratch dir");
        let hosts = network.hosts().to_vec();
        let pki = Pki::new(dir.path());
        // Valid at this machine's address too, which is where proxied agents reach them.
        let start = |id: u64, host: &TestHost, bootstrap: bool| {
            let identity = pki.issue("coordinator", &format!("coordinator-{id}"), &[&host.ip, network.gateway()]);
            Coordinator::start_with_identity(id, host, dir.path(), bootstrap, &pki, identity, Vec::new())
        };
        let mut nodes = vec![start(1, &hosts[0], true)];
        eventually(DEADLINE, "coordinator 1 to lead", || {
            nodes[0].info()?["role"].as_str().filter(|r| *r == "leader").map(|_| ()).ok_or_else(|| "not yet".into())
        });
        for (i, host) in hosts.iter().enumerate().take(coordinators).skip(1) {
            let node = start(i as u64 + 1, host, false);
            let (id, address) = (node.id.to_string(), node.address.clone());
            eventually(DEADLINE, "adding a coordinator", || {
                nodes[0].cli_json(&["cluster", "members", "add", "--id", &id, "--address", &address]).map(|_| ())
            });
            nodes.push(node);
        }
        let direct: Vec<&str> = nodes.iter().map(|n| n.address.as_str()).collect();
        let proxies: Vec<Vec<Proxy>> =
            (0..proxied).map(|_| nodes.iter().map(|n| Proxy::start(network.gateway(), &n.address)).collect()).collect();
        let agents = (0..agents)
            .map(|i| {
                let join = match proxies.get(i) {
                    Some(proxies) => proxies.iter().map(|p| p.address.as_str()).collect::<Vec<_>>().join(","),
                    None => direct.join(","),
                };
                let name = format!("agent-{i}");
                ClusterAgent::start(&name, &hosts[coordinators + i], dir.path(), &join, &pki, agent_max_instances)
            })
            .collect();
        let app_dir = dir.path().join("hello");
        crate::copy_example(&app_dir, network.isolated());
        let cluster = Self { coordinators: nodes, agents, app_dir, dir, network };
        cluster.wait_hosts_up(cluster.agents.len());
        // The example's network: the hosts' own subnet, so this machine and every host reach
        // every instance.
        if let Some([_, _, range]) = cluster.network.instance_network() {
            cluster.create_service_network(&range);
        }
        (cluster, proxies)
    }

    /// Declares the example's network `service` on the hosts' subnet, with instances' addresses
    /// from `range` (`FIRST-LAST`).
    pub fn create_service_network(&self, range: &str) {
        let [subnet, gateway, _] = self.network.instance_network().expect("isolated hosts");
        let args = ["cluster", "network", "create", "service", "--subnet", &subnet, "--gateway", &gateway];
        let out = self.mirari(&[&args[..], &["--range", range]].concat());
        assert!(out.status.success(), "network create failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn coordinator_addresses(&self) -> String {
        let running: Vec<&str> =
            self.coordinators.iter().filter(|c| c.is_running()).map(|c| c.address.as_str()).collect();
        running.join(",")
    }

    /// A `mirari` command aimed at this cluster, run in the app directory.
    pub fn mirari_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin("mirari"));
        command
            .args(args)
            .current_dir(&self.app_dir)
            .env("MIRARI_ADDR", self.coordinator_addresses())
            .env("MIRARI_STORE", self.dir.path().join("store"))
            .env("MIRARI_AGENT", format!("unix:{}", self.dir.path().join("no-local-agent.sock").display()))
            .stdin(Stdio::null());
        self.pki().issue("operator", "operator", &[]).apply(&mut command);
        command
    }

    pub fn mirari(&self, args: &[&str]) -> Output {
        self.mirari_command(args).output().expect("run mirari")
    }

    pub fn status(&self) -> Result<Value, String> {
        let out = self.mirari(&["cluster", "status", "--output", "json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    pub fn wait_hosts_up(&self, count: usize) {
        eventually(DEADLINE, &format!("{count} hosts up"), || {
            let status = self.status()?;
            let up = status["hosts"].as_array().into_iter().flatten().filter(|h| h["status"] == "up").count();
            if up == count { Ok(()) } else { Err(status["hosts"].to_string()) }
        });
    }

    /// Running instances of `app` per host, once exactly `count` run and none are in flux.
    pub fn wait_running(&self, app: &str, count: usize) -> BTreeMap<String, usize> {
        self.wait_running_avoiding(app, count, None)
    }

    /// Like [`Cluster::wait_running`], also waiting until none of them is on host `avoid`.
    pub fn wait_running_avoiding(&self, app: &str, count: usize, avoid: Option<&str>) -> BTreeMap<String, usize> {
        eventually(DEADLINE, &format!("{count} running instances of {app} (not on {avoid:?})"), || {
            let status = self.status()?;
            let instances: Vec<&Value> =
                status["instances"].as_array().into_iter().flatten().filter(|i| i["app"] == app).collect();
            let running: Vec<&&Value> =
                instances.iter().filter(|i| i["desired"] == "running" && i["observed"] == "running").collect();
            let elsewhere = avoid.is_none_or(|host| running.iter().all(|i| i["host"] != host));
            let settled = running.len() == count && instances.len() == count && elsewhere;
            if !settled {
                return Err(format!("{} running of {} listed", running.len(), instances.len()));
            }
            let mut per_host = BTreeMap::new();
            for instance in running {
                *per_host.entry(instance["host"].as_str().unwrap_or_default().to_owned()).or_insert(0) += 1;
            }
            Ok(per_host)
        })
    }

    /// Starts sampling the instance processes of every agent host.
    pub fn sampler(&self) -> crate::sampler::Sampler {
        crate::sampler::Sampler::start(self.agents.iter().map(|a| (a.name.clone(), a.state_dir.clone())).collect())
    }

    /// Instance ID -> slot, for every instance the status lists.
    pub fn slots(&self) -> BTreeMap<String, u64> {
        let status = self.status().expect("status");
        status["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| Some((i["id"].as_str()?.to_owned(), i["slot"].as_u64()?)))
            .collect()
    }

    pub fn pki(&self) -> Pki {
        Pki::new(self.dir.path())
    }

    /// The leader coordinator's index in `coordinators`.
    pub fn leader(&self) -> Option<usize> {
        let leader =
            self.coordinators.iter().filter(|c| c.is_running()).find_map(|c| c.info().ok()?["leader_id"].as_u64())?;
        self.coordinators.iter().position(|c| c.id == leader)
    }
}
