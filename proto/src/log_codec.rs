//! Registry requests <-> raft log entry bytes (`registry.proto`'s `LogEntry`).

use mirari_core::ids::InstanceId;
use mirari_core::instance::Phase;
use mirari_core::network::Network;
use mirari_core::provider::{MAX_PROVIDER_INSTANCES, Provider, ProviderKind};
use mirari_core::registry::{
    AppVersion, Command, DeploymentSpec, Drain, Host, HostId, HostStatus, InstanceReport, PlacedInstance, Placement,
    Request, ReschedulePolicy, Resources, RevisionCause, UpdatePolicy,
};
use mirari_core::spec::{FileImageRef, RunPolicy};
use prost::Message;

use crate::agent as wire_agent;
use crate::convert::{
    WireError, bounded, interfaces, labels, name, network_names, optional_address, parse_digest, parse_target,
};
use crate::registry as pb;
use crate::registry::log_entry::Command as PbCommand;
use mirari_core::limits;

pub fn encode(request: &Request) -> Vec<u8> {
    pb::LogEntry { request_id: request.request_id.clone(), command: Some(command_to_pb(&request.command)) }
        .encode_to_vec()
}

pub fn decode(bytes: &[u8]) -> Result<Request, WireError> {
    let entry = pb::LogEntry::decode(bytes).map_err(|e| invalid("log entry", e))?;
    let command = entry.command.as_ref().ok_or_else(|| invalid("log entry", "no command"))?;
    Ok(Request { request_id: entry.request_id, command: command_from_pb(command)? })
}

fn invalid(field: &'static str, reason: impl ToString) -> WireError {
    WireError { field, reason: reason.to_string() }
}

fn command_to_pb(command: &Command) -> PbCommand {
    match command {
        Command::RegisterHost { host } => PbCommand::RegisterHost(pb::RegisterHost { host: Some(host_to_pb(host)) }),
        Command::SetHostStatus { host, status, at_ms } => PbCommand::SetHostStatus(pb::SetHostStatus {
            host: host.0.clone(),
            status: status_to_pb(*status).into(),
            at_ms: *at_ms,
        }),
        Command::RegisterApp { version } => {
            PbCommand::RegisterApp(pb::RegisterApp { version: Some(app_to_pb(version)) })
        }
        Command::Deploy { spec, at_ms, by, cause } => {
            let (kind, reverted_from) = match cause {
                RevisionCause::Deploy => (pb::DeployCause::Deploy, String::new()),
                RevisionCause::Rollback => (pb::DeployCause::Rollback, String::new()),
                RevisionCause::Revert(from) => (pb::DeployCause::Revert, from.clone()),
            };
            PbCommand::Deploy(pb::Deploy {
                spec: Some(deployment_to_pb(spec)),
                at_ms: *at_ms,
                by: by.clone(),
                cause: kind.into(),
                reverted_from,
            })
        }
        Command::Scale { app, count } => PbCommand::Scale(pb::Scale { app: app.clone(), count: *count }),
        Command::StopDeployment { app } => PbCommand::StopDeployment(pb::StopDeployment { app: app.clone() }),
        Command::Place { app, generation, placements, at_ms } => PbCommand::Place(pb::Place {
            app: app.clone(),
            generation: *generation,
            placements: placements
                .iter()
                .map(|p| pb::PlacedInstance {
                    id: p.id.as_u64(),
                    slot: p.slot,
                    host: p.host.0.clone(),
                    interfaces: p.interfaces.iter().map(wire_agent::Interface::from).collect(),
                })
                .collect(),
            at_ms: *at_ms,
        }),
        Command::Deregister { ids, at_ms } => {
            PbCommand::Deregister(pb::Deregister { ids: ids.iter().map(|id| id.as_u64()).collect(), at_ms: *at_ms })
        }
        Command::ForgetInstances { ids } => {
            PbCommand::ForgetInstances(pb::ForgetInstances { ids: ids.iter().map(|id| id.as_u64()).collect() })
        }
        Command::StopInstances { ids, reason } => PbCommand::StopInstances(pb::StopInstances {
            ids: ids.iter().map(|id| id.as_u64()).collect(),
            reason: reason.clone(),
        }),
        Command::ReportInstances { host, reports, at_ms } => PbCommand::ReportInstances(pb::ReportInstances {
            host: host.0.clone(),
            reports: reports.iter().map(report_to_pb).collect(),
            at_ms: *at_ms,
        }),
        Command::CreateNetwork { network } => {
            PbCommand::CreateNetwork(pb::CreateNetwork { network: Some(network_to_pb(network)) })
        }
        Command::RemoveNetwork { name } => PbCommand::RemoveNetwork(pb::RemoveNetwork { name: name.clone() }),
        Command::Promote { app } => PbCommand::Promote(pb::Promote { app: app.clone() }),
        Command::FinishRollout { app, version, failure, at_ms } => PbCommand::FinishRollout(pb::FinishRollout {
            app: app.clone(),
            version: version.clone(),
            failure: failure.clone().unwrap_or_default(),
            at_ms: *at_ms,
        }),
        Command::DrainHost { host, drain } => {
            PbCommand::DrainHost(pb::DrainHost { host: host.0.clone(), drain: drain.map(drain_to_pb) })
        }
        Command::RemoveHost { host } => PbCommand::RemoveHost(pb::RemoveHost { host: host.0.clone() }),
        Command::AddProvider { name, provider, at_ms } => PbCommand::AddProvider(pb::AddProvider {
            name: name.0.clone(),
            provider: Some(provider_to_pb(provider)),
            at_ms: *at_ms,
        }),
        Command::SetProviderCondition { name, condition } => {
            PbCommand::SetProviderCondition(pb::SetProviderCondition {
                name: name.0.clone(),
                condition: condition.clone().unwrap_or_default(),
            })
        }
    }
}

fn command_from_pb(command: &PbCommand) -> Result<Command, WireError> {
    Ok(match command {
        PbCommand::RegisterHost(c) => Command::RegisterHost {
            host: host_from_pb(c.host.as_ref().ok_or_else(|| invalid("register_host.host", "missing"))?)?,
        },
        PbCommand::SetHostStatus(c) => {
            Command::SetHostStatus { host: HostId(c.host.clone()), status: status_from_pb(c.status())?, at_ms: c.at_ms }
        }
        PbCommand::RegisterApp(c) => Command::RegisterApp {
            version: app_from_pb(c.version.as_ref().ok_or_else(|| invalid("register_app.version", "missing"))?)?,
        },
        PbCommand::Deploy(c) => Command::Deploy {
            spec: deployment_from_pb(c.spec.as_ref().ok_or_else(|| invalid("deploy.spec", "missing"))?)?,
            at_ms: c.at_ms,
            by: bounded_text("deploy.by", &c.by)?,
            cause: match c.cause() {
                pb::DeployCause::Unspecified | pb::DeployCause::Deploy => RevisionCause::Deploy,
                pb::DeployCause::Rollback => RevisionCause::Rollback,
                pb::DeployCause::Revert => RevisionCause::Revert(name("deploy.reverted_from", &c.reverted_from)?),
            },
        },
        PbCommand::Scale(c) => Command::Scale {
            app: name("scale.app", &c.app)?,
            count: bounded("scale.count", c.count, limits::MAX_INSTANCES_PER_DEPLOYMENT)?,
        },
        PbCommand::StopDeployment(c) => Command::StopDeployment { app: c.app.clone() },
        PbCommand::Place(c) => Command::Place {
            app: c.app.clone(),
            generation: c.generation,
            placements: c
                .placements
                .iter()
                .map(|p| {
                    Ok(PlacedInstance {
                        id: InstanceId::from_u64(p.id),
                        slot: p.slot,
                        host: HostId(p.host.clone()),
                        interfaces: interfaces("place.interfaces", &p.interfaces)?,
                    })
                })
                .collect::<Result<_, WireError>>()?,
            at_ms: c.at_ms,
        },
        PbCommand::Deregister(c) => {
            Command::Deregister { ids: c.ids.iter().copied().map(InstanceId::from_u64).collect(), at_ms: c.at_ms }
        }
        PbCommand::ForgetInstances(c) => {
            Command::ForgetInstances { ids: c.ids.iter().copied().map(InstanceId::from_u64).collect() }
        }
        PbCommand::StopInstances(c) => Command::StopInstances {
            ids: c.ids.iter().copied().map(InstanceId::from_u64).collect(),
            reason: c.reason.clone(),
        },
        PbCommand::ReportInstances(c) => Command::ReportInstances {
            host: HostId(c.host.clone()),
            reports: c.reports.iter().map(report_from_pb).collect::<Result<_, WireError>>()?,
            at_ms: c.at_ms,
        },
        PbCommand::CreateNetwork(c) => Command::CreateNetwork {
            network: network_from_pb(c.network.as_ref().ok_or_else(|| invalid("create_network.network", "missing"))?)?,
        },
        PbCommand::RemoveNetwork(c) => Command::RemoveNetwork { name: name("remove_network.name", &c.name)? },
        PbCommand::Promote(c) => Command::Promote { app: name("promote.app", &c.app)? },
        PbCommand::FinishRollout(c) => Command::FinishRollout {
            app: name("finish_rollout.app", &c.app)?,
            version: name("finish_rollout.version", &c.version)?,
            failure: (!c.failure.is_empty()).then(|| bounded_text("finish_rollout.failure", &c.failure)).transpose()?,
            at_ms: c.at_ms,
        },
        PbCommand::DrainHost(c) => {
            Command::DrainHost { host: HostId(name("drain_host.host", &c.host)?), drain: c.drain.map(drain_from_pb) }
        }
        PbCommand::RemoveHost(c) => Command::RemoveHost { host: HostId(name("remove_host.host", &c.host)?) },
        PbCommand::AddProvider(c) => Command::AddProvider {
            name: HostId(name("add_provider.name", &c.name)?),
            provider: provider_from_pb(
                c.provider.as_ref().ok_or_else(|| invalid("add_provider.provider", "missing"))?,
            )?,
            at_ms: c.at_ms,
        },
        PbCommand::SetProviderCondition(c) => Command::SetProviderCondition {
            name: HostId(name("set_provider_condition.name", &c.name)?),
            condition: optional_text("set_provider_condition.condition", &c.condition)?,
        },
    })
}

pub fn provider_to_pb(provider: &Provider) -> pb::Provider {
    pb::Provider {
        kind: provider.kind.name().to_owned(),
        region: provider.region.clone(),
        endpoint: provider.endpoint.clone().unwrap_or_default(),
        instance_type: provider.instance_type.clone(),
        max_instances: provider.max_instances,
        subnet: provider.subnet.clone().unwrap_or_default(),
        security_groups: provider.security_groups.clone(),
        condition: provider.condition.clone().unwrap_or_default(),
        tags: provider.tags.clone().into_iter().collect(),
    }
}

pub fn provider_from_pb(provider: &pb::Provider) -> Result<Provider, WireError> {
    bounded("provider.security_groups", provider.security_groups.len(), limits::MAX_LABELS)?;
    Ok(Provider {
        kind: ProviderKind::parse(&provider.kind).map_err(|why| invalid("provider.kind", why))?,
        region: name("provider.region", &provider.region)?,
        endpoint: optional_text("provider.endpoint", &provider.endpoint)?,
        instance_type: name("provider.instance_type", &provider.instance_type)?,
        max_instances: bounded("provider.max_instances", provider.max_instances, MAX_PROVIDER_INSTANCES)?,
        subnet: optional_text("provider.subnet", &provider.subnet)?,
        security_groups: provider
            .security_groups
            .iter()
            .map(|group| name("provider.security_groups", group))
            .collect::<Result<_, _>>()?,
        condition: optional_text("provider.condition", &provider.condition)?,
        tags: labels("provider.tags", &provider.tags)?,
    })
}

/// Bounded free text where empty means none.
fn optional_text(field: &'static str, text: &str) -> Result<Option<String>, WireError> {
    Ok(Some(bounded_text(field, text)?).filter(|text| !text.is_empty()))
}

pub fn network_to_pb(network: &Network) -> pb::Network {
    let (first, last) = network.range.map_or((String::new(), String::new()), |(a, b)| (a.to_string(), b.to_string()));
    pb::Network {
        name: network.name.clone(),
        subnet: network.subnet.to_string(),
        gateway: network.gateway.map(|g| g.to_string()).unwrap_or_default(),
        range_first: first,
        range_last: last,
        dns: network.dns.iter().map(ToString::to_string).collect(),
    }
}

/// A network from the wire, checked whole ([`Network::validate`]).
pub fn network_from_pb(network: &pb::Network) -> Result<Network, WireError> {
    bounded("network.dns", network.dns.len(), 8)?;
    let range = match (
        optional_address("network.range", &network.range_first)?,
        optional_address("network.range", &network.range_last)?,
    ) {
        (Some(first), Some(last)) => Some((first, last)),
        (None, None) => None,
        _ => return Err(invalid("network.range", "give both ends or neither")),
    };
    let network = Network {
        name: network.name.clone(),
        subnet: network.subnet.parse().map_err(|e| invalid("network.subnet", e))?,
        gateway: optional_address("network.gateway", &network.gateway)?,
        range,
        dns: network
            .dns
            .iter()
            .map(|d| optional_address("network.dns", d)?.ok_or_else(|| invalid("network.dns", "empty")))
            .collect::<Result<_, WireError>>()?,
    };
    network.validate().map_err(|e| invalid("network", e))?;
    Ok(network)
}

pub fn report_to_pb(report: &InstanceReport) -> pb::InstanceReport {
    pb::InstanceReport {
        id: report.id.as_u64(),
        phase: wire_agent::Phase::from(report.phase).into(),
        restarts: report.restarts,
        last_exit: report.last_exit.map(wire_agent::ExitStatus::from),
        message: report.message.clone(),
        revision: report.revision,
        assignments_index: report.assignments_index,
        health: wire_agent::Health::from(report.health).into(),
    }
}

pub fn report_from_pb(report: &pb::InstanceReport) -> Result<InstanceReport, WireError> {
    Ok(InstanceReport {
        id: InstanceId::from_u64(report.id),
        phase: Phase::try_from(report.phase())?,
        restarts: report.restarts,
        last_exit: report.last_exit.as_ref().and_then(Option::from),
        message: report.message.clone(),
        revision: report.revision,
        assignments_index: report.assignments_index,
        health: report.health().into(),
    })
}

fn status_to_pb(status: HostStatus) -> pb::HostStatus {
    match status {
        HostStatus::Up => pb::HostStatus::Up,
        HostStatus::Down => pb::HostStatus::Down,
    }
}

fn status_from_pb(status: pb::HostStatus) -> Result<HostStatus, WireError> {
    match status {
        pb::HostStatus::Up => Ok(HostStatus::Up),
        pb::HostStatus::Down => Ok(HostStatus::Down),
        pb::HostStatus::Unspecified => Err(invalid("host status", "unspecified")),
    }
}

pub fn host_to_pb(host: &Host) -> pb::Host {
    pb::Host {
        id: host.id.0.clone(),
        address: host.address.clone(),
        backends: host.backends.iter().map(|t| t.name().to_owned()).collect(),
        capacity: Some(pb::Resources {
            memory_mib: host.capacity.memory_mib,
            vcpus: host.capacity.vcpus,
            instances: host.capacity.instances,
        }),
        labels: host.labels.clone().into_iter().collect(),
        status: status_to_pb(host.status).into(),
        registered_at_ms: host.registered_at_ms,
        status_changed_at_ms: host.status_changed_at_ms,
        networks: host.networks.iter().cloned().collect(),
        drain: host.drain.map(drain_to_pb),
        provider: host.provider.as_ref().map(provider_to_pb),
    }
}

fn drain_to_pb(drain: Drain) -> pb::Drain {
    pb::Drain { since_ms: drain.since_ms, deadline_ms: drain.deadline_ms }
}

fn drain_from_pb(drain: pb::Drain) -> Drain {
    Drain { since_ms: drain.since_ms, deadline_ms: drain.deadline_ms }
}

/// Free text (a reason, a name of who asked), at most a few KiB.
fn bounded_text(field: &'static str, text: &str) -> Result<String, WireError> {
    bounded(field, text.len(), MAX_TEXT_BYTES)?;
    Ok(text.to_owned())
}

const MAX_TEXT_BYTES: usize = 4096;

pub fn host_from_pb(host: &pb::Host) -> Result<Host, WireError> {
    let capacity = host.capacity.unwrap_or_default();
    bounded("host.backends", host.backends.len(), mirari_core::target::Target::ALL.len())?;
    Ok(Host {
        id: HostId(name("host.id", &host.id)?),
        address: name("host.address", &host.address)?,
        backends: host.backends.iter().map(|b| parse_target("host.backends", b)).collect::<Result<_, _>>()?,
        capacity: Resources {
            memory_mib: capacity.memory_mib,
            vcpus: capacity.vcpus,
            instances: bounded("host.capacity.instances", capacity.instances, limits::MAX_INSTANCES_PER_HOST)?,
        },
        labels: labels("host.labels", &host.labels)?,
        networks: network_names("host.networks", &host.networks, limits::MAX_NETWORKS)?.into_iter().collect(),
        status: status_from_pb(host.status())?,
        registered_at_ms: host.registered_at_ms,
        status_changed_at_ms: host.status_changed_at_ms,
        drain: host.drain.map(drain_from_pb),
        provider: host.provider.as_ref().map(provider_from_pb).transpose()?,
    })
}

pub fn app_to_pb(app: &AppVersion) -> pb::AppVersion {
    pb::AppVersion {
        app: app.app.clone(),
        version: app.version.clone(),
        artifacts: app.artifacts.iter().map(|(t, d)| (t.name().to_owned(), d.to_string())).collect(),
        files: app
            .files
            .iter()
            .map(|f| wire_agent::FileImage { name: f.name.clone(), sha256: f.digest.to_string() })
            .collect(),
        run: Some(wire_agent::RunPolicy::from(&app.run)),
        constraints: app.constraints.clone().into_iter().collect(),
    }
}

pub fn app_from_pb(app: &pb::AppVersion) -> Result<AppVersion, WireError> {
    let run = app.run.as_ref().ok_or_else(|| invalid("app.run", "missing"))?;
    bounded("app.artifacts", app.artifacts.len(), mirari_core::target::Target::ALL.len())?;
    bounded("app.files", app.files.len(), limits::MAX_FILE_IMAGES)?;
    Ok(AppVersion {
        app: name("app.app", &app.app)?,
        version: name("app.version", &app.version)?,
        artifacts: app
            .artifacts
            .iter()
            .map(|(t, d)| Ok((parse_target("app.artifacts", t)?, parse_digest("app.artifacts", d)?)))
            .collect::<Result<_, WireError>>()?,
        files: app
            .files
            .iter()
            .map(|f| Ok(FileImageRef { name: f.name.clone(), digest: parse_digest("app.files", &f.sha256)? }))
            .collect::<Result<_, WireError>>()?,
        run: RunPolicy::try_from(run)?,
        constraints: labels("app.constraints", &app.constraints)?,
    })
}

pub fn deployment_to_pb(spec: &DeploymentSpec) -> pb::DeploymentSpec {
    pb::DeploymentSpec {
        app: spec.app.clone(),
        version: spec.version.clone(),
        target: spec.target.name().to_owned(),
        count: spec.count,
        placement: match spec.placement {
            Placement::Binpack => pb::Placement::Binpack,
            Placement::Spread => pb::Placement::Spread,
        }
        .into(),
        update: Some(pb::UpdatePolicy {
            max_parallel: spec.update.max_parallel,
            min_healthy_time_ms: spec.update.min_healthy_time_ms,
            healthy_deadline_ms: spec.update.healthy_deadline_ms,
            canary: spec.update.canary,
            auto_promote: spec.update.auto_promote,
            auto_revert: spec.update.auto_revert,
            shutdown_delay_ms: Some(spec.update.shutdown_delay_ms),
        }),
        reschedule: Some(pb::ReschedulePolicy {
            attempts: spec.reschedule.attempts,
            delay_ms: spec.reschedule.delay_ms,
        }),
        after: spec.after.clone(),
        provider: spec.provider.clone().unwrap_or_default(),
    }
}

pub fn deployment_from_pb(spec: &pb::DeploymentSpec) -> Result<DeploymentSpec, WireError> {
    Ok(DeploymentSpec {
        app: name("deployment.app", &spec.app)?,
        version: name("deployment.version", &spec.version)?,
        target: parse_target("deployment.target", &spec.target)?,
        count: bounded("deployment.count", spec.count, limits::MAX_INSTANCES_PER_DEPLOYMENT)?,
        placement: match spec.placement() {
            pb::Placement::Spread => Placement::Spread,
            pb::Placement::Binpack | pb::Placement::Unspecified => Placement::Binpack,
        },
        update: match spec.update {
            None => UpdatePolicy::default(),
            Some(u) => UpdatePolicy {
                max_parallel: bounded(
                    "deployment.update.max_parallel",
                    u.max_parallel,
                    limits::MAX_INSTANCES_PER_DEPLOYMENT,
                )?,
                min_healthy_time_ms: bounded(
                    "deployment.update.min_healthy_time_ms",
                    u.min_healthy_time_ms,
                    MAX_POLICY_MS,
                )?,
                healthy_deadline_ms: bounded(
                    "deployment.update.healthy_deadline_ms",
                    u.healthy_deadline_ms,
                    MAX_POLICY_MS,
                )?,
                canary: bounded("deployment.update.canary", u.canary, limits::MAX_INSTANCES_PER_DEPLOYMENT)?,
                auto_promote: u.auto_promote,
                auto_revert: u.auto_revert,
                shutdown_delay_ms: match u.shutdown_delay_ms {
                    None => UpdatePolicy::default_shutdown_delay_ms(),
                    Some(ms) => bounded("deployment.update.shutdown_delay_ms", ms, MAX_POLICY_MS)?,
                },
            },
        },
        reschedule: match spec.reschedule {
            None => ReschedulePolicy::default(),
            Some(r) => ReschedulePolicy {
                attempts: bounded("deployment.reschedule.attempts", r.attempts, 1000)?,
                delay_ms: bounded("deployment.reschedule.delay_ms", r.delay_ms, MAX_POLICY_MS)?,
            },
        },
        after: app_names("deployment.after", &spec.after)?,
        provider: Some(&spec.provider)
            .filter(|provider| !provider.is_empty())
            .map(|provider| name("deployment.provider", provider))
            .transpose()?,
    })
}

/// Apps a deployment waits for: bounded in number, each a valid name, none twice.
fn app_names(field: &'static str, apps: &[String]) -> Result<Vec<String>, WireError> {
    bounded(field, apps.len(), limits::MAX_AFTER)?;
    for (index, app) in apps.iter().enumerate() {
        name(field, app)?;
        if apps[..index].contains(app) {
            return Err(invalid(field, format!("`{app}` is listed twice")));
        }
    }
    Ok(apps.to_vec())
}

/// The longest time an update or reschedule policy may name (a day).
const MAX_POLICY_MS: u64 = 86_400_000;

#[cfg(test)]
mod tests {
    use super::*;
    use mirari_core::digest::Digest;
    use mirari_core::instance::ExitStatus;
    use mirari_core::target::Target;

    #[test]
    fn every_command_survives_the_log() {
        let host = Host {
            id: HostId("a".into()),
            address: "10.0.0.1:7070".into(),
            backends: [Target::Unix, Target::Kvm].into(),
            capacity: Resources { memory_mib: 1024, vcpus: 4, instances: 20 },
            labels: [("rack".to_owned(), "r1".to_owned())].into(),
            networks: ["service".to_owned()].into(),
            status: HostStatus::Up,
            registered_at_ms: 3,
            status_changed_at_ms: 4,
            drain: Some(Drain { since_ms: 5, deadline_ms: 300_005 }),
            provider: None,
        };
        let provider_host = Host { provider: Some(Provider::ec2("eu-west-1", "t3.nano", 2)), ..host.clone() };
        let app = AppVersion {
            app: "hello".into(),
            version: "1".into(),
            artifacts: [(Target::Kvm, Digest::of(b"k"))].into(),
            files: vec![FileImageRef { name: "data".into(), digest: Digest::of(b"t") }],
            run: RunPolicy::default(),
            constraints: [("rack".to_owned(), "r1".to_owned())].into(),
        };
        let spec = DeploymentSpec {
            app: "hello".into(),
            version: "1".into(),
            target: Target::Kvm,
            count: 3,
            placement: Placement::Spread,
            update: UpdatePolicy {
                max_parallel: 2,
                min_healthy_time_ms: 3_000,
                healthy_deadline_ms: 60_000,
                canary: 1,
                auto_promote: true,
                auto_revert: true,
                shutdown_delay_ms: 0,
            },
            reschedule: ReschedulePolicy { attempts: 2, delay_ms: 1_000 },
            after: vec!["db".into()],
            provider: Some("aws1".into()),
        };
        let commands = [
            Command::RegisterHost { host },
            Command::RegisterHost { host: provider_host },
            Command::SetHostStatus { host: HostId("a".into()), status: HostStatus::Down, at_ms: 9 },
            Command::RegisterApp { version: app },
            Command::Deploy { spec: spec.clone(), at_ms: 5, by: "alice".into(), cause: RevisionCause::Deploy },
            Command::Deploy { spec: spec.clone(), at_ms: 5, by: "bob".into(), cause: RevisionCause::Rollback },
            Command::Deploy { spec, at_ms: 5, by: "auto-revert".into(), cause: RevisionCause::Revert("3".into()) },
            Command::Scale { app: "hello".into(), count: 7 },
            Command::StopDeployment { app: "hello".into() },
            Command::Place {
                app: "hello".into(),
                generation: 2,
                placements: vec![PlacedInstance {
                    id: InstanceId::from_u64(u64::MAX),
                    slot: 1,
                    host: HostId("a".into()),
                    interfaces: vec![mirari_core::network::Interface {
                        network: "service".into(),
                        address: "10.88.0.9/16".parse().unwrap(),
                        gateway: Some("10.88.0.1".parse().unwrap()),
                        mac: "02:00:00:00:00:09".parse().unwrap(),
                    }],
                }],
                at_ms: 6,
            },
            Command::StopInstances { ids: vec![InstanceId::from_u64(1)], reason: "scaled down".into() },
            Command::Deregister { ids: vec![InstanceId::from_u64(1)], at_ms: 11 },
            Command::ForgetInstances { ids: vec![InstanceId::from_u64(1), InstanceId::from_u64(2)] },
            Command::ReportInstances {
                host: HostId("a".into()),
                reports: vec![InstanceReport {
                    id: InstanceId::from_u64(1),
                    phase: Phase::Failed,
                    restarts: 3,
                    last_exit: Some(ExitStatus::Code(3)),
                    message: "restart limit".into(),
                    revision: 4,
                    assignments_index: 17,
                    health: mirari_core::health::Health::Unhealthy,
                }],
                at_ms: 12,
            },
            Command::CreateNetwork {
                network: Network {
                    name: "service".into(),
                    subnet: "10.88.0.0/16".parse().unwrap(),
                    gateway: Some("10.88.0.1".parse().unwrap()),
                    range: Some(("10.88.1.0".parse().unwrap(), "10.88.1.255".parse().unwrap())),
                    dns: vec!["10.88.0.1".parse().unwrap()],
                },
            },
            Command::RemoveNetwork { name: "service".into() },
            Command::Promote { app: "hello".into() },
            Command::FinishRollout { app: "hello".into(), version: "2".into(), failure: None, at_ms: 8 },
            Command::FinishRollout {
                app: "hello".into(),
                version: "3".into(),
                failure: Some("instance x turned unhealthy".into()),
                at_ms: 9,
            },
            Command::DrainHost { host: HostId("a".into()), drain: Some(Drain { since_ms: 1, deadline_ms: 2 }) },
            Command::DrainHost { host: HostId("a".into()), drain: None },
            Command::RemoveHost { host: HostId("a".into()) },
            Command::AddProvider {
                name: HostId("aws1".into()),
                provider: Provider {
                    endpoint: Some("http://127.0.0.1:5000".into()),
                    subnet: Some("subnet-1".into()),
                    security_groups: vec!["sg-1".into(), "sg-2".into()],
                    tags: [("team".to_owned(), "edge".to_owned())].into(),
                    condition: Some("AuthFailure: no".into()),
                    ..Provider::ec2("us-east-1", "t3.micro", 20)
                },
                at_ms: 7,
            },
            Command::SetProviderCondition { name: HostId("aws1".into()), condition: Some("Throttled".into()) },
            Command::SetProviderCondition { name: HostId("aws1".into()), condition: None },
        ];
        for command in commands {
            let request = Request { request_id: "r-1".into(), command };
            assert_eq!(decode(&encode(&request)), Ok(request));
        }
        assert!(decode(b"\xff\xff").is_err());
    }

    #[test]
    fn a_count_above_the_limit_is_refused_where_it_is_decoded() {
        let scale = Command::Scale { app: "hello".into(), count: 4_000_000_000 };
        let error = decode(&encode(&Request { request_id: "r".into(), command: scale })).unwrap_err();
        assert_eq!(error.to_string(), "invalid `scale.count`: scale.count is 4000000000, above the limit of 100000");
    }
}
