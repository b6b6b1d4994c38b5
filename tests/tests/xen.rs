//! The Xen backend against a real Xen hypervisor: a Debian dom0 booted under QEMU TCG
//! (`deploy/xen-testhost/`), with `mirari-agent` inside it joined to a coordinator outside:
//! deploy, the domains answering HTTP from dom0 at their allocated addresses (a vif on dom0's
//! bridge `xenbr0`), consoles, re-adoption after `kill -9`, a frozen agent's domains destroyed by their
//! fence keepers before the host is declared down, the same with dom0's CPUs starved (never
//! more domains than instances), and stop.
//!
//! Before all that, on the same host, the backend conformance suite runs against the xen
//! backend: `xen_backend_conforms_on_a_xen_dom0` in `agent/tests/conformance.rs`, ignored
//! elsewhere because only a dom0 has `xl`. Its test binary (found with `cargo test --workspace
//! --test conformance --no-run`, the build `./test.sh` makes, so nothing is rebuilt; or given
//! as `MIRARI_CONFORMANCE_BIN`) goes into the image with the example's sources and runs in
//! dom0, told where things are there by the environment variables that
//! `agent/tests/support/mod.rs` documents. dom0 is Debian 12 like the build machine (glibc
//! 2.36), so the binary runs there as built.
//!
//! Ignored by default (it builds a disk image, boots Xen and builds the example in dom0:
//! several minutes). Run it with
//! `cargo build --workspace --bins && cargo test -p mirari-tests --test xen -- --ignored --nocapture`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mirari_tests::coordinators::{Coordinator, free_port};
use mirari_tests::netns::TestHost;
use mirari_tests::pki::Pki;
use mirari_tests::{bin, eventually, stderr, stdout};

const SLOW: Duration = Duration::from_secs(600);

fn testhost() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/xen-testhost")
}

fn run(command: &mut Command) -> Output {
    let out = command.output().expect("run");
    assert!(out.status.success(), "{command:?} failed: {}{}", stdout(&out), stderr(&out));
    out
}

/// Runs a shell command in dom0.
fn dom0(state: &Path, script: &str) -> Result<String, String> {
    let out = Command::new(testhost().join("ssh.sh"))
        .arg("--state")
        .arg(state)
        .arg(script)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() { Ok(stdout(&out)) } else { Err(format!("{}{}", stdout(&out), stderr(&out))) }
}

/// The `mirari-<id>` domains dom0 has, with their domain IDs.
fn mirari_domains(state: &Path) -> Vec<(String, u32)> {
    mirari_domain_states(state).into_iter().map(|(name, domid, _)| (name, domid)).collect()
}

/// The same with `xl list`'s state flags (`r-----` running, `-b----` blocked, `--p---` paused,
/// `---s--` shut down, `----c-` crashed, `-----d` dying).
fn mirari_domain_states(state: &Path) -> Vec<(String, u32, String)> {
    let listing = dom0(state, "xl list").unwrap_or_default();
    listing
        .lines()
        .filter(|l| l.starts_with("mirari-"))
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            Some((fields.first()?.to_string(), fields.get(1)?.parse().ok()?, fields.get(4)?.to_string()))
        })
        .collect()
}

/// Whether a domain in this state can still execute: not paused, shut down, crashed or dying
/// (`xl destroy` pauses a domain first, then takes it apart, which takes a while).
fn can_execute(flags: &str) -> bool {
    !flags.contains(['p', 's', 'c', 'd'])
}

/// Counts the `mirari-` domains in dom0 in the background; the most seen at once.
struct DomainSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl DomainSampler {
    fn start(state: &Path) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (state, flag) = (state.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut most = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(mirari_domains(&state).len());
            }
            most
        });
        Self { stop, thread }
    }

    fn finish(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the sampler")
    }
}

struct Testhost {
    state: PathBuf,
}

impl Drop for Testhost {
    fn drop(&mut self) {
        let _ = Command::new(testhost().join("stop.sh")).arg("--state").arg(&self.state).status();
    }
}

/// The conformance suite's test binary: `MIRARI_CONFORMANCE_BIN`, or cargo's build of it (built
/// now if it is not up to date).
fn conformance_binary() -> PathBuf {
    if let Some(given) = std::env::var_os("MIRARI_CONFORMANCE_BIN") {
        return given.into();
    }
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .args(["test", "--locked", "--workspace", "--test", "conformance", "--no-run", "--message-format=json"])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"));
    // What cargo set for this test process describes this crate; seen by the build, it would
    // rebuild units (and the next plain build rebuild them back).
    for (key, _) in std::env::vars() {
        let this_crate =
            ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_BIN_", "CARGO_CRATE_", "CARGO_PRIMARY_", "CARGO_TARGET_TMPDIR"];
        if this_crate.iter().any(|prefix| key.starts_with(prefix)) || key == "CARGO_RUSTC_CURRENT_DIR" {
            cargo.env_remove(key);
        }
    }
    let out = run(&mut cargo);
    stdout(&out)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact" && message["target"]["name"] == "conformance")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .expect("cargo names the conformance test binary")
}

/// Where the conformance suite goes in dom0 (beside `/usr/local/bin/mirari-agent`).
const CONFORMANCE_DIR: &str = "/root/conformance";

#[test]
#[ignore = "boots a nested Xen host under QEMU TCG; see the module docs"]
fn deploys_watches_readopts_and_stops_xen_domains() {
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("mirari-xen-").tempdir().unwrap();
    let outside = TestHost { name: "outside".into(), netns: None, ip: "127.0.0.1".into() };
    let pki = Pki::new(dir.path());
    let (agent_port, ssh_port) = (free_port(), free_port());

    // The coordinator, outside, answering dom0 at 10.0.2.2 (QEMU's address for this machine).
    let coordinator_identity = pki.issue("coordinator", "coordinator-1", &["127.0.0.1", "10.0.2.2"]);
    let coordinator =
        Coordinator::start_with_identity(1, &outside, dir.path(), true, &pki, coordinator_identity, Vec::new());
    let coordinator_port = coordinator.address.rsplit_once(':').unwrap().1.to_owned();

    // The agent, inside dom0, in the image: binary, certificate, systemd unit.
    let extra = dir.path().join("extra");
    fs::create_dir_all(extra.join("usr/local/bin")).unwrap();
    fs::create_dir_all(extra.join("etc/mirari")).unwrap();
    fs::create_dir_all(extra.join("etc/systemd/system")).unwrap();
    fs::copy(bin("mirari-agent"), extra.join("usr/local/bin/mirari-agent")).unwrap();
    // The conformance suite: its binary and the example's sources, which it builds there.
    let conformance = extra.join(CONFORMANCE_DIR.trim_start_matches('/'));
    fs::create_dir_all(&conformance).unwrap();
    fs::copy(conformance_binary(), conformance.join("conformance")).unwrap();
    mirari_tests::copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello"),
        &conformance.join("hello"),
    );
    let _ = fs::remove_dir_all(conformance.join("hello/_build"));
    let agent = pki.issue("agent", "xen-testhost", &["127.0.0.1"]);
    fs::copy(&agent.ca, extra.join("etc/mirari/ca.pem")).unwrap();
    fs::copy(&agent.cert, extra.join("etc/mirari/agent.pem")).unwrap();
    fs::copy(&agent.key, extra.join("etc/mirari/agent-key.pem")).unwrap();
    fs::write(
        extra.join("etc/systemd/system/mirari-agent.service"),
        format!(
            "[Unit]\nDescription=Mirari agent\nAfter=xen-testhost-ready.service\nWants=xen-testhost-ready.service\n\n\
             [Service]\nExecStart=/usr/local/bin/mirari-agent --state-dir /var/lib/mirari/agent --listen 0.0.0.0:7401 \
             --advertise 127.0.0.1:{agent_port} --join 10.0.2.2:{coordinator_port} --name xen-testhost \
             --network service=xenbr0 \
             --tls-ca /etc/mirari/ca.pem --tls-cert /etc/mirari/agent.pem --tls-key /etc/mirari/agent-key.pem\n\
             Restart=always\nRestartSec=1\nKillMode=process\n\n[Install]\nWantedBy=multi-user.target\n"
        ),
    )
    .unwrap();
    let image = dir.path().join("image");
    run(Command::new(testhost().join("build-image.sh"))
        .arg("--extra")
        .arg(&extra)
        .args(["--enable", "mirari-agent.service", "--out"])
        .arg(&image));
    eprintln!("image built: {:?}", started.elapsed());

    let host = Testhost { state: dir.path().join("state") };
    run(Command::new(testhost().join("boot.sh")).arg("--image").arg(&image).arg("--state").arg(&host.state).args([
        "--agent-port",
        &agent_port.to_string(),
        "--ssh-port",
        &ssh_port.to_string(),
        "--wait",
        "400",
    ]));
    eprintln!("dom0 ready: {:?}", started.elapsed());

    // The conformance suite's xen subject, against this dom0's Xen (it cleans up its domains).
    let suite = dom0(
        &host.state,
        &format!(
            "cd {CONFORMANCE_DIR} && MIRARI_EXAMPLE_DIR={CONFORMANCE_DIR}/hello MIRARI_EXAMPLE_GOALS=xen \
             MIRARI_AGENT_BIN=/usr/local/bin/mirari-agent MIRARI_TEST_SCRATCH={CONFORMANCE_DIR}/scratch \
             timeout 600 ./conformance --ignored --exact xen_backend_conforms_on_a_xen_dom0 --nocapture 2>&1"
        ),
    )
    .unwrap_or_else(|failed| panic!("the conformance suite failed in dom0:\n{failed}"));
    eprintln!("{suite}");
    assert!(suite.contains("test result: ok. 1 passed"), "the xen subject did not run: {suite}");
    assert!(mirari_domains(&host.state).is_empty(), "the conformance suite left domains behind");
    eprintln!("conformance suite passed in dom0: {:?}", started.elapsed());

    let cli = |args: &[&str]| -> Output {
        let mut command = Command::new(bin("mirari"));
        command
            .args(args)
            .current_dir(dir.path())
            .env("MIRARI_ADDR", &coordinator.address)
            .env("MIRARI_STORE", dir.path().join("store"))
            .env("MIRARI_AGENT", "unix:/nonexistent");
        pki.issue("operator", "operator", &[]).apply(&mut command);
        command.output().expect("mirari")
    };
    eventually(SLOW, "the dom0 agent to join with its xen backend", || {
        let hosts = cli(&["cluster", "hosts", "--output", "json"]);
        let text = stdout(&hosts);
        if text.contains("\"xen\"") && text.contains("\"up\"") {
            Ok(())
        } else {
            Err(format!("{text}{}", stderr(&hosts)))
        }
    });
    // The example's network: dom0's bridge xenbr0 holds 10.99.0.1/24.
    let created = cli(&[
        "cluster",
        "network",
        "create",
        "service",
        "--subnet",
        "10.99.0.0/24",
        "--gateway",
        "10.99.0.1",
        "--range",
        "10.99.0.100-10.99.0.199",
    ]);
    assert!(created.status.success(), "network create failed: {}", stderr(&created));

    // Deploy: the build runs in dom0 (the only host with the xen backend), two domains start.
    mirari_tests::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello"), &dir.path().join("hello"));
    let _ = fs::remove_dir_all(dir.path().join("hello/_build"));
    let deployed =
        cli(&["cluster", "deploy", "-f", "hello/mirari.toml", "-t", "xen", "--count", "2", "--timeout", "10m"]);
    if !deployed.status.success() {
        let journal = dom0(&host.state, "journalctl -u mirari-agent --no-pager | tail -n 60; xl list");
        panic!("deploy failed: {}\nthe agent in dom0:\n{}", stderr(&deployed), journal.unwrap_or_else(|e| e));
    }
    eprintln!("deployed: {:?}", started.elapsed());
    let status: serde_json::Value =
        serde_json::from_slice(&cli(&["cluster", "status", "--output", "json"]).stdout).unwrap();
    let ids: Vec<String> =
        status["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 2);
    for id in &ids {
        let console = eventually(SLOW, "heartbeats on a domain's console", || {
            let text = stdout(&cli(&["console", id]));
            if text.contains("hello: heartbeat 2") { Ok(text) } else { Err(text) }
        });
        assert!(console.contains("hello: boot args: --ipv4=10.99.0.1"), "{console}");
        assert!(console.contains("hello: files: 3 entries"), "{console}");
    }
    // Each domain answers HTTP at its own address, from dom0 over its vif on xenbr0.
    let addresses: Vec<String> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["addresses"][0].as_str().unwrap().split('/').next().unwrap().to_owned())
        .collect();
    assert_ne!(addresses[0], addresses[1]);
    let index = include_str!("../../examples/hello/data/index.html");
    for address in &addresses {
        let page =
            eventually(SLOW, "a domain to answer HTTP", || dom0(&host.state, &format!("curl -sf http://{address}/")));
        assert_eq!(page, index, "GET http://{address}/ from dom0");
    }
    eprintln!("domains answer HTTP at {addresses:?}: {:?}", started.elapsed());
    let before = mirari_domains(&host.state);
    assert_eq!(before.len(), 2, "{before:?}");

    // kill -9 the agent in dom0; systemd starts it again; it re-adopts both domains.
    dom0(&host.state, "pkill -9 -x mirari-agent").unwrap();
    for id in &ids {
        eventually(SLOW, "the restarted agent to re-adopt the domain", || {
            let logs = stdout(&cli(&["logs", id]));
            if logs.contains("re-adopted after an agent restart") { Ok(()) } else { Err(logs) }
        });
    }
    assert_eq!(mirari_domains(&host.state), before, "the same domains, none added");

    // Two running instances, each in its domain: the names of those domains.
    let running_domains = || -> Result<Vec<String>, String> {
        let status: serde_json::Value = serde_json::from_slice(&cli(&["cluster", "status", "--output", "json"]).stdout)
            .map_err(|e| e.to_string())?;
        let running: Vec<String> = status["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["desired"] == "running" && i["observed"] == "running")
            .map(|i| format!("mirari-{}", i["id"].as_str().unwrap_or_default()))
            .collect();
        let domains: Vec<String> = mirari_domains(&host.state).into_iter().map(|(name, _)| name).collect();
        if running.len() == 2 && domains.len() == 2 && running.iter().all(|r| domains.contains(r)) {
            Ok(running)
        } else {
            Err(format!("running {running:?}, domains {domains:?}"))
        }
    };

    // A frozen agent cannot fence its domains itself: their fence keepers destroy them once its
    // lease has run out; none may still execute once the coordinator declares the host down and
    // frees their slots.
    let agent_pid = dom0(&host.state, "systemctl show -p MainPID --value mirari-agent").unwrap().trim().to_owned();
    let frozen_at = Instant::now();
    dom0(&host.state, &format!("kill -STOP {agent_pid}")).unwrap();
    let fenced_after = eventually(SLOW, "the fence keepers to destroy the frozen agent's domains", || {
        let hosts = stdout(&cli(&["cluster", "hosts", "--output", "json"]));
        let left = mirari_domain_states(&host.state);
        if hosts.contains("\"down\"") && left.iter().any(|(_, _, flags)| can_execute(flags)) {
            let keepers = dom0(
                &host.state,
                "ps -eo pid,comm,args | grep mirari-fence; cat /proc/uptime; \
                 cat /var/lib/mirari/agent/cluster.fence; cat /var/lib/mirari/agent/instances/*/domain-fence.log",
            );
            panic!(
                "the host was declared down {:?} after the freeze while its domains {left:?} still ran; keepers: {keepers:?}",
                frozen_at.elapsed()
            );
        }
        if left.is_empty() { Ok(frozen_at.elapsed()) } else { Err(format!("{left:?}")) }
    });
    let keepers = dom0(&host.state, "cat /var/lib/mirari/agent/instances/*/domain-fence.log").unwrap_or_default();
    dom0(&host.state, &format!("kill -CONT {agent_pid}")).unwrap();
    let replaced = eventually(SLOW, "two running instances again after the agent thawed", running_domains);
    eprintln!(
        "frozen agent: domains destroyed {fenced_after:?} after the freeze ({}); then {replaced:?} run",
        keepers.trim()
    );

    // The same with dom0's CPUs starved: the agent may now be slow enough to lose its lease,
    // be fenced and see its instances replaced, but it must never leak or double a domain.
    let sampler = DomainSampler::start(&host.state);
    dom0(&host.state, "for i in 1 2 3 4 5 6; do nohup sh -c 'while :; do :; done' >/dev/null 2>&1 & done").unwrap();
    dom0(&host.state, "pkill -9 -x mirari-agent").unwrap();
    let running = eventually(SLOW, "two running instances again, on a starved host", running_domains);
    let most = sampler.finish();
    assert!(most <= 2, "{most} mirari domains at once for 2 instances on a starved host");
    dom0(&host.state, "pkill -f 'while :; do :; done'").unwrap();
    eprintln!("starved: {running:?}, at most {most} domains at once: {:?}", started.elapsed());

    // Stop: the domains shut down gracefully and are gone.
    let stopped = cli(&["cluster", "stop", "hello"]);
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    eventually(SLOW, "the domains to be gone from xl list", || {
        let left = mirari_domains(&host.state);
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    });
    eprintln!("done: {:?}", started.elapsed());
}
