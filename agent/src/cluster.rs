//! The agent in a cluster: join the coordinators, keep the lease, run what is assigned, report
//! what is observed, and fence when the lease is lost.
//!
//! Three tasks share this host's view of the cluster:
//! - the lease loop registers the host, sends a heartbeat every second carrying the instance
//!   states that changed, and fences (stops every cluster instance) when no heartbeat was
//!   acknowledged for `fence_after` (see `mirari_core::lease`);
//! - the watcher follows the coordinators' assignment stream for this host;
//! - the applier fetches the blobs new assignments need and makes the local instances match,
//!   but only while the lease is valid.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mirari_blobs::BlobStore;
use mirari_core::digest::Digest;
use mirari_core::ids::InstanceId;
use mirari_core::instance::{ExitStatus, Phase};
use mirari_core::lease::LeaseTiming;
use mirari_core::registry::{Host, InstanceReport};
use mirari_core::spec::InstanceSpec;
use mirari_proto::blob_stream::{self, ReceiveError};
use mirari_proto::coordinator::coordinator_client::CoordinatorClient;
use mirari_proto::coordinator::{self as pb};
use mirari_proto::endpoint::Endpoint;
use mirari_proto::log_codec;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::runtime::Agent;
use crate::state::Origin;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Status responses about many instances are large.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no coordinator answered ({0})")]
    NoCoordinator(String),
    #[error("no coordinator could send blob {0}")]
    BlobNotFound(Digest),
}

/// The coordinators this agent talks to; calls move on to the next one when one fails.
#[derive(Debug, Clone)]
pub struct Coordinators {
    endpoints: Arc<Vec<Endpoint>>,
    next: Arc<AtomicUsize>,
}

impl Coordinators {
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        Self { endpoints: Arc::new(endpoints), next: Arc::new(AtomicUsize::new(0)) }
    }

    /// A client of the first coordinator that answers, starting from the current one.
    pub async fn client(&self) -> Result<CoordinatorClient<Channel>, ClusterError> {
        let mut last = String::from("none configured");
        for _ in 0..self.endpoints.len() {
            let index = self.next.load(Ordering::Relaxed) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
                Ok(Ok(channel)) => {
                    return Ok(CoordinatorClient::new(channel)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES));
                }
                Ok(Err(error)) => last = error.to_string(),
                Err(_) => last = format!("{endpoint} did not answer in time"),
            }
            self.rotate();
        }
        Err(ClusterError::NoCoordinator(last))
    }

    /// Moves on to the next coordinator.
    pub fn rotate(&self) {
        self.next.fetch_add(1, Ordering::Relaxed);
    }

    /// Fetches a blob into `store`, verifying its digest, from whichever coordinator has it.
    pub async fn fetch_blob(&self, store: &BlobStore, digest: Digest) -> Result<(), ClusterError> {
        if store.contains(&digest) {
            return Ok(());
        }
        for _ in 0..self.endpoints.len() {
            let Ok(mut client) = self.client().await else {
                continue;
            };
            let request = pb::FetchBlobRequest { sha256: digest.to_string() };
            let fetched = match client.fetch_blob(request).await {
                Ok(chunks) => blob_stream::receive(store, chunks.into_inner()).await,
                Err(status) => Err(ReceiveError::Stream(status)),
            };
            match fetched {
                Ok((received, _)) if received == digest => return Ok(()),
                Ok((received, _)) => {
                    tracing::warn!(%digest, %received, "a coordinator sent another blob than the one asked for")
                }
                Err(error) => tracing::debug!(%digest, %error, "fetching a blob failed; trying another coordinator"),
            }
            self.rotate();
        }
        Err(ClusterError::BlobNotFound(digest))
    }
}

/// How this host joins the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub coordinators: Coordinators,
    /// What the host offers (its status and times are set by the coordinators).
    pub host: Host,
    pub timing: LeaseTiming,
}

/// Runs the cluster link until the process ends.
pub async fn run(agent: Agent, config: ClusterConfig) {
    let (lease, lease_watch) = watch::channel(None);
    let (assignments, assignments_watch) = watch::channel(None);
    tokio::spawn(watch_assignments(config.clone(), lease_watch.clone(), assignments));
    tokio::spawn(apply_assignments(agent.clone(), config.coordinators.clone(), lease_watch, assignments_watch));
    keep_lease(agent, config, lease).await;
}

/// `Some(epoch)` while the lease is valid. The epoch changes every time the lease is regained,
/// so assignments heard before a lapse are never acted on after it.
type LeaseState = Option<u64>;

/// The latest assignment set, and the lease epoch of the stream it came on.
type Latest = Option<(u64, Vec<(InstanceId, InstanceSpec)>)>;

/// What was last reported of an instance, to send only changes.
type Reported = (Phase, u32, Option<ExitStatus>);

async fn keep_lease(agent: Agent, config: ClusterConfig, lease: watch::Sender<LeaseState>) {
    let host_id = config.host.id.clone();
    let mut registered = false;
    let mut valid_until: Option<Instant> = None;
    let mut reported: HashMap<InstanceId, Reported> = HashMap::new();
    let mut epoch = 0;
    let mut ticker = tokio::time::interval(config.timing.heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let sent_at = Instant::now();
        let renewed = if registered {
            let reports = changed_reports(&agent, &reported);
            match heartbeat(&config, &reports).await {
                Some(lease) if lease.register_again => {
                    tracing::warn!(host = %host_id, "the cluster does not hold this host as up; registering again");
                    registered = false;
                    false
                }
                Some(_) => {
                    for report in reports {
                        reported.insert(report.id, (report.phase, report.restarts, report.last_exit));
                    }
                    true
                }
                None => false,
            }
        } else if register(&config).await {
            tracing::info!(host = %host_id, "joined the cluster");
            registered = true;
            reported.clear();
            true
        } else {
            false
        };
        if renewed {
            valid_until = Some(sent_at + config.timing.fence_after);
        }
        let valid = valid_until.is_some_and(|until| Instant::now() < until);
        let was_valid = lease.borrow().is_some();
        if was_valid && !valid {
            match agent.fence() {
                Ok(count) => {
                    tracing::warn!(host = %host_id, instances = count, "lease lost: fenced this host's cluster instances")
                }
                Err(error) => tracing::error!(%error, "could not fence the cluster instances"),
            }
            lease.send_replace(None);
        } else if !was_valid && valid {
            epoch += 1;
            lease.send_replace(Some(epoch));
        }
    }
}

async fn register(config: &ClusterConfig) -> bool {
    let Ok(mut client) = config.coordinators.client().await else {
        return false;
    };
    let request = pb::RegisterHostRequest { host: Some(log_codec::host_to_pb(&config.host)) };
    match tokio::time::timeout(RPC_TIMEOUT, client.register_host(request)).await {
        Ok(Ok(_)) => true,
        outcome => {
            tracing::debug!(?outcome, "registration failed; trying the next coordinator");
            config.coordinators.rotate();
            false
        }
    }
}

async fn heartbeat(config: &ClusterConfig, reports: &[InstanceReport]) -> Option<pb::Lease> {
    let mut client = config.coordinators.client().await.ok()?;
    let request = pb::HeartbeatRequest {
        host: config.host.id.0.clone(),
        reports: reports.iter().map(log_codec::report_to_pb).collect(),
    };
    match tokio::time::timeout(RPC_TIMEOUT, client.heartbeat(request)).await {
        Ok(Ok(lease)) => Some(lease.into_inner()),
        _ => {
            config.coordinators.rotate();
            None
        }
    }
}

fn changed_reports(agent: &Agent, reported: &HashMap<InstanceId, Reported>) -> Vec<InstanceReport> {
    agent
        .list()
        .into_iter()
        .filter(|r| r.origin == Origin::Cluster)
        .filter(|r| {
            let life = &r.lifecycle;
            reported.get(&r.id) != Some(&(life.phase, life.restarts, life.last_exit))
        })
        .map(|r| InstanceReport {
            id: r.id,
            phase: r.lifecycle.phase,
            restarts: r.lifecycle.restarts,
            last_exit: r.lifecycle.last_exit,
            message: r.lifecycle.message.clone().unwrap_or_default(),
        })
        .collect()
}

/// Follows the assignment stream while the lease is valid, opening a fresh stream (whose first
/// message is the whole current set) for every lease epoch.
async fn watch_assignments(
    config: ClusterConfig,
    mut lease: watch::Receiver<LeaseState>,
    latest: watch::Sender<Latest>,
) {
    loop {
        let Some(epoch) = *lease.borrow_and_update() else {
            if lease.changed().await.is_err() {
                return;
            }
            continue;
        };
        let follow = async {
            let mut client = config.coordinators.client().await.ok()?;
            let request = pb::WatchAssignmentsRequest { host: config.host.id.0.clone() };
            let mut stream = client.watch_assignments(request).await.ok()?.into_inner();
            while let Ok(Some(assignments)) = stream.message().await {
                match decode_assignments(&assignments) {
                    Ok(set) => {
                        latest.send_replace(Some((epoch, set)));
                    }
                    Err(error) => tracing::error!(%error, "the coordinators sent an unreadable assignment"),
                }
            }
            None::<()>
        };
        tokio::select! {
            _ = follow => {
                config.coordinators.rotate();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            changed = lease.changed() => if changed.is_err() { return },
        }
    }
}

fn decode_assignments(
    assignments: &pb::Assignments,
) -> Result<Vec<(InstanceId, InstanceSpec)>, mirari_proto::convert::WireError> {
    assignments
        .instances
        .iter()
        .map(|a| {
            let spec = a
                .spec
                .as_ref()
                .ok_or(mirari_proto::convert::WireError { field: "assignment.spec", reason: "missing".into() })?;
            Ok((InstanceId::from_u64(a.id), InstanceSpec::try_from(spec)?))
        })
        .collect()
}

/// Makes the local instances match the latest assignments heard in the current lease epoch.
async fn apply_assignments(
    agent: Agent,
    coordinators: Coordinators,
    mut lease: watch::Receiver<LeaseState>,
    mut assignments: watch::Receiver<Latest>,
) {
    loop {
        tokio::select! {
            changed = lease.changed() => if changed.is_err() { return },
            changed = assignments.changed() => if changed.is_err() { return },
        }
        let current = *lease.borrow_and_update();
        let Some((epoch, set)) = assignments.borrow_and_update().clone() else { continue };
        if current != Some(epoch) {
            continue;
        }
        let needed: Vec<Digest> = set
            .iter()
            .flat_map(|(_, spec)| std::iter::once(spec.artifact).chain(spec.files.iter().map(|f| f.digest)))
            .collect();
        let mut fetched = true;
        for digest in needed {
            if let Err(error) = coordinators.fetch_blob(agent.blobs(), digest).await {
                tracing::error!(%error, "cannot fetch what an assigned instance needs");
                fetched = false;
            }
        }
        if !fetched {
            // Try again soon: mark the assignment as unseen.
            tokio::time::sleep(Duration::from_secs(1)).await;
            assignments.mark_changed();
            continue;
        }
        if *lease.borrow() != Some(epoch) {
            continue; // The lease lapsed while fetching.
        }
        match agent.apply_assignments(&set) {
            Ok(()) => tracing::info!(instances = set.len(), "applied the cluster's assignments"),
            Err(error) => tracing::error!(%error, "cannot apply the cluster's assignments"),
        }
    }
}
