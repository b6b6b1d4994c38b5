//! The agent daemon: the runtime, the agent API on a listener, and (when joined) the cluster
//! link. The `mirari-agent` binary and `mirari dev` both run it.

use std::collections::{BTreeMap, BTreeSet};

use mirari_core::lease::LeaseTiming;
use mirari_core::registry::{Host, Resources};
use mirari_metrics::{MetricsError, MetricsListener};
use mirari_proto::auth::{self, Guarded};
use mirari_proto::endpoint::{Endpoint, Listener};

use crate::builder::Builder;
use crate::cluster::{ClusterConfig, Coordinators};
use crate::runtime::{self, Agent, AgentConfig, AgentError};
use crate::service::AgentService;

/// How the agent joins a cluster.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    pub coordinators: Vec<Endpoint>,
    /// The host's name in the cluster.
    pub name: String,
    /// Where coordinators reach this agent's API (host:port).
    pub advertise: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    pub timing: LeaseTiming,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start the agent")]
    Agent(#[from] AgentError),
    #[error("the agent API server failed")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Runs the agent until `shutdown` resolves (or its driver has to stop). Instances keep
/// running afterwards.
pub async fn run(
    config: AgentConfig,
    join: Option<JoinConfig>,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    let fingerprints = runtime::fingerprint(&config).await;
    for fingerprint in &fingerprints {
        let facts: Vec<String> = fingerprint.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        match &fingerprint.unavailable {
            None => {
                tracing::info!(backend = %fingerprint.target, facts = facts.join(" "), "backend available")
            }
            Some(reason) => {
                tracing::warn!(backend = %fingerprint.target, %reason, "backend unavailable")
            }
        }
    }
    let metrics_listener = match config.http_listen {
        Some(address) => Some(MetricsListener::bind(address).await?),
        None => None,
    };
    let networks = runtime::usable_networks(&config);
    let cluster = join.as_ref().map(|join| {
        let backends: BTreeSet<_> = fingerprints.iter().filter(|f| f.unavailable.is_none()).map(|f| f.target).collect();
        let host = Host {
            labels: join.labels.clone(),
            networks: networks.keys().cloned().collect(),
            ..Host::up(&join.name, join.advertise.clone(), backends, join.capacity)
        };
        tracing::info!(host = %join.name, advertise = %join.advertise, "joining the cluster");
        ClusterConfig { coordinators: Coordinators::new(join.coordinators.clone()), host, timing: join.timing }
    });
    let (agent, driver) = Agent::open(config.clone(), fingerprints, networks, cluster.clone()).await?;
    let builder = join.as_ref().zip(cluster.as_ref()).map(|(join, cluster)| Builder {
        coordinators: cluster.coordinators.clone(),
        blobs: agent.blobs().clone(),
        scratch: config.state_dir.join("builds"),
        cache: mirari_build::cache::BuildCache::new(config.state_dir.join("build-cache")),
        host: join.name.clone(),
    });
    let endpoint = listener.local_endpoint().map_or_else(|_| "?".into(), |e: Endpoint| e.to_string());
    tracing::info!(%endpoint, state_dir = %config.state_dir.display(), "mirari-agent serving");
    let metrics_served = {
        let registry = crate::metrics::registry(&agent);
        async move {
            match metrics_listener {
                Some(listener) => mirari_metrics::serve(listener, registry).await,
                None => std::future::pending().await,
            }
        }
    };
    let service = Guarded::new(AgentService::new(agent, builder).into_server(), auth::agent_policy);
    let router = mirari_proto::endpoint::server().add_service(service);
    tokio::select! {
        served = listener.serve(router, shutdown) => served?,
        Err(metrics) = metrics_served => return Err(metrics.into()),
        ended = driver => return Err(match ended {
            Ok(Err(error)) => DaemonError::Agent(error),
            _ => DaemonError::Agent(AgentError::Stopped),
        }),
    }
    tracing::info!("mirari-agent stopped; instances keep running and are re-adopted at the next start");
    Ok(())
}

/// This machine's memory in MiB, less a reserve for the host itself.
pub fn default_memory_mib() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(1 << 20);
    (total_kib / 1024).saturating_sub(512).max(256)
}

/// vCPUs offered per host CPU: unikernels are mostly idle, and hypervisors share CPUs.
pub const VCPU_OVERCOMMIT: u32 = 8;

/// The vCPUs this host offers: `VCPU_OVERCOMMIT` per CPU.
pub fn default_vcpus() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    cpus.saturating_mul(VCPU_OVERCOMMIT)
}

/// The machine's hostname, the default host name in the cluster.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}
