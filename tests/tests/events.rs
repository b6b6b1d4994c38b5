//! The cluster's event stream end to end: 3 coordinators and 2 agents, each on its own host. A
//! `mirari cluster events --follow` started before a deploy prints the deploy, the placements
//! and the instances starting, a host's loss and a scale as they happen, and keeps going when
//! the coordinator it reads from is killed; what it printed is exactly what a coordinator that
//! stayed up tells for the same span: nothing missed, nothing twice.

use std::process::Stdio;

use mirari_tests::cluster::{Cluster, DEADLINE};
use mirari_tests::{eventually, stderr, stdout};
use serde_json::Value;

/// The events a follower printed so far, one JSON object per line.
fn printed(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

/// Waits until the follower printed an event of `kind` whose text contains `needle`.
fn wait_printed(path: &std::path::Path, kind: &str, needle: &str) -> Vec<Value> {
    eventually(DEADLINE, &format!("a {kind} event about {needle:?}"), || {
        let events = printed(path);
        let seen = events.iter().any(|e| e["kind"] == kind && e["text"].as_str().is_some_and(|t| t.contains(needle)));
        if seen { Ok(events) } else { Err(format!("{} events so far", events.len())) }
    })
}

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["kind"] == kind).count()
}

fn position(event: &Value) -> (u64, u64) {
    (event["index"].as_u64().unwrap(), event["offset"].as_u64().unwrap())
}

#[test]
fn a_followed_event_stream_tells_a_deploy_a_host_loss_and_a_scale_and_resumes_on_another_coordinator() {
    let mut cluster = Cluster::start(3, 2);
    assert!(cluster.network.isolated(), "the cluster tests need network namespaces: run them as root");
    // The raft group's health as its leader tells it: every member's log matches, replicating.
    let leader = cluster.leader().expect("a leader");
    eventually(DEADLINE, "the leader's view of its members", || {
        let members = cluster.coordinators[leader].cli_json(&["cluster", "members"])?;
        let replicating = members.as_array().unwrap().iter().filter(|m| m["replication"] == "replicate").count();
        if replicating == 3 && members.as_array().unwrap().iter().all(|m| m["matched"].as_u64() > Some(0)) {
            Ok(())
        } else {
            Err(members.to_string())
        }
    });

    // Started from the newest event (the network's creation), before anything is deployed.
    let dir = cluster.dir.path().to_owned();
    let log = dir.join("events.jsonl");
    let mut follower = cluster
        .mirari_command(&["cluster", "events", "--follow", "--last", "1", "--output", "json"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("events.stderr")).unwrap())
        .spawn()
        .expect("start the follower");
    wait_printed(&log, "network.created", "service");

    let out = cluster.mirari(&["cluster", "deploy", "-t", "unix", "--count", "4", "--placement", "spread"]);
    assert!(out.status.success(), "deploy failed: {}", stderr(&out));
    cluster.wait_running("hello", 4);
    let events = wait_printed(&log, "deployment.deployed", "hello version 0.1.0 deployed ×4 by operator");
    let events = if count(&events, "instance.placed") >= 4 && count(&events, "instance.phase") >= 4 {
        events
    } else {
        eventually(DEADLINE, "4 placements and their instances running", || {
            let events = printed(&log);
            let running = events.iter().filter(|e| e["text"].as_str().is_some_and(|t| t.contains(": running"))).count();
            if count(&events, "instance.placed") == 4 && running == 4 { Ok(events) } else { Err(format!("{events:?}")) }
        })
    };
    for event in events.iter().filter(|e| e["kind"] == "instance.placed") {
        assert_eq!(event["app"], "hello");
        assert!(event["instance"].as_str().is_some_and(|id| id.len() == 16), "{event}");
    }

    // A host dies with its instances: it is declared down, they are lost, others replace them.
    let lost = cluster.agents[1].name.clone();
    cluster.agents[1].kill_host();
    let events = wait_printed(&log, "host.down", &format!("host {lost} is down"));
    let down_at = position(events.iter().find(|e| e["kind"] == "host.down").unwrap());
    eventually(DEADLINE, "the lost instances replaced on the other host", || {
        let events = printed(&log);
        let lost_phase =
            events.iter().filter(|e| e["kind"] == "instance.phase" && e["text"].as_str().unwrap().contains(": lost"));
        let replaced = events.iter().filter(|e| e["kind"] == "instance.placed" && position(e) > down_at).count();
        if lost_phase.count() == 2 && replaced == 2 { Ok(()) } else { Err(format!("{replaced} placed after the loss")) }
    });

    // The coordinator the follower reads from is killed; it goes on from another.
    cluster.coordinators[0].kill();
    let out = cluster.mirari(&["cluster", "scale", "hello", "1"]);
    assert!(out.status.success(), "scale failed: {}", stderr(&out));
    let events = wait_printed(&log, "deployment.scaled", "hello scaled to 1");
    eventually(DEADLINE, "3 instances asked to stop by the scale", || {
        let stopping =
            printed(&log).iter().filter(|e| e["text"].as_str().unwrap().contains("asked to stop: scaled down")).count();
        if stopping == 3 { Ok(()) } else { Err(format!("{stopping} so far")) }
    });
    let resumed = std::fs::read_to_string(dir.join("events.stderr")).unwrap();
    assert!(resumed.contains("resuming at index"), "the follower moved on: {resumed}");
    let _ = follower.kill();
    let _ = follower.wait();

    // In order, each once, and exactly what a coordinator that stayed up tells for that span.
    let followed = printed(&log);
    let positions: Vec<(u64, u64)> = followed.iter().map(position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in order, none twice: {positions:?}");
    let (first, last) = (positions[0], *positions.last().unwrap());
    let out = cluster
        .mirari_command(&["cluster", "events", "--from", &first.0.to_string(), "--output", "json"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "reading back failed: {}", stderr(&out));
    let told: Vec<Value> = stdout(&out)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|e| position(e) >= first && position(e) <= last)
        .collect();
    assert_eq!(followed, told, "the followed stream is the log's, event for event");
    assert!(events.iter().any(|e| e["kind"] == "instance.phase" && e["host"] == lost.as_str()));

    // Filters are the coordinator's: only the lost host's events.
    let out =
        cluster.mirari(&["cluster", "events", "--from", &first.0.to_string(), "--host", &lost, "--output", "json"]);
    let hosts: Vec<Value> =
        stdout(&out).lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["host"].clone()).collect();
    assert!(!hosts.is_empty() && hosts.iter().all(|h| h == lost.as_str()), "{hosts:?}");
}
