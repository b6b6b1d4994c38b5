//! The agent's gRPC service: wire requests in, runtime calls, wire responses out. Errors become
//! `tonic::Status` in one place, [`status_of`].

use futures::StreamExt;
use futures::stream::BoxStream;
use mirari_blobs::BlobError;
use mirari_core::spec::InstanceSpec;
use mirari_proto::agent::{self as pb, agent_server};
use mirari_proto::blob_stream;
use mirari_proto::convert::parse_digest;
use tonic::{Request, Response, Status, Streaming};

use crate::builder::Builder;
use crate::runtime::{Agent, AgentError};
use crate::state::InstanceRecord;

#[derive(Debug, Clone)]
pub struct AgentService {
    agent: Agent,
    /// Builds for the cluster; `None` when the agent has not joined one.
    builder: Option<Builder>,
}

impl AgentService {
    pub fn new(agent: Agent, builder: Option<Builder>) -> Self {
        Self { agent, builder }
    }

    pub fn into_server(self) -> agent_server::AgentServer<Self> {
        agent_server::AgentServer::new(self).max_decoding_message_size(mirari_core::limits::MAX_REQUEST_BYTES)
    }
}

fn status_of(error: AgentError) -> Status {
    let message = mirari_core::errors::chain(&error);
    match error {
        AgentError::NoSuchInstance(_) => Status::not_found(message),
        AgentError::InvalidRequest(_) => Status::invalid_argument(message),
        AgentError::BackendUnavailable { .. } | AgentError::MissingBlobs(_) | AgentError::ClusterInstance { .. } => {
            Status::failed_precondition(message)
        }
        AgentError::Blob(BlobError::Mismatch { .. }) => Status::data_loss(message),
        AgentError::State(_) | AgentError::Blob(_) | AgentError::Backend(_) | AgentError::StateDir { .. } => {
            Status::internal(message)
        }
        AgentError::Stopped => Status::unavailable(message),
    }
}

pub fn instance_to_pb(record: &InstanceRecord) -> pb::Instance {
    let life = &record.lifecycle;
    pb::Instance {
        id: record.id.to_string(),
        spec: Some(pb::InstanceSpec::from(&record.spec)),
        desired_running: life.desired == mirari_core::instance::Desired::Running,
        phase: pb::Phase::from(life.phase).into(),
        restarts: life.restarts,
        last_exit: life.last_exit.map(pb::ExitStatus::from),
        message: life.message.clone().unwrap_or_default(),
        created_at_ms: record.created_at_ms,
        started_at_ms: life.started_at_ms.unwrap_or_default(),
        backend_detail: record.detail.clone(),
        health: pb::Health::from(record.health).into(),
        health_message: record.health_message.clone(),
    }
}

#[tonic::async_trait]
impl agent_server::Agent for AgentService {
    async fn get_host_info(&self, _: Request<pb::GetHostInfoRequest>) -> Result<Response<pb::HostInfo>, Status> {
        let backends = self
            .agent
            .fingerprints()
            .iter()
            .map(|f| pb::BackendInfo {
                target: f.target.name().to_owned(),
                unavailable_reason: f.unavailable.clone().unwrap_or_default(),
                attributes: f.attributes.clone().into_iter().collect(),
                capabilities: self
                    .agent
                    .capabilities(f.target)
                    .map(|c| c.names().into_iter().map(String::from).collect())
                    .unwrap_or_default(),
            })
            .collect();
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
        Ok(Response::new(pb::HostInfo { hostname, agent_version: env!("CARGO_PKG_VERSION").into(), backends }))
    }

    async fn put_blob(
        &self,
        request: Request<Streaming<pb::BlobChunk>>,
    ) -> Result<Response<pb::PutBlobResponse>, Status> {
        let (digest, size) = blob_stream::receive(self.agent.blobs(), request.into_inner()).await?;
        Ok(Response::new(pb::PutBlobResponse { sha256: digest.to_string(), size }))
    }

    async fn missing_blobs(
        &self,
        request: Request<pb::MissingBlobsRequest>,
    ) -> Result<Response<pb::MissingBlobsResponse>, Status> {
        let mut missing = Vec::new();
        for text in request.into_inner().sha256 {
            if !self.agent.blobs().contains(&parse_digest("sha256", &text)?) {
                missing.push(text);
            }
        }
        Ok(Response::new(pb::MissingBlobsResponse { sha256: missing }))
    }

    async fn run_instances(
        &self,
        request: Request<pb::RunInstancesRequest>,
    ) -> Result<Response<pb::RunInstancesResponse>, Status> {
        let request = request.into_inner();
        let spec = request.spec.as_ref().ok_or_else(|| Status::invalid_argument("spec is missing"))?;
        let spec = InstanceSpec::try_from(spec)?;
        let ids = self.agent.run(spec, request.count).await.map_err(status_of)?;
        Ok(Response::new(pb::RunInstancesResponse { ids: ids.iter().map(ToString::to_string).collect() }))
    }

    async fn list_instances(
        &self,
        _: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let instances = self.agent.list().iter().map(instance_to_pb).collect();
        Ok(Response::new(pb::ListInstancesResponse { instances }))
    }

    async fn stop_instance(
        &self,
        request: Request<pb::StopInstanceRequest>,
    ) -> Result<Response<pb::StopInstanceResponse>, Status> {
        let id = self.agent.resolve(&request.into_inner().id).map_err(status_of)?;
        let record = self.agent.stop(id).await.map_err(status_of)?;
        Ok(Response::new(pb::StopInstanceResponse {
            forced: record.stop_forced.unwrap_or(false),
            instance: Some(instance_to_pb(&record)),
        }))
    }

    type StreamConsoleStream = BoxStream<'static, Result<pb::ConsoleChunk, Status>>;

    async fn stream_console(
        &self,
        request: Request<pb::ConsoleRequest>,
    ) -> Result<Response<Self::StreamConsoleStream>, Status> {
        let request = request.into_inner();
        let id = self.agent.resolve(&request.id).map_err(status_of)?;
        let console = self.agent.console(id).ok_or_else(|| Status::not_found(format!("no instance {id}")))?;
        let chunks =
            console.read(request.follow).map(|read| Ok(pb::ConsoleChunk { data: read.bytes, dropped: read.dropped }));
        Ok(Response::new(chunks.boxed()))
    }

    async fn get_events(&self, request: Request<pb::EventsRequest>) -> Result<Response<pb::EventsResponse>, Status> {
        let id = self.agent.resolve(&request.into_inner().id).map_err(status_of)?;
        let record = self.agent.get(id).ok_or_else(|| Status::not_found(format!("no instance {id}")))?;
        let events = record.events.iter().map(|e| pb::Event { at_ms: e.at_ms, message: e.message.clone() }).collect();
        Ok(Response::new(pb::EventsResponse { events }))
    }

    type BuildStream = BoxStream<'static, Result<pb::BuildEvent, Status>>;

    async fn build(&self, request: Request<pb::BuildJob>) -> Result<Response<Self::BuildStream>, Status> {
        let builder = self.builder.as_ref().ok_or_else(|| {
            Status::failed_precondition("this agent has not joined a cluster; builds run for the cluster only")
        })?;
        let events = builder.start(request.into_inner());
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(events).boxed()))
    }
}
