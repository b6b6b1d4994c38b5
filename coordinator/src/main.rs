//! `mirari-coordinator`: one member of the raft group that holds the cluster registry.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mirari_coordinator::server::{self, CoordinatorConfig};
use mirari_proto::endpoint::{Endpoint, Listener};
use mirari_proto::tls::{self, ClientTls, ServerTls, TlsArgs};

/// Holds the authoritative registry of hosts, applications, deployments and instances,
/// replicated with raft. Start the first node with --bootstrap; start the others without it
/// and add them with `mirari cluster members add --id N --address HOST:PORT`.
#[derive(Debug, Parser)]
#[command(name = "mirari-coordinator", version)]
struct Cli {
    /// This node's raft ID: unique in the cluster, never reused
    #[arg(long)]
    id: u64,
    /// Where the raft log, snapshots and hard state live (fsync'd)
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to serve the coordinator and peer APIs on (host:port)
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: String,
    /// Address others reach this node at [default: the --listen address]
    #[arg(long)]
    advertise: Option<String>,
    /// Start a new cluster with this node as its only member (only if the data directory is empty)
    #[arg(long)]
    bootstrap: bool,
    /// Raft tick in milliseconds; elections happen after 10 to 20 ticks without a leader
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
    /// Take a snapshot and compact the log after this many entries
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Answer DNS on this address (UDP and TCP, host:port): `APP.service.mirari` gives the A
    /// records of the app's healthy instances, TTL 5 s [default: no DNS]
    #[arg(long, value_name = "ADDR")]
    dns_listen: Option<std::net::SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics. Plain HTTP without authentication:
    /// bind it to loopback or a management network [default: no metrics]
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    tls: TlsArgs,
}

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tls::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let endpoint: Endpoint = cli.listen.parse().context("--listen")?;
    let files = cli.tls.files()?.context(
        "a coordinator serves with mutual TLS only: give --tls-ca, --tls-cert and --tls-key (or a [tls] table in \
         --config); create them with `mirari tls`. Only `mirari dev` runs without TLS, on loopback",
    )?;
    tls::set_client_identity(ClientTls::load(&files)?);
    let server_tls = ServerTls::load(&files)?;
    let listener =
        Listener::bind(&endpoint, Some(server_tls)).await.with_context(|| format!("cannot listen on {endpoint}"))?;
    let advertise =
        cli.advertise.unwrap_or_else(|| listener.local_endpoint().map(|e| e.to_string()).unwrap_or(cli.listen.clone()));
    let config = CoordinatorConfig {
        id: cli.id,
        data_dir: cli.data_dir,
        advertise: advertise.clone(),
        bootstrap: cli.bootstrap,
        tick: Duration::from_millis(cli.tick_ms),
        snapshot_every: cli.snapshot_every,
        leases: Default::default(),
        dns_listen: cli.dns_listen,
        http_listen: cli.http_listen,
    };
    tracing::info!(id = config.id, %advertise, data_dir = %config.data_dir.display(), "mirari-coordinator starting");
    server::run(config, listener, shutdown_signal()).await.context("the coordinator stopped")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
