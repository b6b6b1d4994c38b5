//! The registry's records and the commands that change them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::health::Health;
use crate::ids::InstanceId;
use crate::instance::{Desired, ExitStatus, Phase};
use crate::network::{Interface, Network};
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
    pub version: String,
    pub target: Target,
    pub count: u32,
    pub placement: Placement,
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
    RegisterApp {
        version: AppVersion,
    },
    /// Creates or updates the deployment of `spec.app`.
    Deploy {
        spec: DeploymentSpec,
        at_ms: u64,
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
    /// Instances that should stop (scaled away, replaced, obsolete).
    StopInstances {
        ids: Vec<InstanceId>,
        reason: String,
    },
    ReportInstances {
        host: HostId,
        reports: Vec<InstanceReport>,
    },
    /// Declares a network (again, with the same definition: nothing changes).
    CreateNetwork {
        network: Network,
    },
    /// Forgets a network no deployment uses and no instance holds an address of.
    RemoveNetwork {
        name: String,
    },
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
    #[error("invalid command: {0}")]
    Invalid(String),
}
