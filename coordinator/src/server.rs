//! A coordinator process: storage, raft driver, transport and services on one listener.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use mirari_blobs::{BlobError, BlobStore};
use mirari_metrics::{MetricsError, MetricsListener};
use mirari_proto::auth::{self, Guarded};
use mirari_proto::coordinator::{self as pb, coordinator_client::CoordinatorClient};
use mirari_proto::endpoint::{Endpoint, Listener};

use crate::agents::AgentClients;
use crate::blobs::ReplicatedBlobs;
use crate::leader::{self, LeaseTiming, Leases};
use crate::providers::Providers;

use crate::consensus::logger;
use crate::consensus::node::{Node, NodeConfig, NodeError};
use crate::consensus::redb_store::RedbBacking;
use crate::consensus::storage::{RaftLog, StoreError};
use crate::dns::{self, DnsError, DnsListener};
use crate::driver;
use crate::metrics::CoordinatorMetrics;
use crate::service::{CoordinatorService, PeerService};
use crate::transport::Transport;
use crate::web;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// This node's raft ID, unique in the cluster and never reused.
    pub id: u64,
    pub data_dir: PathBuf,
    /// The address other coordinators, agents and CLIs reach this node at.
    pub advertise: String,
    /// Start a new cluster with this node as its only member, if the data directory is empty.
    pub bootstrap: bool,
    pub tick: Duration,
    pub snapshot_every: u64,
    pub leases: LeaseTiming,
    /// Where to answer DNS for the apps' healthy instances (UDP and TCP), if anywhere.
    pub dns_listen: Option<SocketAddr>,
    /// Where to serve `GET /metrics` (plain HTTP), if anywhere.
    pub http_listen: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the data directory {}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("cannot open the blob store")]
    Blobs(#[source] BlobError),
    #[error("the API server failed")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("the raft driver stopped unexpectedly")]
    DriverGone,
    #[error(
        "the data directory {} holds cluster {ours}, but the coordinator at {peer}, a member of it, belongs to \
         cluster {theirs}: this node was started on another cluster's data directory (give it its own, or remove it \
         from the cluster and add it back with an empty one)", data_dir.display()
    )]
    WrongCluster { data_dir: PathBuf, ours: String, peer: String, theirs: String },
}

/// How long the start-up check waits for each peer.
const PEER_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Refuses to start when a reachable member of this node's cluster says it belongs to another
/// one: the data directory is then not this node's. Members that do not answer are passed
/// over (they refuse mismatched messages themselves).
async fn check_peers_agree(ours: &str, peers: &[String], data_dir: &std::path::Path) -> Result<(), ServerError> {
    for peer in peers {
        let Ok(endpoint) = peer.parse::<Endpoint>() else { continue };
        let asked = tokio::time::timeout(PEER_CHECK_TIMEOUT, async {
            let channel = endpoint.connect().await.ok()?;
            let info = CoordinatorClient::new(channel).get_cluster_info(pb::ClusterInfoRequest {}).await.ok()?;
            Some(info.into_inner().cluster_id)
        });
        if let Ok(Some(theirs)) = asked.await
            && !theirs.is_empty()
            && theirs != ours
        {
            return Err(ServerError::WrongCluster {
                data_dir: data_dir.to_owned(),
                ours: ours.to_owned(),
                peer: peer.clone(),
                theirs,
            });
        }
    }
    Ok(())
}

/// Runs a coordinator on `listener` until `shutdown` resolves or raft fails.
pub async fn run(
    config: CoordinatorConfig,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| ServerError::DataDir { path: config.data_dir.clone(), source })?;
    let metrics = CoordinatorMetrics::default();
    let (backing, state) = RedbBacking::open(&config.data_dir.join("raft.redb"))?;
    let backing = backing.observe_commits(metrics.fsync_seconds.clone());
    backing.claim_node_id(config.id)?;
    let log = RaftLog::new(state, backing);
    let empty = log.read().conf_state.voters.is_empty() && log.read().last_index() == 0;
    if config.bootstrap {
        let members = BTreeMap::from([(config.id, config.advertise.clone())]);
        let cluster_id = format!("{:032x}", rand::random::<u128>());
        if Node::bootstrap(&log, &cluster_id, &members)? {
            tracing::info!(id = config.id, address = %config.advertise, %cluster_id, "bootstrapped a new cluster with this node as its only member");
        } else {
            tracing::warn!("--bootstrap ignored: the data directory already holds a cluster");
        }
    } else if empty {
        tracing::info!(
            "this node belongs to no cluster yet; it waits to be added: mirari cluster members add --id {} --address {}",
            config.id,
            config.advertise
        );
    }
    let node_config = NodeConfig { snapshot_every: config.snapshot_every, ..NodeConfig::new(config.id) };
    let node = Node::new(node_config, log, &logger::raft_logger())?;
    let (cluster_id, peers) = {
        let machine = node.machine();
        let peers: Vec<String> =
            machine.members.iter().filter(|(id, _)| **id != config.id).map(|(_, address)| address.clone()).collect();
        (machine.cluster_id.clone(), peers)
    };
    if let Some(cluster_id) = &cluster_id {
        check_peers_agree(cluster_id, &peers, &config.data_dir).await?;
    }
    let dns_listener = match config.dns_listen {
        Some(address) => {
            let listener = DnsListener::bind(address).await?;
            tracing::info!(address = %listener.local_addr(), "answering DNS for APP.service.mirari.");
            Some(listener)
        }
        None => None,
    };
    let metrics_listener = match config.http_listen {
        Some(address) => Some(MetricsListener::bind(address).await?),
        None => None,
    };
    let transport = Transport::new(config.id, config.advertise.clone());
    let (raft, driver_end) = driver::spawn(node, transport, config.tick, metrics.clone());
    let blob_store = BlobStore::open(&config.data_dir.join("blobs")).map_err(ServerError::Blobs)?;
    let blobs = ReplicatedBlobs::new(blob_store, raft.clone());
    tokio::spawn(blobs.clone().keep_replicated());
    tokio::spawn(blobs.clone().keep_collecting());
    let leases = Arc::new(Leases::new(config.leases));
    tokio::spawn(leader::run(raft.clone(), leases.clone()));
    let providers = Providers::new(raft.clone(), blobs.store().clone(), config.data_dir.join("images"));
    tokio::spawn(providers.run());
    let dns_served = {
        let raft = raft.clone();
        async move {
            match dns_listener {
                Some(listener) => dns::serve(listener, raft).await,
                None => std::future::pending().await,
            }
        }
    };
    let agents = Arc::new(AgentClients::default());
    let metrics_served = {
        let mut routes = mirari_metrics::router(metrics.registry(raft.clone()));
        match metrics_listener.as_ref().and_then(|l| l.local_addr().ok()) {
            Some(address) if address.ip().is_loopback() => {
                tracing::info!(%address, "serving the web console on http://{address}/");
                routes = routes.merge(web::router(raft.clone(), agents.clone()));
            }
            Some(address) => {
                tracing::info!(%address, "no web console on a non-loopback --http-listen (it has no authentication): reach a loopback one through ssh -L");
            }
            None => {}
        }
        async move {
            match metrics_listener {
                Some(listener) => mirari_metrics::serve_with(listener, routes).await,
                None => std::future::pending().await,
            }
        }
    };
    let router = mirari_proto::endpoint::server()
        .add_service(Guarded::new(PeerService::new(raft.clone(), blobs.clone()).into_server(), auth::peer_policy))
        .add_service(Guarded::new(
            CoordinatorService::new(raft, leases, blobs, agents).into_server(),
            auth::coordinator_policy,
        ));
    tokio::select! {
        served = listener.serve(router, shutdown) => Ok(served?),
        Err(dns) = dns_served => Err(dns.into()),
        Err(metrics) = metrics_served => Err(metrics.into()),
        driver = driver_end => match driver {
            Ok(Ok(())) | Err(_) => Err(ServerError::DriverGone),
            Ok(Err(error)) => Err(error.into()),
        },
    }
}
