//! `/metrics` end to end: 3 coordinators and 3 agent hosts (network namespaces; root), the
//! example deployed, then every coordinator's and agent's `--http-listen` scraped and parsed by
//! a Prometheus text parser, and the values checked against the cluster status and the real
//! instance processes.

use std::collections::BTreeSet;

use mirari_tests::cluster::{Cluster, ClusterAgent, DEADLINE};
use mirari_tests::metrics::Metrics;
use mirari_tests::{eventually, http_request, stderr};

fn scrape(address: &str) -> Metrics {
    eventually(DEADLINE, &format!("metrics at {address}"), || Metrics::scrape(address))
}

#[test]
fn coordinators_and_agents_serve_metrics_with_sensible_values_after_a_deploy() {
    let cluster = Cluster::start(3, 3);
    assert!(cluster.network.isolated(), "the metrics test needs network namespaces: run it as root");
    let out = cluster.mirari(&["cluster", "deploy", "-t", "unix", "--count", "3"]);
    assert!(out.status.success(), "deploy failed: {}", stderr(&out));
    let per_host = cluster.wait_running("hello", 3);

    // Coordinators: one leader, and the leader has placed and sees every host up.
    let leader = cluster.leader().expect("a leader");
    let leaders: Vec<u64> = cluster
        .coordinators
        .iter()
        .filter(|c| {
            scrape(&c.metrics_address).value("mirari_coordinator_raft_role", &[("role", "leader")]) == Some(1.0)
        })
        .map(|c| c.id)
        .collect();
    assert_eq!(leaders, [cluster.coordinators[leader].id], "exactly the leader says role=leader");
    let metrics = scrape(&cluster.coordinators[leader].metrics_address);
    let value = |name: &str, labels: &[(&str, &str)]| {
        metrics.value(name, labels).unwrap_or_else(|| panic!("no single {name} {labels:?} in:\n{}", metrics.text))
    };
    assert_eq!(value("mirari_coordinator_raft_role", &[("role", "follower")]), 0.0);
    assert!(value("mirari_coordinator_raft_term", &[]) >= 1.0);
    let (commit, applied) =
        (value("mirari_coordinator_raft_commit_index", &[]), value("mirari_coordinator_raft_applied_index", &[]));
    assert!(commit >= applied && applied > 0.0, "commit {commit}, applied {applied}");
    assert!(value("mirari_coordinator_placements_total", &[]) >= 3.0);
    assert_eq!(value("mirari_coordinator_hosts", &[("status", "up")]), 3.0);
    assert_eq!(value("mirari_coordinator_hosts", &[("status", "down")]), 0.0);
    assert_eq!(value("mirari_coordinator_leases_expired_total", &[]), 0.0);
    assert!(value("mirari_coordinator_raft_leader_changes_total", &[]) >= 1.0);
    let unplaced: f64 = metrics.samples("mirari_coordinator_unplaced_slots", &[]).sum();
    assert_eq!(unplaced, 0.0, "every slot placed");
    assert!(metrics.by_label("mirari_coordinator_unplaced_slots", "reason").len() > 10, "every reason, 0 or not");
    for histogram in ["proposal_duration_seconds", "apply_duration_seconds", "fsync_duration_seconds"] {
        let count = value(&format!("mirari_coordinator_{histogram}_count"), &[]);
        assert!(count > 0.0, "{histogram} observed nothing");
    }
    let disk_failure = value("mirari_coordinator_disk_failure", &[]);
    assert_eq!(disk_failure, 0.0);

    // Agents: what each runs agrees with the status, and every live instance's process is read.
    for agent in &cluster.agents {
        let running = per_host.get(&agent.name).copied().unwrap_or(0);
        eventually(DEADLINE, &format!("{}'s metrics to show its {running} instances", agent.name), || {
            check_agent(agent, running)
        });
    }

    // Nothing else is served.
    let other = http_request(&cluster.agents[0].metrics_address, "/").expect("an answer");
    assert_eq!(other.status, 404, "{}", other.head);
}

/// The agent's metrics agree with `running` instances on it (the status's count) and with the
/// instance processes alive under its state directory.
fn check_agent(agent: &ClusterAgent, running: usize) -> Result<(), String> {
    let metrics = Metrics::scrape(&agent.metrics_address)?;
    let value = |name: &str, labels: &[(&str, &str)]| {
        metrics.value(name, labels).ok_or_else(|| format!("no single {name} {labels:?} in:\n{}", metrics.text))
    };
    let expect = |what: &str, ok: bool| if ok { Ok(()) } else { Err(format!("{what}, in:\n{}", metrics.text)) };
    expect(
        "running instances as the status says",
        value("mirari_agent_instances", &[("phase", "running")])? == running as f64,
    )?;
    let by_health: f64 = metrics.samples("mirari_agent_running_instances", &[]).sum();
    expect("running instances by health add up", by_health == running as f64)?;
    expect("a start per instance", value("mirari_agent_instance_starts_total", &[])? >= running as f64)?;
    let memory = metrics.by_label("mirari_agent_instance_resident_memory_bytes", "instance");
    let instances: BTreeSet<String> = memory.iter().map(|(id, _)| id.clone()).collect();
    let live: BTreeSet<String> = agent.live_instances().into_iter().collect();
    expect("one memory series per live instance process", instances == live && instances.len() == running)?;
    expect("resident memory above 0", memory.iter().all(|(_, bytes)| *bytes > 0.0))?;
    for id in &instances {
        value("mirari_agent_instance_cpu_seconds_total", &[("instance", id.as_str()), ("app", "hello")])?;
    }
    if running > 0 {
        let start = [("target", "unix"), ("operation", "start")];
        expect("timed starts", value("mirari_agent_backend_operation_duration_seconds_count", &start)? >= 1.0)?;
        // The example says hello on its console as it starts.
        expect("console bytes", value("mirari_agent_console_bytes_total", &[])? > 0.0)?;
    }
    Ok(())
}
