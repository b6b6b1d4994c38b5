//! Instances on the network, end to end: 3 coordinators and 3 agent hosts (network namespaces;
//! these tests need root), each host's bridge `br0` on one L2 segment with this machine, which
//! plays the client. The example serves its files over HTTP at the address the registry gave
//! it; the agents' health checks probe it.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use mirari_tests::cluster::{Cluster, DEADLINE};
use mirari_tests::{World, eventually, http_get, resolve, stderr, stdout};
use serde_json::Value;

const INDEX: &str = include_str!("../../examples/hello/data/index.html");
const MOTD: &str = include_str!("../../examples/hello/data/motd.txt");

fn cluster() -> Cluster {
    let cluster = Cluster::start(3, 3);
    assert!(cluster.network.isolated(), "the networking tests need network namespaces: run them as root");
    cluster
}

fn edit_config(cluster: &Cluster, from: &str, to: &str) {
    let path = cluster.app_dir.join("mirari.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "mirari.toml has no {from:?}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

/// The instances of `app` the status lists, by ID.
fn instances(status: &Value, app: &str) -> BTreeMap<String, Value> {
    let listed = status["instances"].as_array().into_iter().flatten().filter(|i| i["app"] == app);
    listed.map(|i| (i["id"].as_str().unwrap().to_owned(), i.clone())).collect()
}

/// The address (without prefix) of an instance's only interface.
fn address(instance: &Value) -> String {
    let addresses = instance["addresses"].as_array().expect("addresses");
    assert_eq!(addresses.len(), 1, "{instance}");
    addresses[0].as_str().unwrap().split('/').next().unwrap().to_owned()
}

/// Waits until `count` instances of `app` run and are healthy; returns them by ID.
fn wait_healthy(cluster: &Cluster, app: &str, count: usize) -> BTreeMap<String, Value> {
    eventually(DEADLINE, &format!("{count} healthy instances of {app}"), || {
        let status = cluster.status()?;
        let listed = instances(&status, app);
        let healthy = listed.values().filter(|i| i["desired"] == "running" && i["health"] == "healthy").count();
        if healthy == count && listed.len() == count { Ok(listed) } else { Err(format!("{listed:?}")) }
    })
}

/// Every address answers `GET /` with the example's index.html.
fn all_answer(addresses: &BTreeSet<String>) {
    for address in addresses {
        let (status, body) = eventually(DEADLINE, &format!("http://{address}/ to answer"), || http_get(address, "/"));
        assert_eq!((status, body.as_str()), (200, INDEX), "GET http://{address}/");
    }
}

/// The links a host has beyond its own (lo, its uplink, its bridge): instances' taps and veths.
fn instance_links(cluster: &Cluster, host: usize) -> Vec<String> {
    let netns = cluster.agents[host].host.netns.clone().expect("isolated");
    let out = Command::new("ip").args(["-n", &netns, "-o", "link", "show"]).output().expect("ip link");
    stdout(&out)
        .lines()
        .filter_map(|line| line.split(':').nth(1).map(|name| name.trim().split('@').next().unwrap_or("").to_owned()))
        .filter(|name| !["lo", "eth0", "br0"].contains(&name.as_str()))
        .collect()
}

/// Network namespaces of instances (`mirari-<id>`), from any host.
fn instance_namespaces() -> BTreeSet<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns");
    stdout(&out)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| name.strip_prefix("mirari-").map(str::to_owned))
        .collect()
}

#[test]
fn instances_get_addresses_answer_http_and_keep_them_across_agent_restarts() {
    let mut cluster = cluster();
    let out = cluster.mirari(&["cluster", "deploy", "-t", "unix", "--count", "6", "--placement", "spread"]);
    assert!(out.status.success(), "deploy failed: {}", stderr(&out));
    assert!(stderr(&out).contains("healthy 6/6"), "deploy waits for healthy: {}", stderr(&out));
    let unix = wait_healthy(&cluster, "hello", 6);
    let addresses: BTreeSet<String> = unix.values().map(address).collect();
    assert_eq!(addresses.len(), 6, "pairwise distinct: {addresses:?}");
    all_answer(&addresses);
    let first = addresses.first().unwrap();
    assert_eq!(http_get(first, "/motd.txt").unwrap(), (200, MOTD.to_owned()));
    // Every coordinator answers DNS for the app with its healthy instances' addresses.
    for coordinator in &cluster.coordinators {
        let resolved: BTreeSet<String> = eventually(DEADLINE, "hello.service.mirari to resolve", || {
            let found = resolve(&coordinator.dns_address, "hello.service.mirari.")?;
            if found.len() == 6 {
                Ok(found.iter().map(ToString::to_string).collect())
            } else {
                Err(format!("{found:?}"))
            }
        });
        assert_eq!(resolved, addresses, "from coordinator {}", coordinator.id);
    }
    let unknown = resolve(&cluster.coordinators[0].dns_address, "nope.service.mirari.").unwrap_err();
    assert!(unknown.ends_with("Non-Existent Domain"), "{unknown}");
    assert_eq!(http_get(first, "/nothing-here").unwrap().0, 404);
    // The boot arguments were filled in with each instance's own address.
    let (id, instance) = unix.first_key_value().unwrap();
    let console = eventually(DEADLINE, "the boot args on the console", || {
        let text = stdout(&cluster.mirari(&["console", id]));
        if text.contains("hello: http: serving") { Ok(text) } else { Err(text) }
    });
    let cidr = instance["addresses"][0].as_str().unwrap();
    assert!(console.contains(&format!("hello: boot args: --ipv4={cidr} --ipv4-gateway=")), "{console}");
    // Each unix instance has a namespace of its own and one veth on its host's bridge.
    let namespaces = instance_namespaces();
    assert!(unix.keys().all(|id| namespaces.contains(id)), "{namespaces:?}");
    let links: usize = (0..3).map(|h| instance_links(&cluster, h).len()).sum();
    assert_eq!(links, 6, "one link per instance");

    // The same example as kvm guests, beside them (another app name).
    edit_config(&cluster, "name = \"hello\"", "name = \"hello-vm\"");
    edit_config(&cluster, "accelerator = \"auto\"", "accelerator = \"tcg\"");
    let out = cluster.mirari(&["cluster", "deploy", "-t", "kvm", "--count", "3", "--placement", "spread"]);
    assert!(out.status.success(), "kvm deploy failed: {}", stderr(&out));
    let vms = wait_healthy(&cluster, "hello-vm", 3);
    let vm_addresses: BTreeSet<String> = vms.values().map(address).collect();
    assert_eq!(vm_addresses.len(), 3);
    assert!(vm_addresses.is_disjoint(&addresses), "{vm_addresses:?} vs {addresses:?}");
    all_answer(&vm_addresses);
    let links: usize = (0..3).map(|h| instance_links(&cluster, h).len()).sum();
    assert_eq!(links, 9, "a tap per guest beside the veths");

    // An agent is killed and restarted: its instances keep their addresses and still answer;
    // no interface or namespace is duplicated.
    let host = 1;
    let links_before = instance_links(&cluster, host);
    let applied = cluster.agents[host].assignments_applied();
    cluster.agents[host].kill_agent();
    cluster.agents[host].restart();
    cluster.agents[host].wait_assignments_after(applied);
    let unix_after = wait_healthy(&cluster, "hello", 6);
    assert_eq!(unix_after.values().map(address).collect::<BTreeSet<_>>(), addresses);
    assert_eq!(wait_healthy(&cluster, "hello-vm", 3).values().map(address).collect::<BTreeSet<_>>(), vm_addresses);
    all_answer(&addresses);
    all_answer(&vm_addresses);
    let mut links_after = instance_links(&cluster, host);
    let mut links_before = links_before;
    links_after.sort();
    links_before.sort();
    assert_eq!(links_after, links_before, "the same taps and veths, none added");

    // Stop: every tap, veth and namespace is gone, and the addresses are back in the pool.
    for app in ["hello", "hello-vm"] {
        let out = cluster.mirari(&["cluster", "stop", app]);
        assert!(out.status.success(), "stop {app} failed: {}", stderr(&out));
    }
    eventually(DEADLINE, "instance links and namespaces to be gone", || {
        let links: Vec<Vec<String>> = (0..3).map(|h| instance_links(&cluster, h)).collect();
        let namespaces = instance_namespaces();
        let gone = links.iter().all(Vec::is_empty) && unix.keys().all(|id| !namespaces.contains(id));
        if gone { Ok(()) } else { Err(format!("links {links:?}, namespaces {namespaces:?}")) }
    });
    eventually(DEADLINE, "the addresses to be released", || {
        let status = cluster.status()?;
        let held = status["networks"][0]["held"].as_u64();
        if held == Some(0) { Ok(()) } else { Err(status["networks"].to_string()) }
    });
}

/// The example's js build under node: it serves from each instance's namespace (so the health
/// check passes), its console shows the example's lines, and agents killed with SIGKILL re-adopt
/// their instances.
#[test]
fn js_instances_answer_http_and_are_readopted_after_their_agents_are_killed() {
    let mut cluster = cluster();
    let out = cluster.mirari(&["cluster", "deploy", "-t", "js", "--count", "2", "--placement", "spread"]);
    assert!(out.status.success(), "deploy failed: {}", stderr(&out));
    let instances = wait_healthy(&cluster, "hello", 2);
    let addresses: BTreeSet<String> = instances.values().map(address).collect();
    assert_eq!(addresses.len(), 2, "pairwise distinct: {addresses:?}");
    all_answer(&addresses);
    for (id, instance) in &instances {
        let console = eventually(DEADLINE, "a heartbeat on the console", || {
            let text = stdout(&cluster.mirari(&["console", id]));
            if text.contains("hello: heartbeat 1") { Ok(text) } else { Err(text) }
        });
        let cidr = instance["addresses"][0].as_str().unwrap();
        assert!(console.contains(&format!("hello: boot args: --ipv4={cidr} --ipv4-gateway=")), "{console}");
        assert!(console.contains("hello: files: 3 entries"), "{console}");
        assert!(console.contains(&format!("hello: http: serving on {}:80", address(instance))), "{console}");
    }

    for agent in &mut cluster.agents {
        let applied = agent.assignments_applied();
        agent.kill_agent();
        agent.restart();
        agent.wait_assignments_after(applied);
    }
    let after = wait_healthy(&cluster, "hello", 2);
    assert_eq!(after.keys().collect::<Vec<_>>(), instances.keys().collect::<Vec<_>>(), "re-adopted, not replaced");
    assert_eq!(after.values().map(address).collect::<BTreeSet<_>>(), addresses);
    all_answer(&addresses);

    let out = cluster.mirari(&["cluster", "stop", "hello"]);
    assert!(out.status.success(), "stop failed: {}", stderr(&out));
    eventually(DEADLINE, "the instances' namespaces to be gone", || {
        let namespaces = instance_namespaces();
        if instances.keys().all(|id| !namespaces.contains(id)) { Ok(()) } else { Err(format!("{namespaces:?}")) }
    });
}

/// Waits until `count` instances of `app` run; returns them by ID.
fn wait_running(cluster: &Cluster, app: &str, count: usize) -> BTreeMap<String, Value> {
    eventually(DEADLINE, &format!("{count} running instances of {app}"), || {
        let listed = instances(&cluster.status()?, app);
        let running = listed.values().filter(|i| i["desired"] == "running" && i["observed"] == "running").count();
        if running == count && listed.len() == count { Ok(listed) } else { Err(format!("{listed:?}")) }
    })
}

/// The payload process of every instance alive on the cluster's hosts, by instance ID.
fn live_processes(cluster: &Cluster) -> BTreeMap<String, u64> {
    cluster.agents.iter().flat_map(|a| mirari_tests::sampler::live_processes(&a.state_dir)).collect()
}

/// Each instance's console shows U-Boot, then the example's lines up to `beat`.
fn rpi_consoles_show<'a>(cluster: &Cluster, ids: impl Iterator<Item = &'a String>, beat: &str) {
    for id in ids {
        let console = eventually(DEADLINE, &format!("{beat} on the console"), || {
            let text = stdout(&cluster.mirari(&["console", id]));
            if text.contains(beat) { Ok(text) } else { Err(text) }
        });
        assert!(console.contains("U-Boot"), "booted by U-Boot: {console}");
        assert!(console.contains("hello: boot args: greeting=hello-from-mirari version=0.1.0"), "{console}");
        assert!(console.contains("hello: file motd.txt (42 bytes)"), "{console}");
        assert!(console.contains("hello: files: 3 entries"), "{console}");
    }
}

/// The example's arm64 Image on emulated boards (U-Boot netbooting QEMU's `virt` by TFTP): a
/// deployment with a network is refused before anything is built (the rpi target has no
/// interfaces); without one, two boards boot, their consoles show the example's lines, and
/// agents killed with SIGKILL re-adopt the very QEMU processes.
#[test]
fn rpi_boards_boot_the_example_under_u_boot_and_are_readopted_after_their_agents_are_killed() {
    let mut cluster = cluster();
    let out = cluster.mirari(&["cluster", "deploy", "-t", "rpi", "--count", "2"]);
    assert!(!out.status.success(), "a network on rpi must be refused");
    assert!(
        stderr(&out).contains(
            "target `rpi` cannot give instances network interfaces yet, and this version has [[network]] service"
        ),
        "{}",
        stderr(&out)
    );
    edit_config(&cluster, "[[network]]\nname = \"service\"\n", "");
    edit_config(&cluster, "\"--ipv4={net.service.cidr}\", \"--ipv4-gateway={net.service.gateway}\", ", "");
    let health = std::fs::read_to_string(cluster.app_dir.join("mirari.toml")).unwrap();
    let (before, after) = health.split_once("[health]").expect("a [health] table");
    let rest = after.split_once("\n\n").map_or("", |(_, rest)| rest);
    std::fs::write(cluster.app_dir.join("mirari.toml"), format!("{before}{rest}")).unwrap();

    let out = cluster.mirari(&["cluster", "deploy", "-t", "rpi", "--count", "2", "--placement", "spread"]);
    assert!(out.status.success(), "deploy failed: {}{}", stdout(&out), stderr(&out));
    let instances_before = wait_running(&cluster, "hello", 2);
    rpi_consoles_show(&cluster, instances_before.keys(), "hello: heartbeat 1");
    let qemu_before = live_processes(&cluster);
    assert_eq!(qemu_before.keys().collect::<Vec<_>>(), instances_before.keys().collect::<Vec<_>>());

    for agent in &mut cluster.agents {
        let applied = agent.assignments_applied();
        agent.kill_agent();
        agent.restart();
        agent.wait_assignments_after(applied);
    }
    let instances_after = wait_running(&cluster, "hello", 2);
    assert_eq!(instances_after.keys().collect::<Vec<_>>(), instances_before.keys().collect::<Vec<_>>(), "re-adopted");
    assert_eq!(live_processes(&cluster), qemu_before, "the same QEMU processes run on");
    rpi_consoles_show(&cluster, instances_before.keys(), "hello: heartbeat 20");

    let out = cluster.mirari(&["cluster", "stop", "hello"]);
    assert!(out.status.success(), "stop failed: {}", stderr(&out));
    eventually(DEADLINE, "the boards to be gone", || {
        let left = live_processes(&cluster);
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    });
}

#[test]
fn a_hung_instance_is_restarted_and_a_lost_host_keeps_its_addresses_until_declared_down() {
    let cluster = cluster();
    // Stops answering HTTP after 8 heartbeats, but keeps running: only the checks can tell.
    edit_config(&cluster, "\"greeting=hello-from-mirari\"", "\"greeting=hello-from-mirari\", \"stop-serving-after=8\"");
    let out = cluster.mirari(&["cluster", "deploy", "-t", "unix", "--count", "3", "--placement", "spread"]);
    assert!(out.status.success(), "deploy failed: {}", stderr(&out));
    let hung = eventually(Duration::from_secs(120), "an instance restarted for being unhealthy", || {
        let status = cluster.status()?;
        let restarted: Vec<Value> =
            instances(&status, "hello").into_values().filter(|i| i["restarts"].as_u64() >= Some(1)).collect();
        restarted.first().cloned().ok_or_else(|| status["instances"].to_string())
    });
    let id = hung["id"].as_str().unwrap();
    let logs = stdout(&cluster.mirari(&["logs", id]));
    assert!(logs.contains("unhealthy: GET http://"), "{logs}");
    assert!(logs.contains("stopping: its health checks failed"), "{logs}");
    assert!(logs.contains("restart in"), "restarted under its policy: {logs}");

    // Serving again (a plain config, as a new version), the deployment is cut off with one of
    // its hosts.
    edit_config(&cluster, ", \"stop-serving-after=8\"", "");
    edit_config(&cluster, "version = \"0.1.0\"", "version = \"0.2.0\"");
    let out = cluster.mirari(&["cluster", "deploy", "-t", "unix", "--count", "3", "--placement", "spread"]);
    assert!(out.status.success(), "redeploy failed: {}", stderr(&out));
    let before = wait_healthy(&cluster, "hello", 3);
    let cut = &cluster.agents[0];
    let on_cut: BTreeSet<String> = before.values().filter(|i| i["host"] == cut.name.as_str()).map(address).collect();
    assert_eq!(on_cut.len(), 1, "spread: one instance per host");
    // The real processes on every host, sampled throughout: an address is never held by two
    // live instances at once, though it is given again once its host has been declared down.
    let mut address_of: BTreeMap<String, String> = before.iter().map(|(id, i)| (id.clone(), address(i))).collect();
    let sampler = cluster.sampler();
    for other in cluster.coordinators.iter().map(|c| &c.host).chain(cluster.agents[1..].iter().map(|a| &a.host)) {
        cut.host.cut_from(other);
    }
    let after = eventually(DEADLINE, "the cut host's instance replaced", || {
        let status = cluster.status()?;
        let listed = instances(&status, "hello");
        let healthy_elsewhere = listed
            .values()
            .filter(|i| i["desired"] == "running" && i["health"] == "healthy" && i["host"] != cut.name.as_str())
            .count();
        if healthy_elsewhere == 3 { Ok(listed) } else { Err(format!("{listed:?}")) }
    });
    address_of.extend(after.iter().map(|(id, i)| (id.clone(), address(i))));
    let fresh: BTreeSet<String> = after.values().filter(|i| i["desired"] == "running").map(address).collect();
    all_answer(&fresh);
    // The cut host's old instance was fenced: its process is gone.
    let old_id = before.iter().find(|(_, i)| i["host"] == cut.name.as_str()).map(|(id, _)| id.clone()).unwrap();
    eventually(DEADLINE, "the fenced instance to be gone", || {
        let live = cut.live_instances();
        if live.contains(&old_id) { Err(format!("{live:?}")) } else { Ok(()) }
    });
    let timeline = sampler.finish();
    assert!(timeline.last_seen(&old_id).is_some(), "the sampler saw the cut host's instance");
    let doubles = timeline.running_twice(&address_of);
    assert!(doubles.is_empty(), "an address ran on two instances at once: {doubles:?}");
}

#[test]
fn network_mistakes_are_reported_where_they_are() {
    let cluster = cluster();
    // A pool too small for the deployment: what fits is placed, the rest says why.
    let out = cluster.mirari(&["cluster", "network", "remove", "service"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let [_, gateway, _] = cluster.network.instance_network().unwrap();
    let prefix = gateway.trim_end_matches(".1");
    cluster.create_service_network(&format!("{prefix}.100-{prefix}.101"));
    let out = cluster.mirari(&["cluster", "deploy", "-t", "unix", "--count", "3", "--timeout", "20s"]);
    assert!(!out.status.success(), "a deployment that cannot fit must not succeed");
    let status = cluster.status().unwrap();
    let deployment = &status["deployments"][0];
    assert_eq!(deployment["unplaced"], 1, "{deployment}");
    assert_eq!(deployment["unplaced_reason"], "network service has no free address", "{deployment}");
    let out = cluster.mirari(&["cluster", "network", "remove", "service"]);
    assert!(stderr(&out).contains("network `service` is in use by"), "{}", stderr(&out));

    // A network the cluster does not know (a new version asks for it).
    edit_config(&cluster, "version = \"0.1.0\"", "version = \"0.2.0\"");
    edit_config(&cluster, "name = \"service\"", "name = \"backend\"");
    edit_config(&cluster, "{net.service.cidr}", "{net.backend.cidr}");
    edit_config(&cluster, "{net.service.gateway}", "{net.backend.gateway}");
    let out = cluster.mirari(&["cluster", "deploy", "-t", "unix", "--count", "1"]);
    assert!(stderr(&out).contains("unknown network `backend`: declare it first"), "{}", stderr(&out));
    // Declared, but no host carries it.
    let out = cluster.mirari(&["cluster", "network", "create", "backend", "--subnet", "10.200.0.0/24"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cluster.mirari(&["cluster", "deploy", "-t", "unix", "--count", "1", "--timeout", "10s"]);
    assert!(!out.status.success());
    let status = cluster.status().unwrap();
    assert_eq!(status["deployments"][0]["unplaced_reason"], "3 hosts lack network backend", "{status}");

    // A placeholder typo is a located config error.
    edit_config(&cluster, "{net.backend.gateway}", "{net.backend.gatewy}");
    let out = cluster.mirari(&["configure"]);
    let text = stderr(&out);
    assert!(text.contains("mirari.toml:48:") && text.contains("unknown placeholder `{net.backend.gatewy}`"), "{text}");
}

#[test]
fn an_agent_offers_only_networks_whose_bridge_exists_and_runs_local_instances_on_them() {
    let mut world = World::new();
    assert!(world.bridge.is_some(), "the networking tests need root (a bridge)");
    world.build();
    world.start_agent();
    let ids = world.run("unix", 2);
    let addresses: BTreeSet<String> = ids
        .iter()
        .map(|id| {
            eventually(DEADLINE, "a healthy local instance", || {
                let instance = world.instance(id);
                if instance["health"] == "healthy" { Ok(address(&instance)) } else { Err(instance.to_string()) }
            })
        })
        .collect();
    assert_eq!(addresses.len(), 2);
    all_answer(&addresses);
    for id in &ids {
        let out = world.mirari(&["stop", id]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    eventually(DEADLINE, "the instances' namespaces to be gone", || {
        let namespaces = instance_namespaces();
        if ids.iter().all(|id| !namespaces.contains(id)) { Ok(()) } else { Err(format!("{namespaces:?}")) }
    });

    // An agent told about a bridge that does not exist says so and offers no such network.
    let mut world = World::new();
    world.bridge = None;
    world.build();
    world.start_agent_with(&["--network", "service=br-missing"]);
    assert!(world.agent_log().contains("bridge br-missing does not exist"), "{}", world.agent_log());
    let out = world.mirari(&["run", "-t", "unix"]);
    assert!(stderr(&out).contains("this agent carries no network `service`"), "{}", stderr(&out));
}
