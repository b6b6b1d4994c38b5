//! `mirari cluster ...`: the coordinators' raft group and registry.

use std::process::ExitCode;

use anyhow::Context;
use mirari_proto::coordinator as pb;
use mirari_proto::coordinator::coordinator_client::CoordinatorClient;
use mirari_proto::endpoint::Endpoint;
use mirari_proto::log_codec;
use serde::Serialize;
use tonic::transport::Channel;

use crate::output::{self, Format, Table};

/// Connects to the first coordinator of the list that answers.
async fn connect(addresses: &[Endpoint]) -> anyhow::Result<CoordinatorClient<Channel>> {
    crate::coordinators::Coordinators::new(addresses).client().await
}

#[derive(Debug, Serialize)]
struct MemberView {
    id: u64,
    address: String,
    leader: bool,
    /// Told by the leader only: the last index of the member's log that matches its own, and
    /// how it is being replicated (probe, replicate, snapshot).
    #[serde(skip_serializing_if = "Option::is_none")]
    matched: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replication: Option<String>,
}

#[derive(Debug, Serialize)]
struct InfoView {
    cluster_id: Option<String>,
    id: u64,
    role: String,
    term: u64,
    leader_id: Option<u64>,
    leader_address: Option<String>,
    commit_index: u64,
    applied_index: u64,
    /// Why the node cannot write its data directory, while it cannot.
    disk_failure: Option<String>,
    members: Vec<MemberView>,
}

impl From<pb::ClusterInfo> for InfoView {
    fn from(info: pb::ClusterInfo) -> Self {
        let leader = (info.leader_id != 0).then_some(info.leader_id);
        Self {
            cluster_id: (!info.cluster_id.is_empty()).then_some(info.cluster_id),
            id: info.id,
            role: info.role,
            term: info.term,
            leader_id: leader,
            leader_address: (!info.leader_address.is_empty()).then_some(info.leader_address),
            commit_index: info.commit_index,
            applied_index: info.applied_index,
            disk_failure: (!info.disk_failure.is_empty()).then_some(info.disk_failure),
            members: info
                .members
                .into_iter()
                .map(|m| {
                    let replication = info.replication.iter().find(|r| r.id == m.id);
                    MemberView {
                        leader: Some(m.id) == leader,
                        id: m.id,
                        address: m.address,
                        matched: replication.map(|r| r.matched),
                        replication: replication.map(|r| r.state.clone()),
                    }
                })
                .collect(),
        }
    }
}

fn members_table(info: &InfoView) -> Table {
    // Only the leader knows how far each member's log matches its own.
    let mut table = Table::new(&["ID", "ADDRESS", "ROLE", "MATCHED (LEADER'S VIEW)"]);
    for member in &info.members {
        let role = if member.leader { "leader" } else { "voter" };
        let matched = match (member.matched, &member.replication) {
            (Some(matched), Some(state)) => {
                format!("{matched} ({state}, {} behind)", info.commit_index.saturating_sub(matched))
            }
            _ => "-".into(),
        };
        table.row(vec![member.id.to_string(), member.address.clone(), role.into(), matched]);
    }
    table
}

pub async fn info(coordinators: &[Endpoint], format: Format) -> anyhow::Result<ExitCode> {
    let info: InfoView =
        connect(coordinators).await?.get_cluster_info(pb::ClusterInfoRequest {}).await?.into_inner().into();
    output::print(format, &info, |info| {
        let mut table = Table::new(&["CLUSTER", "NODE", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "DISK"]);
        table.row(vec![
            info.cluster_id.clone().unwrap_or_else(|| "none yet".into()),
            info.id.to_string(),
            info.role.clone(),
            info.term.to_string(),
            info.leader_id.map_or("none".into(), |l| l.to_string()),
            info.commit_index.to_string(),
            info.applied_index.to_string(),
            info.disk_failure.clone().unwrap_or_else(|| "ok".into()),
        ]);
        table
    });
    Ok(ExitCode::SUCCESS)
}

pub async fn members(coordinators: &[Endpoint], format: Format) -> anyhow::Result<ExitCode> {
    let info: InfoView =
        connect(coordinators).await?.get_cluster_info(pb::ClusterInfoRequest {}).await?.into_inner().into();
    output::print(format, &info.members, |_| members_table(&info));
    Ok(ExitCode::SUCCESS)
}

pub async fn add_member(coordinators: &[Endpoint], id: u64, address: &str, format: Format) -> anyhow::Result<ExitCode> {
    let request = pb::AddMemberRequest { id, address: address.to_owned() };
    let info: InfoView =
        connect(coordinators).await?.add_member(request).await.context("adding the member failed")?.into_inner().into();
    output::print(format, &info.members, |_| members_table(&info));
    Ok(ExitCode::SUCCESS)
}

pub async fn remove_member(coordinators: &[Endpoint], id: u64, format: Format) -> anyhow::Result<ExitCode> {
    let info: InfoView = connect(coordinators)
        .await?
        .remove_member(pb::RemoveMemberRequest { id })
        .await
        .context("removing the member failed")?
        .into_inner()
        .into();
    output::print(format, &info.members, |_| members_table(&info));
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct HostsView {
    hosts: Vec<HostView>,
    served_by: u64,
    stale: bool,
    applied_index: u64,
}

#[derive(Debug, Serialize)]
struct HostView {
    id: String,
    address: String,
    status: String,
    backends: Vec<String>,
    memory_mib: u64,
    vcpus: u32,
    max_instances: u32,
    labels: std::collections::BTreeMap<String, String>,
}

pub async fn hosts(coordinators: &[Endpoint], stale: bool, format: Format) -> anyhow::Result<ExitCode> {
    let response = connect(coordinators).await?.list_hosts(pb::ReadRequest { stale }).await?.into_inner();
    let read = response.read.unwrap_or_default();
    let hosts = response
        .hosts
        .iter()
        .map(log_codec::host_from_pb)
        // Providers have a command of their own (`cluster providers`).
        .filter(|host| host.as_ref().map_or(true, |host| host.provider.is_none()))
        .map(|host| {
            let host = host?;
            Ok(HostView {
                status: crate::deploy::host_state(&host).to_owned(),
                id: host.id.0,
                address: host.address,
                backends: host.backends.iter().map(|b| b.name().to_owned()).collect(),
                memory_mib: host.capacity.memory_mib,
                vcpus: host.capacity.vcpus,
                max_instances: host.capacity.instances,
                labels: host.labels,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let view = HostsView { hosts, served_by: read.served_by, stale: read.stale, applied_index: read.applied_index };
    output::print(format, &view, |view| {
        let mut table = Table::new(&["HOST", "STATUS", "ADDRESS", "BACKENDS", "MEMORY", "VCPUS", "SLOTS"]);
        for h in &view.hosts {
            table.row(vec![
                h.id.clone(),
                h.status.clone(),
                h.address.clone(),
                h.backends.join(","),
                format!("{} MiB", h.memory_mib),
                h.vcpus.to_string(),
                h.max_instances.to_string(),
            ]);
        }
        if view.stale {
            table.row(vec![format!("(stale read from node {} at index {})", view.served_by, view.applied_index)]);
        }
        table
    });
    Ok(ExitCode::SUCCESS)
}
