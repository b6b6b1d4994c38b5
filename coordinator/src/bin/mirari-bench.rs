//! `mirari-bench`: load generators that measure a running cluster. Benchmarks measure; tests
//! assert. `mirari-bench raft` drives committed writes through the coordinators' raft group
//! (or, as the anchor, through an etcd cluster) from N concurrent clients and prints throughput,
//! latency percentiles and the longest time no write was acknowledged (a failover, when the
//! script kills the leader meanwhile). `mirari-bench cluster` places instances on thousands of
//! simulated hosts; `mirari-bench churn` then has them stopped and replaced, lifetime after
//! lifetime. `mirari-bench consoles` tells when real instances printed a line, for timing
//! their starts against raw QEMU and a shell loop.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use mirari_core::registry::{Command, Host, Request, Resources};
use mirari_core::target::Target;
use mirari_proto::coordinator::ProposeRequest;
use mirari_proto::coordinator::coordinator_client::CoordinatorClient;
use mirari_proto::endpoint::Endpoint;
use mirari_proto::etcd::PutRequest;
use mirari_proto::etcd::kv_client::KvClient;
use mirari_proto::log_codec;
use tokio::sync::Mutex;
use tonic::transport::Channel;

/// Benchmarks against a running cluster. It acts as a cluster component: give it a
/// coordinator certificate (--tls-*).
#[derive(Debug, Parser)]
#[command(name = "mirari-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
    #[command(flatten)]
    tls: mirari_proto::tls::TlsArgs,
}

/// Which store `mirari-bench raft` writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Store {
    /// Mirari's coordinators: each write registers a host
    Mirari,
    /// etcd, the anchor: each write puts that same entry's bytes under a key of its own
    Etcd,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Committed writes per second and their latency through the raft group
    Raft {
        /// Coordinators (or etcd members), comma separated (host:port)
        #[arg(long, value_delimiter = ',', required = true)]
        coordinators: Vec<Endpoint>,
        /// What listens at those addresses
        #[arg(long, value_enum, default_value_t = Store::Mirari)]
        store: Store,
        /// Concurrent clients, each with one write in flight
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// How long to write
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Append the ID of every acknowledged write to this file (for checking none is lost)
        #[arg(long)]
        acked_file: Option<PathBuf>,
        /// Prefix of the written host names, so several runs do not collide
        #[arg(long, default_value = "bench")]
        prefix: String,
        /// A write not acknowledged within this is tried again on the next member, as a client
        /// with a deadline does (etcd holds a write to a member whose leader died for seconds)
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        attempt_timeout: Duration,
        /// Print JSON instead of a line of text
        #[arg(long)]
        json: bool,
    },
    /// Placements per second with many simulated hosts: registers HOSTS simulated hosts (they
    /// run nothing; they acknowledge every assignment as running), deploys INSTANCES instances,
    /// and times placement and acknowledgement
    Cluster {
        /// Coordinators, comma separated (host:port)
        #[arg(long, value_delimiter = ',', required = true)]
        coordinators: Vec<Endpoint>,
        #[arg(long, default_value_t = 1000)]
        hosts: usize,
        #[arg(long, default_value_t = 100_000)]
        instances: u32,
        /// Give up after this long
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Keep the simulated hosts alive this long after the results (to measure the cluster
        /// at that size)
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        hold: Duration,
    },
    /// Instance lifetimes on simulated hosts: deploys INSTANCES instances as `cluster` does,
    /// then stops every instance as soon as its host reports it running, so the scheduler
    /// replaces it, until LIFETIMES instances have ended. Prints a line every EVERY lifetimes
    /// (scripts sample the coordinators' memory on each)
    Churn {
        /// Coordinators, comma separated (host:port)
        #[arg(long, value_delimiter = ',', required = true)]
        coordinators: Vec<Endpoint>,
        #[arg(long, default_value_t = 1000)]
        hosts: usize,
        /// Instances running at any time (the deployment's count)
        #[arg(long, default_value_t = 10_000)]
        instances: u32,
        /// Instances that end in all
        #[arg(long, default_value_t = 1_000_000)]
        lifetimes: usize,
        #[arg(long, default_value_t = 100_000)]
        every: usize,
        /// Give up after this long
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// When instances printed a line: follows the consoles of IDS on an agent until each shows
    /// MARKER, then prints the moment the last one did, in seconds since the Unix epoch (a
    /// script times a start from its own clock)
    Consoles {
        /// The agent running them: unix:/path or host:port
        #[arg(long)]
        agent: Endpoint,
        /// Instance IDs, comma separated
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<String>,
        /// The text every console must show
        #[arg(long)]
        marker: String,
        /// Give up after this long
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mirari_proto::tls::install_crypto_provider();
    let cli = Cli::parse();
    if let Some(files) = cli.tls.files()? {
        mirari_proto::tls::set_client_identity(mirari_proto::tls::ClientTls::load(&files)?);
    }
    match cli.command {
        BenchCommand::Raft { coordinators, store, clients, duration, acked_file, prefix, attempt_timeout, json } => {
            let load = Load { coordinators, store, clients, duration, prefix, attempt_timeout };
            raft(load, acked_file, json).await
        }
        BenchCommand::Cluster { coordinators, hosts, instances, timeout, hold } => {
            simulated::deploy(coordinators, hosts, instances, timeout).await?;
            tokio::time::sleep(hold).await;
            Ok(())
        }
        BenchCommand::Churn { coordinators, hosts, instances, lifetimes, every, timeout } => {
            let cluster = simulated::deploy(coordinators, hosts, instances, timeout).await?;
            cluster.churn(lifetimes, every, timeout).await
        }
        BenchCommand::Consoles { agent, ids, marker, timeout } => {
            let last = consoles::last_marked(&agent, ids, &marker, timeout).await?;
            println!("{:.3}", last.duration_since(std::time::UNIX_EPOCH)?.as_secs_f64());
            Ok(())
        }
    }
}

/// A connection to one member of the store under test.
enum Connection {
    Mirari(CoordinatorClient<Channel>),
    Etcd(KvClient<Channel>),
}

impl Connection {
    /// Writes `entry` (under `key`, for etcd); whether it was acknowledged within `timeout`.
    async fn write(&mut self, key: &str, entry: &[u8], timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.write_once(key, entry)).await.unwrap_or(false)
    }

    async fn write_once(&mut self, key: &str, entry: &[u8]) -> bool {
        match self {
            Connection::Mirari(client) => matches!(
                client.propose(ProposeRequest { entry: entry.to_vec() }).await,
                Ok(response) if response.get_ref().rejected.is_empty()
            ),
            Connection::Etcd(client) => {
                let put = PutRequest { key: key.as_bytes().to_vec(), value: entry.to_vec(), ..Default::default() };
                client.put(put).await.is_ok()
            }
        }
    }
}

/// One client's connection, which moves to the next member when one fails.
struct Client {
    coordinators: Arc<Vec<Endpoint>>,
    store: Store,
    attempt_timeout: Duration,
    current: usize,
    connection: Option<Connection>,
}

impl Client {
    /// Writes `request` until some member acknowledges it (retrying with the same request ID,
    /// which the registry applies once).
    async fn write(&mut self, request: &Request, deadline: Instant) -> Option<u32> {
        let entry = log_codec::encode(request);
        let mut retries = 0;
        while Instant::now() < deadline {
            if self.connection.is_none() {
                let endpoint = &self.coordinators[self.current % self.coordinators.len()];
                let channel = tokio::time::timeout(Duration::from_secs(1), endpoint.connect()).await.ok().and_then(Result::ok);
                self.connection = channel.map(|channel| match self.store {
                    Store::Mirari => Connection::Mirari(CoordinatorClient::new(channel)),
                    Store::Etcd => Connection::Etcd(KvClient::new(channel)),
                });
            }
            if let Some(connection) = self.connection.as_mut()
                && connection.write(&request.request_id, &entry, self.attempt_timeout).await
            {
                return Some(retries);
            }
            retries += 1;
            self.connection = None;
            self.current += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

/// The load of one `mirari-bench raft` run.
struct Load {
    coordinators: Vec<Endpoint>,
    store: Store,
    clients: usize,
    duration: Duration,
    prefix: String,
    attempt_timeout: Duration,
}

/// What one client saw: when each of its writes was acknowledged, how long each took, and how
/// often it had to try again.
#[derive(Default)]
struct Seen {
    acknowledged_at: Vec<Instant>,
    latencies: Vec<Duration>,
    retries: u64,
}

async fn raft(load: Load, acked_file: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let coordinators = Arc::new(load.coordinators);
    let acked = match &acked_file {
        Some(path) => Some(Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        ))),
        None => None,
    };
    let started = Instant::now();
    let stop_at = started + load.duration;
    let mut tasks = Vec::new();
    for client_index in 0..load.clients {
        let mut client = Client {
            coordinators: coordinators.clone(),
            store: load.store,
            attempt_timeout: load.attempt_timeout,
            current: client_index,
            connection: None,
        };
        let acked = acked.clone();
        let prefix = load.prefix.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut seq = 0u64;
            while Instant::now() < stop_at {
                seq += 1;
                let name = format!("{prefix}-{client_index}-{seq}");
                let request =
                    Request { request_id: name.clone(), command: Command::RegisterHost { host: host(&name) } };
                let sent = Instant::now();
                // A write in flight when time is up may still finish: give it a grace period.
                match client.write(&request, stop_at + Duration::from_secs(30)).await {
                    Some(attempts) => {
                        seen.acknowledged_at.push(Instant::now());
                        seen.latencies.push(sent.elapsed());
                        seen.retries += u64::from(attempts);
                        if let Some(file) = &acked {
                            let _ = writeln!(file.lock().await, "{name}");
                        }
                    }
                    None => break,
                }
            }
            seen
        }));
    }
    let mut all = Seen::default();
    for task in tasks {
        let seen = task.await?;
        all.acknowledged_at.extend(seen.acknowledged_at);
        all.latencies.extend(seen.latencies);
        all.retries += seen.retries;
    }
    let elapsed = started.elapsed();
    let Seen { mut acknowledged_at, mut latencies, retries } = all;
    latencies.sort();
    acknowledged_at.sort();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[index].as_secs_f64() * 1000.0
    };
    // From the start, between acknowledgements, and from the last one to the end.
    let longest_gap = std::iter::once(started)
        .chain(acknowledged_at.iter().copied())
        .zip(acknowledged_at.iter().copied().chain(std::iter::once(started + elapsed)))
        .map(|(before, after)| after.saturating_duration_since(before))
        .max()
        .unwrap_or_default();
    let report = BTreeMap::from([
        ("clients", load.clients as f64),
        ("writes", latencies.len() as f64),
        ("seconds", elapsed.as_secs_f64()),
        ("writes_per_second", latencies.len() as f64 / elapsed.as_secs_f64()),
        ("p50_ms", percentile(0.50)),
        ("p99_ms", percentile(0.99)),
        ("longest_gap_ms", longest_gap.as_secs_f64() * 1000.0),
        ("retries", retries as f64),
    ]);
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "clients {:>4}  writes {:>7}  {:>8.0} writes/s  p50 {:>7.2} ms  p99 {:>7.2} ms  longest gap {:>7.1} ms  retries {}",
            load.clients,
            report["writes"],
            report["writes_per_second"],
            report["p50_ms"],
            report["p99_ms"],
            report["longest_gap_ms"],
            retries
        );
    }
    Ok(())
}

fn host(name: &str) -> Host {
    let capacity = Resources { memory_mib: 1024, vcpus: 2, instances: 8 };
    Host::up(name, format!("{name}.bench.invalid:7070"), [Target::Unix], capacity)
}

/// Simulated hosts: the protocol of an agent without any instance behind it, so one process can
/// stand in for a thousand hosts. Only this benchmark uses them.
mod simulated {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use mirari_core::digest::Digest;
    use mirari_core::instance::Phase;
    use mirari_core::registry::{AppVersion, Command, DeploymentSpec, Placement, Request, Resources};
    use mirari_core::spec::RunPolicy;
    use mirari_core::target::Target;
    use mirari_proto::agent as wire_agent;
    use mirari_proto::coordinator::coordinator_client::CoordinatorClient;
    use mirari_proto::coordinator::{self as pb};
    use mirari_proto::endpoint::Endpoint;
    use mirari_proto::log_codec;
    use tonic::transport::Channel;

    const MAX_MESSAGE_BYTES: usize = 256 << 20;
    /// Simulated hosts that share one connection. A real agent has a connection of its own;
    /// thousands of hosts' streams on a few connections would measure HTTP/2 flow control.
    const HOSTS_PER_CONNECTION: usize = 50;

    /// Most instances one churn entry stops.
    const STOPS_PER_ENTRY: usize = 1000;

    #[derive(Default)]
    struct Counters {
        registered: AtomicUsize,
        assigned: AtomicUsize,
        acknowledged: AtomicUsize,
        /// Instances reported stopped after their host heard of the stop.
        ended: AtomicUsize,
        /// Instances reported running since the churn last took them.
        running: Mutex<Vec<u64>>,
    }

    /// An assignment set as a host heard it: its registry index, the instances to run, and
    /// those to stop.
    struct Heard {
        index: u64,
        run: Vec<u64>,
        stop: Vec<u64>,
    }

    /// `count` connections, spread over the coordinators in turn.
    async fn clients(coordinators: &[Endpoint], count: usize) -> anyhow::Result<Vec<CoordinatorClient<Channel>>> {
        let mut clients = Vec::new();
        for endpoint in coordinators.iter().cycle().take(count.max(1)) {
            let client = CoordinatorClient::new(endpoint.connect().await?)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            clients.push(client);
        }
        Ok(clients)
    }

    /// One simulated host: register, watch assignments, report what it must run as running and
    /// what it must stop as stopped, every second, and renew its lease when due.
    async fn host(mut client: CoordinatorClient<Channel>, name: String, counters: Arc<Counters>) -> anyhow::Result<()> {
        let mut host = super::host(&name);
        // As large as a host may say it is (the instance count is bounded on the wire).
        let instances = mirari_core::limits::MAX_INSTANCES_PER_HOST;
        host.capacity = Resources { memory_mib: 1 << 30, vcpus: 1 << 20, instances };
        let mut told = false;
        // Renewed as often as the granted lease asks, as a real agent does.
        let timing = mirari_core::lease::LeaseTiming::default();
        let mut renew_at = loop {
            let request = pb::RegisterHostRequest { host: Some(log_codec::host_to_pb(&host)) };
            let sent = Instant::now();
            match client.register_host(request).await {
                Ok(lease) => break sent + timing.heartbeat_for(lease.into_inner().ttl_ms),
                // Said once per host: a refusal that lasts would otherwise look like a hang.
                Err(status) if !told => {
                    eprintln!("simulated host {name}: registering failed ({}); trying again", status.message());
                    told = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        counters.registered.fetch_add(1, Ordering::Relaxed);
        // As a real agent does, heartbeats never wait on the assignment stream.
        let (assigned, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<Heard>();
        let mut watcher = client.clone();
        let watched = name.clone();
        tokio::spawn(async move {
            loop {
                let request = pb::WatchAssignmentsRequest { host: watched.clone() };
                if let Ok(response) = watcher.watch_assignments(request).await {
                    let mut stream = response.into_inner();
                    while let Ok(Some(set)) = stream.message().await {
                        if !set.unchanged {
                            let run = set.instances.iter().map(|a| a.id).collect();
                            let _ = assigned.send(Heard { index: set.index, run, stop: set.stopping });
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        // Instances listed to run or to stop, as last heard (so the host forgets the rest).
        let mut listed: HashSet<u64> = HashSet::new();
        let mut started: Vec<u64> = Vec::new();
        // To report stopped, with the index of the set that said so; then reported.
        let mut stopping: Vec<(u64, u64)> = Vec::new();
        let mut stopped: HashSet<u64> = HashSet::new();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                heard = arrivals.recv() => {
                    let Some(heard) = heard else { return Ok(()) };
                    let mut now_listed = HashSet::with_capacity(heard.run.len() + heard.stop.len());
                    for id in heard.run {
                        if !listed.contains(&id) {
                            started.push(id);
                            counters.assigned.fetch_add(1, Ordering::Relaxed);
                        }
                        now_listed.insert(id);
                    }
                    for id in heard.stop {
                        if !stopped.contains(&id) && !stopping.iter().any(|&(s, _)| s == id) {
                            stopping.push((id, heard.index));
                        }
                        now_listed.insert(id);
                    }
                    stopped.retain(|id| now_listed.contains(id));
                    listed = now_listed;
                }
                _ = ticker.tick() => {
                    let report = |id: u64, phase: Phase, revision: u64, assignments_index: u64| {
                        mirari_proto::registry::InstanceReport {
                            id,
                            phase: wire_agent::Phase::from(phase).into(),
                            revision,
                            assignments_index,
                            ..Default::default()
                        }
                    };
                    let reports: Vec<_> = started
                        .iter()
                        .map(|&id| report(id, Phase::Running, 1, 0))
                        .chain(stopping.iter().map(|&(id, index)| report(id, Phase::Stopped, 2, index)))
                        .collect();
                    if Instant::now() >= renew_at {
                        let sent = Instant::now();
                        renew_at = match client.heartbeat(pb::HeartbeatRequest { host: name.clone() }).await {
                            Ok(lease) => sent + timing.heartbeat_for(lease.into_inner().ttl_ms),
                            Err(_) => sent + timing.heartbeat,
                        };
                    }
                    if !reports.is_empty()
                        && client
                            .report_instances(pb::ReportInstancesRequest { host: name.clone(), reports })
                            .await
                            .is_ok()
                    {
                        counters.acknowledged.fetch_add(started.len(), Ordering::Relaxed);
                        counters.ended.fetch_add(stopping.len(), Ordering::Relaxed);
                        counters.running.lock().expect("running lock").append(&mut started);
                        stopped.extend(stopping.drain(..).map(|(id, _)| id));
                    }
                }
            }
        }
    }

    async fn propose(client: &mut CoordinatorClient<Channel>, request: Request) -> anyhow::Result<()> {
        let response = client.propose(pb::ProposeRequest { entry: log_codec::encode(&request) }).await?.into_inner();
        anyhow::ensure!(response.rejected.is_empty(), "refused: {}", response.rejected);
        Ok(())
    }

    /// Simulated hosts with a deployment running on them.
    pub struct Cluster {
        client: CoordinatorClient<Channel>,
        counters: Arc<Counters>,
    }

    /// Registers `hosts` simulated hosts, deploys `instances` instances on them, and prints how
    /// long placing them and hearing them run took.
    pub async fn deploy(
        coordinators: Vec<Endpoint>,
        hosts: usize,
        instances: u32,
        timeout: Duration,
    ) -> anyhow::Result<Cluster> {
        let clients = clients(&coordinators, hosts.div_ceil(HOSTS_PER_CONNECTION).max(coordinators.len())).await?;
        let counters = Arc::new(Counters::default());
        let started = Instant::now();
        for index in 0..hosts {
            let client = clients[index % clients.len()].clone();
            let name = format!("sim-{index:05}");
            let counters = counters.clone();
            tokio::spawn(async move {
                if let Err(error) = host(client, name.clone(), counters).await {
                    eprintln!("simulated host {name} failed: {error:#}");
                }
            });
        }
        while counters.registered.load(Ordering::Relaxed) < hosts {
            anyhow::ensure!(started.elapsed() < timeout, "hosts did not register in time");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let registered_in = started.elapsed();
        let mut client = clients[0].clone();
        let version = AppVersion {
            app: "bench".into(),
            version: "1".into(),
            artifacts: [(Target::Unix, Digest::of(b"simulated"))].into(),
            files: vec![],
            run: RunPolicy { memory_mib: 16, ..RunPolicy::default() },
            constraints: Default::default(),
        };
        propose(&mut client, Request { request_id: "bench-app".into(), command: Command::RegisterApp { version } })
            .await?;
        let spec = DeploymentSpec {
            placement: Placement::Spread,
            ..DeploymentSpec::new("bench", "1", Target::Unix, instances)
        };
        let deployed = Instant::now();
        propose(
            &mut client,
            Request {
                request_id: "bench-deploy".into(),
                command: Command::Deploy {
                    spec,
                    at_ms: 0,
                    by: "test".into(),
                    cause: mirari_core::registry::RevisionCause::Deploy,
                },
            },
        )
        .await?;
        let target = instances as usize;
        let mut placed_in = None;
        let mut last_report = Instant::now();
        loop {
            if std::env::var_os("MIRARI_BENCH_PROGRESS").is_some() && last_report.elapsed() > Duration::from_secs(1) {
                last_report = Instant::now();
                eprintln!(
                    "  {:.1}s: {} assigned, {} acknowledged",
                    deployed.elapsed().as_secs_f64(),
                    counters.assigned.load(Ordering::Relaxed),
                    counters.acknowledged.load(Ordering::Relaxed)
                );
            }
            if placed_in.is_none() && counters.assigned.load(Ordering::Relaxed) >= target {
                placed_in = Some(deployed.elapsed());
            }
            if counters.acknowledged.load(Ordering::Relaxed) >= target {
                break;
            }
            anyhow::ensure!(
                deployed.elapsed() < timeout,
                "timed out: {} assigned, {} acknowledged",
                counters.assigned.load(Ordering::Relaxed),
                counters.acknowledged.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let running_in = deployed.elapsed();
        let placed_in = placed_in.unwrap_or(running_in);
        println!("{hosts} simulated hosts registered in {:.1}s", registered_in.as_secs_f64());
        println!(
            "{instances} instances placed (assigned to hosts) in {:.1}s: {:.0} placements/s",
            placed_in.as_secs_f64(),
            f64::from(instances) / placed_in.as_secs_f64()
        );
        println!(
            "{instances} instances acknowledged as running in {:.1}s: {:.0} instances/s",
            running_in.as_secs_f64(),
            f64::from(instances) / running_in.as_secs_f64()
        );
        // Scripts wait for this line before measuring the cluster at this size.
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        Ok(Cluster { client, counters })
    }

    impl Cluster {
        /// Stops every instance its host reports running, so the scheduler replaces it, until
        /// `lifetimes` instances have ended; prints a line every `every` of them.
        pub async fn churn(mut self, lifetimes: usize, every: usize, timeout: Duration) -> anyhow::Result<()> {
            use std::io::Write as _;
            let started = Instant::now();
            let ended_before = self.counters.ended.load(Ordering::Relaxed);
            println!("lifetimes 0 ended after 0.0 s");
            let _ = std::io::stdout().flush();
            let every = every.max(1);
            let (mut next_line, mut entries, run) = (every, 0u64, rand::random::<u64>());
            loop {
                let ended = self.counters.ended.load(Ordering::Relaxed) - ended_before;
                while ended >= next_line && next_line <= lifetimes {
                    let seconds = started.elapsed().as_secs_f64();
                    println!("lifetimes {next_line} ended after {seconds:.1} s: {:.0}/s", next_line as f64 / seconds);
                    let _ = std::io::stdout().flush();
                    next_line += every;
                }
                if ended >= lifetimes {
                    return Ok(());
                }
                anyhow::ensure!(started.elapsed() < timeout, "timed out after {ended} lifetimes");
                let ids: Vec<u64> = {
                    let mut running = self.counters.running.lock().expect("running lock");
                    let take = running.len().min(STOPS_PER_ENTRY);
                    running.drain(..take).collect()
                };
                if ids.is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                entries += 1;
                let command = Command::StopInstances {
                    ids: ids.iter().copied().map(mirari_core::ids::InstanceId::from_u64).collect(),
                    reason: "churn".into(),
                };
                let request = Request { request_id: format!("churn-{run:016x}-{entries}"), command };
                if let Err(error) = propose(&mut self.client, request).await {
                    eprintln!("stopping {} instances failed ({error:#}); trying again", ids.len());
                    self.counters.running.lock().expect("running lock").extend(ids);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// Following many instances' consoles at once, over one connection to their agent.
mod consoles {
    use std::time::{Duration, SystemTime};

    use anyhow::{Context, bail};
    use mirari_proto::agent::ConsoleRequest;
    use mirari_proto::agent::agent_client::AgentClient;
    use mirari_proto::endpoint::Endpoint;

    /// When the last of `ids` printed `marker` (each console read from its start).
    pub async fn last_marked(agent: &Endpoint, ids: Vec<String>, marker: &str, timeout: Duration) -> anyhow::Result<SystemTime> {
        if marker.is_empty() {
            bail!("--marker is empty: give the text the consoles must show");
        }
        let client = AgentClient::new(agent.connect().await?);
        let waits = ids.into_iter().map(|id| {
            let client = client.clone();
            async move { marked(client, &id, marker.as_bytes()).await.with_context(|| format!("instance {id}")) }
        });
        let marked = tokio::time::timeout(timeout, futures::future::try_join_all(waits))
            .await
            .with_context(|| format!("not every console showed {marker:?} within {timeout:?}"))??;
        Ok(marked.into_iter().max().unwrap_or_else(SystemTime::now))
    }

    /// When one instance's console first showed `marker`. An instance the agent does not know
    /// yet (the coordinators placed it, the agent has not started it) is asked for again.
    async fn marked(mut client: AgentClient<tonic::transport::Channel>, id: &str, marker: &[u8]) -> anyhow::Result<SystemTime> {
        let request = ConsoleRequest { id: id.to_owned(), follow: true };
        let mut chunks = loop {
            match client.stream_console(request.clone()).await {
                Ok(response) => break response.into_inner(),
                Err(status) if status.code() == tonic::Code::NotFound => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(status) => return Err(status.into()),
            }
        };
        // What was read, less what can no longer begin the marker.
        let mut tail: Vec<u8> = Vec::new();
        while let Some(chunk) = chunks.message().await? {
            tail.extend_from_slice(&chunk.data);
            if tail.windows(marker.len()).any(|window| window == marker) {
                return Ok(SystemTime::now());
            }
            tail.drain(..tail.len().saturating_sub(marker.len()));
        }
        bail!("the console ended before it showed {:?}", String::from_utf8_lossy(marker))
    }
}
