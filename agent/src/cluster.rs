//! The agent's calls to the coordinators: one client with failover, and the calls the cluster
//! link's effects make (register, renew, report, follow assignments, fetch blobs), each
//! bounded in time and answered as a `machine::Input`.
//!
//! Decisions about the lease (when to renew, when it runs out, what to do then) are the
//! machine's (`machine.rs`); nothing here waits on anything but its own call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirari_blobs::BlobStore;
use mirari_core::digest::Digest;
use mirari_core::ids::InstanceId;
use mirari_core::lease::LeaseTiming;
use mirari_core::registry::{self, InstanceReport};
use mirari_core::spec::InstanceSpec;
use mirari_proto::blob_stream::{self, ReceiveError};
use mirari_proto::convert::WireError;
use mirari_proto::coordinator::coordinator_client::CoordinatorClient;
use mirari_proto::coordinator::{self as pb};
use mirari_proto::endpoint::Endpoint;
use mirari_proto::log_codec;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::machine::{Input, Lease};

/// How long one renewal may take, connecting included, before the next coordinator is tried:
/// well within the lease's time to live, so a dead coordinator costs one attempt, not the
/// lease.
const RENEW_DEADLINE: Duration = Duration::from_secs(1);
/// The same for the other calls.
const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// Assignment sets about many instances are large.
const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// Before opening the assignment stream again after it broke.
const REWATCH_DELAY: Duration = Duration::from_millis(300);
/// An assignment stream silent this long is given up for another coordinator's.
const QUIET_STREAM: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no coordinator answered ({0})")]
    NoCoordinator(String),
    #[error("no coordinator could send blob {0}")]
    BlobNotFound(Digest),
}

/// The coordinators this agent talks to. One connection is kept and reused; a call that fails
/// moves on to the next coordinator.
#[derive(Debug, Clone)]
pub struct Coordinators {
    endpoints: Arc<Vec<Endpoint>>,
    current: Arc<Mutex<Current>>,
}

#[derive(Debug, Default)]
struct Current {
    index: usize,
    client: Option<CoordinatorClient<Channel>>,
}

impl Coordinators {
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        Self { endpoints: Arc::new(endpoints), current: Arc::default() }
    }

    /// A client of the current coordinator, connected within `deadline`.
    async fn client(&self, deadline: Duration) -> Result<CoordinatorClient<Channel>, ClusterError> {
        let index = {
            let current = self.current.lock().expect("coordinators lock");
            if let Some(client) = &current.client {
                return Ok(client.clone());
            }
            current.index
        };
        let endpoint = self
            .endpoints
            .get(index % self.endpoints.len().max(1))
            .ok_or_else(|| ClusterError::NoCoordinator("none configured".into()))?;
        let channel = match tokio::time::timeout(deadline, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => {
                self.rotate();
                return Err(ClusterError::NoCoordinator(mirari_core::errors::chain(&error)));
            }
            Err(_) => {
                self.rotate();
                return Err(ClusterError::NoCoordinator(format!("{endpoint} did not answer in time")));
            }
        };
        let client = CoordinatorClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(mirari_core::limits::MAX_REQUEST_BYTES);
        let mut current = self.current.lock().expect("coordinators lock");
        if current.index == index {
            current.client = Some(client.clone());
        }
        Ok(client)
    }

    /// Moves on to the next coordinator (the current one failed a call).
    pub fn rotate(&self) {
        let mut current = self.current.lock().expect("coordinators lock");
        current.index += 1;
        current.client = None;
    }

    /// Calls `rpc` on the current coordinator within `deadline`; on failure, moves on.
    async fn call<T, F>(&self, deadline: Duration, rpc: impl FnOnce(CoordinatorClient<Channel>) -> F) -> Option<T>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let outcome = tokio::time::timeout(deadline, async {
            let client = self.client(deadline).await.ok()?;
            rpc(client).await.ok()
        })
        .await;
        match outcome {
            Ok(Some(response)) => Some(response.into_inner()),
            _ => {
                self.rotate();
                None
            }
        }
    }

    /// Fetches a blob into `store`, verifying its digest, from whichever coordinator has it.
    pub async fn fetch_blob(&self, store: &BlobStore, digest: Digest) -> Result<(), ClusterError> {
        if store.contains(&digest) {
            return Ok(());
        }
        for _ in 0..self.endpoints.len() {
            let Ok(mut client) = self.client(CALL_DEADLINE).await else {
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
    pub host: registry::Host,
    pub timing: LeaseTiming,
}

fn lease_of(answer: pb::Lease) -> Lease {
    Lease { ttl_ms: answer.ttl_ms, register_again: answer.register_again }
}

/// Registers the host; answered with the boot time it was sent at.
pub async fn register(coordinators: &Coordinators, host: registry::Host, sent_ms: u64) -> Input {
    let request = pb::RegisterHostRequest { host: Some(log_codec::host_to_pb(&host)) };
    let answer = coordinators.call(CALL_DEADLINE, |mut c| async move { c.register_host(request).await }).await;
    Input::Registered { sent_ms, outcome: answer.map(lease_of).ok_or(()) }
}

/// Renews the lease of `host`.
pub async fn renew(coordinators: &Coordinators, host: &str, sent_ms: u64) -> Input {
    let request = pb::HeartbeatRequest { host: host.to_owned() };
    let answer = coordinators.call(RENEW_DEADLINE, |mut c| async move { c.heartbeat(request).await }).await;
    Input::Renewed { sent_ms, outcome: answer.map(lease_of).ok_or(()) }
}

pub async fn report(coordinators: &Coordinators, host: &str, reports: Vec<InstanceReport>) -> Input {
    let request = pb::ReportInstancesRequest {
        host: host.to_owned(),
        reports: reports.iter().map(log_codec::report_to_pb).collect(),
    };
    let ok = coordinators.call(CALL_DEADLINE, |mut c| async move { c.report_instances(request).await }).await.is_some();
    Input::Reported { reports, ok }
}

/// Fetches what assignment set `generation` needs.
pub async fn fetch_blobs(
    coordinators: &Coordinators,
    store: &BlobStore,
    generation: u64,
    digests: Vec<Digest>,
) -> Input {
    let mut ok = true;
    for digest in digests {
        if let Err(error) = coordinators.fetch_blob(store, digest).await {
            tracing::error!(%error, "cannot fetch what an assigned instance needs");
            ok = false;
        }
    }
    Input::BlobsFetched { generation, ok }
}

/// Follows the assignment stream of lease epoch `epoch`, sending every set it hears, until
/// the task is aborted (the lease ran out, or a new epoch began). A stream that breaks is
/// opened again, on the next coordinator; its first message is always the whole current set.
pub async fn watch_assignments(
    coordinators: Coordinators,
    host: String,
    epoch: u64,
    inputs: mpsc::UnboundedSender<Input>,
) {
    loop {
        let request = pb::WatchAssignmentsRequest { host: host.clone() };
        let opened = coordinators.call(CALL_DEADLINE, |mut c| async move { c.watch_assignments(request).await }).await;
        if let Some(mut stream) = opened {
            // A stream that goes quiet is as good as broken: its coordinator says "unchanged"
            // every second while it can confirm it is current.
            while let Ok(Ok(Some(assignments))) = tokio::time::timeout(QUIET_STREAM, stream.message()).await {
                if assignments.unchanged {
                    continue;
                }
                match decode_assignments(&assignments) {
                    Ok(instances) => {
                        let stopping = assignments.stopping.iter().copied().map(InstanceId::from_u64).collect();
                        let index = assignments.index;
                        if inputs.send(Input::Assigned { epoch, index, instances, stopping }).is_err() {
                            return;
                        }
                    }
                    Err(error) => tracing::error!(%error, "the coordinators sent an unreadable assignment"),
                }
            }
            coordinators.rotate();
        }
        tokio::time::sleep(REWATCH_DELAY).await;
    }
}

/// The instances an assignment set names, checked as every wire input is (fuzzed in `fuzz/`).
pub fn decode_assignments(assignments: &pb::Assignments) -> Result<Vec<(InstanceId, InstanceSpec)>, WireError> {
    assignments
        .instances
        .iter()
        .map(|a| {
            let spec = a.spec.as_ref().ok_or(WireError { field: "assignment.spec", reason: "missing".into() })?;
            Ok((InstanceId::from_u64(a.id), InstanceSpec::try_from(spec)?))
        })
        .collect()
}
