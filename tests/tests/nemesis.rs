//! The real processes under a nemesis: 3 coordinators and 3 agents, each on its own host, while
//! clients scale, stop and read a deployment and a nemesis injects faults one after another:
//! the leader's host cut off, a follower cut off, an agent's host cut off, coordinators and
//! agents killed (`kill -9`) and restarted, coordinators and agents paused (SIGSTOP), and one
//! agent's links to the coordinators delayed or silently dropped through a proxy.
//!
//! Checked at the end: the recorded history of deployment operations is linearizable (a
//! Knossos-style checker, `mirari_tests::linearizability`: an acknowledged write lost or a
//! stale read fails it); no slot ran on two hosts at once and no instance ID ran on two hosts
//! (the processes sampled on every host throughout); and the cluster settles with every slot
//! running once.
//!
//! CI runs it for 90 seconds. The long run:
//! `MIRARI_NEMESIS_SECS=600 cargo test -p mirari-tests --test nemesis -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirari_core::registry::{Command, Request};
use mirari_core::rng::SplitMix64;
use mirari_proto::coordinator::coordinator_client::CoordinatorClient;
use mirari_proto::coordinator::{ProposeRequest, StatusRequest};
use mirari_proto::log_codec;
use mirari_tests::cluster::Cluster;
use mirari_tests::linearizability::{self, Model, Operation};
use mirari_tests::pki::Identity;
use mirari_tests::proxy::{Mode, Proxy};
use mirari_tests::stderr;

/// Writes and reads give up after this (their outcome is then unknown, if a write).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENTS: usize = 3;

/// The deployment as the registry holds it: its count, and whether it should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Deployment {
    count: u32,
    running: bool,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Scale(u32),
    Stop,
    Read,
}

/// The sequential specification of one deployment under `Scale`, `StopDeployment` and reads.
struct DeploymentModel {
    initial: Deployment,
}

impl Model for DeploymentModel {
    type State = Deployment;
    type Input = Op;
    type Output = Option<Deployment>;

    fn init(&self) -> Deployment {
        self.initial
    }

    fn step(&self, state: &Deployment, input: &Op, output: Option<&Option<Deployment>>) -> Option<Deployment> {
        match (input, output) {
            (Op::Scale(count), None | Some(None)) => Some(Deployment { count: *count, running: true }),
            (Op::Stop, None | Some(None)) => Some(Deployment { running: false, ..*state }),
            (Op::Read, None) => Some(*state),
            (Op::Read, Some(Some(seen))) if seen == state => Some(*state),
            _ => None,
        }
    }
}

type History = Arc<Mutex<Vec<Operation<Op, Option<Deployment>>>>>;

/// One client: random operations on random coordinators until `stop`.
async fn client(
    seed: u64,
    coordinators: Vec<String>,
    identity: Identity,
    history: History,
    slots: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = SplitMix64::new(seed);
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let address = &coordinators[rng.below(coordinators.len() as u64) as usize];
        let op = match rng.below(10) {
            0..=3 => Op::Scale(rng.between(0, 5) as u32),
            4 => Op::Stop,
            _ => Op::Read,
        };
        let invoked = Instant::now();
        let outcome = tokio::time::timeout(CALL_TIMEOUT, async {
            let mut client = CoordinatorClient::new(identity.channel(address).await.map_err(|e| e.to_string())?)
                .max_decoding_message_size(64 << 20);
            match op {
                Op::Scale(_) | Op::Stop => {
                    written += 1;
                    let command = match op {
                        Op::Scale(count) => Command::Scale { app: "hello".into(), count },
                        _ => Command::StopDeployment { app: "hello".into() },
                    };
                    let request = Request { request_id: format!("nemesis-{seed}-{written}"), command };
                    let entry = log_codec::encode(&request);
                    let answer =
                        client.propose(ProposeRequest { entry }).await.map_err(|e| e.to_string())?.into_inner();
                    assert!(answer.rejected.is_empty(), "a write was refused: {}", answer.rejected);
                    Ok::<_, String>(None)
                }
                Op::Read => {
                    let status = client
                        .get_status(StatusRequest { stale: false, ..Default::default() })
                        .await
                        .map_err(|e| e.to_string())?;
                    let status = status.into_inner();
                    let mut known = slots.lock().expect("slots");
                    for instance in &status.instances {
                        known.insert(format!("{:016x}", instance.id), u64::from(instance.slot));
                    }
                    let deployment =
                        status.deployments.iter().find(|d| d.spec.as_ref().is_some_and(|s| s.app == "hello"));
                    let deployment = deployment.ok_or_else(|| "no deployment in the status".to_owned())?;
                    let count = deployment.spec.as_ref().map_or(0, |s| s.count);
                    Ok(Some(Deployment { count, running: !deployment.stopped }))
                }
            }
        })
        .await;
        let returned = match outcome {
            Ok(Ok(output)) => Some((Instant::now(), output)),
            // A read that failed tells nothing and changed nothing; a write may have applied.
            _ if matches!(op, Op::Read) => continue,
            _ => None,
        };
        history.lock().expect("history").push(Operation { invoked, returned, input: op });
        tokio::time::sleep(Duration::from_millis(rng.between(50, 400))).await;
    }
}

/// One fault at a time, each healed before the next.
struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    proxies: &'a [Proxy],
    rng: SplitMix64,
    faults: Vec<String>,
}

impl Nemesis<'_> {
    fn sleep(&mut self, low_ms: u64, high_ms: u64) {
        std::thread::sleep(Duration::from_millis(self.rng.between(low_ms, high_ms)));
    }

    /// Cuts `host` off from every other host of the cluster.
    fn cut(&mut self, index: usize, what: String) {
        let host = self.all_hosts()[index].clone();
        for other in self.all_hosts().iter().filter(|h| h.ip != host.ip) {
            host.cut_from(other);
        }
        self.faults.push(what);
        self.sleep(4_000, 12_000);
        host.heal();
    }

    fn all_hosts(&self) -> Vec<mirari_tests::netns::TestHost> {
        let coordinators = self.cluster.coordinators.iter().map(|c| c.host.clone());
        coordinators.chain(self.cluster.agents.iter().map(|a| a.host.clone())).collect()
    }

    fn one_fault(&mut self) {
        let coordinators = self.cluster.coordinators.len();
        let agents = self.cluster.agents.len();
        match self.rng.below(9) {
            0 => {
                let Some(leader) = self.cluster.leader() else { return };
                self.cut(leader, format!("cut off the leader's host (coordinator {})", leader + 1));
            }
            1 => {
                let index = self.rng.below(coordinators as u64) as usize;
                self.cut(index, format!("cut off coordinator {}'s host", index + 1));
            }
            2 => {
                let index = self.rng.below(agents as u64) as usize;
                self.cut(coordinators + index, format!("cut off agent-{index}'s host"));
            }
            3 => {
                let index = self.rng.below(coordinators as u64) as usize;
                self.cluster.coordinators[index].kill();
                self.faults.push(format!("kill -9 coordinator {}", index + 1));
                self.sleep(2_000, 8_000);
                self.cluster.coordinators[index].restart();
            }
            4 => {
                let index = self.rng.below(agents as u64) as usize;
                self.cluster.agents[index].kill_agent();
                self.faults.push(format!("kill -9 agent-{index}"));
                self.sleep(1_000, 10_000);
                self.cluster.agents[index].restart();
            }
            5 => {
                let index = self.rng.below(agents as u64) as usize;
                self.cluster.agents[index].freeze(true);
                self.faults.push(format!("SIGSTOP agent-{index}"));
                self.sleep(2_000, 10_000);
                self.cluster.agents[index].freeze(false);
            }
            6 => {
                let index = self.rng.below(coordinators as u64) as usize;
                self.cluster.coordinators[index].freeze(true);
                self.faults.push(format!("SIGSTOP coordinator {}", index + 1));
                self.sleep(2_000, 6_000);
                self.cluster.coordinators[index].freeze(false);
            }
            7 => {
                let delay = Duration::from_millis(self.rng.between(200, 1_500));
                self.proxies.iter().for_each(|p| p.set(Mode::Delay(delay)));
                self.faults.push(format!("delay agent-0's links by {delay:?}"));
                self.sleep(5_000, 10_000);
                self.proxies.iter().for_each(|p| p.set(Mode::Pass));
            }
            _ => {
                self.proxies.iter().for_each(|p| p.set(Mode::Drop));
                self.faults.push("drop agent-0's links silently".into());
                self.sleep(3_000, 9_000);
                self.proxies.iter().for_each(|p| p.set(Mode::Pass));
            }
        }
    }
}

#[test]
fn registry_operations_stay_linearizable_and_no_slot_runs_twice_under_a_nemesis() {
    let seconds: u64 = std::env::var("MIRARI_NEMESIS_SECS").map_or(90, |s| s.parse().expect("a number of seconds"));
    let seed: u64 = std::env::var("MIRARI_NEMESIS_SEED").map_or_else(|_| rand_seed(), |s| s.parse().expect("a seed"));
    eprintln!("nemesis seed {seed} (replay the same faults with MIRARI_NEMESIS_SEED={seed}), {seconds} s");
    let (mut cluster, mut proxies) = Cluster::start_proxied(3, 3, 1);
    assert!(cluster.network.isolated(), "the nemesis needs network namespaces: run it as root");
    let proxies = proxies.remove(0);
    let out = cluster.mirari(&["cluster", "deploy", "-t", "unix", "--count", "3"]);
    assert!(out.status.success(), "deploy failed: {}", stderr(&out));
    cluster.wait_running("hello", 3);

    let sampler = cluster.sampler();
    let history: History = Arc::default();
    let slots: Arc<Mutex<BTreeMap<String, u64>>> = Arc::new(Mutex::new(cluster.slots()));
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let identity = cluster.pki().issue("operator", "operator", &[]);
    let addresses: Vec<String> = cluster.coordinators.iter().map(|c| c.address.clone()).collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let task = client(
                seed ^ (i as u64 + 1),
                addresses.clone(),
                identity.clone(),
                history.clone(),
                slots.clone(),
                stop.clone(),
            );
            runtime.spawn(task)
        })
        .collect();

    let started = Instant::now();
    let mut nemesis =
        Nemesis { cluster: &mut cluster, proxies: &proxies, rng: SplitMix64::new(seed), faults: Vec::new() };
    while started.elapsed() < Duration::from_secs(seconds) {
        nemesis.sleep(1_000, 4_000);
        nemesis.one_fault();
    }
    let faults = std::mem::take(&mut nemesis.faults);
    stop.store(true, Ordering::Relaxed);
    for task in clients {
        runtime.block_on(task).expect("a client");
    }

    // Healed and settled: every slot of the deployment runs once. A last read closes the
    // history.
    let final_read = Instant::now();
    let status = mirari_tests::eventually(Duration::from_secs(120), "the cluster to settle", || {
        let status = cluster.status()?;
        let deployment = status["deployments"].as_array().and_then(|d| d.first()).cloned().ok_or("no deployment")?;
        let count = deployment["desired_count"].as_u64().ok_or("no count")? as usize;
        let running = deployment["stopped"] == false;
        let wanted = if running { count } else { 0 };
        let live: usize = cluster.agents.iter().map(|a| a.live_instances().len()).sum();
        let settled =
            status["instances"].as_array().into_iter().flatten().filter(|i| i["observed"] == "running").count();
        if live == wanted && settled == wanted {
            Ok((count as u32, running))
        } else {
            Err(format!("{live} live, {settled} running of {wanted}"))
        }
    });
    history.lock().unwrap().push(Operation {
        invoked: final_read,
        returned: Some((Instant::now(), Some(Deployment { count: status.0, running: status.1 }))),
        input: Op::Read,
    });
    let timeline = sampler.finish();
    let slots: BTreeMap<String, u64> = slots.lock().unwrap().clone().into_iter().chain(cluster.slots()).collect();

    let history = history.lock().unwrap().clone();
    let (writes, reads) = history.iter().partition::<Vec<_>, _>(|op| !matches!(op.input, Op::Read));
    let unknown = history.iter().filter(|op| op.returned.is_none()).count();
    eprintln!(
        "{} faults in {:?}; {} operations ({} writes, {unknown} of unknown outcome; {} reads); {} process samples",
        faults.len(),
        started.elapsed(),
        history.len(),
        writes.len(),
        reads.len(),
        timeline.samples.len()
    );
    for fault in &faults {
        eprintln!("  {fault}");
    }

    let checked =
        linearizability::check(&DeploymentModel { initial: Deployment { count: 3, running: true } }, &history);
    if let Err(prefix) = checked {
        let last: Vec<String> = prefix.iter().rev().take(10).map(|i| format!("{:?}", history[*i])).collect();
        panic!(
            "the history is not linearizable; the last operations of the longest linearizable run:\n{}",
            last.join("\n")
        );
    }
    let doubles = timeline.running_twice(&slots);
    assert!(doubles.is_empty(), "slots ran twice: {:?}", doubles.first());
    let mut hosts_of: BTreeMap<&String, BTreeSet<&String>> = BTreeMap::new();
    for sample in &timeline.samples {
        for (id, live) in &sample.live {
            hosts_of.entry(id).or_default().insert(&live.host);
        }
    }
    let twice: Vec<_> = hosts_of.iter().filter(|(_, hosts)| hosts.len() > 1).collect();
    assert!(twice.is_empty(), "instance IDs ran on two hosts: {twice:?}");
    assert!(faults.len() as u64 >= seconds / 20, "only {} faults in {seconds} s", faults.len());
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
}
