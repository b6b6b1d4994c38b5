//! `mirari dev` end to end: a coordinator and an agent in one process, the bridge and the
//! `service` network it makes (as root), the example deployed on it and answering HTTP at its
//! address, and a cluster instance refused by the agent's own `stop`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mirari_tests::{bin, eventually, http_get, stderr, stdout};
use serde_json::Value;

const INDEX: &str = include_str!("../../examples/hello/data/index.html");

/// The `mirari dev` process (with its agent's state in `agent_dir`) and its bridge, all gone on
/// drop.
struct Dev {
    child: Child,
    bridge: String,
    agent_dir: std::path::PathBuf,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        mirari_tests::netns::remove_instance_links(&self.agent_dir, None);
        let _ = Command::new("ip").args(["link", "delete", &self.bridge]).status();
    }
}

/// Starts `mirari dev` in a scratch directory with its own bridge and subnet (and `extra`
/// flags), with the example copied beside it; returns it, the directory, the subnet's third
/// octet and a runner of `mirari` commands aimed at it.
fn start_dev(extra: &[&str]) -> (Dev, tempfile::TempDir, u32, impl Fn(&[&str]) -> std::process::Output + use<>) {
    assert!(mirari_tests::netns::is_root(), "mirari dev makes a bridge only as root: run this test as root");
    let dir = tempfile::Builder::new().prefix("mirari-dev-").tempdir().unwrap();
    let app = dir.path().join("hello");
    mirari_tests::copy_example(&app, true);
    let unique = std::process::id() ^ (extra.len() as u32 * 7919);
    let n = unique % 250 + 1;
    let (bridge, subnet) = (format!("mdt{:x}", unique % 0xffff), format!("10.125.{n}.0/24"));
    let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
    let child = Command::new(bin("mirari"))
        .args(["dev", "--dir"])
        .arg(dir.path().join("dev"))
        .args(["--bridge", &bridge, "--subnet", &subnet])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let dev = Dev { child, bridge, agent_dir: dir.path().join("dev/agent") };
    let (coordinator, agent, store) =
        (dir.path().join("dev/coordinator.sock"), dir.path().join("dev/agent.sock"), dir.path().join("store"));
    let mirari = move |args: &[&str]| {
        Command::new(bin("mirari"))
            .args(args)
            .current_dir(&app)
            .env("MIRARI_ADDR", format!("unix:{}", coordinator.display()))
            .env("MIRARI_AGENT", format!("unix:{}", agent.display()))
            .env("MIRARI_STORE", &store)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    eventually(Duration::from_secs(60), "the dev network to be declared", || {
        let out = mirari(&["cluster", "network", "--output", "json"]);
        let text = stdout(&out);
        if text.contains(&subnet) { Ok(()) } else { Err(format!("{text}{}", stderr(&out))) }
    });
    (dev, dir, n, mirari)
}

#[test]
fn dev_makes_a_network_and_its_instances_answer_at_their_addresses() {
    let (_dev, _dir, n, mirari) = start_dev(&[]);
    let out = mirari(&["cluster", "deploy", "-t", "unix", "--count", "2"]);
    assert!(out.status.success(), "deploy failed: {}", stderr(&out));
    assert!(stderr(&out).contains("built unix on host"), "{}", stderr(&out));
    // Deployed again as it is: the build is reused and nothing rolls out; --rebuild builds.
    let again = mirari(&["cluster", "deploy", "-t", "unix", "--count", "2"]);
    assert!(again.status.success(), "deploy failed: {}", stderr(&again));
    assert!(stderr(&again).contains("reused unix built earlier on host"), "{}", stderr(&again));
    assert!(stderr(&again).contains("is unchanged"), "{}", stderr(&again));
    let rebuilt = mirari(&["cluster", "deploy", "-t", "unix", "--count", "2", "--rebuild"]);
    assert!(stderr(&rebuilt).contains("built unix on host"), "{}", stderr(&rebuilt));
    let status: Value = serde_json::from_slice(&mirari(&["cluster", "status", "--output", "json"]).stdout).unwrap();
    let instances = status["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2);
    for instance in instances {
        assert_eq!(instance["health"], "healthy", "{instance}");
        let address = instance["addresses"][0].as_str().unwrap().split('/').next().unwrap().to_owned();
        assert!(address.starts_with(&format!("10.125.{n}.")), "{address}");
        assert_eq!(http_get(&address, "/").unwrap(), (200, INDEX.to_owned()), "GET http://{address}/");
    }

    // The agent's own stop is for local instances: a cluster one would only be started again.
    let id = instances[0]["id"].as_str().unwrap();
    let out = mirari(&["stop", id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&format!("instance {id} belongs to the cluster")), "{}", stderr(&out));
    assert!(stderr(&out).contains("mirari cluster stop hello"), "{}", stderr(&out));
    let out = mirari(&["cluster", "stop", "hello"]);
    assert!(out.status.success(), "cluster stop failed: {}", stderr(&out));
}

/// The web console in a real browser (Debian's chromium driven by playwright-core,
/// `tests/browser/console.mjs`): the deployed instances listed as running, the deploy in the
/// event stream, and a heartbeat arriving live on an instance's console. The screenshot is
/// kept in `target/test-artifacts/web-console.png`.
#[test]
fn the_web_console_shows_the_instances_and_a_live_console_in_a_browser() {
    let browser = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        browser.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci --prefix tests/browser` (and apt-get install chromium)"
    );
    let port = mirari_tests::coordinators::free_port();
    let listen = format!("127.0.0.1:{port}");
    let (_dev, _dir, _, mirari) = start_dev(&["--http-listen", &listen]);
    let out = mirari(&["cluster", "deploy", "-t", "unix", "--count", "2"]);
    assert!(out.status.success(), "deploy failed: {}", stderr(&out));
    let status: Value = serde_json::from_slice(&mirari(&["cluster", "status", "--output", "json"]).stdout).unwrap();
    let mut ids: Vec<String> =
        status["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();

    // Only loopback names: a page elsewhere cannot reach it by a name that resolves here.
    let overview = mirari_tests::http_request(&listen, "/api/overview").unwrap();
    assert_eq!(overview.status, 200, "{overview:?}");
    let refused = http_with_host(&listen, "/api/overview", "rebound.example:80");
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");

    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("web-console.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = Command::new("node")
        .arg(browser.join("console.mjs"))
        .args([&format!("http://{listen}/"), "hello", "2"])
        .arg(&screenshot)
        .output()
        .expect("run node");
    assert!(out.status.success(), "the browser test failed: {}{}", stdout(&out), stderr(&out));
    let seen: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let mut listed: Vec<String> =
        seen["instances"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_owned()).collect();
    listed.sort();
    assert_eq!(listed, ids, "the page lists the running instances: {seen}");
    assert_eq!(seen["hosts"].as_array().unwrap().len(), 1, "{seen}");
    assert!(seen["raft"].as_str().unwrap().contains("leader"), "{seen}");
    // The leader's view of its members' logs: the only one here matches it, replicating.
    let members = seen["members"].as_array().unwrap();
    assert!(members.len() == 1 && members[0].as_str().unwrap().contains("(replicate)"), "{members:?}");
    let events: Vec<&str> = seen["events"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(events.contains(&"deployment.deployed") && events.contains(&"instance.placed"), "{events:?}");
    assert!(ids.contains(&seen["console_instance"].as_str().unwrap().to_owned()), "{seen}");
    assert!(seen["later"].as_u64() > seen["first"].as_u64(), "a heartbeat arrived live: {seen}");
    assert_eq!(seen["problems"], serde_json::json!([]), "no errors in the page");
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000, "a screenshot was taken");
}

/// A GET with a chosen `Host` header; the raw answer.
fn http_with_host(address: &str, path: &str, host: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}
