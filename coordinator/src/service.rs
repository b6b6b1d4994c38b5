//! The coordinator's gRPC services: the raft peer transport, and the API for the CLI and agents.
//!
//! Writes go through raft on the leader; a follower forwards them to the leader (once: a
//! forwarded request that meets another follower is answered with the leader's address).
//! Reads are linearizable by default (a ReadIndex barrier first); `stale` reads are served from
//! this node's state as it is and say so. Errors become `tonic::Status` in [`status_of`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use mirari_core::clock;
use mirari_core::limits;
use mirari_core::registry::{Command, HostAssignments, HostId, HostStatus, InstanceReport, Outcome, Registry, Request};
use mirari_proto::agent as wire_agent;
use mirari_proto::auth;
use mirari_proto::coordinator::coordinator_client::CoordinatorClient;
use mirari_proto::coordinator::{self as pb, coordinator_server, peer_server};
use mirari_proto::endpoint::Endpoint;
use mirari_proto::log_codec;
use tonic::transport::Channel;
use tonic::{Request as RpcRequest, Response, Status};

use crate::agents::AgentClients;
use crate::blobs::ReplicatedBlobs;
use crate::consensus::decode_message;
use crate::consensus::node::MembershipChange;
use crate::driver::{ProposeError, RaftHandle};
use crate::events::{Filter, Position};
use crate::leader::{Leases, fresh_request_id};
use crate::status::{Query, cluster_status};
use crate::transport::MAX_RAFT_MESSAGE_BYTES;

/// A status of 100,000 instances is a large message.
const MAX_STATUS_BYTES: usize = 256 << 20;
/// Assignment streams look again (and say the set is unchanged) at least this often, and at
/// most every `ASSIGNMENT_MIN_INTERVAL`.
const ASSIGNMENT_RECHECK: Duration = Duration::from_secs(1);
const ASSIGNMENT_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// How long a write or read barrier may wait for raft before the caller is told to retry.
const RAFT_DEADLINE: Duration = Duration::from_secs(10);
/// A heartbeat is answered within this, forwarded or not, or the agent tries another
/// coordinator: shorter than the agent's own per-attempt deadline.
const HEARTBEAT_DEADLINE: Duration = Duration::from_millis(800);
const REGISTER_DEADLINE: Duration = Duration::from_secs(5);
const REPORT_DEADLINE: Duration = Duration::from_secs(5);
/// Marks a request a follower forwarded, so it is not forwarded again.
const FORWARDED: &str = "x-mirari-forwarded";

#[derive(Debug, Clone)]
pub struct PeerService {
    raft: RaftHandle,
    blobs: ReplicatedBlobs,
    /// Peers of another cluster already refused (logged once each).
    refused_peers: Arc<Mutex<std::collections::HashSet<u64>>>,
}

impl PeerService {
    pub fn new(raft: RaftHandle, blobs: ReplicatedBlobs) -> Self {
        Self { raft, blobs, refused_peers: Arc::default() }
    }

    pub fn into_server(self) -> peer_server::PeerServer<Self> {
        peer_server::PeerServer::new(self).max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl peer_server::Peer for PeerService {
    async fn send(&self, request: RpcRequest<pb::RaftBatch>) -> Result<Response<pb::RaftAck>, Status> {
        let batch = request.into_inner();
        let ours = self.raft.machine().cluster_id.clone();
        if let Some(ours) = ours
            && !batch.cluster_id.is_empty()
            && batch.cluster_id != ours
        {
            let reason = format!(
                "coordinator {} belongs to cluster {ours}, but coordinator {} at {} sent messages of cluster {}: is \
                 one of them running on another cluster's data directory?",
                self.raft.status().id,
                batch.from,
                batch.from_address,
                batch.cluster_id
            );
            if self.refused_peers.lock().expect("refused peers lock").insert(batch.from) {
                tracing::error!(%reason, "refused raft messages from another cluster");
            }
            return Err(Status::failed_precondition(reason));
        }
        let messages = batch
            .messages
            .iter()
            .map(|bytes| decode_message(bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
        self.raft
            .step(batch.from, batch.from_address, messages)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::RaftAck {}))
    }

    async fn push_blob(
        &self,
        request: RpcRequest<tonic::Streaming<wire_agent::BlobChunk>>,
    ) -> Result<Response<wire_agent::PutBlobResponse>, Status> {
        let (digest, size) = self.blobs.receive(request.into_inner()).await?;
        Ok(Response::new(wire_agent::PutBlobResponse { sha256: digest.to_string(), size }))
    }
}

#[derive(Debug)]
pub struct CoordinatorService {
    raft: RaftHandle,
    leaders: Mutex<HashMap<String, CoordinatorClient<Channel>>>,
    /// Held while connecting to a leader, so calls arriving together make one connection.
    connecting: tokio::sync::Mutex<()>,
    leases: Arc<Leases>,
    blobs: ReplicatedBlobs,
    agents: Arc<AgentClients>,
}

fn status_of(error: ProposeError, leader_address: Option<String>) -> Status {
    match error {
        ProposeError::NotLeader { .. } => match leader_address {
            Some(address) => Status::unavailable(format!("not the leader; the leader is at {address}")),
            None => Status::unavailable("no leader is elected right now; retry shortly"),
        },
        ProposeError::LeadershipLost | ProposeError::DiskFailure(_) => Status::unavailable(error.to_string()),
        ProposeError::Stopped => Status::internal(error.to_string()),
        ProposeError::Invalid(_) => Status::invalid_argument(error.to_string()),
    }
}

/// The answer to a host whose lease ran out while the leader declares it down.
fn being_declared_down(host: &HostId) -> Status {
    Status::unavailable(format!(
        "host {host}'s lease ran out and the leader is declaring it down; it gets a lease once it has registered again"
    ))
}

fn applied_response(result: mirari_core::registry::ApplyResult) -> pb::ProposeResponse {
    match result {
        Ok(Outcome::Done) => pb::ProposeResponse::default(),
        Ok(Outcome::Unchanged) => pb::ProposeResponse { unchanged: true, ..Default::default() },
        Ok(Outcome::Registered { version, unchanged }) => {
            pb::ProposeResponse { version, unchanged, ..Default::default() }
        }
        Ok(Outcome::Placed(ids)) => {
            pb::ProposeResponse { placed: ids.iter().map(|id| id.as_u64()).collect(), ..Default::default() }
        }
        Err(rejection) => pb::ProposeResponse { rejected: rejection.to_string(), ..Default::default() },
    }
}

/// A lease of `ttl`, as granted.
fn granted(ttl: Duration) -> pb::Lease {
    pb::Lease { ttl_ms: mirari_core::clock::millis(ttl), register_again: false }
}

impl CoordinatorService {
    pub fn new(
        raft: RaftHandle,
        leases: Arc<Leases>,
        blobs: ReplicatedBlobs,
        agents: Arc<AgentClients>,
    ) -> Self {
        Self { raft, leaders: Mutex::new(HashMap::new()), connecting: tokio::sync::Mutex::new(()), leases, blobs, agents }
    }

    /// Requests are small (a registry entry, a heartbeat, a blob chunk); answers may be large
    /// (the status of 100,000 instances).
    pub fn into_server(self) -> coordinator_server::CoordinatorServer<Self> {
        coordinator_server::CoordinatorServer::new(self)
            .max_decoding_message_size(limits::MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_STATUS_BYTES)
    }

    /// The heartbeat, on the leader: renews the lease of a host that is up, once this node has
    /// confirmed it still leads (a ReadIndex round, no log entry): a deposed leader that has
    /// not noticed yet must not extend anyone's lease. The renewal counts from when the
    /// request arrived, the earliest moment it can count from.
    async fn heartbeat_here(&self, host: HostId) -> Result<Result<pb::Lease, Status>, ProposeError> {
        let received_ms = clock::boot_ms();
        let Some(term) = self.raft.leading_term() else {
            return Err(ProposeError::NotLeader { leader: self.raft.leader() });
        };
        self.raft.read_barrier().await?;
        if self.raft.leading_term() != Some(term) {
            return Err(ProposeError::NotLeader { leader: self.raft.leader() });
        }
        let renewed = {
            let machine = self.raft.machine();
            let record = machine.registry.host(&host).filter(|h| h.status == HostStatus::Up);
            record.map(|record| self.leases.renew(&machine.registry, record, received_ms))
        };
        Ok(match renewed {
            None => Ok(pb::Lease { ttl_ms: 0, register_again: true }),
            Some(Some(ttl)) => Ok(granted(ttl)),
            Some(None) => Err(being_declared_down(&host)),
        })
    }

    /// The instances `host` must run, as of the registry now.
    fn leader_address(&self) -> Option<String> {
        let leader = self.raft.leader()?;
        self.raft.machine().members.get(&leader).cloned()
    }

    /// A client for the leader's API at `address`, connected once and kept.
    async fn leader_client(&self, address: &str) -> Result<CoordinatorClient<Channel>, Status> {
        let kept = || self.leaders.lock().expect("leaders lock").get(address).cloned();
        if let Some(client) = kept() {
            return Ok(client);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(client) = kept() {
            return Ok(client);
        }
        let endpoint: Endpoint = address.parse().map_err(|e| Status::internal(format!("leader address: {e}")))?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("cannot reach the leader at {address}: {e}")))?;
        let client = CoordinatorClient::new(channel)
            .max_decoding_message_size(MAX_STATUS_BYTES)
            .max_encoding_message_size(limits::MAX_REQUEST_BYTES);
        self.leaders.lock().expect("leaders lock").insert(address.to_owned(), client.clone());
        Ok(client)
    }

    /// Runs `local` here if this node leads; otherwise forwards to the leader with `remote`.
    /// Everything happens within `deadline`: a caller is never held longer, whatever the
    /// network does.
    async fn on_leader<T, L, R, F>(
        &self,
        forwarded: bool,
        deadline: Duration,
        local: L,
        remote: R,
    ) -> Result<Response<T>, Status>
    where
        L: Future<Output = Result<Result<T, Status>, ProposeError>>,
        R: Fn(CoordinatorClient<Channel>) -> F,
        F: Future<Output = Result<Response<T>, Status>>,
    {
        let give_up = tokio::time::Instant::now() + deadline;
        match tokio::time::timeout(deadline, local).await {
            Err(_) => Err(Status::deadline_exceeded(
                "raft did not answer in time (an election, or a slow disk); retry with the same request ID",
            )),
            Ok(Ok(answer)) => answer.map(Response::new),
            Ok(Err(ProposeError::NotLeader { .. })) if !forwarded => self.forward_to_leader(give_up, remote).await,
            Ok(Err(error)) => Err(status_of(error, self.leader_address())),
        }
    }

    /// Forwards to the leader this node knows. When another is elected meanwhile, or the one
    /// asked does not answer, the call goes to the new one (a retried write applies once: it
    /// keeps its request ID), until `give_up`.
    async fn forward_to_leader<T, R, F>(&self, give_up: tokio::time::Instant, remote: R) -> Result<Response<T>, Status>
    where
        R: Fn(CoordinatorClient<Channel>) -> F,
        F: Future<Output = Result<Response<T>, Status>>,
    {
        let mut tried: Option<String> = None;
        let mut last = Status::unavailable("no leader is elected right now; retry shortly");
        loop {
            let leader = self.raft.leader();
            let known = self.leader_address().filter(|address| tried.as_ref() != Some(address));
            let Some(address) = known else {
                // No leader known, or only the one that just failed: wait for the next election.
                if tokio::time::timeout_at(give_up, self.raft.leader_other_than(leader)).await.is_err() {
                    return Err(last);
                }
                tried = None;
                continue;
            };
            let attempt = tokio::time::timeout_at(give_up, async {
                tokio::select! {
                    answer = async { remote(self.leader_client(&address).await?).await } => answer,
                    _ = self.raft.leader_other_than(leader) => Err(Status::unavailable("the leader changed")),
                }
            });
            match attempt.await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(status)) if !is_unreachable(&status) => return Err(status),
                // The kept connection stays: a leader slow to answer is no broken connection,
                // and a broken one reconnects by itself (a new one per timeout would cost a
                // TLS handshake each, under exactly the load that makes calls time out).
                outcome => {
                    last = match outcome {
                        Ok(Err(status)) => status,
                        _ => Status::unavailable(format!("the leader at {address} did not answer in time; retry")),
                    };
                    if tokio::time::Instant::now() >= give_up {
                        return Err(last);
                    }
                    tried = Some(address);
                }
            }
        }
    }

    async fn read_barrier(&self, stale: bool) -> Result<pb::ReadInfo, Status> {
        if !stale {
            match tokio::time::timeout(RAFT_DEADLINE, self.raft.read_barrier()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(status_of(error, self.leader_address())),
                Err(_) => {
                    return Err(Status::unavailable(
                        "cannot confirm this node is current (no leader reachable); retry, or read with --stale",
                    ));
                }
            }
        }
        let status = self.raft.status();
        Ok(pb::ReadInfo { served_by: status.id, stale, applied_index: status.applied_index })
    }

    fn cluster_info(&self) -> pb::ClusterInfo {
        cluster_info(&self.raft)
    }

    async fn change_membership(
        &self,
        forwarded: bool,
        change: MembershipChange,
    ) -> Result<Response<pb::ClusterInfo>, Status> {
        let local = async {
            let applied = self.raft.change_membership(change.clone()).await?;
            Ok(applied
                .map(|_| self.cluster_info())
                .map_err(|rejection| Status::failed_precondition(rejection.to_string())))
        };
        self.on_leader(forwarded, RAFT_DEADLINE, local, |mut leader| {
            let change = change.clone();
            async move {
                match change {
                    MembershipChange::Add { id, address } => {
                        leader.add_member(forward(pb::AddMemberRequest { id, address })).await
                    }
                    MembershipChange::Remove { id } => {
                        leader.remove_member(forward(pb::RemoveMemberRequest { id })).await
                    }
                }
            }
        })
        .await
    }
}

/// Whether a forwarded call failed because the leader is gone or no longer leads (so another
/// leader may take it), rather than because the leader refused it.
fn is_unreachable(status: &Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
}

/// A request to the leader on behalf of a client, marked so the leader does not forward it.
fn forward<T>(body: T) -> RpcRequest<T> {
    let mut request = RpcRequest::new(body);
    request.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    request
}

fn is_forwarded<T>(request: &RpcRequest<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

#[tonic::async_trait]
impl coordinator_server::Coordinator for CoordinatorService {
    async fn get_cluster_info(
        &self,
        _: RpcRequest<pb::ClusterInfoRequest>,
    ) -> Result<Response<pb::ClusterInfo>, Status> {
        Ok(Response::new(self.cluster_info()))
    }

    async fn add_member(&self, request: RpcRequest<pb::AddMemberRequest>) -> Result<Response<pb::ClusterInfo>, Status> {
        let forwarded = is_forwarded(&request);
        let body = request.into_inner();
        if body.id == 0 || body.address.parse::<Endpoint>().is_err() {
            return Err(Status::invalid_argument("a member needs a non-zero --id and an --address host:port"));
        }
        self.change_membership(forwarded, MembershipChange::Add { id: body.id, address: body.address }).await
    }

    async fn remove_member(
        &self,
        request: RpcRequest<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::ClusterInfo>, Status> {
        let forwarded = is_forwarded(&request);
        let id = request.into_inner().id;
        self.change_membership(forwarded, MembershipChange::Remove { id }).await
    }

    async fn propose(&self, request: RpcRequest<pb::ProposeRequest>) -> Result<Response<pb::ProposeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let caller = auth::caller(request.extensions()).cloned();
        let entry = request.into_inner().entry;
        let mut decoded: Request = log_codec::decode(&entry).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // People change apps, deployments, networks and hosts' eligibility; hosts' records,
        // placements, rollouts' ends and observed states come from agents and the leader.
        let for_people = matches!(
            decoded.command,
            Command::RegisterApp { .. }
                | Command::Deploy { .. }
                | Command::Scale { .. }
                | Command::StopDeployment { .. }
                | Command::StopInstances { .. }
                | Command::CreateNetwork { .. }
                | Command::RemoveNetwork { .. }
                | Command::Promote { .. }
                | Command::DrainHost { .. }
                | Command::RemoveHost { .. }
                | Command::AddProvider { .. }
        );
        let role = caller.as_ref().map(|c| c.identity.role);
        if role == Some(Some(mirari_proto::tls::Role::Operator)) && !for_people {
            return Err(Status::permission_denied(
                "an operator certificate may only propose app, deployment, network, provider and host eligibility changes",
            ));
        }
        // Who deployed, and when, is this coordinator's to say, not the client's; a request a
        // coordinator forwards was stamped by the one that took it.
        if let Command::Deploy { by, at_ms, .. } = &mut decoded.command
            && role != Some(Some(mirari_proto::tls::Role::Coordinator))
        {
            *by = caller.as_ref().and_then(|c| c.identity.name.clone()).unwrap_or_else(|| "local".to_owned());
            *at_ms = clock::wall_ms();
        }
        if let Command::AddProvider { at_ms, .. } = &mut decoded.command
            && role != Some(Some(mirari_proto::tls::Role::Coordinator))
        {
            *at_ms = clock::wall_ms();
        }
        let entry = log_codec::encode(&decoded);
        let local = async { Ok(Ok(applied_response(self.raft.propose(decoded).await?))) };
        self.on_leader(forwarded, RAFT_DEADLINE, local, |mut leader| {
            let entry = entry.clone();
            async move { leader.propose(forward(pb::ProposeRequest { entry })).await }
        })
        .await
    }

    async fn list_hosts(
        &self,
        request: RpcRequest<pb::ReadRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        let read = self.read_barrier(request.into_inner().stale).await?;
        let hosts = self.raft.machine().registry.hosts().map(log_codec::host_to_pb).collect();
        Ok(Response::new(pb::ListHostsResponse { hosts, read: Some(read) }))
    }

    async fn register_host(&self, request: RpcRequest<pb::RegisterHostRequest>) -> Result<Response<pb::Lease>, Status> {
        let forwarded = is_forwarded(&request);
        let extensions = request.extensions().clone();
        let body = request.into_inner();
        let wire_host = body.host.clone().ok_or_else(|| Status::invalid_argument("host is missing"))?;
        let mut host = log_codec::host_from_pb(&wire_host)?;
        auth::may_act_for_host(&extensions, &host.id.0)?;
        host.status = HostStatus::Up;
        host.registered_at_ms = clock::wall_ms();
        host.status_changed_at_ms = host.registered_at_ms;
        let id = host.id.clone();
        let received_ms = clock::boot_ms();
        let local = async {
            let command = Command::RegisterHost { host };
            let applied = self.raft.propose(Request { request_id: fresh_request_id("register"), command }).await?;
            if let Err(rejection) = applied {
                return Ok(Err(Status::invalid_argument(rejection.to_string())));
            }
            tracing::info!(host = %id, "host registered");
            let renewed = {
                let machine = self.raft.machine();
                machine.registry.host(&id).and_then(|record| self.leases.renew(&machine.registry, record, received_ms))
            };
            Ok(renewed.map(granted).ok_or_else(|| being_declared_down(&id)))
        };
        self.on_leader(forwarded, REGISTER_DEADLINE, local, |mut leader| {
            let body = body.clone();
            async move { leader.register_host(forward(body)).await }
        })
        .await
    }

    async fn heartbeat(&self, request: RpcRequest<pb::HeartbeatRequest>) -> Result<Response<pb::Lease>, Status> {
        let forwarded = is_forwarded(&request);
        auth::may_act_for_host(request.extensions(), &request.get_ref().host)?;
        let body = request.into_inner();
        let local = self.heartbeat_here(HostId(body.host.clone()));
        self.on_leader(forwarded, HEARTBEAT_DEADLINE, local, |mut leader| {
            let body = body.clone();
            async move { leader.heartbeat(forward(body)).await }
        })
        .await
    }

    async fn report_instances(
        &self,
        request: RpcRequest<pb::ReportInstancesRequest>,
    ) -> Result<Response<pb::ReportInstancesResponse>, Status> {
        let forwarded = is_forwarded(&request);
        auth::may_act_for_host(request.extensions(), &request.get_ref().host)?;
        let body = request.into_inner();
        let reports = body
            .reports
            .iter()
            .map(log_codec::report_from_pb)
            .collect::<Result<Vec<InstanceReport>, mirari_proto::convert::WireError>>()?;
        let local = async {
            let command =
                Command::ReportInstances { host: HostId(body.host.clone()), reports, at_ms: clock::wall_ms() };
            let applied = self.raft.propose(Request { request_id: fresh_request_id("report"), command }).await?;
            Ok(applied
                .map(|_| pb::ReportInstancesResponse {})
                .map_err(|rejection| Status::failed_precondition(rejection.to_string())))
        };
        self.on_leader(forwarded, REPORT_DEADLINE, local, |mut leader| {
            let body = body.clone();
            async move { leader.report_instances(forward(body)).await }
        })
        .await
    }

    type WatchAssignmentsStream = BoxStream<'static, Result<pb::Assignments, Status>>;

    async fn watch_assignments(
        &self,
        request: RpcRequest<pb::WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        auth::may_act_for_host(request.extensions(), &request.get_ref().host)?;
        let host = HostId(request.into_inner().host);
        self.read_barrier(false).await?;
        // The set and its version are read together: a change between them would go unseen.
        let (first, first_version) = {
            let machine = self.raft.machine();
            let registry = &machine.registry;
            (assignments_pb(registry, registry.assignments(&host)), registry.host_version(&host))
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let raft = self.raft.clone();
        let changes = raft.host_changes(&host);
        tokio::spawn(async move {
            let mut last = first.clone();
            if sender.send(Ok(first)).await.is_err() {
                return;
            }
            let mut seen_version = first_version;
            let mut looked_at = tokio::time::Instant::now();
            let mut woke_at = looked_at;
            loop {
                let _ = tokio::time::timeout(ASSIGNMENT_RECHECK, changes.notified()).await;
                // The first change after a quiet spell is looked at at once; changes close
                // together are taken together, one look per `ASSIGNMENT_MIN_INTERVAL`.
                tokio::time::sleep_until(woke_at + ASSIGNMENT_MIN_INTERVAL).await;
                woke_at = tokio::time::Instant::now();
                if sender.is_closed() {
                    return;
                }
                // Most registry changes are about other hosts: look again only when this host's
                // assignments changed, or once a recheck to say it is current (an agent takes a
                // stream gone quiet for a broken one).
                let version = raft.machine().registry.host_version(&host);
                if version == seen_version && looked_at.elapsed() < ASSIGNMENT_RECHECK {
                    continue;
                }
                // Linearizable, so a lagging follower never hands out assignments the leader
                // already took back.
                if tokio::time::timeout(RAFT_DEADLINE, raft.read_barrier()).await.map_or(true, |r| r.is_err()) {
                    continue;
                }
                looked_at = tokio::time::Instant::now();
                // The set is built again only when the host's version moved (a once-a-second
                // rebuild of every host's set was most of a coordinator's work at 10,000 hosts).
                let message = {
                    let machine = raft.machine();
                    let registry = &machine.registry;
                    let index = registry.applied_index();
                    let next = registry.assignments_since(&host, seen_version).map(|set| assignments_pb(registry, set));
                    seen_version = registry.host_version(&host);
                    match next {
                        Some(next) if next.instances != last.instances || next.stopping != last.stopping => {
                            last = next.clone();
                            next
                        }
                        _ => pb::Assignments { index, unchanged: true, ..Default::default() },
                    }
                };
                if sender.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(receiver).boxed()))
    }

    async fn put_blob(
        &self,
        request: RpcRequest<tonic::Streaming<wire_agent::BlobChunk>>,
    ) -> Result<Response<wire_agent::PutBlobResponse>, Status> {
        let (digest, size) = self.blobs.receive(request.into_inner()).await?;
        self.blobs.replicate(digest).await?;
        Ok(Response::new(wire_agent::PutBlobResponse { sha256: digest.to_string(), size }))
    }

    async fn missing_blobs(
        &self,
        request: RpcRequest<wire_agent::MissingBlobsRequest>,
    ) -> Result<Response<wire_agent::MissingBlobsResponse>, Status> {
        let mut missing = Vec::new();
        for text in request.into_inner().sha256 {
            let digest = mirari_proto::convert::parse_digest("sha256", &text)?;
            if !self.blobs.store().contains(&digest) {
                missing.push(text);
            }
        }
        Ok(Response::new(wire_agent::MissingBlobsResponse { sha256: missing }))
    }

    type FetchBlobStream = BoxStream<'static, Result<wire_agent::BlobChunk, Status>>;

    async fn fetch_blob(
        &self,
        request: RpcRequest<pb::FetchBlobRequest>,
    ) -> Result<Response<Self::FetchBlobStream>, Status> {
        let digest = mirari_proto::convert::parse_digest("sha256", &request.into_inner().sha256)?;
        Ok(Response::new(self.blobs.chunks(digest).await?.boxed()))
    }

    type BuildStream = BoxStream<'static, Result<wire_agent::BuildEvent, Status>>;

    async fn build(&self, request: RpcRequest<wire_agent::BuildJob>) -> Result<Response<Self::BuildStream>, Status> {
        Ok(Response::new(self.agents.build(&self.raft, &self.blobs, request.into_inner()).await?))
    }

    async fn get_status(&self, request: RpcRequest<pb::StatusRequest>) -> Result<Response<pb::ClusterStatus>, Status> {
        let request = request.into_inner();
        let query = Query::try_from(&request)?;
        let read = self.read_barrier(request.stale).await?;
        Ok(Response::new(cluster_status(&self.raft.machine().registry, &query, read, clock::wall_ms())))
    }

    type StreamConsoleStream = BoxStream<'static, Result<wire_agent::ConsoleChunk, Status>>;

    async fn stream_console(
        &self,
        request: RpcRequest<wire_agent::ConsoleRequest>,
    ) -> Result<Response<Self::StreamConsoleStream>, Status> {
        Ok(Response::new(self.agents.console(&self.raft, request.into_inner()).await?))
    }

    async fn get_events(
        &self,
        request: RpcRequest<wire_agent::EventsRequest>,
    ) -> Result<Response<wire_agent::EventsResponse>, Status> {
        Ok(Response::new(self.agents.events(&self.raft, request.into_inner()).await?))
    }

    type WatchEventsStream = BoxStream<'static, Result<pb::ClusterEvent, Status>>;

    async fn watch_events(
        &self,
        request: RpcRequest<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let request = request.into_inner();
        let wanted = |text: String| Some(text).filter(|text| !text.is_empty());
        let filter = Filter { app: wanted(request.app), host: wanted(request.host).map(HostId) };
        let from = match (request.from_index, request.tail) {
            (0, 0) => None,
            (0, tail) => Some(self.raft.events().tail_start(tail as usize, &filter)),
            (index, _) => Some(Position { index, offset: request.from_offset }),
        };
        let events = self.raft.watch_events(from, filter, request.follow);
        Ok(Response::new(
            events
                .map(|event| match event {
                    Ok(event) => Ok(pb::ClusterEvent::from(&event)),
                    Err(gone) => Err(Status::failed_precondition(gone.to_string())),
                })
                .boxed(),
        ))
    }
}

/// This node's view of the raft group: its role, term, indexes, the leader and the members.
pub fn cluster_info(raft: &RaftHandle) -> pb::ClusterInfo {
    let status = raft.status();
    let machine = raft.machine();
    pb::ClusterInfo {
        id: status.id,
        role: status.role.to_owned(),
        term: status.term,
        leader_id: status.leader.unwrap_or_default(),
        leader_address: status.leader.and_then(|l| machine.members.get(&l).cloned()).unwrap_or_default(),
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        members: machine.members.iter().map(|(&id, address)| pb::Member { id, address: address.clone() }).collect(),
        cluster_id: machine.cluster_id.clone().unwrap_or_default(),
        disk_failure: status.disk_failure.clone().unwrap_or_default(),
        replication: status
            .replication
            .iter()
            .map(|r| pb::MemberReplication { id: r.id, matched: r.matched, state: r.state.to_owned() })
            .collect(),
    }
}

fn assignments_pb(registry: &Registry, (run, stop): HostAssignments) -> pb::Assignments {
    let instances = run
        .iter()
        .map(|(id, spec)| pb::Assignment { id: id.as_u64(), spec: Some(wire_agent::InstanceSpec::from(spec)) })
        .collect();
    let stopping = stop.iter().map(|id| id.as_u64()).collect();
    pb::Assignments { index: registry.applied_index(), instances, unchanged: false, stopping }
}
