//! Commands served by the agent: run, ps, console, logs, stop, host.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use mirari_build::manifest::Manifest;
use mirari_core::instance::{ExitStatus, Phase};
use mirari_core::spec::InstanceSpec;
use mirari_core::target::Target;
use mirari_proto::agent as pb;
use mirari_proto::endpoint::Endpoint;
use serde::Serialize;

use crate::AppArgs;
use crate::client::{connect, upload_missing};
use crate::output::{self, Format, Table, age};
use crate::project_cmds;

/// An instance as `ps` and `stop` show it.
#[derive(Debug, Serialize)]
struct InstanceView {
    id: String,
    app: String,
    version: String,
    target: String,
    phase: Phase,
    desired: &'static str,
    /// Each interface's address with its prefix, in order.
    addresses: Vec<String>,
    health: mirari_core::health::Health,
    /// Why the last health check failed.
    health_message: String,
    restarts: u32,
    last_exit: Option<ExitStatus>,
    message: String,
    created_at_ms: u64,
    started_at_ms: Option<u64>,
    detail: String,
}

impl TryFrom<&pb::Instance> for InstanceView {
    type Error = anyhow::Error;

    fn try_from(instance: &pb::Instance) -> anyhow::Result<Self> {
        let spec = instance.spec.as_ref().context("the agent sent an instance without a spec")?;
        Ok(Self {
            id: instance.id.clone(),
            app: spec.app.clone(),
            version: spec.version.clone(),
            target: spec.target.clone(),
            phase: Phase::try_from(instance.phase())?,
            desired: if instance.desired_running { "running" } else { "stopped" },
            addresses: spec.interfaces.iter().map(|i| i.address.clone()).collect(),
            health: instance.health().into(),
            health_message: instance.health_message.clone(),
            restarts: instance.restarts,
            last_exit: instance.last_exit.as_ref().and_then(Option::from),
            message: instance.message.clone(),
            created_at_ms: instance.created_at_ms,
            started_at_ms: (instance.started_at_ms > 0).then_some(instance.started_at_ms),
            detail: instance.backend_detail.clone(),
        })
    }
}

fn instance_table(instances: &[InstanceView]) -> Table {
    let now = mirari_core::clock::wall_ms();
    let mut table = Table::new(&["ID", "APP", "TARGET", "ADDRESS", "PHASE", "HEALTH", "RESTARTS", "UPTIME", "DETAIL"]);
    for i in instances {
        let uptime = i.started_at_ms.filter(|_| i.phase.is_live()).map_or("-".into(), |t| age(t, now));
        let mut detail = i.detail.clone();
        if !i.message.is_empty() {
            detail = format!("{} ({detail})", i.message);
        } else if let Some(exit) = i.last_exit.filter(|_| !i.phase.is_live()) {
            detail = format!("{exit}");
        }
        table.row(vec![
            i.id.clone(),
            format!("{}@{}", i.app, i.version),
            i.target.clone(),
            if i.addresses.is_empty() { "-".into() } else { i.addresses.join(",") },
            i.phase.to_string(),
            match (i.health, i.health_message.is_empty()) {
                (mirari_core::health::Health::Unhealthy, false) => format!("unhealthy ({})", i.health_message),
                (health, _) => health.name().into(),
            },
            i.restarts.to_string(),
            uptime,
            detail,
        ]);
    }
    table
}

pub async fn run(
    agent: &Endpoint,
    app: &AppArgs,
    target: Option<Target>,
    count: u32,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let (project, store) = project_cmds::open(app)?;
    let target = target.unwrap_or(project.config.targets[0]);
    let spec: InstanceSpec = Manifest::load(&project)?.instance_spec(&project, target)?;
    let mut client = connect(agent).await?;
    let digests: Vec<_> = std::iter::once(spec.artifact).chain(spec.files.iter().map(|f| f.digest)).collect();
    let uploaded = upload_missing(&mut client, &store, &digests).await?;
    if uploaded > 0 {
        eprintln!("uploaded {uploaded} blob(s) to the agent");
    }
    let request = pb::RunInstancesRequest { spec: Some(pb::InstanceSpec::from(&spec)), count };
    let ids = client.run_instances(request).await?.into_inner().ids;
    #[derive(Serialize)]
    struct Started<'a> {
        target: Target,
        ids: &'a [String],
    }
    output::print(format, &Started { target, ids: &ids }, |started| {
        let mut table = Table::new(&["ID", "APP", "TARGET"]);
        for id in started.ids {
            table.row(vec![id.clone(), format!("{}@{}", spec.app, spec.version), target.to_string()]);
        }
        table
    });
    Ok(ExitCode::SUCCESS)
}

pub async fn ps(agent: &Endpoint, format: Format) -> anyhow::Result<ExitCode> {
    let mut client = connect(agent).await?;
    let instances = client.list_instances(pb::ListInstancesRequest {}).await?.into_inner().instances;
    let views = instances.iter().map(InstanceView::try_from).collect::<anyhow::Result<Vec<_>>>()?;
    output::print(format, &views, |views| instance_table(views));
    Ok(ExitCode::SUCCESS)
}

/// Where an instance lives: on the local agent, or elsewhere in the cluster.
enum Source {
    Agent(mirari_proto::agent::agent_client::AgentClient<tonic::transport::Channel>),
    Cluster(crate::coordinators::Coordinators),
}

/// The local agent if it knows the instance, else the coordinators (which proxy to the agent
/// that runs it).
async fn source_of(agent: &Endpoint, coordinators: &[Endpoint], id: &str) -> Source {
    if let Ok(mut client) = connect(agent).await {
        let known = client.get_events(pb::EventsRequest { id: id.to_owned() }).await;
        if known.is_ok() || known.is_err_and(|status| status.code() != tonic::Code::NotFound) {
            return Source::Agent(client);
        }
    }
    Source::Cluster(crate::coordinators::Coordinators::new(coordinators))
}

pub async fn console(agent: &Endpoint, coordinators: &[Endpoint], id: &str, follow: bool) -> anyhow::Result<ExitCode> {
    let request = pb::ConsoleRequest { id: id.to_owned(), follow };
    let mut chunks = match source_of(agent, coordinators, id).await {
        Source::Agent(mut client) => client.stream_console(request).await?.into_inner(),
        Source::Cluster(mut cluster) => {
            cluster
                .call("reading the console", async |mut client| {
                    Ok(client.stream_console(request.clone()).await?.into_inner())
                })
                .await?
        }
    };
    let mut stdout = std::io::stdout();
    while let Some(chunk) = chunks.message().await? {
        if chunk.dropped > 0 {
            stdout.flush()?;
            eprintln!("[mirari: {} bytes of console output were dropped before this point]", chunk.dropped);
        }
        stdout.write_all(&chunk.data)?;
        stdout.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(agent: &Endpoint, coordinators: &[Endpoint], id: &str, format: Format) -> anyhow::Result<ExitCode> {
    let request = pb::EventsRequest { id: id.to_owned() };
    let events = match source_of(agent, coordinators, id).await {
        Source::Agent(mut client) => client.get_events(request).await?.into_inner().events,
        Source::Cluster(mut cluster) => {
            cluster
                .call("reading the log", async |mut client| {
                    Ok(client.get_events(request.clone()).await?.into_inner().events)
                })
                .await?
        }
    };
    #[derive(Serialize)]
    struct EventView {
        at_ms: u64,
        message: String,
    }
    let views: Vec<EventView> = events.into_iter().map(|e| EventView { at_ms: e.at_ms, message: e.message }).collect();
    output::print(format, &views, |views| {
        let mut table = Table::new(&["TIME", "EVENT"]);
        for event in views {
            let at = UNIX_EPOCH + Duration::from_millis(event.at_ms);
            table.row(vec![humantime::format_rfc3339_millis(at).to_string(), event.message.clone()]);
        }
        table
    });
    Ok(ExitCode::SUCCESS)
}

pub async fn stop(agent: &Endpoint, id: &str, format: Format) -> anyhow::Result<ExitCode> {
    let mut client = connect(agent).await?;
    let response = client.stop_instance(pb::StopInstanceRequest { id: id.to_owned() }).await?.into_inner();
    let instance = response.instance.as_ref().context("the agent sent no instance")?;
    #[derive(Serialize)]
    struct Stopped {
        instance: InstanceView,
        forced: bool,
    }
    let stopped = Stopped { instance: InstanceView::try_from(instance)?, forced: response.forced };
    output::print(format, &stopped, |stopped| {
        let mut table = instance_table(std::slice::from_ref(&stopped.instance));
        if stopped.forced {
            table.row(vec!["(forced off after its stop timeout)".into()]);
        }
        table
    });
    Ok(ExitCode::SUCCESS)
}

pub async fn host(agent: &Endpoint, format: Format) -> anyhow::Result<ExitCode> {
    let mut client = connect(agent).await?;
    let info = client.get_host_info(pb::GetHostInfoRequest {}).await?.into_inner();
    #[derive(Serialize)]
    struct Backend {
        target: String,
        available: bool,
        reason: Option<String>,
        attributes: std::collections::BTreeMap<String, String>,
        capabilities: Vec<String>,
    }
    #[derive(Serialize)]
    struct HostView {
        hostname: String,
        agent_version: String,
        backends: Vec<Backend>,
    }
    let view = HostView {
        hostname: info.hostname,
        agent_version: info.agent_version,
        backends: info
            .backends
            .into_iter()
            .map(|b| Backend {
                available: b.unavailable_reason.is_empty(),
                reason: (!b.unavailable_reason.is_empty()).then_some(b.unavailable_reason),
                target: b.target,
                attributes: b.attributes.into_iter().collect(),
                capabilities: b.capabilities,
            })
            .collect(),
    };
    output::print(format, &view, |view| {
        let mut table = Table::new(&["BACKEND", "AVAILABLE", "CAPABILITIES", "DETAILS"]);
        for b in &view.backends {
            let facts: Vec<String> = b.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let details = b.reason.clone().unwrap_or_else(|| facts.join(" "));
            let available = if b.available { "yes" } else { "no" };
            table.row(vec![b.target.clone(), available.into(), b.capabilities.join(","), details]);
        }
        table
    });
    Ok(ExitCode::SUCCESS)
}
