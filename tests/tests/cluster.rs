//! The cluster end to end: 3 coordinators and 3 agents, each on its own host (a network
//! namespace with its own address; these tests need root). Deploy, scale, lose a host,
//! partition a host, and lose the coordinator leader mid-deploy.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Instant;

use mirari_tests::cluster::{Cluster, DEADLINE};
use mirari_tests::{eventually, stderr, stdout};

fn cluster() -> Cluster {
    let cluster = Cluster::start(3, 3);
    assert!(cluster.network.isolated(), "the cluster tests need network namespaces: run them as root");
    cluster
}

fn deploy(cluster: &Cluster, count: u32) {
    let out =
        cluster.mirari(&["cluster", "deploy", "-t", "unix", "--count", &count.to_string(), "--placement", "binpack"]);
    assert!(out.status.success(), "deploy failed: {}", stderr(&out));
}

fn scale(cluster: &Cluster, count: u32) {
    let out = cluster.mirari(&["cluster", "scale", "hello", &count.to_string()]);
    assert!(out.status.success(), "scale failed: {}", stderr(&out));
}

fn edit_config(cluster: &Cluster, from: &str, to: &str) {
    let path = cluster.app_dir.join("mirari.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "mirari.toml has no {from:?}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

fn spread(per_host: &BTreeMap<String, usize>) -> Vec<usize> {
    per_host.values().copied().collect()
}

#[test]
fn deploys_scales_and_replaces_a_lost_host() {
    let mut cluster = cluster();
    deploy(&cluster, 6);
    assert_eq!(spread(&cluster.wait_running("hello", 6)), [2, 2, 2]);

    // Every instance prints through the coordinator's console proxy.
    let status = cluster.status().unwrap();
    let id = status["instances"][0]["id"].as_str().unwrap().to_owned();
    let console = eventually(DEADLINE, "a heartbeat on the proxied console", || {
        let text = String::from_utf8_lossy(&cluster.mirari(&["console", &id]).stdout).into_owned();
        if text.contains("hello: heartbeat 1") { Ok(text) } else { Err(text) }
    });
    let cidr = status["instances"][0]["addresses"][0].as_str().unwrap();
    assert!(console.contains(&format!("hello: boot args: --ipv4={cidr} ")), "{console}");
    let logs = String::from_utf8_lossy(&cluster.mirari(&["logs", &id]).stdout).into_owned();
    assert!(logs.contains("assigned to this host by the cluster"), "{logs}");

    scale(&cluster, 9);
    assert_eq!(spread(&cluster.wait_running("hello", 9)), [3, 3, 3]);
    scale(&cluster, 2);
    assert_eq!(cluster.wait_running("hello", 2).values().sum::<usize>(), 2);
    scale(&cluster, 6);
    cluster.wait_running("hello", 6);

    // An agent restarts (kill -9): it re-adopts its instances; nothing is lost or doubled.
    let before = cluster.agents[1].live_instances();
    let applied = cluster.agents[1].assignments_applied();
    cluster.agents[1].kill_agent();
    cluster.agents[1].restart();
    cluster.agents[1].wait_assignments_after(applied);
    assert_eq!(spread(&cluster.wait_running("hello", 6)), [2, 2, 2]);
    let mut after = cluster.agents[1].live_instances();
    after.sort();
    let mut before = before;
    before.sort();
    assert_eq!(after, before, "the restarted agent runs the same instances");

    // A host dies with all its instances: the others take over its slots.
    let lost = cluster.agents[0].name.clone();
    cluster.agents[0].kill_host();
    let per_host = cluster.wait_running_avoiding("hello", 6, Some(&lost));
    assert!(!per_host.contains_key(&lost), "{per_host:?}");
    assert_eq!(spread(&per_host), [3, 3]);
    let status = cluster.status().unwrap();
    let host = status["hosts"].as_array().unwrap().iter().find(|h| h["id"] == lost.as_str()).unwrap();
    assert_eq!(host["status"], "down");
}

#[test]
fn a_partitioned_host_is_fenced_before_its_replacements_start_and_no_slot_runs_twice() {
    let mut cluster = cluster();
    // Instances that ignore a graceful stop, so fencing must wait out its whole stop timeout.
    edit_config(&cluster, r#""greeting=hello-from-mirari""#, r#""greeting=hello-from-mirari", "ignore-stop""#);
    deploy(&cluster, 6);
    cluster.wait_running("hello", 6);
    let slots = cluster.slots();
    let coordinators: Vec<_> = cluster.coordinators.iter().map(|c| c.host.clone()).collect();
    let victim = &cluster.agents[0];
    let fenced = victim.live_instances();
    assert_eq!(fenced.len(), 2);

    let sampler = cluster.sampler();
    let cut = Instant::now();
    for coordinator in &coordinators {
        victim.host.cut_from(coordinator);
    }
    let per_host = cluster.wait_running_avoiding("hello", 6, Some(&victim.name));
    assert!(!per_host.contains_key(&victim.name), "{per_host:?}");
    let replaced = cluster.slots();
    let timeline = sampler.finish();

    // Order, from the processes themselves: every fenced instance was gone before the
    // replacement of its slot was first seen.
    for id in &fenced {
        let slot = slots[id];
        let gone = timeline.last_seen(id).expect("seen before the cut");
        let (replacement, _) = replaced.iter().find(|(other, s)| **s == slot && *other != id).expect("replaced");
        let started = timeline.first_seen(replacement).expect("the replacement ran");
        assert!(gone < started, "slot {slot}: {id} was last seen after its replacement {replacement} started");
        eprintln!(
            "slot {slot}: fenced instance last seen {:?} after the cut, replacement first seen {:?} after it",
            gone - cut,
            started - cut
        );
    }
    let all_slots: BTreeMap<String, u64> = slots.into_iter().chain(replaced).collect();
    let doubles = timeline.running_twice(&all_slots);
    assert!(doubles.is_empty(), "slots ran twice: {doubles:?}");
    assert!(victim.log().contains("lease lost: fenced"), "{}", victim.log());

    let applied = victim.assignments_applied();
    victim.host.heal();
    cluster.wait_hosts_up(3);
    // After healing: every slot runs exactly once, and the fenced instances stay stopped.
    victim.wait_assignments_after(applied);
    let per_host = cluster.wait_running("hello", 6);
    assert_eq!(per_host.values().sum::<usize>(), 6);
    let live: Vec<String> = cluster.agents.iter_mut().flat_map(|a| a.live_instances()).collect();
    let unique: BTreeSet<&String> = live.iter().collect();
    assert_eq!(live.len(), 6, "exactly six instance processes in the cluster: {live:?}");
    assert_eq!(unique.len(), 6);
    assert!(fenced.iter().all(|id| !live.contains(id)), "a fenced instance came back: {fenced:?} in {live:?}");
    let status = cluster.status().unwrap();
    let running_slots: BTreeSet<u64> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["desired"] == "running")
        .map(|i| i["slot"].as_u64().unwrap())
        .collect();
    assert_eq!(running_slots, (0..6).collect());
}

#[test]
fn a_frozen_agents_instances_are_fenced_by_their_shims_before_they_are_replaced() {
    let cluster = cluster();
    deploy(&cluster, 6);
    cluster.wait_running("hello", 6);
    let slots = cluster.slots();
    let victim = &cluster.agents[1];
    let fenced = victim.live_instances();
    assert_eq!(fenced.len(), 2);
    let sampler = cluster.sampler();
    // The agent can neither renew its lease nor stop anything: only its shims can fence.
    victim.freeze(true);
    cluster.wait_running_avoiding("hello", 6, Some(&victim.name));
    let replaced = cluster.slots();
    let timeline = sampler.finish();
    for id in &fenced {
        let gone = timeline.last_seen(id).expect("seen before the freeze");
        let (replacement, _) =
            replaced.iter().find(|(other, slot)| **slot == slots[id] && *other != id).expect("replaced");
        let started = timeline.first_seen(replacement).expect("the replacement ran");
        assert!(gone < started, "slot {}: {id} outlived the start of its replacement {replacement}", slots[id]);
    }
    let all_slots: BTreeMap<String, u64> = slots.into_iter().chain(replaced).collect();
    let doubles = timeline.running_twice(&all_slots);
    assert!(doubles.is_empty(), "slots ran twice: {doubles:?}");
    // Thawed, the agent finds its instances fenced and the host rejoins; every slot runs once.
    victim.freeze(false);
    cluster.wait_hosts_up(3);
    cluster.wait_running("hello", 6);
    let live: Vec<String> = cluster.agents.iter().flat_map(|a| a.live_instances()).collect();
    assert_eq!(live.len(), 6, "{live:?}");
    let consoles: String = fenced.iter().map(|id| stdout(&cluster.mirari(&["console", id]))).collect();
    assert!(consoles.contains("fenced: the host's cluster lease ran out"), "{consoles}");
}

#[test]
fn cutting_off_the_leaders_host_blocks_no_write_and_disturbs_no_instance() {
    let mut cluster = cluster();
    deploy(&cluster, 6);
    cluster.wait_running("hello", 6);
    let leader = cluster.leader().expect("a leader");
    let sampler = cluster.sampler();
    let cut_off = cluster.coordinators[leader].host.clone();
    let others: Vec<_> = cluster
        .coordinators
        .iter()
        .map(|c| c.host.clone())
        .chain(cluster.agents.iter().map(|a| a.host.clone()))
        .filter(|h| h.ip != cut_off.ip)
        .collect();
    for host in &others {
        cut_off.cut_from(host);
    }
    // Writes go through the two coordinators left, as soon as they have elected a leader.
    let survivors: Vec<&str> = cluster
        .coordinators
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, c)| c.address.as_str())
        .collect();
    let started = Instant::now();
    let out = cluster
        .mirari_command(&["cluster", "scale", "hello", "7"])
        .env("MIRARI_ADDR", survivors.join(","))
        .output()
        .unwrap();
    assert!(out.status.success(), "scale through the majority failed: {}", stderr(&out));
    eprintln!("scaled, and the new instance ran, {:?} after the leader's host was cut off", started.elapsed());
    cluster.coordinators[leader].kill();
    let per_host = cluster.wait_running("hello", 7);
    assert_eq!(per_host.values().sum::<usize>(), 7);
    // No instance was fenced or restarted: every process seen before the cut lived on with
    // the same pid throughout.
    let timeline = sampler.finish();
    assert_eq!(timeline.samples.first().map(|s| s.live.len()), Some(6));
    let disturbed = timeline.disturbed();
    assert!(disturbed.is_empty(), "instances stopped or restarted by a coordinator's failure: {disturbed:?}");
    for agent in &cluster.agents {
        assert!(!agent.log().contains("lease lost"), "{} lost its lease:\n{}", agent.name, agent.log());
    }
}

#[test]
fn a_deploy_completes_when_the_coordinator_leader_dies_during_it() {
    let mut cluster = cluster();
    let deploying = cluster
        .mirari_command(&["cluster", "deploy", "-t", "unix", "--count", "6"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the deploy");
    // Kill the leader once the deploy has reached the coordinators (the build has started).
    let store = cluster.dir.path().join("store");
    eventually(DEADLINE, "the deploy to upload its sources", || {
        if store.join("sha256").read_dir().map(|d| d.count()).unwrap_or(0) >= 2 {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    let leader = cluster.leader().expect("a leader");
    cluster.coordinators[leader].kill();
    let output = deploying.wait_with_output().expect("the deploy ends");
    assert!(output.status.success(), "the deploy failed: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(cluster.wait_running("hello", 6).values().sum::<usize>(), 6);
}

#[test]
fn a_build_goes_to_a_host_that_has_what_it_needs() {
    let cluster = Cluster::start(1, 2);
    assert!(cluster.network.isolated(), "the cluster tests need network namespaces: run them as root");
    // Only agent-1 has the toolchain the app now requires.
    let tool = cluster.agents[1].tools_dir().join("mirari-e2e-toolchain");
    std::fs::write(&tool, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = cluster.app_dir.join("mirari.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(r#"commands = ["gcc", "make"]"#, r#"commands = ["gcc", "make", "mirari-e2e-toolchain"]"#),
    )
    .unwrap();
    let out = cluster.mirari(&["cluster", "deploy", "-t", "unix", "--count", "2"]);
    assert!(out.status.success(), "deploy failed: {}", stderr(&out));
    assert!(stderr(&out).contains("built unix on host agent-1"), "{}", stderr(&out));
    assert_eq!(cluster.wait_running("hello", 2).values().sum::<usize>(), 2);
}
