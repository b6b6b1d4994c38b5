//! Instances' network interfaces on real bridges, through the `Backend` trait: a unix or js
//! instance runs in a namespace of its own behind a veth pair, a kvm instance gets a tap; all serve
//! HTTP at their address while they run, survive a re-adoption, and leave nothing once
//! destroyed; a failed start leaves nothing and never takes another instance's links; the
//! sweep removes what ended instances left, and only theirs.
//!
//! Needs root and iproute2 (CI has both); otherwise each test says why it skipped. Every test
//! makes its own bridge (`mtb<pid><tag>`, a /24 of 10.123.0.0/16 that no other bridge on the
//! host has) and uses random instance IDs, so test processes running at once do not meet.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirari_agent::backends::js::JsBackend;
use mirari_agent::backends::kvm::KvmBackend;
use mirari_agent::backends::links::{self, netns_name, netns_path, tap_name, veth_name};
use mirari_agent::backends::unix::UnixBackend;
use mirari_agent::backends::{Backend, Launch, Recovered, StopOutcome};
use mirari_agent::supervisor::protocol::ShimPaths;
use mirari_core::ids::InstanceId;
use mirari_core::network::{Interface, MacAddress};
use mirari_core::spec::Accelerator;
use mirari_core::target::Target;
use serde_json::Value;
use support::{console_until, launcher};

/// How long an instance may take to serve HTTP once it said it does.
const REACH_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `ip ARGS`; its stdout, or `Err` with its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// `ip -j ARGS` as JSON, or `None` when it fails (the link or namespace does not exist).
fn ip_json(args: &[&str]) -> Option<Value> {
    let args: Vec<&str> = ["-j"].iter().chain(args).copied().collect();
    serde_json::from_str(&ip(&args).ok()?).ok()
}

/// The link `name` in the host's namespace, as `ip -j link show` describes it.
fn host_link(name: &str) -> Option<Value> {
    ip_json(&["link", "show", "dev", name]).map(|v| v[0].clone())
}

/// Why this host cannot run these tests, if it cannot.
fn unable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    ip(&["-V"]).err().map(|e| format!("iproute2 is missing ({e})"))
}

/// A bridge made for one test, with the host's address `10.123.N.1/24` on it; deleted on drop.
struct Bridge {
    name: String,
    net: u8,
}

impl Bridge {
    /// A fresh bridge, or `None` (and a note saying why) when this host cannot run the test.
    fn new(tag: char) -> Option<Self> {
        if let Some(reason) = unable() {
            eprintln!("skipping: {reason}; these tests need root and iproute2");
            return None;
        }
        // One /24 per bridge that no address on the host is in yet; the lock keeps this
        // process's tests from taking the same one.
        static CHOOSING: Mutex<()> = Mutex::new(());
        let _choosing = CHOOSING.lock().unwrap();
        let taken = ip(&["-4", "-o", "address", "show"]).expect("ip address show");
        let first = (std::process::id() % 250) as u8;
        let net = (0..250u8)
            .map(|k| (first.wrapping_add(k) % 250) + 1)
            .find(|n| !taken.contains(&format!("10.123.{n}.")))
            .expect("a free /24 in 10.123.0.0/16");
        let name = format!("mtb{}{tag}", std::process::id());
        let _ = ip(&["link", "delete", "dev", &name]);
        ip(&["link", "add", "name", &name, "type", "bridge"]).expect("make the bridge");
        let bridge = Self { name, net };
        ip(&["address", "add", &format!("10.123.{net}.1/24"), "dev", &bridge.name]).expect("address the bridge");
        ip(&["link", "set", "dev", &bridge.name, "up"]).expect("bring the bridge up");
        Some(bridge)
    }

    fn address(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 123, self.net, host)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = ip(&["link", "delete", "dev", &self.name]);
    }
}

fn random_id() -> InstanceId {
    InstanceId::from_u64(rand::random())
}

/// A launch of the example with one interface at `10.123.N.host/24` on `bridge`, and the boot
/// arguments that tell the app its address.
fn networked(target: Target, dir: &Path, bridge: &Bridge, host: u8, bridge_name: &str) -> Launch {
    let id = random_id();
    let address = bridge.address(host);
    let gateway = bridge.address(1);
    let args = [format!("--ipv4={address}/24"), format!("--ipv4-gateway={gateway}")];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut launch = support::launch(target, id, dir, &args, Accelerator::Tcg);
    launch.spec.interfaces = vec![Interface {
        network: "service".into(),
        address: format!("{address}/24").parse().unwrap(),
        gateway: Some(gateway),
        mac: MacAddress::for_instance(id, 0),
    }];
    launch.bridges = vec![bridge_name.to_owned()];
    launch
}

fn unix() -> Arc<dyn Backend> {
    Arc::new(UnixBackend::new(launcher()))
}

fn js() -> Arc<dyn Backend> {
    Arc::new(JsBackend::new(launcher()))
}

fn kvm() -> Arc<dyn Backend> {
    Arc::new(KvmBackend::new(launcher()))
}

/// Waits until the instance serves the image's index.html over HTTP at `address`.
async fn assert_serves_http(backend: &dyn Backend, launch: &Launch, address: Ipv4Addr) {
    console_until(backend, launch, &format!("hello: http: serving on {address}:80")).await;
    let index =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello/data/index.html"))
            .expect("the example's index.html");
    let deadline = Instant::now() + REACH_DEADLINE;
    let mut last = String::new();
    while Instant::now() < deadline {
        match tokio::task::spawn_blocking(move || http_get(SocketAddr::from((address, 80)))).await.unwrap() {
            Ok(response) if response.starts_with("HTTP/1.0 200") && response.ends_with(&index) => return,
            Ok(response) => last = format!("the answer {response:?}"),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{} instance never served / at {address}; last: {last}", launch.spec.target);
}

/// `GET /` over HTTP/1.0; the whole response.
fn http_get(to: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// Nothing of the instance is left on the host.
fn assert_gone(launch: &Launch) {
    let id = launch.id;
    assert!(!netns_path(id).exists(), "namespace {} is left", netns_name(id));
    for name in [tap_name(id, 0), veth_name(id, 0)] {
        assert!(host_link(&name).is_none(), "link {name} is left");
    }
}

/// The host link `name` is on the bridge, marked as `id`'s; how `ip` describes it.
fn assert_joined(name: &str, bridge: &Bridge, id: InstanceId) -> Value {
    let link = host_link(name).unwrap_or_else(|| panic!("no link {name}"));
    assert_eq!(link["master"], bridge.name.as_str(), "{link}");
    assert_eq!(link["ifalias"], format!("mirari instance {id}"), "{link}");
    link
}

/// The payload's network namespace, as the inode of its `ns/net`.
fn netns_of_payload(launch: &Launch) -> u64 {
    let info = ShimPaths::new(&launch.dir).read_info().expect("shim.json");
    std::fs::metadata(format!("/proc/{}/ns/net", info.payload.pid)).unwrap().ino()
}

/// A process instance (unix or js) with an interface: its namespace, veth and HTTP, through a
/// re-adoption, and nothing left once destroyed. `make` constructs its backend.
async fn assert_runs_in_a_namespace_of_its_own(target: Target, make: fn() -> Arc<dyn Backend>, tag: char) {
    let Some(bridge) = Bridge::new(tag) else { return };
    let scratch = tempfile::tempdir().unwrap();
    let backend = make();
    let launch = networked(target, &scratch.path().join("u"), &bridge, 2, &bridge.name);
    let id = launch.id;
    let handle = backend.start(&launch).await.expect("start");

    // The namespace, its eth0 with the instance's MAC and address, the host end on the bridge.
    let ns = netns_name(id);
    let eth0 = ip_json(&["-n", &ns, "address", "show", "dev", "eth0"]).expect("eth0 in the namespace");
    assert_eq!(eth0[0]["address"], launch.spec.interfaces[0].mac.to_string());
    assert_eq!(eth0[0]["addr_info"][0]["local"], bridge.address(2).to_string());
    assert_eq!(eth0[0]["addr_info"][0]["prefixlen"], 24);
    let route = ip(&["-n", &ns, "route", "show", "default"]).unwrap();
    assert!(route.contains(&format!("via {}", bridge.address(1))), "{route}");
    assert_joined(&veth_name(id, 0), &bridge, id);
    assert_eq!(netns_of_payload(&launch), std::fs::metadata(netns_path(id)).unwrap().ino());
    assert_serves_http(backend.as_ref(), &launch, bridge.address(2)).await;

    // Re-adopted by a restarted agent, it still runs in its namespace and still serves.
    let fresh = make();
    assert!(matches!(fresh.recover(&launch, None).await.expect("recover"), Recovered::Running(_)));
    assert_serves_http(fresh.as_ref(), &launch, bridge.address(2)).await;

    assert_eq!(fresh.stop(&launch, &handle, Duration::from_secs(30)).await.expect("stop"), StopOutcome::Graceful);
    fresh.destroy(&launch).await.expect("destroy");
    assert_gone(&launch);
    fresh.destroy(&launch).await.expect("a second destroy finds nothing to do");
}

#[tokio::test]
async fn a_unix_instance_runs_in_a_namespace_of_its_own() {
    assert_runs_in_a_namespace_of_its_own(Target::Unix, unix, 'u').await;
}

#[tokio::test]
async fn a_js_instance_runs_in_a_namespace_of_its_own() {
    assert_runs_in_a_namespace_of_its_own(Target::Js, js, 'j').await;
}

#[tokio::test]
async fn a_kvm_instance_gets_a_tap_on_its_bridge() {
    let Some(bridge) = Bridge::new('k') else { return };
    let scratch = tempfile::tempdir().unwrap();
    let backend = kvm();
    let launch = networked(Target::Kvm, &scratch.path().join("k"), &bridge, 3, &bridge.name);
    let id = launch.id;
    let handle = backend.start(&launch).await.expect("start");

    let tap = assert_joined(&tap_name(id, 0), &bridge, id);
    // QEMU holds it open (the tap has carrier), with the instance's MAC on its NIC.
    assert!(tap["flags"].as_array().unwrap().iter().any(|f| f == "LOWER_UP"), "{tap}");
    let info = ShimPaths::new(&launch.dir).read_info().expect("shim.json");
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", info.payload.pid)).unwrap().replace('\0', " ");
    assert!(cmdline.contains(&format!("ifname={},script=no", tap_name(id, 0))), "{cmdline}");
    assert!(cmdline.contains(&format!("mac={}", launch.spec.interfaces[0].mac)), "{cmdline}");
    assert_serves_http(backend.as_ref(), &launch, bridge.address(3)).await;

    let fresh = kvm();
    assert!(matches!(fresh.recover(&launch, None).await.expect("recover"), Recovered::Running(_)));
    assert!(host_link(&tap_name(id, 0)).is_some(), "the tap outlives a re-adoption");
    fresh.stop(&launch, &handle, Duration::from_secs(30)).await.expect("stop");
    fresh.destroy(&launch).await.expect("destroy");
    assert_gone(&launch);
}

#[tokio::test]
async fn a_failed_start_leaves_nothing_and_takes_no_other_instances_links() {
    let Some(bridge) = Bridge::new('f') else { return };
    let scratch = tempfile::tempdir().unwrap();
    let missing = format!("mtx{}", std::process::id());
    for (backend, target) in [(unix(), Target::Unix), (kvm(), Target::Kvm)] {
        // A network this host does not carry.
        let launch = networked(target, &scratch.path().join(format!("{target}-a")), &bridge, 4, "");
        let error = backend.start(&launch).await.unwrap_err().to_string();
        assert!(
            error.contains("network service is not carried by this host (start the agent with --network"),
            "{error}"
        );
        assert_gone(&launch);

        // A bridge that is not there: the step that joins it fails, and what came before goes.
        let launch = networked(target, &scratch.path().join(format!("{target}-b")), &bridge, 4, &missing);
        let error = backend.start(&launch).await.unwrap_err().to_string();
        assert!(error.contains(&format!("master {missing} up` failed: ")), "{error}");
        assert_gone(&launch);

        // The network was made, then the payload did not start.
        let mut launch = networked(target, &scratch.path().join(format!("{target}-c")), &bridge, 4, &bridge.name);
        launch.artifact = scratch.path().join("no-such-artifact");
        backend.start(&launch).await.expect_err("a start without its artifact");
        assert_gone(&launch);
    }

    // A link by the same name, marked for another instance whose ID agrees in 48 bits.
    let backend = kvm();
    let launch = networked(Target::Kvm, &scratch.path().join("twin"), &bridge, 5, &bridge.name);
    let twin = InstanceId::from_u64(launch.id.as_u64() ^ (0xff << 56));
    let name = tap_name(launch.id, 0);
    ip(&["tuntap", "add", "dev", &name, "mode", "tap"]).unwrap();
    ip(&["link", "set", "dev", &name, "alias", &format!("mirari instance {twin}")]).unwrap();
    let error = backend.start(&launch).await.unwrap_err().to_string();
    assert!(error.contains(&format!("{name} belongs to instance {twin}")), "{error}");
    backend.destroy(&launch).await.expect("destroy");
    assert_eq!(host_link(&name).expect("the twin's tap is untouched")["ifalias"], format!("mirari instance {twin}"));
    ip(&["link", "delete", "dev", &name]).unwrap();
}

#[tokio::test]
async fn the_sweep_removes_what_ended_instances_left_and_nothing_else() {
    let Some(bridge) = Bridge::new('s') else { return };
    let scratch = tempfile::tempdir().unwrap();
    let (unix, kvm) = (unix(), kvm());
    // Running, and live: kept.
    let running = networked(Target::Unix, &scratch.path().join("running"), &bridge, 6, &bridge.name);
    let running_handle = unix.start(&running).await.expect("start");
    // Ended without being destroyed (the agent died before it could): swept.
    let ended_unix = networked(Target::Unix, &scratch.path().join("ended-unix"), &bridge, 7, &bridge.name);
    let handle = unix.start(&ended_unix).await.expect("start");
    unix.stop(&ended_unix, &handle, Duration::from_secs(30)).await.expect("stop");
    let ended_kvm = networked(Target::Kvm, &scratch.path().join("ended-kvm"), &bridge, 8, &bridge.name);
    let handle = kvm.start(&ended_kvm).await.expect("start");
    kvm.stop(&ended_kvm, &handle, Duration::from_secs(30)).await.expect("stop");
    // A tap a start left unmarked when it died: swept. Another agent's: kept.
    let (unmarked, foreign) = (random_id(), random_id());
    ip(&["tuntap", "add", "dev", &tap_name(unmarked, 0), "mode", "tap"]).unwrap();
    ip(&["tuntap", "add", "dev", &tap_name(foreign, 0), "mode", "tap"]).unwrap();
    ip(&["link", "set", "dev", &tap_name(foreign, 0), "alias", &format!("mirari instance {foreign}")]).unwrap();

    let owned = BTreeSet::from([running.id, ended_unix.id, ended_kvm.id, unmarked]);
    let live = BTreeSet::from([running.id]);
    let mut removed = links::sweep_links(&owned, &live).await.expect("sweep");
    removed.sort();
    let mut expected = vec![
        format!("network namespace {}", netns_name(ended_unix.id)),
        format!("link {}", tap_name(ended_kvm.id, 0)),
        format!("link {}", tap_name(unmarked, 0)),
    ];
    expected.sort();
    assert_eq!(removed, expected);
    assert_gone(&ended_unix);
    assert_gone(&ended_kvm);
    assert!(netns_path(running.id).exists() && host_link(&veth_name(running.id, 0)).is_some());
    assert!(host_link(&tap_name(foreign, 0)).is_some(), "another agent's tap is kept");
    ip(&["link", "delete", "dev", &tap_name(foreign, 0)]).unwrap();

    unix.stop(&running, &running_handle, Duration::from_secs(30)).await.expect("stop");
    unix.destroy(&running).await.expect("destroy");
    assert_gone(&running);
}
