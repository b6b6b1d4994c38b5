//! `mirari-agent`: the host daemon. A thin binary over the `mirari_agent` library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mirari_agent::paths;
use mirari_agent::runtime::{Agent, AgentConfig};
use mirari_agent::service::AgentService;
use mirari_agent::supervisor::shim::{self, ShimArgs};
use mirari_proto::endpoint::{Endpoint, Listener};

/// Runs unikernel instances on this host through its backends (unix processes, QEMU/KVM) and
/// serves the agent API. Instances keep running while the agent restarts; a restarted agent
/// re-adopts them.
#[derive(Debug, Parser)]
#[command(name = "mirari-agent", version)]
struct Cli {
    /// Where the agent keeps its database, blobs and instance directories
    /// [default: /var/lib/mirari/agent for root, else $XDG_STATE_HOME/mirari/agent]
    #[arg(long, env = "MIRARI_AGENT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Where to serve the agent API: unix:/path or host:port
    /// [default: unix:/run/mirari/agent.sock for root, else $XDG_RUNTIME_DIR/mirari/agent.sock]
    #[arg(long, env = "MIRARI_AGENT_LISTEN")]
    listen: Option<Endpoint>,
    /// Bytes of console output kept per instance
    #[arg(long, default_value_t = 256 * 1024)]
    console_bytes: usize,
    /// The KVM device to use for accelerated guests
    #[arg(long, default_value = "/dev/kvm")]
    kvm_device: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Supervises one instance's process (started by the agent, not by people).
    #[command(hide = true)]
    Shim(ShimArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Shim(args)) = cli.command {
        return shim::run(args).map_err(Into::into);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Runtime::new()?.block_on(serve(cli))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let config = AgentConfig {
        state_dir: cli.state_dir.unwrap_or_else(paths::default_state_dir),
        console_bytes: cli.console_bytes,
        shim_program: std::env::current_exe().context("cannot find the mirari-agent binary")?,
        kvm_device: cli.kvm_device,
    };
    let endpoint = cli.listen.unwrap_or_else(paths::default_agent_endpoint);
    let listener = Listener::bind(&endpoint)
        .await
        .with_context(|| format!("cannot listen on {endpoint}"))?;
    let agent = Agent::open(config.clone())
        .await
        .context("cannot start the agent")?;
    for fingerprint in agent.fingerprints() {
        let facts: Vec<String> = fingerprint
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        match &fingerprint.unavailable {
            None => {
                tracing::info!(backend = %fingerprint.target, facts = facts.join(" "), "backend available")
            }
            Some(reason) => {
                tracing::warn!(backend = %fingerprint.target, %reason, "backend unavailable")
            }
        }
    }
    tracing::info!(endpoint = %listener.local_endpoint()?, state_dir = %config.state_dir.display(), "mirari-agent serving");
    let router =
        tonic::transport::Server::builder().add_service(AgentService::new(agent).into_server());
    listener
        .serve(router, shutdown_signal())
        .await
        .context("the agent API server failed")?;
    tracing::info!(
        "mirari-agent stopped; instances keep running and are re-adopted at the next start"
    );
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
