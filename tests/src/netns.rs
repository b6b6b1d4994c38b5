//! Test hosts as network namespaces on one machine.
//!
//! Each host gets its own namespace and address on a private bridge, so processes bind the
//! same ports on different hosts and `iptables` inside a host cuts its links, as on separate
//! machines. Inside each host, a bridge `br0` enslaves its uplink and holds its address, so the
//! instances an agent attaches to `br0` share one L2 segment with every host and this machine
//! (the "client", at the gateway address). Without root (or without `ip`), hosts fall back to
//! loopback: all share 127.0.0.1, ports must differ, links cannot be cut, and there are no
//! bridges. [`TestBridge`] is a bridge on this machine for single-host tests.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug)]
pub struct Network {
    tag: String,
    bridge: Option<String>,
    hosts: Vec<TestHost>,
    /// This machine's address on the bridge, which every host reaches.
    gateway: String,
    /// The hosts' /24, `10.X.Y` (its .1 is the gateway, .10 up the hosts).
    prefix: String,
}

/// The bridge inside every isolated test host that carries instances' interfaces.
pub const HOST_BRIDGE: &str = "br0";

#[derive(Debug, Clone)]
pub struct TestHost {
    pub name: String,
    /// The namespace, or `None` on loopback.
    pub netns: Option<String>,
    pub ip: String,
}

fn run(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the tests run as root (namespaces, bridges, `mirari dev`'s network need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
}

fn can_use_namespaces() -> bool {
    is_root() && run(&["ip", "netns", "list"])
}

impl Network {
    /// `count` hosts, isolated in namespaces when possible.
    pub fn new(count: usize) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let serial = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:x}{serial:x}", pid % 0xffff);
        if !can_use_namespaces() {
            let hosts = (0..count)
                .map(|i| TestHost { name: format!("host{i}"), netns: None, ip: "127.0.0.1".into() })
                .collect();
            return Self { tag, bridge: None, hosts, gateway: "127.0.0.1".into(), prefix: String::new() };
        }
        let (second, third) = (100 + serial % 100, pid % 250);
        let bridge = format!("mb{tag}");
        let mut network = Self {
            tag: tag.clone(),
            bridge: Some(bridge.clone()),
            hosts: Vec::new(),
            gateway: format!("10.{second}.{third}.1"),
            prefix: format!("10.{second}.{third}"),
        };
        let gateway = format!("10.{second}.{third}.1/24");
        assert!(
            run(&["ip", "link", "add", &bridge, "type", "bridge"])
                && run(&["ip", "addr", "add", &gateway, "dev", &bridge])
                && run(&["ip", "link", "set", &bridge, "up"]),
            "cannot create the test bridge {bridge}"
        );
        for i in 0..count {
            let netns = format!("mn{tag}-{i}");
            let veth = format!("mv{tag}{i}");
            let ip = format!("10.{second}.{third}.{}", 10 + i);
            let ok = run(&["ip", "netns", "add", &netns])
                && run(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns])
                && run(&["ip", "link", "set", &veth, "master", &bridge, "up"])
                && run(&["ip", "-n", &netns, "link", "add", HOST_BRIDGE, "type", "bridge"])
                && run(&["ip", "-n", &netns, "link", "set", "eth0", "master", HOST_BRIDGE, "up"])
                && run(&["ip", "-n", &netns, "addr", "add", &format!("{ip}/24"), "dev", HOST_BRIDGE])
                && run(&["ip", "-n", &netns, "link", "set", HOST_BRIDGE, "up"])
                && run(&["ip", "-n", &netns, "link", "set", "lo", "up"])
                && run(&["ip", "-n", &netns, "route", "add", "default", "via", &format!("10.{second}.{third}.1")]);
            network.hosts.push(TestHost { name: format!("host{i}"), netns: Some(netns.clone()), ip });
            assert!(ok, "cannot set up test host namespace {netns}");
        }
        network
    }

    pub fn hosts(&self) -> &[TestHost] {
        &self.hosts
    }

    /// This machine's own address as the hosts reach it (where a test's proxies listen).
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// True when hosts are namespaces with their own addresses.
    pub fn isolated(&self) -> bool {
        self.bridge.is_some()
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The hosts' subnet with a pool of addresses for instances, as `mirari cluster network
    /// create` flags (`--subnet`, `--gateway`, `--range`): .100 to .199, reachable from every
    /// host's `br0` and from this machine. `None` on loopback.
    pub fn instance_network(&self) -> Option<[String; 3]> {
        let prefix = self.isolated().then_some(&self.prefix)?;
        Some([format!("{prefix}.0/24"), format!("{prefix}.1"), format!("{prefix}.100-{prefix}.199")])
    }
}

/// A bridge on this machine holding the first address of its own /24, for the instances of
/// one single-host test; deleted on drop.
#[derive(Debug)]
pub struct TestBridge {
    pub name: String,
    /// `10.124.N.0/24`.
    pub subnet: String,
    pub gateway: String,
}

impl TestBridge {
    /// A fresh bridge, or `None` without root.
    pub fn new() -> Option<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        if !can_use_namespaces() {
            return None;
        }
        let serial = NEXT.fetch_add(1, Ordering::Relaxed);
        let n = (std::process::id().wrapping_mul(7) + serial) % 250 + 1;
        let name = format!("mw{:x}{serial:x}", std::process::id() % 0xffff);
        let gateway = format!("10.124.{n}.1");
        let made = run(&["ip", "link", "add", &name, "type", "bridge"])
            && run(&["ip", "addr", "add", &format!("{gateway}/24"), "dev", &name])
            && run(&["ip", "link", "set", &name, "up"]);
        assert!(made, "cannot create the test bridge {name}");
        Some(Self { name, subnet: format!("10.124.{n}.0/24"), gateway })
    }
}

impl Drop for TestBridge {
    fn drop(&mut self) {
        run(&["ip", "link", "delete", &self.name]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for host in &self.hosts {
            if let Some(netns) = &host.netns {
                run(&["ip", "netns", "delete", netns]);
            }
        }
        if let Some(bridge) = &self.bridge {
            run(&["ip", "link", "delete", bridge]);
        }
    }
}

impl TestHost {
    /// A command that runs `program` on this host: in its network namespace only (`nsenter
    /// --net`), sharing this machine's mounts as a real host's processes share their own, so
    /// the namespaces an agent makes for its instances (`/run/netns`) stay visible to it after
    /// a restart and to the test.
    pub fn command(&self, program: &Path) -> Command {
        match &self.netns {
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command.arg(format!("--net=/run/netns/{netns}")).arg("--").arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    /// Drops all traffic between this host and `other` (needs namespaces).
    pub fn cut_from(&self, other: &TestHost) {
        let netns = self.netns.as_ref().expect("links can only be cut between namespaces");
        for (chain, flag) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            assert!(
                run(&["ip", "netns", "exec", netns, "iptables", "-A", chain, flag, &other.ip, "-j", "DROP"]),
                "iptables failed in {netns} (is iptables installed?)"
            );
        }
    }

    /// Refuses this host's outgoing TCP connections to `port` (needs namespaces): its agent's
    /// health checks of its own instances fail, while everything else works.
    pub fn refuse_outgoing_tcp(&self, port: u16) {
        let netns = self.netns.as_ref().expect("only a namespace's traffic can be refused");
        let port = port.to_string();
        let rule = ["OUTPUT", "-p", "tcp", "--dport", &port, "-j", "REJECT"];
        assert!(
            run(&[&["ip", "netns", "exec", netns, "iptables", "-A"][..], &rule[..]].concat()),
            "iptables failed in {netns} (is iptables installed?)"
        );
    }

    /// Restores every link of this host.
    pub fn heal(&self) {
        if let Some(netns) = &self.netns {
            run(&["ip", "netns", "exec", netns, "iptables", "-F"]);
        }
    }
}

/// Removes what the instances of an agent whose host "died" (its state directory `state_dir`)
/// had on the network: their namespaces (`mirari-<id>`, which takes their veth pairs along) and
/// the links marked for them (taps) in `netns`, or on this machine with `None`. A real host's
/// death takes them; a test host's must be taken by hand.
pub fn remove_instance_links(state_dir: &Path, netns: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(state_dir.join("instances")) else { return };
    let ids: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    if ids.is_empty() {
        return;
    }
    for id in &ids {
        run(&["ip", "netns", "delete", &format!("mirari-{id}")]);
    }
    let mut list = Command::new("ip");
    if let Some(netns) = netns {
        list.args(["-n", netns]);
    }
    let Ok(out) = list.args(["-o", "link", "show"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let marked = ids.iter().any(|id| line.ends_with(&format!("alias mirari instance {id}")));
        let name = line.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or("").to_owned());
        if let (true, Some(name)) = (marked, name) {
            let mut args = vec!["ip"];
            if let Some(netns) = netns {
                args.extend(["-n", netns]);
            }
            args.extend(["link", "delete", &name]);
            run(&args);
        }
    }
}
