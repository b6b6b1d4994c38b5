//! `mirari dev`: a single-node coordinator and a local agent in one process, for trying Mirari
//! on one machine. Both listen on loopback only.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use mirari_agent::daemon::{self, JoinConfig};
use mirari_agent::runtime::AgentConfig;
use mirari_coordinator::server::{self, CoordinatorConfig};
use mirari_core::registry::Resources;
use mirari_proto::endpoint::{Endpoint, Listener};

pub const COORDINATOR: &str = "127.0.0.1:7400";
pub const AGENT: &str = "127.0.0.1:7401";

/// `/var/lib/mirari/dev` for root, else `$XDG_STATE_HOME/mirari/dev`.
fn default_dir() -> PathBuf {
    mirari_agent::paths::default_state_dir().parent().map_or_else(|| PathBuf::from("mirari-dev"), |p| p.join("dev"))
}

pub async fn run(dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,raft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let dir = dir.unwrap_or_else(default_dir);
    let coordinator_listener =
        Listener::bind(&COORDINATOR.parse()?, None).await.with_context(|| format!("cannot listen on {COORDINATOR}"))?;
    let agent_listener =
        Listener::bind(&AGENT.parse()?, None).await.with_context(|| format!("cannot listen on {AGENT}"))?;
    let coordinator = CoordinatorConfig {
        id: 1,
        data_dir: dir.join("coordinator"),
        advertise: COORDINATOR.into(),
        bootstrap: true,
        tick: Duration::from_millis(100),
        snapshot_every: 10_000,
        leases: Default::default(),
    };
    let agent = AgentConfig {
        state_dir: dir.join("agent"),
        console_bytes: 256 * 1024,
        shim_program: std::env::current_exe().context("cannot find the mirari binary")?,
        kvm_device: "/dev/kvm".into(),
    };
    let join = JoinConfig {
        coordinators: vec![Endpoint::Tcp(COORDINATOR.into())],
        name: daemon::hostname(),
        advertise: AGENT.into(),
        labels: Default::default(),
        capacity: Resources { memory_mib: daemon::default_memory_mib(), vcpus: daemon::default_vcpus(), instances: 64 },
        timing: Default::default(),
    };
    eprintln!(
        "mirari dev: a single-node coordinator on {COORDINATOR} and a local agent on {AGENT}, loopback only and \
         without TLS; state in {}\n  try: mirari cluster deploy -f examples/hello/mirari.toml --count 3\n       mirari cluster status\n  \
         stop with Ctrl-C (instances keep running; the next `mirari dev` re-adopts them)",
        dir.display()
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let coordinator_task = tokio::spawn(server::run(coordinator, coordinator_listener, wait(stopped.clone())));
    let agent_task = tokio::spawn(daemon::run(agent, Some(join), agent_listener, wait(stopped)));
    tokio::signal::ctrl_c().await?;
    let _ = stop.send(true);
    agent_task.await??;
    coordinator_task.await??;
    Ok(ExitCode::SUCCESS)
}
