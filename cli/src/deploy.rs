//! `mirari cluster deploy`, `scale`, `stop`, `status` and `network`: deployments across the
//! cluster and the networks their instances are on.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use mirari_blobs::BlobStore;
use mirari_build::project::Project;
use mirari_build::{bundle, images};
use mirari_core::digest::Digest;
use mirari_core::health::Health;
use mirari_core::instance::{ExitStatus, Phase};
use mirari_core::network::Network;
use mirari_core::registry::{
    AppVersion, Command, DeploymentSpec, Placement, Rejection, Request, RevisionCause, UpdatePolicy,
};
use mirari_core::target::Target;
use mirari_proto::agent::{self as wire_agent, build_event};
use mirari_proto::blob_stream;
use mirari_proto::coordinator::{self as pb};
use mirari_proto::log_codec;
use serde::Serialize;

use crate::AppArgs;
use crate::coordinators::Coordinators;
use crate::output::{self, Format, Table};
use crate::progress::Progress;
use crate::project_cmds;

const POLL: Duration = Duration::from_millis(500);

/// Commits a registry command; a refusal is an error that says why.
pub(crate) async fn propose(
    coordinators: &mut Coordinators,
    what: &str,
    request: Request,
) -> anyhow::Result<pb::ProposeResponse> {
    let entry = log_codec::encode(&request);
    let response = coordinators
        .call(what, async |mut client| {
            Ok(client.propose(pb::ProposeRequest { entry: entry.clone() }).await?.into_inner())
        })
        .await?;
    anyhow::ensure!(response.rejected.is_empty(), "{what} was refused: {}", response.rejected);
    Ok(response)
}

pub(crate) fn request_id(what: &str) -> String {
    format!("{what}-{:016x}", rand::random::<u64>())
}

async fn upload(coordinators: &mut Coordinators, store: &BlobStore, digests: &[Digest]) -> anyhow::Result<()> {
    let wanted: Vec<String> = digests.iter().map(ToString::to_string).collect();
    let missing = coordinators
        .call("checking blobs", async |mut client| {
            Ok(client
                .missing_blobs(wire_agent::MissingBlobsRequest { sha256: wanted.clone() })
                .await?
                .into_inner()
                .sha256)
        })
        .await?;
    for text in missing {
        let digest: Digest = text.parse()?;
        let size = std::fs::metadata(store.path(&digest))
            .with_context(|| format!("blob {digest} is not in the local store"))?
            .len();
        let progress =
            Progress::bytes(&format!("uploading {} ({size} bytes) to the coordinators", digest.short()), size);
        coordinators
            .call("uploading a blob", async |mut client| {
                let chunks = blob_stream::send(store, digest)
                    .await
                    .ok_or_else(|| tonic::Status::not_found(format!("blob {digest} left the local store")))?;
                progress.restart();
                let count = progress.byte_counter();
                let counted = chunks
                    .filter_map(|c| std::future::ready(c.ok()))
                    .inspect(move |chunk| count(chunk.data.len() as u64));
                client.put_blob(counted).await.map(|_| ())
            })
            .await?;
    }
    Ok(())
}

/// Builds `target` on an agent through the coordinators, showing its progress.
async fn build(
    coordinators: &mut Coordinators,
    project: &Project,
    bundle: Digest,
    target: Target,
    rebuild: bool,
) -> anyhow::Result<Digest> {
    let job = wire_agent::BuildJob {
        bundle_sha256: bundle.to_string(),
        config_toml: std::fs::read_to_string(&project.config_path)?,
        config_path: project.config_path.display().to_string(),
        target: target.name().to_owned(),
        rebuild,
    };
    let progress = Progress::steps(&format!("==> building {target} on a cluster host"));
    let done = coordinators
        .call(&format!("building {target}"), async |mut client| {
            let mut events = client.build(job.clone()).await?.into_inner();
            while let Some(event) = events.message().await? {
                match event.event {
                    Some(build_event::Event::Step(step)) => progress.step(step.index, step.total, &step.what),
                    Some(build_event::Event::Output(line)) => progress.println(&format!("    {line}")),
                    Some(build_event::Event::Done(done)) => return Ok(done),
                    Some(build_event::Event::ArtifactChunk(_)) | None => {}
                }
            }
            Err(tonic::Status::unavailable("the build stream ended early"))
        })
        .await?;
    progress.clear();
    if done.cached {
        eprintln!(
            "reused {target} built earlier on host {} from the same sources, config and toolchain: sha256 {} \
             (--rebuild to build again)",
            done.host, done.artifact_sha256
        );
    } else {
        eprintln!("built {target} on host {}: sha256 {}", done.host, done.artifact_sha256);
    }
    Ok(done.artifact_sha256.parse()?)
}

#[derive(Debug, Clone)]
pub struct DeployOptions {
    pub target: Option<Target>,
    pub count: u32,
    pub placement: Placement,
    pub timeout: Duration,
    /// Build even if an artifact of the same inputs exists.
    pub rebuild: bool,
    pub provider: Option<String>,
    pub update: UpdateOverrides,
}

/// `cluster deploy` flags that override the config's `[update]`.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct UpdateOverrides {
    /// Slots replaced at a time [default: the config's [update] max_parallel, else 1]
    #[arg(long)]
    pub max_parallel: Option<u32>,
    /// New instances placed first beside the old ones, until `cluster promote`
    /// [default: [update] canary, else 0]
    #[arg(long)]
    pub canary: Option<u32>,
    /// How long a new instance must stay healthy before the old one of its slot stops
    /// [default: [update] min_healthy_time_secs, else 10s]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub min_healthy_time: Option<Duration>,
    /// A new instance not healthy this long after placement fails the update
    /// [default: [update] healthy_deadline_secs, else 5m]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub healthy_deadline: Option<Duration>,
    /// How long a replaced instance runs on after DNS stops naming it
    /// [default: [update] shutdown_delay_secs, else 5s, the DNS TTL]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub shutdown_delay: Option<Duration>,
    /// Promote the canaries once they are healthy
    #[arg(long)]
    pub auto_promote: bool,
    /// Go back to the last healthy version if the update fails
    #[arg(long)]
    pub auto_revert: bool,
}

impl UpdateOverrides {
    fn apply(self, mut policy: UpdatePolicy) -> UpdatePolicy {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        policy.max_parallel = self.max_parallel.unwrap_or(policy.max_parallel);
        policy.canary = self.canary.unwrap_or(policy.canary);
        policy.min_healthy_time_ms = self.min_healthy_time.map_or(policy.min_healthy_time_ms, ms);
        policy.healthy_deadline_ms = self.healthy_deadline.map_or(policy.healthy_deadline_ms, ms);
        policy.shutdown_delay_ms = self.shutdown_delay.map_or(policy.shutdown_delay_ms, ms);
        policy.auto_promote |= self.auto_promote;
        policy.auto_revert |= self.auto_revert;
        policy
    }
}

pub async fn deploy(
    coordinators: &mut Coordinators,
    app: &AppArgs,
    options: DeployOptions,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let (project, store) = project_cmds::open(app)?;
    let config = &project.config;
    let target = options.target.unwrap_or(config.targets[0]);
    anyhow::ensure!(
        config.targets.contains(&target),
        "{} does not list target `{target}`",
        project.config_path.display()
    );
    // The registry refuses this too; saying so before the build saves the operator a wait.
    if !target.has_interfaces() && !config.run.networks.is_empty() {
        let refusal = Rejection::NoInterfaces { target, networks: config.run.networks.clone() };
        anyhow::bail!("{}: {refusal}", project.config_path.display());
    }
    let files = images::bake_all(&project, &store)?;
    let bundle = bundle::create(&project, &store)?;
    let mut blobs: Vec<Digest> = vec![bundle];
    blobs.extend(files.iter().map(|f| f.digest));
    upload(coordinators, &store, &blobs).await?;
    let artifact = build(coordinators, &project, bundle, target, options.rebuild).await?;

    let version = AppVersion {
        app: config.name.clone(),
        version: config.version.clone(),
        artifacts: BTreeMap::from([(target, artifact)]),
        files,
        run: config.run.clone(),
        constraints: BTreeMap::new(),
    };
    let digest = version.digest();
    // The same contents are the same request: a retry, or a deploy of what is registered already.
    let register =
        Request { request_id: format!("app-{}-{digest}", config.name), command: Command::RegisterApp { version } };
    let registered = propose(coordinators, "registering the app", register).await?;
    anyhow::ensure!(!registered.version.is_empty(), "the coordinators did not say the version's name");
    let name = registered.version;
    if !registered.unchanged {
        eprintln!("registered {}@{name} (digest {})", config.name, digest.short());
    }
    let spec = DeploymentSpec {
        placement: options.placement,
        update: options.update.apply(config.update),
        reschedule: config.reschedule,
        after: config.after.clone(),
        provider: options.provider.clone(),
        ..DeploymentSpec::new(&config.name, &name, target, options.count)
    };
    let deployed = deploy_spec(coordinators, spec, RevisionCause::Deploy).await?;
    if deployed.unchanged {
        eprintln!(
            "==> {}@{name} is unchanged (digest {}): the deployment already runs it, nothing rolls out",
            config.name,
            digest.short()
        );
        return status(coordinators, false, &StatusQuery::default(), format).await;
    }
    eprintln!("==> deploying {}@{name} on {target}: {} instance(s)", config.name, options.count);
    crate::rollout_cmds::await_rollout(coordinators, &config.name, &name, options.timeout, format).await
}

/// Commits a deployment spec (who asks and when is the coordinator's to stamp).
pub(crate) async fn deploy_spec(
    coordinators: &mut Coordinators,
    spec: DeploymentSpec,
    cause: RevisionCause,
) -> anyhow::Result<pb::ProposeResponse> {
    let command = Command::Deploy { spec, at_ms: 0, by: String::new(), cause };
    propose(coordinators, "deploying", Request { request_id: request_id("deploy"), command }).await
}

pub async fn scale(
    coordinators: &mut Coordinators,
    app: &str,
    count: u32,
    timeout: Duration,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let command = Command::Scale { app: app.to_owned(), count };
    propose(coordinators, "scaling", Request { request_id: request_id("scale"), command }).await?;
    eprintln!("==> scaled {app} to {count}");
    let status = fetch_summary(coordinators, false).await?;
    let version = status.deployments.iter().find(|d| d.app == app).map(|d| d.version.clone()).unwrap_or_default();
    crate::rollout_cmds::await_rollout(coordinators, app, &version, timeout, format).await
}

pub async fn stop(
    coordinators: &mut Coordinators,
    app: &str,
    timeout: Duration,
    format: Format,
) -> anyhow::Result<ExitCode> {
    propose(
        coordinators,
        "stopping",
        Request { request_id: request_id("stop"), command: Command::StopDeployment { app: app.to_owned() } },
    )
    .await?;
    eprintln!("==> stopping {app}");
    let deadline = Instant::now() + timeout;
    let of_app = InstanceFilter { app: Some(app.to_owned()), ..Default::default() };
    loop {
        let (instances, _) = fetch_instances(coordinators, false, &of_app, None).await?;
        let live = instances.iter().filter(|i| i.observed.is_live()).count();
        if live == 0 {
            let summary = fetch_summary(coordinators, false).await?;
            show(coordinators, summary, false, &StatusQuery::default(), format).await?;
            return Ok(ExitCode::SUCCESS);
        }
        anyhow::ensure!(Instant::now() < deadline, "{live} instance(s) of {app} still run after {timeout:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// "hello: placed 6/6, running 6/6, healthy 6/6; 2 unplaced: 3 hosts lack memory": how far a
/// deployment is, for the lines deploy, scale and rollback print while they wait.
pub(crate) fn progress_line(d: &DeploymentView) -> String {
    let mut line =
        format!("{}: placed {}/{}, running {}/{}", d.app, d.placed, d.desired_count, d.running, d.desired_count);
    if let Some(healthy) = d.healthy {
        line.push_str(&format!(", healthy {healthy}/{}", d.desired_count));
    }
    if !d.unplaced_reason.is_empty() {
        line.push_str(&format!("; {} unplaced: {}", d.unplaced, d.unplaced_reason));
    }
    if let Some(rollout) = &d.rollout {
        line.push_str(&format!("; rollout {}", rollout.describe()));
    }
    line
}

#[derive(Debug, Serialize)]
pub struct StatusView {
    served_by: u64,
    stale: bool,
    applied_index: u64,
    pub(crate) deployments: Vec<DeploymentView>,
    hosts: Vec<HostView>,
    networks: Vec<NetworkView>,
    /// The instances the hosts hold, by observed phase.
    phases: BTreeMap<Phase, u64>,
    /// Those of the filters, or every one; read page by page after the rest, so not one
    /// snapshot with it.
    pub(crate) instances: Vec<InstanceView>,
    /// How many instances match the filters (more than `instances` holds past `--limit`).
    matched: u64,
}

#[derive(Debug, Serialize)]
struct NetworkView {
    #[serde(flatten)]
    network: Network,
    pool_size: u64,
    held: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct DeploymentView {
    pub(crate) app: String,
    pub(crate) version: String,
    target: Target,
    placement: Placement,
    pub(crate) desired_count: u32,
    stopped: bool,
    pub(crate) placed: u32,
    pub(crate) running: u32,
    failed: u32,
    /// Running and passing health checks (when the app has one).
    pub(crate) healthy: Option<u32>,
    unplaced: u32,
    unplaced_reason: String,
    /// The version change under way.
    pub(crate) rollout: Option<crate::rollout_cmds::RolloutView>,
    /// Every version deployed, oldest first.
    pub(crate) history: Vec<crate::rollout_cmds::RevisionView>,
    /// As the registry holds it, policies and all.
    #[serde(skip)]
    pub(crate) spec: DeploymentSpec,
}

/// A host, with what the instances it holds use of its capacity.
#[derive(Debug, Serialize)]
struct HostView {
    id: String,
    status: String,
    address: String,
    backends: Vec<Target>,
    instances: u32,
    max_instances: u32,
    running: u32,
    memory_mib_used: u64,
    memory_mib: u64,
    vcpus_used: u32,
    vcpus: u32,
}

#[derive(Debug, Serialize)]
pub(crate) struct InstanceView {
    id: String,
    pub(crate) app: String,
    pub(crate) version: String,
    target: String,
    slot: u32,
    pub(crate) host: String,
    pub(crate) desired: &'static str,
    pub(crate) observed: Phase,
    /// Each interface's address with its prefix, in order.
    addresses: Vec<String>,
    pub(crate) health: Health,
    /// Moving off a draining host.
    migrating: bool,
    restarts: u32,
    last_exit: Option<ExitStatus>,
    message: String,
}

impl TryFrom<&pb::InstanceStatus> for InstanceView {
    type Error = anyhow::Error;

    fn try_from(i: &pb::InstanceStatus) -> anyhow::Result<Self> {
        Ok(InstanceView {
            id: mirari_core::ids::InstanceId::from_u64(i.id).to_string(),
            app: i.app.clone(),
            version: i.version.clone(),
            target: i.target.clone(),
            slot: i.slot,
            host: i.host.clone(),
            desired: if i.desired_running { "running" } else { "stopped" },
            observed: Phase::try_from(i.observed())?,
            addresses: i.interfaces.iter().map(|i| i.address.clone()).collect(),
            health: i.health().into(),
            migrating: i.migrating,
            restarts: i.restarts,
            last_exit: i.last_exit.as_ref().and_then(Option::from),
            message: i.message.clone(),
        })
    }
}

/// Which instances to list; what is not given matches any.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InstanceFilter {
    /// Only instances of this app (lists instances)
    #[arg(long)]
    pub app: Option<String>,
    /// Only instances on this host (lists instances)
    #[arg(long)]
    pub host: Option<String>,
    /// Only instances in this observed state: pending, starting, running, stopping, exited,
    /// stopped, failed or lost (lists instances)
    #[arg(long)]
    pub state: Option<Phase>,
}

impl InstanceFilter {
    fn is_empty(&self) -> bool {
        self.app.is_none() && self.host.is_none() && self.state.is_none()
    }
}

/// What `cluster status` shows besides the summary.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StatusQuery {
    /// List instances instead of the summary (a filter or --limit does too). `--output json`
    /// has the summary and every instance (or those of the filters) either way
    #[arg(long)]
    pub instances: bool,
    #[command(flatten)]
    pub filter: InstanceFilter,
    /// List at most N instances, and say how many more match
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
}

impl StatusQuery {
    fn lists_instances(&self) -> bool {
        self.instances || self.limit.is_some() || !self.filter.is_empty()
    }
}

/// Reads everything but the instances (`instances` stays empty).
pub(crate) async fn fetch_summary(coordinators: &mut Coordinators, stale: bool) -> anyhow::Result<StatusView> {
    let request = pb::StatusRequest { stale, view: pb::StatusView::Summary.into(), ..Default::default() };
    let status = coordinators
        .call("reading the cluster status", async |mut client| {
            Ok(client.get_status(request.clone()).await?.into_inner())
        })
        .await?;
    let read = status.read.unwrap_or_default();
    let usage: BTreeMap<&str, &pb::HostUsage> = status.host_usage.iter().map(|u| (u.host.as_str(), u)).collect();
    let hosts = status
        .hosts
        .iter()
        .map(|h| {
            let host = log_codec::host_from_pb(h)?;
            let used = usage.get(host.id.0.as_str()).copied().cloned().unwrap_or_default();
            Ok(HostView {
                status: host_state(&host).to_owned(),
                id: host.id.0,
                address: host.address,
                backends: host.backends.into_iter().collect(),
                instances: used.instances,
                max_instances: host.capacity.instances,
                running: used.running,
                memory_mib_used: used.memory_mib,
                memory_mib: host.capacity.memory_mib,
                vcpus_used: used.vcpus,
                vcpus: host.capacity.vcpus,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let deployments = status
        .deployments
        .iter()
        .map(|d| {
            let spec = log_codec::deployment_from_pb(d.spec.as_ref().context("a deployment without a spec")?)?;
            Ok(DeploymentView {
                app: spec.app.clone(),
                version: spec.version.clone(),
                target: spec.target,
                placement: spec.placement,
                desired_count: spec.count,
                stopped: d.stopped,
                placed: d.placed,
                running: d.running,
                failed: d.failed,
                healthy: d.has_health_check.then_some(d.healthy),
                unplaced: d.unplaced,
                unplaced_reason: d.unplaced_reason.clone(),
                rollout: d.rollout.as_ref().map(crate::rollout_cmds::RolloutView::from),
                history: d.history.iter().map(crate::rollout_cmds::RevisionView::from).collect(),
                spec,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let networks = status
        .networks
        .iter()
        .map(|n| {
            let network =
                log_codec::network_from_pb(n.network.as_ref().context("a network status without a network")?)?;
            Ok(NetworkView { network, pool_size: n.pool_size, held: n.held })
        })
        .collect::<anyhow::Result<_>>()?;
    let phases =
        status.phases.iter().map(|p| Ok((Phase::try_from(p.phase())?, p.count))).collect::<anyhow::Result<_>>()?;
    Ok(StatusView {
        served_by: read.served_by,
        stale: read.stale,
        applied_index: read.applied_index,
        deployments,
        hosts,
        networks,
        phases,
        instances: Vec::new(),
        matched: 0,
    })
}

/// Reads the instances that match `filter`, page by page, up to `limit`; and how many match.
pub(crate) async fn fetch_instances(
    coordinators: &mut Coordinators,
    stale: bool,
    filter: &InstanceFilter,
    limit: Option<u64>,
) -> anyhow::Result<(Vec<InstanceView>, u64)> {
    let (mut instances, mut matched) = (Vec::new(), 0);
    let mut request = pb::StatusRequest {
        stale,
        view: pb::StatusView::Instances.into(),
        app: filter.app.clone().unwrap_or_default(),
        host: filter.host.clone().unwrap_or_default(),
        state: filter.state.map(|phase| phase.name().to_owned()).unwrap_or_default(),
        ..Default::default()
    };
    loop {
        // As many as the coordinator gives (it caps the size), or what is left of the limit.
        let left = limit.map(|limit| limit.saturating_sub(instances.len() as u64));
        request.page_size = left.map_or(u32::MAX, |left| u32::try_from(left).unwrap_or(u32::MAX));
        let page = coordinators
            .call("reading the instances", async |mut client| {
                Ok(client.get_status(request.clone()).await?.into_inner())
            })
            .await?;
        matched = page.matched.unwrap_or(matched);
        for instance in &page.instances {
            instances.push(InstanceView::try_from(instance)?);
        }
        let full = limit.is_some_and(|limit| instances.len() as u64 >= limit);
        if page.next_page_token.is_empty() || full {
            return Ok((instances, matched));
        }
        request.page_token = page.next_page_token;
    }
}

/// "up", "down", or "draining" while a drain is set.
pub(crate) fn host_state(host: &mirari_core::registry::Host) -> &'static str {
    match (host.status, host.drain) {
        (mirari_core::registry::HostStatus::Down, _) => "down",
        (mirari_core::registry::HostStatus::Up, Some(_)) => "draining",
        (mirari_core::registry::HostStatus::Up, None) => "up",
    }
}

/// The summary: deployments, hosts with what their instances use, networks, and the instances
/// by state.
fn summary_tables(status: &StatusView) -> Vec<Table> {
    let mut deployments = Table::new(&[
        "APP", "VERSION", "TARGET", "DESIRED", "PLACED", "RUNNING", "HEALTHY", "FAILED", "UNPLACED", "ROLLOUT",
    ]);
    for d in &status.deployments {
        let desired = if d.stopped { "stopped".to_owned() } else { d.desired_count.to_string() };
        let unplaced = if d.unplaced_reason.is_empty() {
            d.unplaced.to_string()
        } else {
            format!("{} ({})", d.unplaced, d.unplaced_reason)
        };
        deployments.row(vec![
            d.app.clone(),
            d.version.clone(),
            d.target.to_string(),
            desired,
            d.placed.to_string(),
            d.running.to_string(),
            d.healthy.map_or("-".into(), |h| h.to_string()),
            d.failed.to_string(),
            unplaced,
            d.rollout.as_ref().map_or("-".into(), crate::rollout_cmds::RolloutView::describe),
        ]);
    }
    let mut hosts = Table::new(&["HOST", "STATUS", "ADDRESS", "BACKENDS", "INSTANCES", "RUNNING", "MEMORY", "VCPUS"]);
    for h in &status.hosts {
        let backends: Vec<&str> = h.backends.iter().map(|b| b.name()).collect();
        hosts.row(vec![
            h.id.clone(),
            h.status.clone(),
            h.address.clone(),
            backends.join(","),
            format!("{}/{}", h.instances, h.max_instances),
            h.running.to_string(),
            format!("{}/{} MiB", h.memory_mib_used, h.memory_mib),
            format!("{}/{}", h.vcpus_used, h.vcpus),
        ]);
    }
    let mut tables = vec![deployments, hosts];
    if !status.networks.is_empty() {
        tables.push(networks_table(&status.networks));
    }
    // All of them, then one column per state some instance is in.
    let states: Vec<String> = status.phases.keys().map(|phase| phase.name().to_uppercase()).collect();
    let mut headers = vec!["INSTANCES"];
    headers.extend(states.iter().map(String::as_str));
    let mut totals = Table::new(&headers);
    let mut counts = vec![status.phases.values().sum::<u64>().to_string()];
    counts.extend(status.phases.values().map(u64::to_string));
    totals.row(counts);
    tables.push(totals);
    if !status.phases.is_empty() {
        tables.push(Table::new(&[
            "list them: mirari cluster status --instances [--app APP] [--host HOST] [--state STATE]",
        ]));
    }
    tables
}

/// The instances, and how many more match when `--limit` left some out.
fn instance_tables(status: &StatusView) -> Vec<Table> {
    let mut instances =
        Table::new(&["INSTANCE", "APP", "SLOT", "HOST", "ADDRESS", "STATE", "HEALTH", "RESTARTS", "DETAIL"]);
    for i in &status.instances {
        let state = match (i.desired, i.migrating) {
            ("running", false) => i.observed.to_string(),
            ("running", true) => format!("{} (migrating)", i.observed),
            _ => format!("{} (stopping)", i.observed),
        };
        let detail = match (&i.last_exit, i.message.is_empty()) {
            (_, false) => i.message.clone(),
            (Some(exit), true) => exit.to_string(),
            (None, true) => String::new(),
        };
        instances.row(vec![
            i.id.clone(),
            format!("{}@{}", i.app, i.version),
            i.slot.to_string(),
            i.host.clone(),
            if i.addresses.is_empty() { "-".into() } else { i.addresses.join(",") },
            state,
            i.health.name().into(),
            i.restarts.to_string(),
            detail,
        ]);
    }
    let mut tables = vec![instances];
    let more = status.matched.saturating_sub(status.instances.len() as u64);
    if more > 0 {
        let line = format!("{more} more instance(s) match; --limit {} lists them all", status.matched);
        tables.push(Table::new(&[&line]));
    }
    tables
}

fn networks_table(networks: &[NetworkView]) -> Table {
    let mut table = Table::new(&["NETWORK", "SUBNET", "GATEWAY", "POOL", "HELD"]);
    for n in networks {
        let pool = match n.network.range {
            Some((first, last)) => format!("{first}-{last} ({})", n.pool_size),
            None => n.pool_size.to_string(),
        };
        let gateway = n.network.gateway.map_or("-".into(), |g| g.to_string());
        table.row(vec![n.network.name.clone(), n.network.subnet.to_string(), gateway, pool, n.held.to_string()]);
    }
    table
}

pub async fn networks(coordinators: &mut Coordinators, format: Format) -> anyhow::Result<ExitCode> {
    let status = fetch_summary(coordinators, false).await?;
    output::print(format, &status.networks, |networks| networks_table(networks));
    Ok(ExitCode::SUCCESS)
}

pub async fn create_network(
    coordinators: &mut Coordinators,
    network: Network,
    format: Format,
) -> anyhow::Result<ExitCode> {
    // Checked here too, so a mistake is said before anything is sent.
    network.validate()?;
    let name = network.name.clone();
    let command = Command::CreateNetwork { network };
    propose(coordinators, &format!("creating network {name}"), Request { request_id: request_id("network"), command })
        .await?;
    networks(coordinators, format).await
}

pub async fn remove_network(coordinators: &mut Coordinators, name: &str, format: Format) -> anyhow::Result<ExitCode> {
    let command = Command::RemoveNetwork { name: name.to_owned() };
    propose(coordinators, &format!("removing network {name}"), Request { request_id: request_id("network"), command })
        .await?;
    networks(coordinators, format).await
}

/// `cluster status`: the summary, or the instances `query` asks for; `--output json` has both.
pub async fn status(
    coordinators: &mut Coordinators,
    stale: bool,
    query: &StatusQuery,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let summary = fetch_summary(coordinators, stale).await?;
    show(coordinators, summary, stale, query, format).await?;
    Ok(ExitCode::SUCCESS)
}

/// Prints a status as `cluster status` would, from its summary already read: the instances are
/// read now if they are shown.
pub(crate) async fn show(
    coordinators: &mut Coordinators,
    mut status: StatusView,
    stale: bool,
    query: &StatusQuery,
    format: Format,
) -> anyhow::Result<()> {
    let lists = query.lists_instances();
    if lists || format == Format::Json {
        (status.instances, status.matched) = fetch_instances(coordinators, stale, &query.filter, query.limit).await?;
    }
    output::print_tables(format, &status, if lists { instance_tables } else { summary_tables });
    Ok(())
}
