//! `mirari-bench`: load generators that measure a running cluster. Benchmarks measure; tests
//! assert. `mirari-bench raft` drives committed writes through the coordinators' raft group
//! from N concurrent clients and prints throughput and latency percentiles.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use mirari_core::registry::{Command, Host, HostId, HostStatus, Request, Resources};
use mirari_core::target::Target;
use mirari_proto::coordinator::ProposeRequest;
use mirari_proto::coordinator::coordinator_client::CoordinatorClient;
use mirari_proto::endpoint::Endpoint;
use mirari_proto::log_codec;
use tokio::sync::Mutex;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(name = "mirari-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Committed writes per second and their latency through the raft group
    Raft {
        /// Coordinators, comma separated (host:port)
        #[arg(long, value_delimiter = ',', required = true)]
        coordinators: Vec<Endpoint>,
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
        /// Print JSON instead of a line of text
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        BenchCommand::Raft { coordinators, clients, duration, acked_file, prefix, json } => {
            raft(coordinators, clients, duration, acked_file, prefix, json).await
        }
    }
}

/// One client's connection, which moves to the next coordinator when one fails.
struct Client {
    coordinators: Arc<Vec<Endpoint>>,
    current: usize,
    connection: Option<CoordinatorClient<Channel>>,
}

impl Client {
    /// Writes `request` until some coordinator acknowledges it (retrying with the same
    /// request ID, which the registry applies once).
    async fn write(&mut self, request: &Request, deadline: Instant) -> Option<u32> {
        let entry = log_codec::encode(request);
        let mut retries = 0;
        while Instant::now() < deadline {
            if self.connection.is_none() {
                let endpoint = &self.coordinators[self.current % self.coordinators.len()];
                self.connection = tokio::time::timeout(Duration::from_secs(1), endpoint.connect())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(CoordinatorClient::new);
            }
            if let Some(connection) = self.connection.as_mut() {
                match connection.propose(ProposeRequest { entry: entry.clone() }).await {
                    Ok(response) if response.get_ref().rejected.is_empty() => return Some(retries),
                    Ok(_) | Err(_) => {}
                }
            }
            retries += 1;
            self.connection = None;
            self.current += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

async fn raft(
    coordinators: Vec<Endpoint>,
    clients: usize,
    duration: Duration,
    acked_file: Option<PathBuf>,
    prefix: String,
    json: bool,
) -> anyhow::Result<()> {
    let coordinators = Arc::new(coordinators);
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
    let stop_at = started + duration;
    let mut tasks = Vec::new();
    for client_index in 0..clients {
        let mut client = Client { coordinators: coordinators.clone(), current: client_index, connection: None };
        let acked = acked.clone();
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut retries = 0u64;
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
                        latencies.push(sent.elapsed());
                        retries += u64::from(attempts);
                        if let Some(file) = &acked {
                            let _ = writeln!(file.lock().await, "{name}");
                        }
                    }
                    None => break,
                }
            }
            (latencies, retries)
        }));
    }
    let mut latencies = Vec::new();
    let mut retries = 0;
    for task in tasks {
        let (client_latencies, client_retries) = task.await?;
        latencies.extend(client_latencies);
        retries += client_retries;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[index].as_secs_f64() * 1000.0
    };
    let report = BTreeMap::from([
        ("clients", clients as f64),
        ("writes", latencies.len() as f64),
        ("seconds", elapsed.as_secs_f64()),
        ("writes_per_second", latencies.len() as f64 / elapsed.as_secs_f64()),
        ("p50_ms", percentile(0.50)),
        ("p99_ms", percentile(0.99)),
        ("retries", retries as f64),
    ]);
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "clients {:>4}  writes {:>7}  {:>8.0} writes/s  p50 {:>7.2} ms  p99 {:>7.2} ms  retries {}",
            clients, report["writes"], report["writes_per_second"], report["p50_ms"], report["p99_ms"], retries
        );
    }
    Ok(())
}

fn host(name: &str) -> Host {
    Host {
        id: HostId(name.to_owned()),
        address: format!("{name}.bench.invalid:7070"),
        backends: [Target::Unix].into(),
        capacity: Resources { memory_mib: 1024, vcpus: 2, instances: 8 },
        labels: BTreeMap::new(),
        status: HostStatus::Up,
        registered_at_ms: 0,
        status_changed_at_ms: 0,
    }
}
