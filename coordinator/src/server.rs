//! A coordinator process: storage, raft driver, transport and services on one listener.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use mirari_blobs::{BlobError, BlobStore};
use mirari_proto::auth::{self, Guarded};
use mirari_proto::endpoint::Listener;

use crate::blobs::ReplicatedBlobs;
use crate::leader::{self, LeaseTiming, Leases};

use crate::consensus::logger;
use crate::consensus::node::{Node, NodeConfig, NodeError};
use crate::consensus::redb_store::RedbBacking;
use crate::consensus::storage::{RaftLog, StoreError};
use crate::driver;
use crate::service::{CoordinatorService, PeerService};
use crate::transport::Transport;

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
    #[error("the raft driver stopped unexpectedly")]
    DriverGone,
}

/// Runs a coordinator on `listener` until `shutdown` resolves or raft fails.
pub async fn run(
    config: CoordinatorConfig,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| ServerError::DataDir { path: config.data_dir.clone(), source })?;
    let (backing, state) = RedbBacking::open(&config.data_dir.join("raft.redb"))?;
    let log = RaftLog::new(state, backing);
    let empty = log.read().conf_state.voters.is_empty() && log.read().last_index() == 0;
    if config.bootstrap {
        let members = BTreeMap::from([(config.id, config.advertise.clone())]);
        if Node::bootstrap(&log, &members)? {
            tracing::info!(id = config.id, address = %config.advertise, "bootstrapped a new cluster with this node as its only member");
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
    let transport = Transport::new(config.id, config.advertise.clone());
    let (raft, driver_task) = driver::spawn(node, transport, config.tick);
    let blob_store = BlobStore::open(&config.data_dir.join("blobs")).map_err(ServerError::Blobs)?;
    let blobs = ReplicatedBlobs::new(blob_store, raft.clone());
    let leases = Arc::new(Leases::default());
    tokio::spawn(leader::run(raft.clone(), leases.clone(), config.leases));
    let router = tonic::transport::Server::builder()
        .add_service(Guarded::new(PeerService::new(raft.clone(), blobs.clone()).into_server(), auth::peer_policy))
        .add_service(Guarded::new(
            CoordinatorService::new(raft, leases, config.leases, blobs).into_server(),
            auth::coordinator_policy,
        ));
    tokio::select! {
        served = listener.serve(router, shutdown) => Ok(served?),
        driver = driver_task => match driver {
            Ok(Ok(())) | Err(_) => Err(ServerError::DriverGone),
            Ok(Err(error)) => Err(error.into()),
        },
    }
}
