//! The coordinator's gRPC services: the raft peer transport, and the API for the CLI and agents.
//!
//! Writes go through raft on the leader; a follower forwards them to the leader (once: a
//! forwarded request that meets another follower is answered with the leader's address).
//! Reads are linearizable by default (a ReadIndex barrier first); `stale` reads are served from
//! this node's state as it is and say so. Errors become `tonic::Status` in [`status_of`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use mirari_core::registry::{Outcome, Request};
use mirari_proto::coordinator::coordinator_client::CoordinatorClient;
use mirari_proto::coordinator::{self as pb, coordinator_server, peer_server};
use mirari_proto::endpoint::Endpoint;
use mirari_proto::log_codec;
use tonic::transport::Channel;
use tonic::{Request as RpcRequest, Response, Status};

use crate::consensus::decode_message;
use crate::consensus::node::MembershipChange;
use crate::driver::{ProposeError, RaftHandle};
use crate::transport::MAX_RAFT_MESSAGE_BYTES;

/// How long a write or read barrier may wait for raft before the caller is told to retry.
const RAFT_DEADLINE: Duration = Duration::from_secs(10);
/// Marks a request a follower forwarded, so it is not forwarded again.
const FORWARDED: &str = "x-mirari-forwarded";

#[derive(Debug, Clone)]
pub struct PeerService {
    raft: RaftHandle,
}

impl PeerService {
    pub fn new(raft: RaftHandle) -> Self {
        Self { raft }
    }

    pub fn into_server(self) -> peer_server::PeerServer<Self> {
        peer_server::PeerServer::new(self).max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl peer_server::Peer for PeerService {
    async fn send(
        &self,
        request: RpcRequest<pb::RaftBatch>,
    ) -> Result<Response<pb::RaftAck>, Status> {
        let batch = request.into_inner();
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
}

#[derive(Debug)]
pub struct CoordinatorService {
    raft: RaftHandle,
    leaders: Mutex<HashMap<String, CoordinatorClient<Channel>>>,
}

fn status_of(error: ProposeError, leader_address: Option<String>) -> Status {
    match error {
        ProposeError::NotLeader { .. } => match leader_address {
            Some(address) => {
                Status::unavailable(format!("not the leader; the leader is at {address}"))
            }
            None => Status::unavailable("no leader is elected right now; retry shortly"),
        },
        ProposeError::LeadershipLost => Status::unavailable(error.to_string()),
        ProposeError::Stopped => Status::internal(error.to_string()),
    }
}

fn applied_response(result: mirari_core::registry::ApplyResult) -> pb::ProposeResponse {
    match result {
        Ok(Outcome::Done) => pb::ProposeResponse::default(),
        Ok(Outcome::Placed(ids)) => pb::ProposeResponse {
            placed: ids.iter().map(|id| id.as_u64()).collect(),
            ..Default::default()
        },
        Err(rejection) => pb::ProposeResponse {
            rejected: rejection.to_string(),
            ..Default::default()
        },
    }
}

impl CoordinatorService {
    pub fn new(raft: RaftHandle) -> Self {
        Self {
            raft,
            leaders: Mutex::new(HashMap::new()),
        }
    }

    pub fn into_server(self) -> coordinator_server::CoordinatorServer<Self> {
        coordinator_server::CoordinatorServer::new(self)
    }

    fn leader_address(&self) -> Option<String> {
        let leader = self.raft.status().leader?;
        self.raft.machine().members.get(&leader).cloned()
    }

    /// A client for the leader's API, if this node knows where the leader is.
    async fn leader_client(&self) -> Result<CoordinatorClient<Channel>, Status> {
        let address = self
            .leader_address()
            .ok_or_else(|| Status::unavailable("no leader is elected right now; retry shortly"))?;
        if let Some(client) = self.leaders.lock().expect("leaders lock").get(&address) {
            return Ok(client.clone());
        }
        let endpoint: Endpoint = address
            .parse()
            .map_err(|e| Status::internal(format!("leader address: {e}")))?;
        let channel = endpoint.connect().await.map_err(|e| {
            Status::unavailable(format!("cannot reach the leader at {address}: {e}"))
        })?;
        let client = CoordinatorClient::new(channel);
        self.leaders
            .lock()
            .expect("leaders lock")
            .insert(address, client.clone());
        Ok(client)
    }

    /// Runs `local` here if this node leads; otherwise forwards with `remote`, once.
    async fn on_leader<T, L, R>(
        &self,
        forwarded: bool,
        local: L,
        remote: R,
    ) -> Result<Response<T>, Status>
    where
        L: Future<Output = Result<Result<T, Status>, ProposeError>>,
        R: AsyncFnOnce(CoordinatorClient<Channel>) -> Result<Response<T>, Status>,
    {
        match tokio::time::timeout(RAFT_DEADLINE, local).await {
            Err(_) => Err(Status::deadline_exceeded(
                "raft did not apply the write in time; retry with the same request ID",
            )),
            Ok(Ok(answer)) => answer.map(Response::new),
            Ok(Err(ProposeError::NotLeader { .. })) if !forwarded => {
                remote(self.leader_client().await?).await
            }
            Ok(Err(error)) => Err(status_of(error, self.leader_address())),
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
        Ok(pb::ReadInfo {
            served_by: status.id,
            stale,
            applied_index: status.applied_index,
        })
    }

    fn cluster_info(&self) -> pb::ClusterInfo {
        let status = self.raft.status();
        let machine = self.raft.machine();
        pb::ClusterInfo {
            id: status.id,
            role: status.role.to_owned(),
            term: status.term,
            leader_id: status.leader.unwrap_or_default(),
            leader_address: status
                .leader
                .and_then(|l| machine.members.get(&l).cloned())
                .unwrap_or_default(),
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            members: machine
                .members
                .iter()
                .map(|(&id, address)| pb::Member {
                    id,
                    address: address.clone(),
                })
                .collect(),
        }
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
        self.on_leader(forwarded, local, async |mut leader| match &change {
            MembershipChange::Add { id, address } => {
                leader
                    .add_member(forward(pb::AddMemberRequest {
                        id: *id,
                        address: address.clone(),
                    }))
                    .await
            }
            MembershipChange::Remove { id } => {
                leader
                    .remove_member(forward(pb::RemoveMemberRequest { id: *id }))
                    .await
            }
        })
        .await
    }
}

/// A request to the leader on behalf of a client, marked so the leader does not forward it.
fn forward<T>(body: T) -> RpcRequest<T> {
    let mut request = RpcRequest::new(body);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
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

    async fn add_member(
        &self,
        request: RpcRequest<pb::AddMemberRequest>,
    ) -> Result<Response<pb::ClusterInfo>, Status> {
        let forwarded = is_forwarded(&request);
        let body = request.into_inner();
        if body.id == 0 || body.address.parse::<Endpoint>().is_err() {
            return Err(Status::invalid_argument(
                "a member needs a non-zero --id and an --address host:port",
            ));
        }
        self.change_membership(
            forwarded,
            MembershipChange::Add {
                id: body.id,
                address: body.address,
            },
        )
        .await
    }

    async fn remove_member(
        &self,
        request: RpcRequest<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::ClusterInfo>, Status> {
        let forwarded = is_forwarded(&request);
        let id = request.into_inner().id;
        self.change_membership(forwarded, MembershipChange::Remove { id })
            .await
    }

    async fn propose(
        &self,
        request: RpcRequest<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let entry = request.into_inner().entry;
        let decoded: Request =
            log_codec::decode(&entry).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let local = async { Ok(Ok(applied_response(self.raft.propose(decoded).await?))) };
        self.on_leader(forwarded, local, async |mut leader| {
            leader.propose(forward(pb::ProposeRequest { entry })).await
        })
        .await
    }

    async fn list_hosts(
        &self,
        request: RpcRequest<pb::ReadRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        let read = self.read_barrier(request.into_inner().stale).await?;
        let hosts = self
            .raft
            .machine()
            .registry
            .hosts()
            .map(log_codec::host_to_pb)
            .collect();
        Ok(Response::new(pb::ListHostsResponse {
            hosts,
            read: Some(read),
        }))
    }
}
