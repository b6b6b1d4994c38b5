//! The cluster end to end: 3 coordinators and 3 agents, each on its own host (a network
//! namespace with its own address; these tests need root). Deploy, scale, lose a host,
//! partition a host, and lose the coordinator leader mid-deploy; and what `cluster status`
//! shows of a deployment (one coordinator and two agents are enough for that).

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

/// The rows of an instance table: lines that start with an instance ID.
fn instance_rows(text: &str) -> Vec<&str> {
    let is_id = |word: &str| word.len() == 16 && word.bytes().all(|b| b.is_ascii_hexdigit());
    text.lines().filter(|line| line.split_whitespace().next().is_some_and(is_id)).collect()
}

#[test]
fn status_summarizes_and_lists_the_instances_it_is_asked_for() {
    let cluster = Cluster::start(1, 2);
    assert!(cluster.network.isolated(), "the cluster tests need network namespaces: run them as root");
    let out = cluster.mirari(&["cluster", "deploy", "-t", "unix", "--count", "4", "--placement", "spread"]);
    assert!(out.status.success(), "deploy failed: {}", stderr(&out));
    assert_eq!(spread(&cluster.wait_running("hello", 4)), [2, 2]);
    let text = |args: &[&str]| {
        let out = cluster.mirari(&[&["cluster", "status"], args].concat());
        assert!(out.status.success(), "cluster status {args:?} failed: {}", stderr(&out));
        stdout(&out)
    };

    // The summary counts the instances without listing them.
    let summary = text(&[]);
    assert!(instance_rows(&summary).is_empty(), "{summary}");
    for agent in &cluster.agents {
        let row = summary.lines().find(|l| l.starts_with(&format!("{} ", agent.name))).expect(&summary);
        assert!(row.contains(" 2/16 "), "{} holds 2 of its 16 slots: {summary}", agent.name);
    }
    let totals = summary.lines().skip_while(|l| !l.starts_with("INSTANCES")).take(2).collect::<Vec<_>>();
    assert_eq!(totals[0].split_whitespace().collect::<Vec<_>>(), ["INSTANCES", "RUNNING"], "{summary}");
    assert_eq!(totals[1].split_whitespace().collect::<Vec<_>>(), ["4", "4"], "{summary}");
    assert!(summary.contains("mirari cluster status --instances"), "{summary}");

    // The instances, narrowed by the coordinators.
    assert_eq!(instance_rows(&text(&["--instances"])).len(), 4);
    assert_eq!(instance_rows(&text(&["--instances", "--app", "hello"])).len(), 4);
    assert_eq!(instance_rows(&text(&["--app", "nope"])).len(), 0);
    assert_eq!(instance_rows(&text(&["--state", "running"])).len(), 4);
    assert_eq!(instance_rows(&text(&["--state", "failed"])).len(), 0);
    let host = cluster.agents[1].name.as_str();
    let on_host = text(&["--host", host]);
    assert_eq!(instance_rows(&on_host).len(), 2);
    assert!(instance_rows(&on_host).iter().all(|row| row.contains(&format!(" {host} "))), "{on_host}");
    let limited = text(&["--limit", "1"]);
    assert_eq!(instance_rows(&limited).len(), 1, "{limited}");
    assert!(limited.contains("3 more instance(s) match; --limit 4 lists them all"), "{limited}");
    let out = cluster.mirari(&["cluster", "status", "--state", "runing"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown state `runing`: expected one of pending, starting, running"),
        "{}",
        stderr(&out)
    );

    // JSON: the summary and every instance, or those of the filters.
    let json = |args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&text(&[args, &["--output", "json"]].concat())).unwrap()
    };
    let all = json(&[]);
    assert_eq!(all["instances"].as_array().unwrap().len(), 4);
    assert_eq!((all["matched"].as_u64(), all["phases"]["running"].as_u64()), (Some(4), Some(4)));
    assert_eq!(all["deployments"][0]["running"], 4);
    let held: Vec<u64> = all["hosts"].as_array().unwrap().iter().map(|h| h["instances"].as_u64().unwrap()).collect();
    assert_eq!(held, [2, 2]);
    let filtered = json(&["--host", host]);
    let instances = filtered["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2);
    assert!(instances.iter().all(|i| i["host"] == host), "{filtered}");
    assert_eq!(filtered["hosts"].as_array().unwrap().len(), 2, "the summary stays whole");
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
