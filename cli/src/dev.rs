//! `mirari dev`: a single-node coordinator and a local agent in one process, for trying Mirari
//! on one machine. Both listen on Unix sockets in the dev directory that only their owner may
//! open (0600): with no TLS, a socket's permissions are the whole access control.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use mirari_agent::daemon::{self, JoinConfig};
use mirari_agent::runtime::AgentConfig;
use mirari_coordinator::server::{self, CoordinatorConfig};
use mirari_core::registry::Resources;
use mirari_proto::endpoint::{Endpoint, Listener};

/// `/var/lib/mirari/dev` for root, else `$XDG_STATE_HOME/mirari/dev`.
pub fn default_dir() -> PathBuf {
    mirari_agent::paths::default_state_dir().parent().map_or_else(|| PathBuf::from("mirari-dev"), |p| p.join("dev"))
}

/// The coordinator socket of the dev cluster in `dir`.
pub fn coordinator_socket(dir: &Path) -> Endpoint {
    Endpoint::Unix(dir.join("coordinator.sock"))
}

/// The agent socket of the dev cluster in `dir`.
pub fn agent_socket(dir: &Path) -> Endpoint {
    Endpoint::Unix(dir.join("agent.sock"))
}

pub async fn run(dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,raft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let dir = dir.unwrap_or_else(default_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", dir.display()))?;
    let (coordinator_endpoint, agent_endpoint) = (coordinator_socket(&dir), agent_socket(&dir));
    let coordinator_listener = Listener::bind(&coordinator_endpoint, None)
        .await
        .with_context(|| format!("cannot listen on {coordinator_endpoint}"))?;
    let agent_listener =
        Listener::bind(&agent_endpoint, None).await.with_context(|| format!("cannot listen on {agent_endpoint}"))?;
    let coordinator = CoordinatorConfig {
        id: 1,
        data_dir: dir.join("coordinator"),
        advertise: coordinator_endpoint.to_string(),
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
        networks: Vec::new(),
    };
    let join = JoinConfig {
        coordinators: vec![coordinator_endpoint.clone()],
        name: daemon::hostname(),
        advertise: agent_endpoint.to_string(),
        labels: Default::default(),
        capacity: Resources { memory_mib: daemon::default_memory_mib(), vcpus: daemon::default_vcpus(), instances: 64 },
        timing: Default::default(),
    };
    let env = if dir == default_dir() {
        String::new()
    } else {
        format!("\n  in another shell: export MIRARI_ADDR={coordinator_endpoint} MIRARI_AGENT={agent_endpoint}")
    };
    eprintln!(
        "mirari dev: a single-node coordinator on {coordinator_endpoint} and a local agent on {agent_endpoint}, \
         sockets only you may open, no TLS; state in {}{env}\n  try: mirari cluster deploy -f examples/hello/mirari.toml --count 3\n       mirari cluster status\n  \
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
