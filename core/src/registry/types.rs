//! The registry's records and the commands that change them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::health::Health;
use crate::ids::InstanceId;
use crate::instance::{Desired, ExitStatus, Phase};
use crate::network::{Interface, Network};
use crate::provider::Provider;
use crate::spec::{FileImageRef, InstanceSpec, RunPolicy};
use crate::target::Target;

/// A host's name in the cluster (its agent's `--name`, by default the hostname).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostId(pub String);

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a host offers to instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub memory_mib: u64,
    pub vcpus: u32,
    pub instances: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostStatus {
    Up,
    /// Its lease expired: its instances are lost and replaced elsewhere.
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub id: HostId,
    /// Where its agent API listens.
    pub address: String,
    pub backends: BTreeSet<Target>,
    pub capacity: Resources,
    pub labels: BTreeMap<String, String>,
    /// The cluster networks the host's bridges carry (checked by its agent: the bridge exists
    /// and is up).
    #[serde(default)]
    pub networks: BTreeSet<String>,
    pub status: HostStatus,
    pub registered_at_ms: u64,
    pub status_changed_at_ms: u64,
    /// Set by `hosts drain`: the host takes no new instances, and its instances move elsewhere.
    #[serde(default)]
    pub drain: Option<Drain>,
    /// Set for a cloud provider's account (`cluster providers add`): no agent runs there, the
    /// leader launches a machine per instance ([`crate::provider`]).
    #[serde(default)]
    pub provider: Option<Provider>,
}

impl Host {
    /// A host that is up, with no labels, networks or drain; the registry stamps its times when
    /// it registers it.
    pub fn up(
        id: &str,
        address: impl Into<String>,
        backends: impl IntoIterator<Item = Target>,
        capacity: Resources,
    ) -> Self {
        Self {
            id: HostId(id.to_owned()),
            address: address.into(),
            backends: backends.into_iter().collect(),
            capacity,
            labels: BTreeMap::new(),
            networks: BTreeSet::new(),
            status: HostStatus::Up,
            registered_at_ms: 0,
            status_changed_at_ms: 0,
            drain: None,
            provider: None,
        }
    }
}

/// A host being emptied: each of its instances is replaced elsewhere, the new one healthy before
/// the old one is stopped; whatever is left at the deadline is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub since_ms: u64,
    pub deadline_ms: u64,
}

/// One registered version of an application: everything needed to run it, by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppVersion {
    pub app: String,
    pub version: String,
    pub artifacts: BTreeMap<Target, Digest>,
    pub files: Vec<FileImageRef>,
    pub run: RunPolicy,
    /// Host labels an instance's host must carry.
    pub constraints: BTreeMap<String, String>,
}

impl AppVersion {
    /// Everything that shapes an instance of this version, as one digest: the label, the
    /// artifacts, the file images, the run policy (networks and health check included) and the
    /// placement constraints. Registering the same digest again changes nothing.
    pub fn digest(&self) -> Digest {
        let shape = (&self.app, &self.version, &self.artifacts, &self.files, &self.run, &self.constraints);
        Digest::of(&serde_json::to_vec(&shape).expect("a version serializes"))
    }

    pub fn instance_spec(&self, target: Target) -> Option<InstanceSpec> {
        Some(InstanceSpec {
            app: self.app.clone(),
            version: self.version.clone(),
            target,
            artifact: *self.artifacts.get(&target)?,
            files: self.files.clone(),
            run: self.run.clone(),
            interfaces: Vec::new(),
        })
    }
}

/// How instances of a deployment are spread over hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Fill the fullest feasible host first, keeping others free.
    #[default]
    Binpack,
    /// Prefer the emptiest feasible host.
    Spread,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSpec {
    pub app: String,
    /// The registry's name of the version (see [`Outcome::Registered`]).
    pub version: String,
    pub target: Target,
    pub count: u32,
    pub placement: Placement,
    /// How a new version replaces the running one.
    #[serde(default)]
    pub update: UpdatePolicy,
    /// How a slot whose instance failed for good is filled again.
    #[serde(default)]
    pub reschedule: ReschedulePolicy,
    /// Apps whose deployments must be healthy before this one's instances are placed.
    #[serde(default)]
    pub after: Vec<String>,
    /// The provider whose machines must run its instances (`--provider`); without one, its
    /// instances go to hosts, and to a provider when the hosts are full.
    #[serde(default)]
    pub provider: Option<String>,
}

impl DeploymentSpec {
    /// `count` instances of `app`'s `version` on `target`, with the default placement, update,
    /// reschedule policies, no ordering and no provider.
    pub fn new(app: &str, version: &str, target: Target, count: u32) -> Self {
        Self {
            app: app.to_owned(),
            version: version.to_owned(),
            target,
            count,
            placement: Placement::default(),
            update: UpdatePolicy::default(),
            reschedule: ReschedulePolicy::default(),
            after: Vec::new(),
            provider: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub spec: DeploymentSpec,
    /// Desired running, or stopped by `cluster stop`.
    pub desired: Desired,
    /// Bumped whenever the spec or desired state changes, so a plan made against an older
    /// generation is refused.
    pub generation: u64,
    pub created_at_ms: u64,
    /// The version change under way, if any.
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// Every version deployed, oldest first (at most [`crate::limits::MAX_HISTORY`]).
    #[serde(default)]
    pub history: Vec<Revision>,
    /// Slots whose instances failed for good, and where.
    #[serde(default)]
    pub failures: BTreeMap<u32, SlotFailures>,
}

/// A version change in progress: instances of `spec.version` replace the others slot by slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub version: String,
    pub started_at_ms: u64,
    /// Canaries, if the policy asks for them, are promoted (by `cluster promote` or
    /// `auto_promote`); without canaries, promoted from the start.
    pub promoted: bool,
    /// Why it stopped making progress (no revert asked, or nothing healthy to revert to).
    pub failed: Option<String>,
}

/// One deployed version in a deployment's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub version: String,
    pub label: String,
    pub digest: Digest,
    pub target: Target,
    pub artifact: Digest,
    pub files: Vec<FileImageRef>,
    pub deployed_at_ms: u64,
    /// Who deployed it: the operator certificate's name, `local` for a local caller, or
    /// `auto-revert`.
    pub by: String,
    pub cause: RevisionCause,
    pub outcome: RevisionOutcome,
    pub ended_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "cause", content = "from")]
pub enum RevisionCause {
    Deploy,
    /// `cluster rollback`.
    Rollback,
    /// The update to this version failed and `auto_revert` came back here.
    Revert(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "outcome", content = "reason")]
pub enum RevisionOutcome {
    /// Rolling out (or its canaries await promotion).
    Rolling,
    /// Every slot ran it healthy: the deployment's version from then on.
    Promoted,
    /// Its new instances failed to become healthy; the deployment keeps what runs.
    Failed(String),
    /// Its new instances failed to become healthy, and the last healthy version came back.
    Reverted(String),
    /// Another version was deployed before this one finished rolling out.
    Superseded,
}

impl RevisionOutcome {
    pub fn name(&self) -> &'static str {
        match self {
            RevisionOutcome::Rolling => "rolling",
            RevisionOutcome::Promoted => "promoted",
            RevisionOutcome::Failed(_) => "failed",
            RevisionOutcome::Reverted(_) => "reverted",
            RevisionOutcome::Superseded => "superseded",
        }
    }
}

/// A slot's instances that failed for good: how often, the last time, and on which hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotFailures {
    pub attempts: u32,
    pub last_failed_at_ms: u64,
    pub hosts: BTreeSet<HostId>,
}

/// `[update]`: how a new version replaces a running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePolicy {
    /// Slots replaced at a time; the deployment keeps at least `count - max_parallel` healthy.
    pub max_parallel: u32,
    /// How long a new instance must stay healthy before the old one of its slot stops.
    pub min_healthy_time_ms: u64,
    /// A new instance not healthy this long after it was placed fails the update.
    pub healthy_deadline_ms: u64,
    /// New instances placed first beside the old ones, until promoted.
    pub canary: u32,
    pub auto_promote: bool,
    /// A failed update goes back to the last version that was healthy.
    pub auto_revert: bool,
    /// How long a replaced instance keeps running after service discovery stops naming it,
    /// so clients that resolved it just before (or cache the answer for the DNS TTL) still reach it.
    #[serde(default = "UpdatePolicy::default_shutdown_delay_ms")]
    pub shutdown_delay_ms: u64,
}

impl UpdatePolicy {
    /// The coordinators' DNS TTL: a cached answer never names an instance already stopped.
    pub const fn default_shutdown_delay_ms() -> u64 {
        5_000
    }
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        Self {
            max_parallel: 1,
            min_healthy_time_ms: 10_000,
            healthy_deadline_ms: 300_000,
            canary: 0,
            auto_promote: false,
            auto_revert: false,
            shutdown_delay_ms: Self::default_shutdown_delay_ms(),
        }
    }
}

/// `[reschedule]`: a slot whose instance failed for good (its restart policy gave up) gets a new
/// instance on another host, at most `attempts` times, `delay` doubling after each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReschedulePolicy {
    pub attempts: u32,
    pub delay_ms: u64,
}

impl Default for ReschedulePolicy {
    fn default() -> Self {
        Self { attempts: 5, delay_ms: 5_000 }
    }
}

impl ReschedulePolicy {
    /// The longest wait between attempts.
    pub const MAX_DELAY_MS: u64 = 300_000;

    /// How long after its latest failure a slot that failed `attempts` times is filled again.
    pub fn delay_after(&self, attempts: u32) -> u64 {
        let doublings = attempts.saturating_sub(1).min(20);
        self.delay_ms.saturating_mul(1 << doublings).min(Self::MAX_DELAY_MS)
    }
}

/// One instance in the cluster: which slot of which deployment, on which host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceEntry {
    pub id: InstanceId,
    pub app: String,
    pub version: String,
    pub target: Target,
    /// Position in the deployment, 0..count. Each slot runs at most one instance.
    pub slot: u32,
    pub host: HostId,
    pub desired: Desired,
    /// The agent's last report.
    pub observed: Phase,
    pub restarts: u32,
    pub last_exit: Option<ExitStatus>,
    pub message: String,
    pub placed_at_ms: u64,
    /// The revision of the last report applied (see [`InstanceReport::revision`]).
    #[serde(default)]
    pub reported_revision: u64,
    /// The index at which it was asked to stop (0: before stops recorded their index).
    #[serde(default)]
    pub stopped_at_index: u64,
    /// Known to have ended for good: its host said so after hearing of the stop, or it was
    /// declared down. Its slot, its host's resources and its addresses are free again.
    #[serde(default)]
    pub released: bool,
    /// One per network of the app, in order, fixed when it was placed.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// What its host's health checks last said.
    #[serde(default)]
    pub health: Health,
    /// Since when it has been healthy without a break (running, for a version without a health
    /// check), as the coordinator that took the report saw time.
    #[serde(default)]
    pub healthy_since_ms: Option<u64>,
    /// When service discovery stopped naming it (its replacement settled); it stops after the
    /// update policy's `shutdown_delay`.
    #[serde(default)]
    pub deregistered_at_ms: Option<u64>,
    /// Its host is draining: it gives up its slot to a replacement elsewhere and stops once the
    /// replacement has been healthy for the update policy's `min_healthy_time`.
    #[serde(default)]
    pub migrating: bool,
    /// When it was released (the time of the report or the host's loss that released it);
    /// `None` while it holds its slot, and for instances released before this was kept.
    #[serde(default)]
    pub released_at_ms: Option<u64>,
}

/// A placement decided by the scheduler: instance `id` fills `slot` on `host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedInstance {
    pub id: InstanceId,
    pub slot: u32,
    pub host: HostId,
    /// Its addresses, one per network of the app, from the networks' pools.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
}

/// What an agent observed of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub id: InstanceId,
    pub phase: Phase,
    pub restarts: u32,
    pub last_exit: Option<ExitStatus>,
    pub message: String,
    /// The agent's revision of its record of the instance, which only grows: a report that
    /// arrives after a newer one (it was retried, or delayed in a partition) is ignored. 0 in
    /// reports from before revisions, which are always applied.
    pub revision: u64,
    /// The registry index of the latest assignment set the host had applied when it made
    /// the report: a report of an end confirms a stop only if the host had heard of it.
    pub assignments_index: u64,
    /// Its health checks' verdict (the message says the last failure).
    #[serde(default)]
    pub health: Health,
}

/// A change to the registry, as it is fixed in the raft log. Everything it needs (IDs, times)
/// is in it, so every replica applies it the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds a host or updates its address, backends, capacity and labels; marks it up.
    RegisterHost {
        host: Host,
    },
    SetHostStatus {
        host: HostId,
        status: HostStatus,
        at_ms: u64,
    },
    /// Registers a version under a name of its own (see [`Outcome::Registered`]).
    RegisterApp {
        version: AppVersion,
    },
    /// Creates or updates the deployment of `spec.app`: another version rolls out.
    Deploy {
        spec: DeploymentSpec,
        at_ms: u64,
        /// Who asked (stamped by the coordinator that took the request).
        by: String,
        cause: RevisionCause,
    },
    Scale {
        app: String,
        count: u32,
    },
    StopDeployment {
        app: String,
    },
    /// A scheduler plan, made against deployment `generation`.
    Place {
        app: String,
        generation: u64,
        placements: Vec<PlacedInstance>,
        at_ms: u64,
    },
    /// Instances service discovery no longer names, ahead of their stop.
    Deregister {
        ids: Vec<InstanceId>,
        at_ms: u64,
    },
    /// Instances that ended for good and are kept no longer ([`crate::retention`]); one still
    /// holding its slot or live is kept.
    ForgetInstances {
        ids: Vec<InstanceId>,
    },
    /// Instances that should stop (scaled away, replaced, obsolete).
    StopInstances {
        ids: Vec<InstanceId>,
        reason: String,
    },
    ReportInstances {
        host: HostId,
        reports: Vec<InstanceReport>,
        /// When the coordinator took the reports.
        at_ms: u64,
    },
    /// Declares a network (again, with the same definition: nothing changes).
    CreateNetwork {
        network: Network,
    },
    /// Forgets a network no deployment uses and no instance holds an address of.
    RemoveNetwork {
        name: String,
    },
    /// Lets a rollout waiting on its canaries replace the remaining slots.
    Promote {
        app: String,
    },
    /// Ends the rollout to `version`: every slot runs it healthy, or it failed (and, with
    /// `auto_revert`, the last healthy version rolls back out).
    FinishRollout {
        app: String,
        version: String,
        failure: Option<String>,
        at_ms: u64,
    },
    /// Starts draining a host (`deadline_ms` set) or makes it eligible again (`None`).
    DrainHost {
        host: HostId,
        drain: Option<Drain>,
    },
    /// Forgets a host that is down or drained and holds no instances, or a provider that
    /// holds none.
    RemoveHost {
        host: HostId,
    },
    /// Adds a cloud provider under `name`, or changes its settings; it is up from then on.
    AddProvider {
        name: HostId,
        provider: Provider,
        at_ms: u64,
    },
    /// What the leader last found of a provider's API: why it cannot launch, or `None`.
    SetProviderCondition {
        name: HostId,
        condition: Option<String>,
    },
}

impl Command {
    /// The time the command carries, if it carries one.
    pub fn at_ms(&self) -> Option<u64> {
        match self {
            Command::SetHostStatus { at_ms, .. }
            | Command::Deploy { at_ms, .. }
            | Command::Place { at_ms, .. }
            | Command::Deregister { at_ms, .. }
            | Command::ReportInstances { at_ms, .. }
            | Command::FinishRollout { at_ms, .. }
            | Command::AddProvider { at_ms, .. } => Some(*at_ms),
            Command::RegisterHost { host } => Some(host.registered_at_ms),
            Command::DrainHost { drain: Some(drain), .. } => Some(drain.since_ms),
            _ => None,
        }
    }
}

/// A command and the client's request ID: a retried request is applied once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub request_id: String,
    pub command: Command,
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    Placed(Vec<InstanceId>),
    /// The name a version is registered under: its label the first time the label is seen,
    /// `label#` and the first 8 hex digits of its digest for other contents under the same label.
    Registered {
        version: String,
        unchanged: bool,
    },
    /// The command asked for what already is.
    Unchanged,
}

/// Why a command was refused. Refusals are deterministic: every replica refuses the same way,
/// and the registry is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("unknown host `{0}`")]
    UnknownHost(HostId),
    #[error("unknown app `{0}`")]
    UnknownApp(String),
    #[error("app `{app}` has no version `{version}`")]
    UnknownVersion { app: String, version: String },
    #[error("app `{app}` version `{version}` was not built for target `{target}`")]
    NotBuiltFor { app: String, version: String, target: Target },
    #[error(
        "target `{target}` cannot give instances network interfaces yet, and this version has [[network]] {}; \
         deploy it to another target, or without [[network]]",
        networks.join(", ")
    )]
    NoInterfaces { target: Target, networks: Vec<String> },
    #[error("app `{0}` is not deployed")]
    NotDeployed(String),
    #[error("the plan was made for generation {planned} of `{app}`, which is now at {current}")]
    StalePlan { app: String, planned: u64, current: u64 },
    #[error("instance ID {0} was minted before")]
    IdReused(InstanceId),
    #[error("slot {slot} of `{app}` is already filled")]
    SlotTaken { app: String, slot: u32 },
    #[error("slot {slot} is outside `{app}`'s {count} slots")]
    NoSuchSlot { app: String, slot: u32, count: u32 },
    #[error("host `{host}` cannot take the instance: {reason}")]
    Infeasible { host: HostId, reason: String },
    #[error("unknown network `{0}`: declare it first (mirari cluster network create {0} --subnet CIDR)")]
    UnknownNetwork(String),
    #[error("network `{0}` exists with another definition; remove it first")]
    NetworkExists(String),
    #[error("network `{name}` is in use by {by}")]
    NetworkInUse { name: String, by: String },
    #[error("address {address} of network `{network}` is held by instance {holder}")]
    AddressTaken { network: String, address: std::net::Ipv4Addr, holder: InstanceId },
    #[error("`{0}` has no canaries waiting to be promoted")]
    NothingToPromote(String),
    #[error("app `{app}` cannot come after {after}: {why}")]
    Ordering { app: String, after: String, why: String },
    #[error("host `{host}` cannot be removed: {why}")]
    HostInUse { host: HostId, why: String },
    #[error("unknown provider `{0}` (mirari cluster providers list shows them)")]
    UnknownProvider(String),
    #[error("`{0}` is a provider, not an agent's host")]
    IsAProvider(HostId),
    #[error("`{0}` is an agent's host, not a provider")]
    NotAProvider(HostId),
    #[error("invalid command: {0}")]
    Invalid(String),
}
