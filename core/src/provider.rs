//! Cloud providers: places to put instances beside hosts, and what the leader must do to make a
//! provider's machines match the registry.
//!
//! A provider is registered as a [`Host`](crate::registry::Host) whose `provider` is set: the
//! scheduler, slots, stops, retention and events treat it as one more place with capacity (its
//! `max_instances` machines of one instance type), with a cost: the scheduler fills agents'
//! hosts first and bursts to a provider when they are full, unless a deployment asks for the
//! provider by name. No agent runs there: the raft leader drives the provider's API, and
//! [`reconcile`] is its decision, pure like the agent's: the registry and what the cloud lists
//! in, the launches, terminations and reports to make out.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::InstanceId;
use crate::instance::{Desired, Phase};
use crate::registry::{HostId, InstanceReport, Registry, Resources};

/// Which cloud's API the provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Ec2,
}

impl ProviderKind {
    pub const fn name(self) -> &'static str {
        match self {
            ProviderKind::Ec2 => "ec2",
        }
    }

    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "ec2" => Ok(ProviderKind::Ec2),
            other => Err(format!("unknown provider kind `{other}`: the kinds are ec2")),
        }
    }
}

/// A cloud account's region the leader launches machines in, one per instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    pub kind: ProviderKind,
    pub region: String,
    /// The API's URL, when not the region's public endpoint (a private endpoint, a stand-in).
    pub endpoint: Option<String>,
    pub instance_type: String,
    pub max_instances: u32,
    pub subnet: Option<String>,
    pub security_groups: Vec<String>,
    /// Tags every machine carries besides Mirari's own (cost allocation, ownership).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Why the provider cannot launch now (`AuthFailure: …`), as the leader last found; `None`
    /// while its calls succeed.
    #[serde(default)]
    pub condition: Option<String>,
}

/// Memory and vCPUs of the instance types a provider may launch.
const INSTANCE_TYPES: [(&str, u64, u32); 14] = [
    ("t2.nano", 512, 1),
    ("t2.micro", 1024, 1),
    ("t2.small", 2048, 1),
    ("t2.medium", 4096, 2),
    ("t3.nano", 512, 2),
    ("t3.micro", 1024, 2),
    ("t3.small", 2048, 2),
    ("t3.medium", 4096, 2),
    ("t3.large", 8192, 2),
    ("m5.large", 8192, 2),
    ("m5.xlarge", 16384, 4),
    ("c5.large", 4096, 2),
    ("c5.xlarge", 8192, 4),
    ("r5.large", 16384, 2),
];

/// Tags an operator may give a provider's machines: EC2 allows 50 per instance, Mirari's own
/// take 4.
pub const MAX_PROVIDER_TAGS: usize = 40;
/// The longest tag key and value EC2 takes.
const MAX_TAG_KEY_BYTES: usize = 128;
const MAX_TAG_VALUE_BYTES: usize = 256;
/// Tag key prefixes that are not the operator's: Mirari's, and the cloud's own.
const RESERVED_TAG_PREFIXES: [&str; 2] = ["mirari:", "aws:"];

/// Most machines one provider may be given.
pub const MAX_PROVIDER_INSTANCES: u32 = crate::limits::MAX_INSTANCES_PER_HOST;

impl Provider {
    /// An EC2 account's region launching `max_instances` machines of `instance_type` at most,
    /// through the region's public endpoint, in its default subnet and security group.
    pub fn ec2(region: &str, instance_type: &str, max_instances: u32) -> Self {
        Self {
            kind: ProviderKind::Ec2,
            region: region.to_owned(),
            endpoint: None,
            instance_type: instance_type.to_owned(),
            max_instances,
            subnet: None,
            security_groups: Vec::new(),
            tags: BTreeMap::new(),
            condition: None,
        }
    }

    /// What one machine of the provider's instance type offers.
    pub fn machine(&self) -> Option<Resources> {
        INSTANCE_TYPES.iter().find(|(name, ..)| *name == self.instance_type).map(|&(_, memory_mib, vcpus)| Resources {
            memory_mib,
            vcpus,
            instances: 1,
        })
    }

    /// What the provider offers in all: `max_instances` machines.
    pub fn capacity(&self) -> Resources {
        let machine = self.machine().unwrap_or_default();
        Resources {
            memory_mib: machine.memory_mib.saturating_mul(u64::from(self.max_instances)),
            vcpus: machine.vcpus.saturating_mul(self.max_instances),
            instances: self.max_instances,
        }
    }

    /// Checks what an operator gave, naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        validate_region(&self.region)?;
        if self.max_instances == 0 {
            return Err("--max-instances must be at least 1".into());
        }
        if let Some(error) = crate::limits::exceeds("--max-instances", self.max_instances, MAX_PROVIDER_INSTANCES) {
            return Err(error);
        }
        if self.machine().is_none() {
            let known: Vec<&str> = INSTANCE_TYPES.iter().map(|(name, ..)| *name).collect();
            return Err(format!(
                "unknown instance type `{}`: the known types are {}",
                self.instance_type,
                known.join(", ")
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            check_endpoint(endpoint)?;
        }
        if let Some(subnet) = &self.subnet {
            check_resource_id(subnet, "subnet", "subnet")?;
        }
        for group in &self.security_groups {
            check_resource_id(group, "sg", "security group")?;
        }
        check_tags(&self.tags)
    }
}

/// The operator's tags for a provider's machines, as EC2 takes them.
fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), String> {
    if tags.len() > MAX_PROVIDER_TAGS {
        return Err(format!("{} tags: a provider's machines take at most {MAX_PROVIDER_TAGS}", tags.len()));
    }
    for (key, value) in tags {
        if key.is_empty() || key.len() > MAX_TAG_KEY_BYTES {
            return Err(format!("tag key `{key}` must have 1 to {MAX_TAG_KEY_BYTES} bytes"));
        }
        if let Some(prefix) = RESERVED_TAG_PREFIXES.iter().find(|prefix| key.starts_with(*prefix)) {
            return Err(format!("tag key `{key}`: keys starting with `{prefix}` are reserved"));
        }
        if value.len() > MAX_TAG_VALUE_BYTES {
            return Err(format!("tag `{key}` has a value of {} bytes: at most {MAX_TAG_VALUE_BYTES}", value.len()));
        }
    }
    Ok(())
}

/// An API endpoint: `http://HOST[:PORT]` or `https://HOST[:PORT]`.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let rest = endpoint.strip_prefix("https://").or_else(|| endpoint.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.is_empty() => Ok(()),
        _ => Err(format!("endpoint `{endpoint}` is not a URL: expected http://HOST[:PORT] or https://HOST[:PORT]")),
    }
}

/// `PREFIX-` and hexadecimal digits, as EC2 resource IDs are (`subnet-0a1b`, `sg-89ef`).
pub fn check_resource_id(id: &str, prefix: &str, what: &str) -> Result<(), String> {
    let digits = id.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('-'));
    match digits {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        _ => Err(format!("`{id}` is not a {what} ID: expected `{prefix}-` and hexadecimal digits")),
    }
}

/// Longest provider name.
pub const MAX_PROVIDER_NAME_BYTES: usize = 63;

/// Provider names: 1 to 63 lowercase letters, digits and `-`, starting with a letter (the name
/// is also the value of every machine's `mirari:provider` tag).
pub fn check_name(name: &str) -> Result<(), String> {
    match crate::network::is_lowercase_name(name, MAX_PROVIDER_NAME_BYTES) {
        true => Ok(()),
        false => Err(format!(
            "invalid provider name `{name}`: use 1 to {MAX_PROVIDER_NAME_BYTES} lowercase letters, digits and `-`, starting with a letter"
        )),
    }
}

/// A region name as the cloud spells them: two letters, one or more words, a number
/// (`us-east-1`, `eu-central-2`, `us-gov-west-1`).
pub fn validate_region(region: &str) -> Result<(), String> {
    let refuse = || Err(format!("region `{region}` is not a region name: expected e.g. `us-east-1` or `eu-west-3`"));
    let parts: Vec<&str> = region.split('-').collect();
    let [country, words @ .., number] = parts.as_slice() else { return refuse() };
    let lower = |part: &&str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase());
    let digits = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
    if country.len() == 2 && lower(country) && !words.is_empty() && words.iter().all(lower) && digits {
        Ok(())
    } else {
        refuse()
    }
}

/// A machine's state, as the cloud lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MachineState {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
}

impl MachineState {
    pub const fn name(self) -> &'static str {
        match self {
            MachineState::Pending => "pending",
            MachineState::Running => "running",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::ShuttingDown => "shutting-down",
            MachineState::Terminated => "terminated",
        }
    }

    fn is_gone(self) -> bool {
        matches!(self, MachineState::ShuttingDown | MachineState::Terminated)
    }
}

/// One of the cluster's machines at the provider, as the cloud lists it (by its tags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// The cloud's ID of it (`i-0123…`).
    pub cloud_id: String,
    /// Its `mirari:instance-id` tag, if it has one that parses.
    pub instance: Option<InstanceId>,
    pub state: MachineState,
    /// Why it is in that state, when the cloud says (`Client.UserInitiatedShutdown`).
    pub reason: Option<String>,
}

/// What the leader must do at one provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Instances to launch a machine for.
    pub launch: Vec<InstanceId>,
    /// Machines to terminate: those of instances asked to stop, duplicates, and orphans no
    /// instance of the registry wants.
    pub terminate: Vec<String>,
    /// What changed, for the registry, as the provider's reports.
    pub reports: Vec<InstanceReport>,
}

/// What the leader must do at `provider` so its machines match the registry: one machine per
/// instance the provider holds that should run, none for the rest.
///
/// `machines` must be listed *before* the registry was read: every machine is launched for an
/// instance the registry held when it was launched, so a machine the registry does not hold is
/// an orphan (left by a leader that died, or terminated instances' leftovers) and is
/// terminated. `failing` says why launches of some instances failed so far (kept by the
/// driver), for their reports. Reports are made only where the phase or message changes, at
/// the instance's next revision, against the registry's applied index (so the end of an
/// instance asked to stop releases it).
pub fn reconcile(
    registry: &Registry,
    provider: &HostId,
    machines: &[Machine],
    failing: &BTreeMap<InstanceId, String>,
) -> Plan {
    let mut plan = Plan::default();
    let mut by_instance: BTreeMap<InstanceId, Vec<&Machine>> = BTreeMap::new();
    for machine in machines {
        match machine.instance {
            Some(id) => by_instance.entry(id).or_default().push(machine),
            None if !machine.state.is_gone() => plan.terminate.push(machine.cloud_id.clone()),
            None => {}
        }
    }
    let mut held = BTreeSet::new();
    for instance in registry.placed_on(provider) {
        held.insert(instance.id);
        let all = by_instance.get(&instance.id).map(Vec::as_slice).unwrap_or_default();
        let mut live = all.iter().filter(|m| !m.state.is_gone());
        let (phase, message) = match instance.desired {
            Desired::Running => match live.next() {
                Some(machine) => {
                    // One machine per instance: a second (a launch retried by two leaders) goes.
                    plan.terminate.extend(live.map(|m| m.cloud_id.clone()));
                    running_phase(machine)
                }
                None => match all.iter().find(|m| m.state.is_gone()) {
                    Some(gone) => (
                        Phase::Failed,
                        format!("{} was terminated outside Mirari{}", gone.cloud_id, reason_suffix(gone)),
                    ),
                    None => {
                        plan.launch.push(instance.id);
                        let message = failing.get(&instance.id).map_or_else(
                            || "launching a machine".to_owned(),
                            |why| format!("launch failed, retrying: {why}"),
                        );
                        (Phase::Pending, message)
                    }
                },
            },
            Desired::Stopped => {
                let live: Vec<&&Machine> = live.collect();
                if live.is_empty() && instance.observed.has_ended() {
                    (instance.observed, instance.message.clone())
                } else if live.is_empty() {
                    (Phase::Stopped, "terminated".to_owned())
                } else {
                    plan.terminate.extend(live.iter().map(|m| m.cloud_id.clone()));
                    (Phase::Stopping, format!("terminating {}", live[0].cloud_id))
                }
            }
        };
        // An instance asked to stop is released only by a report of its end: made every round
        // until it is, the same revision again if nothing else changed.
        let ends_a_stop = instance.desired == Desired::Stopped && phase.has_ended();
        let changed = phase != instance.observed || message != instance.message;
        if changed || ends_a_stop {
            plan.reports.push(InstanceReport {
                id: instance.id,
                phase,
                restarts: 0,
                last_exit: None,
                message,
                revision: instance.reported_revision + u64::from(changed),
                assignments_index: registry.applied_index(),
                health: Default::default(),
            });
        }
    }
    for (id, machines) in &by_instance {
        if !held.contains(id) {
            plan.terminate.extend(machines.iter().filter(|m| !m.state.is_gone()).map(|m| m.cloud_id.clone()));
        }
    }
    plan
}

fn running_phase(machine: &Machine) -> (Phase, String) {
    let phase = match machine.state {
        MachineState::Pending => Phase::Starting,
        MachineState::Running => Phase::Running,
        // Stopped outside Mirari: it serves nothing. Failed, its slot is filled again and the
        // machine terminated.
        MachineState::Stopping | MachineState::Stopped => Phase::Failed,
        MachineState::ShuttingDown | MachineState::Terminated => Phase::Failed,
    };
    (phase, format!("{} {}{}", machine.cloud_id, machine.state.name(), reason_suffix(machine)))
}

fn reason_suffix(machine: &Machine) -> String {
    machine.reason.as_deref().map(|reason| format!(" ({reason})")).unwrap_or_default()
}

#[cfg(test)]
mod tests;
