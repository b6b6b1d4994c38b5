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

#[test]
fn dev_makes_a_network_and_its_instances_answer_at_their_addresses() {
    assert!(mirari_tests::netns::is_root(), "mirari dev makes a bridge only as root: run this test as root");
    let dir = tempfile::Builder::new().prefix("mirari-dev-").tempdir().unwrap();
    let app = dir.path().join("hello");
    mirari_tests::copy_example(&app, true);
    let n = std::process::id() % 250 + 1;
    let (bridge, subnet) = (format!("mdt{:x}", std::process::id() % 0xffff), format!("10.125.{n}.0/24"));
    let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
    let child = Command::new(bin("mirari"))
        .args(["dev", "--dir"])
        .arg(dir.path().join("dev"))
        .args(["--bridge", &bridge, "--subnet", &subnet])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _dev = Dev { child, bridge, agent_dir: dir.path().join("dev/agent") };
    let mirari = |args: &[&str]| {
        Command::new(bin("mirari"))
            .args(args)
            .current_dir(&app)
            .env("MIRARI_ADDR", format!("unix:{}", dir.path().join("dev/coordinator.sock").display()))
            .env("MIRARI_AGENT", format!("unix:{}", dir.path().join("dev/agent.sock").display()))
            .env("MIRARI_STORE", dir.path().join("store"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    eventually(Duration::from_secs(60), "the dev network to be declared", || {
        let out = mirari(&["cluster", "network", "--output", "json"]);
        let text = stdout(&out);
        if text.contains(&subnet) { Ok(()) } else { Err(format!("{text}{}", stderr(&out))) }
    });
    let out = mirari(&["cluster", "deploy", "-t", "unix", "--count", "2"]);
    assert!(out.status.success(), "deploy failed: {}", stderr(&out));
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
