//! Reaching agents from a coordinator: builds run on them, and consoles and lifecycle logs of
//! their instances are proxied through the coordinator to the CLI.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::StreamExt;
use futures::stream::BoxStream;
use mirari_core::config::AppConfig;
use mirari_core::ids::{self, InstanceId};
use mirari_core::instance::Desired;
use mirari_core::registry::{HostId, HostStatus};
use mirari_core::target::Target;
use mirari_proto::agent::agent_client::AgentClient;
use mirari_proto::agent::{self as pb, build_event};
use mirari_proto::blob_stream::BlobSink;
use mirari_proto::endpoint::Endpoint;
use tonic::Status;
use tonic::transport::Channel;

use crate::blobs::ReplicatedBlobs;
use crate::driver::RaftHandle;

/// Where an instance runs.
enum Place {
    Agent { host: HostId, address: String },
    Provider { provider: mirari_core::provider::Provider, cluster: String, name: HostId },
}

#[derive(Debug, Default)]
pub struct AgentClients {
    clients: Mutex<HashMap<String, AgentClient<Channel>>>,
}

impl AgentClients {
    pub async fn get(&self, host: &HostId, address: &str) -> Result<AgentClient<Channel>, Status> {
        if let Some(client) = self.clients.lock().expect("agent clients lock").get(address) {
            return Ok(client.clone());
        }
        let endpoint: Endpoint =
            address.parse().map_err(|e| Status::internal(format!("host {host} has a bad address: {e}")))?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("cannot reach the agent of host {host} at {address}: {e}")))?;
        let client = AgentClient::new(channel);
        self.clients.lock().expect("agent clients lock").insert(address.to_owned(), client.clone());
        Ok(client)
    }

    fn forget(&self, address: &str) {
        self.clients.lock().expect("agent clients lock").remove(address);
    }

    /// Where the instance a person means by `prefix` runs (or ran).
    fn place_of(raft: &RaftHandle, prefix: &str) -> Result<(InstanceId, Place), Status> {
        let machine = raft.machine();
        let registry = &machine.registry;
        let id = ids::resolve_prefix(prefix, registry.instances().map(|i| i.id))
            .map_err(|e| Status::not_found(e.to_string()))?;
        let host_id = registry.instance(id).expect("resolved").host.clone();
        let host = registry.host(&host_id);
        let place = match host.and_then(|h| h.provider.clone()) {
            Some(provider) => {
                Place::Provider { provider, cluster: machine.cluster_id.clone().unwrap_or_default(), name: host_id }
            }
            None => Place::Agent { address: host.map(|h| h.address.clone()).unwrap_or_default(), host: host_id },
        };
        Ok((id, place))
    }

    /// The agent that runs (or ran) the instance a person means by `prefix`.
    async fn agent_of(&self, raft: &RaftHandle, prefix: &str) -> Result<(InstanceId, AgentClient<Channel>), Status> {
        match Self::place_of(raft, prefix)? {
            (id, Place::Agent { host, address }) => Ok((id, self.get(&host, &address).await?)),
            (id, Place::Provider { name, .. }) => Err(Status::failed_precondition(format!(
                "instance {id} runs on provider {name}'s machine: no agent keeps its lifecycle log (mirari console {id} shows the machine's console)"
            ))),
        }
    }

    /// An instance's console: streamed from its agent, or, for a provider's machine, what the
    /// provider kept of it (once: providers keep the console, they do not stream it).
    pub async fn console(
        &self,
        raft: &RaftHandle,
        request: pb::ConsoleRequest,
    ) -> Result<BoxStream<'static, Result<pb::ConsoleChunk, Status>>, Status> {
        if let (id, Place::Provider { provider, cluster, name }) = Self::place_of(raft, &request.id)? {
            let text = crate::providers::console(&provider, &cluster, id).await.map_err(|error| {
                Status::unavailable(format!("the console of instance {id} at provider {name}: {error}"))
            })?;
            let chunk = pb::ConsoleChunk { data: text.into_bytes(), dropped: 0 };
            return Ok(futures::stream::iter([Ok(chunk)]).boxed());
        }
        let (id, mut agent) = self.agent_of(raft, &request.id).await?;
        let stream =
            agent.stream_console(pb::ConsoleRequest { id: id.to_string(), follow: request.follow }).await?.into_inner();
        Ok(stream.boxed())
    }

    pub async fn events(&self, raft: &RaftHandle, request: pb::EventsRequest) -> Result<pb::EventsResponse, Status> {
        let (id, mut agent) = self.agent_of(raft, &request.id).await?;
        Ok(agent.get_events(pb::EventsRequest { id: id.to_string() }).await?.into_inner())
    }

    /// Runs a build on an agent that has the target's backend, relaying its progress; stores
    /// the artifact here and on a majority of coordinators before the final `done` event.
    pub async fn build(
        &self,
        raft: &RaftHandle,
        blobs: &ReplicatedBlobs,
        job: pb::BuildJob,
    ) -> Result<BoxStream<'static, Result<pb::BuildEvent, Status>>, Status> {
        let target: Target = job.target.parse().map_err(|e| Status::invalid_argument(format!("{e}")))?;
        AppConfig::parse(&job.config_path, &job.config_toml).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let builders = self.builders(raft, target);
        if builders.is_empty() {
            return Err(Status::failed_precondition(format!(
                "no host that is up has the {target} backend to build on"
            )));
        }
        let mut last_error = Status::unavailable("no builder answered");
        for (host, address) in builders {
            let mut agent = match self.get(&host, &address).await {
                Ok(agent) => agent,
                Err(error) => {
                    last_error = error;
                    continue;
                }
            };
            let mut events = match agent.build(job.clone()).await {
                Ok(events) => events.into_inner(),
                Err(error) if error.code() == tonic::Code::Unavailable => {
                    self.forget(&address);
                    last_error = error;
                    continue;
                }
                Err(error) => return Err(error),
            };
            // A host that lacks the build's requirements says so first: try the next one.
            match events.message().await {
                Err(error) if error.code() == tonic::Code::FailedPrecondition => {
                    tracing::info!(host = %host, %error, "this host cannot build; trying another");
                    last_error = error;
                }
                Err(error) => return Err(error),
                Ok(first) => {
                    let events = futures::stream::iter(first.map(Ok)).chain(events);
                    return Ok(relay_build(events, blobs.clone(), host).boxed());
                }
            }
        }
        Err(last_error)
    }

    /// Up hosts with the backend, the least busy first.
    fn builders(&self, raft: &RaftHandle, target: Target) -> Vec<(HostId, String)> {
        let machine = raft.machine();
        let registry = &machine.registry;
        let mut hosts: Vec<(usize, HostId, String)> = registry
            .hosts()
            .filter(|h| h.status == HostStatus::Up && h.provider.is_none() && h.backends.contains(&target))
            .map(|h| {
                let busy = registry.placed_on(&h.id).filter(|i| i.desired == Desired::Running).count();
                (busy, h.id.clone(), h.address.clone())
            })
            .collect();
        hosts.sort();
        hosts.into_iter().map(|(_, host, address)| (host, address)).collect()
    }
}

/// Passes progress through, streams the artifact into the blob store, and replicates it
/// before passing `done` on.
fn relay_build(
    mut events: impl futures::Stream<Item = Result<pb::BuildEvent, Status>> + Unpin + Send + 'static,
    blobs: ReplicatedBlobs,
    host: HostId,
) -> impl futures::Stream<Item = Result<pb::BuildEvent, Status>> {
    let (relay, relayed) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let outcome = async {
            let mut artifact = BlobSink::new(blobs.store(), None)?;
            while let Some(event) = events.next().await {
                match event?.event {
                    Some(build_event::Event::ArtifactChunk(chunk)) => artifact.write(chunk).await?,
                    Some(build_event::Event::Done(done)) => {
                        let (digest, _) = artifact.finish().await?;
                        if digest.to_string() != done.artifact_sha256 {
                            return Err(Status::data_loss(format!(
                                "host {host} sent an artifact with sha256 {digest}, not the {} it claimed",
                                done.artifact_sha256
                            )));
                        }
                        blobs.replicate(digest).await?;
                        let done = pb::BuildDone { host: host.0.clone(), ..done };
                        return Ok(pb::BuildEvent { event: Some(build_event::Event::Done(done)) });
                    }
                    other => {
                        if relay.send(Ok(pb::BuildEvent { event: other })).await.is_err() {
                            return Err(Status::cancelled("the caller went away"));
                        }
                    }
                }
            }
            Err(Status::aborted(format!("the build on host {host} ended without an artifact")))
        };
        let last = outcome.await;
        let _ = relay.send(last).await;
    });
    tokio_stream::wrappers::ReceiverStream::new(relayed)
}
