//! What the web console's page shows, as JSON: this node's raft view, hosts with capacity and
//! use, deployments with counts and rollout progress, networks, and instances.

use std::num::NonZeroUsize;

use mirari_core::instance::Desired;
use mirari_core::registry::{HostStatus, Registry, Resources};
use mirari_proto::coordinator as pb;
use serde::Serialize;

use crate::status::deployment_status;
use crate::status::instances::{self, Filter};

#[derive(Debug, Serialize)]
pub struct Overview {
    pub node: Node,
    pub hosts: Vec<Host>,
    pub deployments: Vec<Deployment>,
    pub networks: Vec<Network>,
    /// The first instances that should run or still hold their slot, by ID.
    pub instances: Vec<Instance>,
    /// How many there are in all.
    pub instances_total: u64,
}

#[derive(Debug, Serialize)]
pub struct Node {
    pub id: u64,
    pub role: String,
    pub term: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub members: Vec<Member>,
    pub disk_failure: String,
}

#[derive(Debug, Serialize)]
pub struct Member {
    pub id: u64,
    pub address: String,
    /// Known on the leader: the last index of its log that matches the leader's, and how it is
    /// being replicated (probe, replicate, snapshot).
    pub matched: Option<u64>,
    pub replication: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Host {
    pub id: String,
    pub address: String,
    /// up, down or draining.
    pub status: &'static str,
    pub backends: Vec<String>,
    pub capacity: Usage,
    pub used: Usage,
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub memory_mib: u64,
    pub vcpus: u32,
    pub instances: u32,
}

impl From<Resources> for Usage {
    fn from(resources: Resources) -> Self {
        Self { memory_mib: resources.memory_mib, vcpus: resources.vcpus, instances: resources.instances }
    }
}

#[derive(Debug, Serialize)]
pub struct Deployment {
    pub app: String,
    pub version: String,
    pub target: String,
    pub count: u32,
    pub stopped: bool,
    pub placed: u32,
    pub running: u32,
    pub healthy: u32,
    pub has_health_check: bool,
    pub failed: u32,
    pub unplaced: u32,
    pub unplaced_reason: String,
    pub rollout: Option<Rollout>,
}

#[derive(Debug, Serialize)]
pub struct Rollout {
    pub version: String,
    pub outdated: u32,
    pub replacements: u32,
    pub settled: u32,
    pub awaiting_promotion: bool,
    pub failed: String,
}

#[derive(Debug, Serialize)]
pub struct Network {
    pub name: String,
    pub subnet: String,
    pub pool_size: u64,
    pub held: u64,
}

#[derive(Debug, Serialize)]
pub struct Instance {
    pub id: String,
    pub app: String,
    pub version: String,
    pub host: String,
    pub slot: u32,
    pub desired: &'static str,
    pub phase: &'static str,
    pub health: &'static str,
    pub addresses: Vec<String>,
    pub restarts: u32,
    pub message: String,
}

pub fn overview(registry: &Registry, info: pb::ClusterInfo, now_ms: u64, max_instances: NonZeroUsize) -> Overview {
    // The first page of what `cluster status` lists, and how many it lists in all.
    let listed = instances::page(registry, &Filter::default(), None, max_instances);
    Overview {
        node: Node {
            id: info.id,
            role: info.role,
            term: info.term,
            leader_id: info.leader_id,
            commit_index: info.commit_index,
            applied_index: info.applied_index,
            members: info
                .members
                .into_iter()
                .map(|m| {
                    let replication = info.replication.iter().find(|r| r.id == m.id);
                    Member {
                        id: m.id,
                        address: m.address,
                        matched: replication.map(|r| r.matched),
                        replication: replication.map(|r| r.state.clone()),
                    }
                })
                .collect(),
            disk_failure: info.disk_failure,
        },
        hosts: registry
            .hosts()
            .map(|host| Host {
                id: host.id.0.clone(),
                address: host.address.clone(),
                status: match (host.status, host.drain) {
                    (HostStatus::Down, _) => "down",
                    (HostStatus::Up, Some(_)) => "draining",
                    (HostStatus::Up, None) => "up",
                },
                backends: host.backends.iter().map(|t| t.name().to_owned()).collect(),
                capacity: host.capacity.into(),
                used: registry.used(&host.id).into(),
            })
            .collect(),
        deployments: registry
            .deployments()
            .map(|deployment| {
                let status = deployment_status(registry, deployment, now_ms);
                let spec = &deployment.spec;
                Deployment {
                    app: spec.app.clone(),
                    version: spec.version.clone(),
                    target: spec.target.name().to_owned(),
                    count: spec.count,
                    stopped: status.stopped,
                    placed: status.placed,
                    running: status.running,
                    healthy: status.healthy,
                    has_health_check: status.has_health_check,
                    failed: status.failed,
                    unplaced: status.unplaced,
                    unplaced_reason: status.unplaced_reason,
                    rollout: status.rollout.map(|r| Rollout {
                        version: r.version,
                        outdated: r.outdated,
                        replacements: r.replacements,
                        settled: r.settled,
                        awaiting_promotion: r.awaiting_promotion,
                        failed: r.failed,
                    }),
                }
            })
            .collect(),
        networks: registry
            .networks()
            .map(|network| Network {
                name: network.name.clone(),
                subnet: network.subnet.to_string(),
                pool_size: network.pool_size(),
                held: registry.addresses_held(&network.name) as u64,
            })
            .collect(),
        instances: listed
            .instances
            .into_iter()
            .map(|i| Instance {
                id: i.id.to_string(),
                app: i.app.clone(),
                version: i.version.clone(),
                host: i.host.0.clone(),
                slot: i.slot,
                desired: if i.desired == Desired::Running { "running" } else { "stopped" },
                phase: i.observed.name(),
                health: i.health.name(),
                addresses: i.interfaces.iter().map(|interface| interface.address.to_string()).collect(),
                restarts: i.restarts,
                message: i.message.clone(),
            })
            .collect(),
        instances_total: listed.matched.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirari_core::registry::{Command, Request};

    #[test]
    fn hosts_show_their_use_and_instances_are_capped_with_the_total() {
        let mut registry = Registry::default();
        let capacity = Resources { memory_mib: 1024, vcpus: 4, instances: 8 };
        let host = mirari_core::registry::Host::up("h1", "h1:7070", [mirari_core::target::Target::Unix], capacity);
        let request = Request { request_id: "r1".into(), command: Command::RegisterHost { host } };
        registry.apply(1, &request).unwrap();
        let view = overview(
            &registry,
            pb::ClusterInfo { id: 1, role: "leader".into(), ..Default::default() },
            0,
            NonZeroUsize::MIN,
        );
        assert_eq!((view.hosts.len(), view.hosts[0].status, view.hosts[0].capacity.memory_mib), (1, "up", 1024));
        assert_eq!((view.hosts[0].used.instances, view.instances_total), (0, 0));
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["node"]["role"], "leader");
    }
}
