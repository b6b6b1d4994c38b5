//! The coordinators' raft group through real processes: each coordinator on its own test host
//! (a network namespace with its own address when the test runs as root, loopback otherwise).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mirari_tests::coordinators::Coordinator;
use mirari_tests::disk::SmallDisk;
use mirari_tests::netns::Network;
use mirari_tests::pki::Pki;
use mirari_tests::{bin, eventually};

const DEADLINE: Duration = Duration::from_secs(60);

/// Starts coordinator 1 with --bootstrap, the others empty, and adds them as members.
fn cluster(network: &Network, dir: &Path, size: usize) -> Vec<Coordinator> {
    let hosts = network.hosts();
    let pki = Pki::new(dir);
    let mut nodes = vec![Coordinator::start(1, &hosts[0], dir, true, &pki)];
    eventually(DEADLINE, "node 1 to lead", || leader_of(&nodes).filter(|&l| l == 1).ok_or("no leader".to_owned()));
    for (i, host) in hosts.iter().enumerate().take(size).skip(1) {
        let node = Coordinator::start(i as u64 + 1, host, dir, false, &pki);
        let address = node.address.clone();
        eventually(DEADLINE, &format!("adding member {}", node.id), || {
            nodes[0]
                .cli_json(&["cluster", "members", "add", "--id", &node.id.to_string(), "--address", &address])
                .map(|_| ())
        });
        nodes.push(node);
    }
    wait_converged(&nodes);
    nodes
}

/// The leader as the running nodes see it, if they agree on one.
fn leader_of(nodes: &[Coordinator]) -> Option<u64> {
    let leaders: BTreeSet<u64> =
        nodes.iter().filter(|n| n.is_running()).filter_map(|n| n.info().ok()?["leader_id"].as_u64()).collect();
    (leaders.len() == 1).then(|| *leaders.first().expect("one"))
}

/// Waits until every running node has applied the same index.
fn wait_converged(nodes: &[Coordinator]) {
    eventually(DEADLINE, "all coordinators to apply the same log", || {
        let applied: Vec<Option<u64>> = nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.info().ok().and_then(|i| i["applied_index"].as_u64()))
            .collect();
        let first = applied.first().copied().flatten();
        if first.is_some() && applied.iter().all(|a| *a == first) { Ok(()) } else { Err(format!("{applied:?}")) }
    });
}

/// A background writer: `mirari-bench raft`, recording every acknowledged write.
struct Writer {
    child: Child,
    acked: std::path::PathBuf,
}

impl Writer {
    fn start(nodes: &[Coordinator], dir: &Path, prefix: &str, seconds: u64) -> Self {
        let acked = dir.join(format!("{prefix}.acked"));
        let addresses: Vec<&str> = nodes.iter().map(|n| n.address.as_str()).collect();
        // The writer registers hosts, as a cluster component does: it holds a coordinator
        // certificate.
        let mut command = Command::new(bin("mirari-bench"));
        Pki::new(dir).issue("coordinator", "writer", &[]).apply(&mut command);
        let child = command
            .args(["raft", "--clients", "4", "--prefix", prefix])
            .arg("--duration")
            .arg(format!("{seconds}s"))
            .arg("--coordinators")
            .arg(addresses.join(","))
            .arg("--acked-file")
            .arg(&acked)
            .stdout(Stdio::null())
            .spawn()
            .expect("start mirari-bench");
        Self { child, acked }
    }

    fn acked(&self) -> BTreeSet<String> {
        std::fs::read_to_string(&self.acked).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    fn wait_acked_at_least(&self, count: usize) {
        eventually(DEADLINE, &format!("{count} acknowledged writes"), || {
            let acked = self.acked().len();
            if acked >= count { Ok(()) } else { Err(format!("{acked} acknowledged")) }
        });
    }

    fn finish(mut self) -> BTreeSet<String> {
        let status = self.child.wait().expect("wait for mirari-bench");
        assert!(status.success(), "the writer failed");
        self.acked()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every acknowledged write must be on `node`, read from its own state.
fn assert_has_all(node: &Coordinator, acked: &BTreeSet<String>) {
    let hosts = node.cli_json(&["cluster", "hosts", "--stale"]).expect("hosts");
    let present: BTreeSet<String> =
        hosts["hosts"].as_array().expect("hosts").iter().map(|h| h["id"].as_str().expect("id").to_owned()).collect();
    let lost: Vec<&String> = acked.difference(&present).collect();
    assert!(lost.is_empty(), "node {} lost {} acknowledged writes, e.g. {:?}", node.id, lost.len(), lost.first());
}

#[test]
fn killing_the_leader_loses_no_acknowledged_write() {
    let network = Network::new(3);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(&network, dir.path(), 3);
    let writer = Writer::start(&nodes, dir.path(), "crash", 15);
    writer.wait_acked_at_least(40);

    let old_leader = leader_of(&nodes).expect("a leader");
    let victim = nodes.iter_mut().find(|n| n.id == old_leader).unwrap();
    victim.kill();
    let before_kill = writer.acked().len();
    let new_leader = eventually(DEADLINE, "a new leader", || match leader_of(&nodes) {
        Some(leader) if leader != old_leader => Ok(leader),
        other => Err(format!("{other:?}")),
    });
    writer.wait_acked_at_least(before_kill + 40);

    let acked = writer.finish();
    let victim = nodes.iter_mut().find(|n| n.id == old_leader).unwrap();
    victim.restart();
    wait_converged(&nodes);
    for node in &nodes {
        assert_has_all(node, &acked);
    }
    eprintln!("leader {old_leader} killed, {new_leader} took over; {} writes acknowledged, none lost", acked.len());
}

/// What a coordinator says is wrong with its disk, if anything.
fn disk_failure(node: &Coordinator) -> Option<String> {
    node.info().ok()?["disk_failure"].as_str().map(str::to_owned)
}

fn wait_for_text(path: &Path, text: &str) -> String {
    eventually(DEADLINE, &format!("{text:?} in {}", path.display()), || {
        let content = std::fs::read_to_string(path).unwrap_or_default();
        if content.contains(text) { Ok(content) } else { Err(content) }
    })
}

#[test]
fn a_full_disk_refuses_writes_with_a_clear_error_serves_stale_reads_and_recovers() {
    let network = Network::new(1);
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("coordinator-1"), 64);
    let pki = Pki::new(dir.path());
    let node = Coordinator::start(1, &network.hosts()[0], dir.path(), true, &pki);
    let nodes = std::slice::from_ref(&node);
    eventually(DEADLINE, "node 1 to lead", || leader_of(nodes).ok_or("no leader".to_owned()));
    let before = Writer::start(nodes, dir.path(), "before", 2).finish();
    assert!(!before.is_empty(), "nothing written before the disk filled up");

    disk.fill();
    let writer = Writer::start(nodes, dir.path(), "during", 20);
    let failure = eventually(DEADLINE, "the coordinator to report its disk", || {
        disk_failure(&node).ok_or_else(|| format!("{} writes acknowledged so far", writer.acked().len()))
    });
    assert!(failure.contains("No space left on device"), "the failure does not say what: {failure}");
    let write_err = dir.path().join("write.err");
    let mut write = node.cli_spawn(&["cluster", "stop", "nope"], &write_err);
    let said = wait_for_text(&write_err, "cannot write its data directory");
    assert!(said.contains("No space left on device") && said.contains("--stale"), "unclear error: {said}");
    let refused = node.cli_json(&["cluster", "hosts"]).expect_err("a linearizable read on a stalled node");
    assert!(refused.contains("No space left on device") && refused.contains("--stale"), "unclear error: {refused}");
    // What it holds is still served, marked stale.
    assert_has_all(&node, &before);

    disk.free();
    eventually(DEADLINE, "the coordinator to take writes again", || match disk_failure(&node) {
        None => Ok(()),
        Some(failure) => Err(failure),
    });
    // The write that waited goes through raft (and is refused there: there is no such app).
    let status = write.wait().expect("wait for the write");
    let said = std::fs::read_to_string(&write_err).unwrap_or_default();
    assert!(!status.success() && said.contains("nope"), "the waiting write did not reach the registry: {said}");
    node.cli_json(&["cluster", "hosts"]).expect("a linearizable read once the disk has space");
    let during = writer.finish();
    assert_has_all(&node, &before);
    assert_has_all(&node, &during);
    assert!(!node.log().contains("panicked"), "the coordinator panicked");
    eprintln!("disk full: writes refused ({failure}); after freeing, {} more writes acknowledged", during.len());
}

#[test]
fn a_leader_whose_disk_fills_up_hands_over_and_catches_up() {
    let network = Network::new(3);
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("coordinator-1"), 64);
    let nodes = cluster(&network, dir.path(), 3);
    assert_eq!(leader_of(&nodes), Some(1), "the bootstrapped node leads at first");
    let writer = Writer::start(&nodes, dir.path(), "handover", 40);
    writer.wait_acked_at_least(20);

    disk.fill();
    let failure = eventually(DEADLINE, "node 1 to report its disk", || {
        disk_failure(&nodes[0]).ok_or_else(|| format!("{} writes acknowledged so far", writer.acked().len()))
    });
    let new_leader = eventually(DEADLINE, "another leader", || match leader_of(&nodes[1..]) {
        Some(leader) if leader != 1 => Ok(leader),
        other => Err(format!("{other:?}")),
    });
    let at_failure = writer.acked().len();
    writer.wait_acked_at_least(at_failure + 40);
    assert!(nodes[0].cli_json(&["cluster", "hosts", "--stale"]).is_ok(), "node 1 no longer serves stale reads");

    disk.free();
    eventually(DEADLINE, "node 1 to write again", || match disk_failure(&nodes[0]) {
        None => Ok(()),
        Some(failure) => Err(failure),
    });
    let acked = writer.finish();
    wait_converged(&nodes);
    for node in &nodes {
        assert_has_all(node, &acked);
    }
    eprintln!(
        "node 1's disk filled ({failure}); {new_leader} took over, {} writes acknowledged, none lost after it caught up",
        acked.len()
    );
}

#[test]
fn members_are_added_and_removed_while_writes_continue() {
    let network = Network::new(4);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(&network, dir.path(), 3);
    let writer = Writer::start(&nodes, dir.path(), "churn", 12);
    writer.wait_acked_at_least(20);

    let fourth = Coordinator::start(4, &network.hosts()[3], dir.path(), false, &Pki::new(dir.path()));
    let address = fourth.address.clone();
    eventually(DEADLINE, "adding member 4", || {
        nodes[0].cli_json(&["cluster", "members", "add", "--id", "4", "--address", &address]).map(|_| ())
    });
    nodes.push(fourth);
    writer.wait_acked_at_least(writer.acked().len() + 20);

    eventually(DEADLINE, "removing member 2", || {
        nodes[2].cli_json(&["cluster", "members", "remove", "--id", "2"]).map(|_| ())
    });
    nodes.retain_mut(|n| {
        if n.id == 2 {
            n.kill();
        }
        n.id != 2
    });
    writer.wait_acked_at_least(writer.acked().len() + 20);

    let acked = writer.finish();
    wait_converged(&nodes);
    let members = nodes[0].cli_json(&["cluster", "members"]).unwrap();
    let ids: Vec<u64> = members.as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 3, 4]);
    for node in &nodes {
        assert_has_all(node, &acked);
    }
}

#[test]
fn a_corrupt_data_directory_is_refused() {
    let network = Network::new(1);
    let dir = tempfile::tempdir().unwrap();
    let mut node = Coordinator::start(1, &network.hosts()[0], dir.path(), true, &Pki::new(dir.path()));
    let writer = Writer::start(std::slice::from_ref(&node), dir.path(), "MARKERMARKERMARKER", 2);
    writer.finish();
    node.kill();

    let path = node.data_dir.join("raft.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    let marker = b"MARKERMARKERMARKER";
    // redb copies pages on write, so stale copies of an entry may linger in free pages: flip a
    // bit in every copy, so the live one is surely hit.
    let copies: Vec<usize> =
        bytes.windows(marker.len()).enumerate().filter(|(_, w)| *w == marker).map(|(at, _)| at).collect();
    assert!(!copies.is_empty(), "written entries are in the file");
    for at in copies {
        bytes[at + 3] ^= 0x20;
    }
    std::fs::write(&path, &bytes).unwrap();

    node.restart();
    let status = node.wait_exit(DEADLINE);
    assert!(!status.success());
    let log = node.log();
    assert!(log.contains("is corrupt") && log.contains("restore the data directory"), "{log}");
}

#[test]
fn a_node_started_on_another_clusters_data_directory_is_refused() {
    // Cluster A, then a new cluster B at the very same addresses (fixed ports, as in most
    // deployments); node 2 of B is started on the data directory node 2 of A left behind.
    let network = Network::new(3);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = cluster(&network, dir_a.path(), 3);
    let writer = Writer::start(&a, dir_a.path(), "cluster-a", 2);
    writer.finish();
    let ports: Vec<u16> = a.iter().map(|n| n.address.rsplit_once(':').unwrap().1.parse().unwrap()).collect();
    for node in &mut a {
        node.kill();
    }
    let pki = Pki::new(dir_b.path());
    let start = |id: u64, bootstrap: bool| {
        let host = &network.hosts()[id as usize - 1];
        let identity = pki.issue("coordinator", &format!("coordinator-{id}"), &[&host.ip]);
        Coordinator::start_at(id, host, ports[id as usize - 1], dir_b.path(), bootstrap, &pki, identity, Vec::new())
    };
    let mut b = vec![start(1, true)];
    eventually(DEADLINE, "B's node 1 to lead", || leader_of(&b).filter(|&l| l == 1).ok_or("no leader".to_owned()));
    let third = start(3, false);
    eventually(DEADLINE, "adding member 3 to B", || {
        b[0].cli_json(&["cluster", "members", "add", "--id", "3", "--address", &third.address]).map(|_| ())
    });
    b.push(third);
    wait_converged(&b);

    let stray = dir_b.path().join("coordinator-2");
    mirari_tests::copy_dir(&a[1].data_dir, &stray);
    let mut node = start(2, false);
    let status = node.wait_exit(DEADLINE);
    assert!(!status.success());
    let log = node.log();
    assert!(log.contains("was started on another cluster's data directory"), "{log}");

    // The refusal names both clusters; B keeps its two members and its leader.
    let b_id = b[0].info().unwrap()["cluster_id"].as_str().unwrap().to_owned();
    assert!(log.contains(&b_id), "{log}");
    assert_eq!(leader_of(&b), Some(1));

    // With B's nodes down, the stray node cannot be checked at start; once they are back, its
    // raft messages are refused: B's term and membership stay B's own.
    for node in &mut b {
        node.kill();
    }
    node.restart();
    eventually(DEADLINE, "the stray node to serve", || node.info().map(|_| ()));
    for node in &mut b {
        node.restart();
    }
    eventually(DEADLINE, "B's nodes to refuse the stray node's messages", || {
        let refused = b.iter().any(|n| n.log().contains("refused raft messages from another cluster"));
        if refused { Ok(()) } else { Err("not yet".into()) }
    });
    eventually(DEADLINE, "the stray node to hear that it is refused", || {
        if node.log().contains("a peer refuses this node's raft messages") { Ok(()) } else { Err("not yet".into()) }
    });
    eventually(DEADLINE, "B to elect a leader of its own", || leader_of(&b).ok_or("no leader".to_owned()));
    let members = b[0].cli_json(&["cluster", "members"]).unwrap();
    let ids: Vec<u64> = members.as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 3]);
    assert_eq!(b[0].info().unwrap()["cluster_id"], b_id.as_str());
}

#[test]
fn a_data_directory_is_refused_to_another_node_id() {
    let network = Network::new(1);
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut node = Coordinator::start(1, &network.hosts()[0], dir.path(), true, &pki);
    eventually(DEADLINE, "node 1 to lead", || node.info().map(|_| ()));
    node.kill();
    std::fs::rename(&node.data_dir, dir.path().join("coordinator-7")).unwrap();
    let mut other = Coordinator::start(7, &network.hosts()[0], dir.path(), false, &pki);
    assert!(!other.wait_exit(DEADLINE).success());
    let log = other.log();
    assert!(log.contains("belongs to coordinator 1, not 7: start it with --id 1"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_follow_the_members_when_coordinators_are_replaced() {
    use mirari_core::digest::Digest;
    use mirari_core::registry::{AppVersion, Command, Request};
    use mirari_proto::agent::BlobChunk;
    use mirari_proto::coordinator::ProposeRequest;
    use mirari_proto::coordinator::coordinator_client::CoordinatorClient;

    let network = Network::new(5);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = tokio::task::block_in_place(|| cluster(&network, dir.path(), 3));
    let pki = Pki::new(dir.path());
    let channel = pki.issue("operator", "operator", &[]).channel(&nodes[0].address).await.unwrap();
    let mut client = CoordinatorClient::new(channel);
    // An artifact the registry names, stored on a majority.
    let data = b"an artifact that must outlive the coordinators it was uploaded to".to_vec();
    let digest = Digest::of(&data);
    let upload = BlobChunk { sha256: digest.to_string(), data };
    client.put_blob(futures::stream::iter([upload])).await.expect("upload");
    let mut app = AppVersion {
        app: "hello".into(),
        version: "1".into(),
        artifacts: [(mirari_core::target::Target::Unix, digest)].into(),
        files: vec![],
        run: Default::default(),
        constraints: Default::default(),
    };
    app.run.memory_mib = 16;
    let entry = mirari_proto::log_codec::encode(&Request {
        request_id: "app".into(),
        command: Command::RegisterApp { version: app },
    });
    let answer = client.propose(ProposeRequest { entry }).await.expect("register").into_inner();
    assert!(answer.rejected.is_empty(), "{}", answer.rejected);

    // Replace coordinators 2 and 3 with 4 and 5, one at a time.
    tokio::task::block_in_place(|| {
        for (new, old) in [(4u64, 2u64), (5, 3)] {
            let node = Coordinator::start(new, &network.hosts()[new as usize - 1], dir.path(), false, &pki);
            let address = node.address.clone();
            eventually(DEADLINE, &format!("adding member {new}"), || {
                nodes[0]
                    .cli_json(&["cluster", "members", "add", "--id", &new.to_string(), "--address", &address])
                    .map(|_| ())
            });
            nodes.push(node);
            eventually(DEADLINE, &format!("removing member {old}"), || {
                nodes[0].cli_json(&["cluster", "members", "remove", "--id", &old.to_string()]).map(|_| ())
            });
            nodes.retain_mut(|n| {
                if n.id == old {
                    n.kill();
                }
                n.id != old
            });
        }
        for node in &nodes {
            let path = node.data_dir.join("blobs/sha256").join(digest.to_string());
            eventually(DEADLINE, &format!("coordinator {} to hold the artifact", node.id), || {
                if path.is_file() { Ok(()) } else { Err("not yet".into()) }
            });
        }
    });
}
