//! `mirari-agent`: the host daemon. A thin binary over the `mirari_agent` library.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mirari_agent::backends::domain_fence::{self, DomainFenceArgs};
use mirari_agent::backends::rpi::plan::Board;
use mirari_agent::daemon::{self, JoinConfig};
use mirari_agent::network::{self, HostNetwork};
use mirari_agent::paths;
use mirari_agent::runtime::AgentConfig;
use mirari_agent::supervisor::shim::{self, ShimArgs};
use mirari_core::registry::Resources;
use mirari_proto::endpoint::{Endpoint, Listener};
use mirari_proto::tls::{self, ClientTls, ServerTls, TlsArgs};

/// Runs unikernel instances on this host through its backends (unix processes, QEMU/KVM) and
/// serves the agent API. Instances keep running while the agent restarts; a restarted agent
/// re-adopts them. With --join, the host joins a cluster: it registers with the coordinators,
/// keeps a lease, runs what they assign, builds for them, and stops its cluster instances if it
/// loses the lease.
#[derive(Debug, Parser)]
#[command(name = "mirari-agent", version)]
struct Cli {
    /// Where the agent keeps its database, blobs and instance directories
    /// [default: /var/lib/mirari/agent for root, else $XDG_STATE_HOME/mirari/agent]
    #[arg(long, env = "MIRARI_AGENT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Where to serve the agent API: unix:/path or host:port (a cluster agent needs host:port)
    /// [default: unix:/run/mirari/agent.sock for root, else $XDG_RUNTIME_DIR/mirari/agent.sock]
    #[arg(long, env = "MIRARI_AGENT_LISTEN")]
    listen: Option<Endpoint>,
    /// Bytes of console output kept per instance
    #[arg(long, default_value_t = 256 * 1024)]
    console_bytes: usize,
    /// The KVM device to use for accelerated guests
    #[arg(long, default_value = "/dev/kvm")]
    kvm_device: PathBuf,
    /// The board rpi instances boot on: virt (QEMU's arm64 machine, netbooted by TFTP) or
    /// raspi3b (QEMU's Raspberry Pi 3, booted from an SD card image)
    #[arg(long, default_value = "virt")]
    rpi_board: Board,
    /// The U-Boot build rpi boards boot [default: Debian's for the board, under /usr/lib/u-boot]
    #[arg(long)]
    rpi_u_boot: Option<PathBuf>,
    /// Join the cluster of these coordinators (host:port, comma separated)
    #[arg(long, value_delimiter = ',')]
    join: Vec<Endpoint>,
    /// This host's name in the cluster [default: the hostname]
    #[arg(long)]
    name: Option<String>,
    /// Where coordinators reach this agent (host:port) [default: the --listen address]
    #[arg(long)]
    advertise: Option<String>,
    /// A label for placement constraints, KEY=VALUE (repeatable)
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Memory offered to instances, in MiB [default: the machine's, less 512 MiB]
    #[arg(long)]
    memory_mib: Option<u64>,
    /// vCPUs offered to instances [default: 8 per CPU of the machine]
    #[arg(long)]
    vcpus: Option<u32>,
    /// Most instances this host runs
    #[arg(long, default_value_t = 64)]
    max_instances: u32,
    /// A network this host carries: NAME=BRIDGE, instances' interfaces on it join the bridge
    /// (which must exist and be up). Add ,subnet=CIDR[,gateway=IP][,range=FIRST-LAST] to give
    /// instances started without coordinators (mirari run) addresses from that subnet, apart
    /// from the cluster network's range (repeatable; also `networks = [...]` in --config)
    #[arg(long = "network")]
    networks: Vec<HostNetwork>,
    /// Serve Prometheus metrics at http://ADDR/metrics. Plain HTTP without authentication:
    /// bind it to loopback or a management network [default: no metrics]
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Supervises one instance's process (started by the agent, not by people).
    #[command(hide = true)]
    Shim(ShimArgs),
    /// Destroys a cluster Xen domain once the host's fencing deadline passes (started by the
    /// agent beside each one, not by people).
    #[command(hide = true)]
    DomainFence(DomainFenceArgs),
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Shim(args)) => shim::run(args).map_err(Into::into),
        Some(Command::DomainFence(args)) => domain_fence::run(args),
        None => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Runtime::new().map_err(Into::into).and_then(|runtime| runtime.block_on(serve(cli)))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    tls::install_crypto_provider();
    let config = AgentConfig {
        state_dir: cli.state_dir.unwrap_or_else(paths::default_state_dir),
        console_bytes: cli.console_bytes,
        shim_program: std::env::current_exe().context("cannot find the mirari-agent binary")?,
        kvm_device: cli.kvm_device,
        rpi_board: cli.rpi_board,
        rpi_u_boot: cli.rpi_u_boot,
        networks: {
            let mut networks = match &cli.tls.config {
                Some(path) => network::from_config_file(path).map_err(anyhow::Error::msg)?,
                None => Vec::new(),
            };
            networks.extend(cli.networks);
            networks
        },
        http_listen: cli.http_listen,
    };
    let endpoint = cli.listen.unwrap_or_else(paths::default_agent_endpoint);
    let files = cli.tls.files()?;
    let server_tls = match (&endpoint, &files) {
        (Endpoint::Unix(_), _) => None,
        (Endpoint::Tcp(_), Some(files)) => Some(ServerTls::load(files)?),
        (Endpoint::Tcp(_), None) => anyhow::bail!(
            "on TCP the agent serves with mutual TLS only: give --tls-ca, --tls-cert and --tls-key (or a [tls] \
             table in --config); create them with `mirari tls`"
        ),
    };
    if let Some(files) = &files {
        tls::set_client_identity(ClientTls::load(files)?);
    } else if !cli.join.is_empty() {
        anyhow::bail!(
            "--join needs this agent's TLS identity (--tls-ca, --tls-cert, --tls-key): coordinators accept TLS only"
        );
    }
    let listener =
        Listener::bind(&endpoint, server_tls).await.with_context(|| format!("cannot listen on {endpoint}"))?;
    let join = if cli.join.is_empty() {
        None
    } else {
        let advertise = match (cli.advertise, listener.local_endpoint()?) {
            (Some(advertise), _) => advertise,
            (None, Endpoint::Tcp(address)) if !address.starts_with("0.0.0.0") && !address.starts_with("[::]") => {
                address
            }
            (None, _) => anyhow::bail!(
                "--join needs a host:port the coordinators can reach: give --listen HOST:PORT or --advertise"
            ),
        };
        Some(JoinConfig {
            coordinators: cli.join,
            name: cli.name.unwrap_or_else(daemon::hostname),
            advertise,
            labels: cli.labels.into_iter().collect::<BTreeMap<_, _>>(),
            capacity: Resources {
                memory_mib: cli.memory_mib.unwrap_or_else(daemon::default_memory_mib),
                vcpus: cli.vcpus.unwrap_or_else(daemon::default_vcpus),
                instances: cli.max_instances,
            },
            timing: Default::default(),
        })
    };
    daemon::run(config, join, listener, shutdown_signal()).await.map_err(Into::into)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
