//! The cluster registry: the state machine the coordinators replicate with raft.
//!
//! Hosts, networks, applications, deployments and instances. [`Registry::apply`] takes the raft index and
//! a [`Request`] and is deterministic: no clock, no randomness, ordered maps; every replica that
//! applies the same log holds the same registry. IDs are minted by the leader and fixed in the
//! log entry; the registry refuses an ID it has seen before, so none is ever reused. The leader
//! mints them from a serial ([`Registry::fresh_ids`]), so the registry remembers every ID it
//! took with one number, not one entry per instance that ever ran. A request
//! ID seen recently returns the recorded result instead of applying twice, so a client may
//! retry a write whose answer it lost.

mod events;
mod fillers;
mod recent;
mod types;
mod updates;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::ops::{Bound, RangeInclusive};

use serde::{Deserialize, Serialize};

pub use self::events::{Event, EventKind};
pub use self::fillers::Fillers;
use self::fillers::Standing;
pub use self::recent::DEDUP_WINDOW;
use self::recent::RecentRequests;
pub use self::types::*;
use crate::args;
use crate::health::Health;
use crate::ids::InstanceId;
use crate::instance::{Desired, Phase};
use crate::network::{MacAddress, Network};
use crate::spec::InstanceSpec;

pub type ApplyResult = Result<Outcome, Rejection>;

/// How far past [`Registry::fresh_ids`] a placed ID's serial may lie and still move the serial:
/// far more than leaders mint before their plans are applied, far less than the 2^64 serials.
const SERIALS_AHEAD: u64 = 1 << 32;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    hosts: BTreeMap<HostId, Host>,
    #[serde(default)]
    networks: BTreeMap<String, Network>,
    /// Network -> the address after the last one given: the next placement starts there.
    #[serde(default)]
    address_cursors: BTreeMap<String, Ipv4Addr>,
    apps: BTreeMap<String, BTreeMap<String, AppVersion>>,
    deployments: BTreeMap<String, Deployment>,
    instances: BTreeMap<InstanceId, InstanceEntry>,
    /// The serial after the highest one an ID placed was minted from
    /// ([`InstanceId::from_serial`]), counted from `serial_base`: every ID of a lower serial
    /// was taken or is never minted.
    #[serde(default)]
    next_serial: u64,
    /// Where this cluster's serials start ([`Registry::set_serial_base`]), so two clusters (two
    /// `mirari dev` on one machine, whose instances share its namespace and interface names)
    /// never mint the same IDs. Not state: every replica derives it from the cluster's identity.
    #[serde(skip)]
    serial_base: u64,
    /// IDs placed whose serials lie far beyond `next_serial` (IDs drawn at random before
    /// leaders minted from serials, or another client's), one by one: taking their serials
    /// would leap the counter forward. Leaders never add to it.
    #[serde(default, rename = "minted")]
    minted_apart: BTreeSet<InstanceId>,
    /// Requests applied within the dedup window and their results.
    #[serde(default)]
    recent: RecentRequests,
    /// The window as snapshots kept it before [`RecentRequests`], by request ID: read, moved into
    /// `recent` by [`Registry::rebuild_derived`], never written.
    #[serde(default, rename = "recent_requests", skip_serializing)]
    recent_by_id: BTreeMap<String, (u64, ApplyResult)>,
    applied_index: u64,
    /// The most hosts registered at once (providers included): lease timing grows with it
    /// ([`crate::lease::LeaseTiming::for_hosts`]), and it never shrinks, so a new leader's
    /// leases outlast those granted before however many hosts were removed since.
    #[serde(default)]
    most_hosts: usize,
    /// Derived from `instances` (rebuilt after a snapshot is loaded): what each host has
    /// committed to the instances it holds, and which instance holds each slot.
    #[serde(skip)]
    derived: Derived,
    /// What the entry being applied changed.
    #[serde(skip)]
    journal: events::Journal,
}

/// Whether an instance holds its slot, its host's resources and its addresses: while it should run, and
/// after it was asked to stop until it is known to have ended for good: its host reported it
/// ended after applying assignments that told it to stop (an earlier end may be followed by a
/// restart from an older assignment), or the host was declared down (only after its lease
/// surely ran out). So a slot is never filled again, and an address never given again,
/// while an earlier instance holding it may still run.
pub fn holds_slot(instance: &InstanceEntry) -> bool {
    // Stops recorded before stop indexes existed (0) count as released once ended.
    let legacy_ended = instance.stopped_at_index == 0 && instance.observed.has_ended();
    instance.desired == Desired::Running || !(instance.released || legacy_ended)
}

/// Whether an instance fills its slot for the scheduler: it holds it and is not migrating off a
/// draining host (a migrating instance holds its resources and addresses until its replacement
/// is healthy, but the slot is the replacement's to fill).
pub fn fills_slot(instance: &InstanceEntry) -> bool {
    holds_slot(instance) && !instance.migrating
}

#[derive(Debug, Clone, Default)]
struct Derived {
    used: BTreeMap<HostId, Resources>,
    /// App -> (version, slot) -> the instance filling it. Instances of other versions, and
    /// migrating ones, hold their slots beside it until a rollout or drain stops them.
    slots: BTreeMap<String, BTreeMap<(String, u32), InstanceId>>,
    /// App -> the instances that should run.
    live: BTreeMap<String, BTreeSet<InstanceId>>,
    /// App -> the instances that should run and are migrating off a draining host.
    migrating: BTreeMap<String, BTreeSet<InstanceId>>,
    /// App -> version -> how far the instances filling its slots are on their way to settled.
    fillers: BTreeMap<String, BTreeMap<String, Fillers>>,
    /// Network -> address -> the instance holding it.
    addresses: BTreeMap<String, BTreeMap<Ipv4Addr, InstanceId>>,
    /// Instances each host holds: those it must run, and those it must stop that have not
    /// ended yet.
    placed: BTreeMap<HostId, BTreeSet<InstanceId>>,
    /// Bumped whenever what a host must run or stop changes, so watchers can tell cheaply
    /// whether to look again.
    host_versions: BTreeMap<HostId, u64>,
    /// The applied index these indexes were rebuilt at (a snapshot loaded): the epoch of every
    /// [`HostVersion`] counted since.
    rebuilt_at: u64,
    /// Hosts whose version was bumped since [`Registry::take_changed_hosts`] last took them.
    changed_hosts: BTreeSet<HostId>,
}

/// Host versions, their epoch and the hosts changed lately are local to each replica (they restart when a snapshot is loaded),
/// so they take no part in comparing registries; everything else is derived from `instances`.
impl PartialEq for Derived {
    fn eq(&self, other: &Self) -> bool {
        self.used == other.used
            && self.slots == other.slots
            && self.live == other.live
            && self.migrating == other.migrating
            && self.fillers == other.fillers
            && self.placed == other.placed
            && self.addresses == other.addresses
    }
}

impl Registry {
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    /// The most hosts registered at once, ever.
    pub fn most_hosts(&self) -> usize {
        self.most_hosts.max(self.hosts.len())
    }

    fn insert_host(&mut self, host: Host) {
        self.hosts.insert(host.id.clone(), host);
        self.most_hosts = self.most_hosts();
    }

    pub fn host(&self, id: &HostId) -> Option<&Host> {
        self.hosts.get(id)
    }

    pub fn networks(&self) -> impl Iterator<Item = &Network> {
        self.networks.values()
    }

    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.get(name)
    }

    /// The instance holding an address of a network, if any.
    pub fn address_holder(&self, network: &str, address: Ipv4Addr) -> Option<InstanceId> {
        self.derived.addresses.get(network)?.get(&address).copied()
    }

    /// Where the search for a network's next free address starts: after the last one given.
    pub fn address_cursor(&self, network: &str) -> Option<Ipv4Addr> {
        self.address_cursors.get(network).copied()
    }

    /// How many addresses of a network are held.
    pub fn addresses_held(&self, network: &str) -> usize {
        self.derived.addresses.get(network).map_or(0, BTreeMap::len)
    }

    pub fn apps(&self) -> impl Iterator<Item = &AppVersion> {
        self.apps.values().flat_map(BTreeMap::values)
    }

    pub fn app_version(&self, app: &str, version: &str) -> Option<&AppVersion> {
        self.apps.get(app)?.get(version)
    }

    /// Whether instances of `app` are migrating off draining hosts.
    pub fn has_migrating(&self, app: &str) -> bool {
        self.derived.migrating.get(app).is_some_and(|ids| !ids.is_empty())
    }

    /// The instances of `app` that should run, by ID.
    pub fn live_of(&self, app: &str) -> impl Iterator<Item = &InstanceEntry> {
        let ids = self.derived.live.get(app).into_iter().flatten();
        ids.filter_map(|id| self.instances.get(id))
    }

    pub fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        self.deployments.values()
    }

    pub fn deployment(&self, app: &str) -> Option<&Deployment> {
        self.deployments.get(app)
    }

    pub fn instances(&self) -> impl Iterator<Item = &InstanceEntry> {
        self.instances.values()
    }

    /// The instances after `after` (all of them for `None`), by ID: where a listing that
    /// stopped at `after` goes on, however many were placed or stopped meanwhile.
    pub fn instances_after(&self, after: Option<InstanceId>) -> impl Iterator<Item = &InstanceEntry> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.instances.range((from, Bound::Unbounded)).map(|(_, instance)| instance)
    }

    pub fn instance(&self, id: InstanceId) -> Option<&InstanceEntry> {
        self.instances.get(&id)
    }

    pub fn was_minted(&self, id: InstanceId) -> bool {
        self.serial_of(id) < self.next_serial || self.minted_apart.contains(&id)
    }

    /// Counts this cluster's serials from `base` (a number of its own, the same on every
    /// replica); set before anything is applied.
    pub fn set_serial_base(&mut self, base: u64) {
        self.serial_base = base;
    }

    /// The IDs a leader may place next, in order: each one is taken once a placement of it is
    /// applied, and so is every ID before it.
    pub fn fresh_ids(&self) -> impl Iterator<Item = InstanceId> + '_ {
        // Serial 0 of base 0 is ID 0, which stands for "no instance" in dry runs.
        (self.next_serial.max(1)..=u64::MAX)
            .map(|serial| InstanceId::from_serial(self.serial_base.wrapping_add(serial)))
            .filter(|id| !self.minted_apart.contains(id))
    }

    /// An ID's serial, counted from this cluster's base.
    fn serial_of(&self, id: InstanceId) -> u64 {
        id.serial().wrapping_sub(self.serial_base)
    }

    /// Marks a placed ID as taken: by moving the serial past it, or, for an ID whose serial lies
    /// beyond what leaders mint, apart.
    fn take_id(&mut self, id: InstanceId) {
        let serial = self.serial_of(id);
        if serial < self.next_serial.saturating_add(SERIALS_AHEAD) {
            self.next_serial = self.next_serial.max(serial.saturating_add(1));
        } else {
            self.minted_apart.insert(id);
        }
    }

    /// What a host has committed to instances that should run.
    pub fn used(&self, host: &HostId) -> Resources {
        self.derived.used.get(host).copied().unwrap_or_default()
    }

    /// The instances `host` holds: those it must run (`desired` running) and those it must
    /// stop that have not ended yet.
    pub fn placed_on(&self, host: &HostId) -> impl Iterator<Item = &InstanceEntry> {
        let ids = self.derived.placed.get(host).into_iter().flatten();
        ids.filter_map(|id| self.instances.get(id))
    }

    /// What `host` must do: the instances it must run, with their specs, and those it must
    /// stop that have not ended yet.
    pub fn assignments(&self, host: &HostId) -> HostAssignments {
        let (mut run, mut stop) = (Vec::new(), Vec::new());
        for instance in self.placed_on(host) {
            if instance.desired == Desired::Stopped {
                stop.push(instance.id);
            } else if let Some(spec) =
                self.app_version(&instance.app, &instance.version).and_then(|v| v.instance_spec(instance.target))
            {
                run.push((instance.id, spec.for_instance(instance.id, instance.slot, instance.interfaces.clone())));
            }
        }
        (run, stop)
    }

    /// Whether a request with this ID was applied within the dedup window.
    pub fn remembers(&self, request_id: &str) -> bool {
        self.recent.get(request_id).is_some()
    }

    /// Changes whenever what `host` must run or stop changes.
    pub fn host_version(&self, host: &HostId) -> HostVersion {
        let changes = self.derived.host_versions.get(host).copied().unwrap_or_default();
        HostVersion { rebuilt_at: self.derived.rebuilt_at, changes }
    }

    /// What `host` must do ([`Registry::assignments`]), unless it is what it was at `seen`.
    pub fn assignments_since(&self, host: &HostId, seen: HostVersion) -> Option<HostAssignments> {
        (self.host_version(host) != seen).then(|| self.assignments(host))
    }

    /// The instance that fills a slot of an app with a version, if any.
    pub fn slot_filler(&self, app: &str, version: &str, slot: u32) -> Option<InstanceId> {
        self.derived.slots.get(app)?.get(&(version.to_owned(), slot)).copied()
    }

    /// How far the instances filling `app`'s slots of `version` are on their way to settled.
    pub fn slot_fillers(&self, app: &str, version: &str) -> Option<&Fillers> {
        self.derived.fillers.get(app)?.get(version)
    }

    /// The highest slot of `app` an instance of `version` fills.
    pub fn last_filled_slot(&self, app: &str, version: &str) -> Option<u32> {
        self.derived.slots.get(app)?.range(slots_of(version)).next_back().map(|((_, slot), _)| *slot)
    }

    /// The instances of `app` that should run and fill a slot of `version` (none migrating).
    /// The work is in proportion to them, not to the app's other versions.
    pub fn fillers_of<'a>(&'a self, app: &str, version: &str) -> impl Iterator<Item = &'a InstanceEntry> + 'a {
        let range = slots_of(version);
        let ids = self.derived.slots.get(app).into_iter().flat_map(move |slots| slots.range(range.clone()));
        ids.filter_map(|(_, id)| self.instances.get(id)).filter(|i| i.desired == Desired::Running)
    }

    /// The instances of `app` that should run and are outdated against `version`: of another
    /// version, or migrating off a draining host. The work is in proportion to them and to the
    /// other versions' instances still holding their slots, never to the instances of `version`.
    pub fn outdated_of<'a>(&'a self, app: &str, version: &str) -> impl Iterator<Item = &'a InstanceEntry> + 'a {
        let slots = self.derived.slots.get(app);
        let below = (Bound::Unbounded, Bound::Excluded((version.to_owned(), 0)));
        let above = (Bound::Excluded((version.to_owned(), u32::MAX)), Bound::Unbounded);
        let other_versions = slots.into_iter().flat_map(move |s| s.range(below.clone()).chain(s.range(above.clone())));
        let other_versions =
            other_versions.filter_map(|(_, id)| self.instances.get(id)).filter(|i| i.desired == Desired::Running);
        let migrating = self.derived.migrating.get(app).into_iter().flatten().filter_map(|id| self.instances.get(id));
        other_versions.chain(migrating)
    }

    fn filled_below<'a>(&'a self, app: &str, version: &str, count: u32) -> impl Iterator<Item = u32> + 'a {
        let range = (version.to_owned(), 0)..(version.to_owned(), count);
        self.derived.slots.get(app).into_iter().flat_map(move |slots| slots.range(range.clone())).map(|((_, s), _)| *s)
    }

    /// The slots below `count` that no instance of `version` fills, in order. Lazy: the work is
    /// in proportion to the filled slots and the empty ones taken, never `count`.
    pub fn empty_slots(&self, app: &str, version: &str, count: u32) -> impl Iterator<Item = u32> + '_ {
        let mut filled = self.filled_below(app, version, count).peekable();
        let mut next = 0u32;
        std::iter::from_fn(move || {
            while filled.peek().is_some_and(|slot| *slot == next) {
                filled.next();
                next += 1;
            }
            (next < count).then(|| {
                next += 1;
                next - 1
            })
        })
    }

    /// How many slots below `count` no instance of `version` fills: a lookup, unless instances
    /// of `version` fill slots at or above `count` (scaled down, not yet ended), when the filled
    /// slots below it are counted.
    pub fn empty_slot_count(&self, app: &str, version: &str, count: u32) -> u32 {
        let filled = match self.slot_fillers(app, version) {
            None => 0,
            Some(fillers) if self.last_filled_slot(app, version).is_some_and(|slot| slot < count) => fillers.count(),
            Some(_) => self.filled_below(app, version, count).count(),
        };
        count - u32::try_from(filled).unwrap_or(count)
    }

    /// Rebuilds derived indexes; call after deserializing a snapshot.
    pub fn rebuild_derived(&mut self) {
        if !self.recent_by_id.is_empty() {
            self.recent = RecentRequests::from_ids(std::mem::take(&mut self.recent_by_id));
        }
        self.derived = Derived { rebuilt_at: self.applied_index, ..Derived::default() };
        let holding: Vec<InstanceEntry> = self.instances.values().filter(|i| holds_slot(i)).cloned().collect();
        for instance in &holding {
            self.index(instance, Held::of(instance), true);
            self.stand(instance, Standing::of(instance), true);
        }
    }

    /// Applies one log entry. A refused command leaves the registry unchanged. Every entry,
    /// a retried request too, advances the applied index: read barriers wait for it.
    pub fn apply(&mut self, index: u64, request: &Request) -> ApplyResult {
        self.applied_index = index;
        self.journal = events::Journal::default();
        if let Some(result) = self.recent.get(&request.request_id) {
            return result.clone();
        }
        let result = self.apply_command(&request.command);
        self.recent.record(index, &request.request_id, result.clone());
        result
    }

    /// Records that entry `index` was applied without a registry command (a membership
    /// change or a new leader's empty entry).
    pub fn skip(&mut self, index: u64) {
        self.applied_index = index;
        self.journal = events::Journal::default();
    }

    fn apply_command(&mut self, command: &Command) -> ApplyResult {
        match command {
            Command::RegisterHost { host } => self.register_host(host),
            Command::SetHostStatus { host, status, at_ms } => self.set_host_status(host, *status, *at_ms),
            Command::RegisterApp { version } => self.register_app(version),
            Command::Deploy { spec, at_ms, by, cause } => self.deploy(spec, *at_ms, by, cause),
            Command::Scale { app, count } => self.scale(app, *count),
            Command::StopDeployment { app } => self.stop_deployment(app),
            Command::Place { app, generation, placements, at_ms } => self.place(app, *generation, placements, *at_ms),
            Command::Deregister { ids, at_ms } => {
                for id in ids {
                    if let Some(instance) = self.instances.get_mut(id).filter(|i| i.desired == Desired::Running) {
                        instance.deregistered_at_ms.get_or_insert(*at_ms);
                    }
                }
                Ok(Outcome::Done)
            }
            Command::StopInstances { ids, reason } => {
                self.stop_instances(ids.iter().copied(), reason);
                Ok(Outcome::Done)
            }
            Command::ForgetInstances { ids } => {
                for id in ids {
                    if self.instances.get(id).is_some_and(|i| !holds_slot(i) && !i.observed.is_live()) {
                        self.instances.remove(id);
                    }
                }
                Ok(Outcome::Done)
            }
            Command::ReportInstances { host, reports, at_ms } => self.report(host, reports, *at_ms),
            Command::CreateNetwork { network } => self.create_network(network),
            Command::RemoveNetwork { name } => self.remove_network(name),
            Command::Promote { app } => self.promote(app),
            Command::FinishRollout { app, version, failure, at_ms } => {
                self.finish_rollout(app, version, failure.as_deref(), *at_ms)
            }
            Command::DrainHost { host, drain } => self.drain_host(host, *drain),
            Command::RemoveHost { host } => self.remove_host(host),
            Command::AddProvider { name, provider, at_ms } => self.add_provider(name, provider, *at_ms),
            Command::SetProviderCondition { name, condition } => self.set_provider_condition(name, condition),
        }
    }

    fn register_host(&mut self, host: &Host) -> ApplyResult {
        if host.id.0.is_empty() {
            return Err(Rejection::Invalid("host ID is empty".into()));
        }
        if host.provider.is_some() || self.hosts.get(&host.id).is_some_and(|known| known.provider.is_some()) {
            return Err(Rejection::IsAProvider(host.id.clone()));
        }
        let mut host = host.clone();
        let known = self.hosts.get(&host.id);
        self.journal_registration(&host, known.map(|k| k.status));
        if let Some(known) = self.hosts.get(&host.id) {
            host.registered_at_ms = known.registered_at_ms;
            // A drain is the operators' to end, not the agent's.
            host.drain = known.drain;
            // Registering again changes no status: the leader's lease table goes by this time.
            if known.status == host.status {
                host.status_changed_at_ms = known.status_changed_at_ms;
            }
        }
        self.insert_host(host);
        Ok(Outcome::Done)
    }

    fn set_host_status(&mut self, id: &HostId, status: HostStatus, at_ms: u64) -> ApplyResult {
        let host = self.hosts.get_mut(id).ok_or_else(|| Rejection::UnknownHost(id.clone()))?;
        if host.status == status {
            return Ok(Outcome::Done);
        }
        host.status = status;
        host.status_changed_at_ms = at_ms;
        self.note(match status {
            HostStatus::Down => EventKind::HostDown { host: id.clone() },
            HostStatus::Up => EventKind::HostUp { host: id.clone() },
        });
        if status == HostStatus::Down {
            // Its instances are lost; their slots free up for replacements elsewhere. If the
            // host comes back, it is told these instances are obsolete.
            let lost: Vec<InstanceId> = self.placed_on(id).map(|i| i.id).collect();
            let reason = format!("host {id} is down");
            let index = self.applied_index;
            for lost in lost {
                self.update(lost, |instance| {
                    ask_to_stop(instance, index, &reason);
                    instance.observed = Phase::Lost;
                    instance.released = true;
                    instance.released_at_ms.get_or_insert(at_ms);
                });
            }
        }
        Ok(Outcome::Done)
    }

    fn create_network(&mut self, network: &Network) -> ApplyResult {
        network.validate().map_err(|e| Rejection::Invalid(e.to_string()))?;
        match self.networks.get(&network.name) {
            Some(known) if known == network => Ok(Outcome::Done),
            Some(_) => Err(Rejection::NetworkExists(network.name.clone())),
            None if self.networks.len() >= crate::limits::MAX_NETWORKS => {
                Err(Rejection::Invalid(format!("the cluster has {} networks, the most it keeps", self.networks.len())))
            }
            None => {
                self.networks.insert(network.name.clone(), network.clone());
                self.note(EventKind::NetworkCreated { network: network.name.clone() });
                Ok(Outcome::Done)
            }
        }
    }

    fn remove_network(&mut self, name: &str) -> ApplyResult {
        if !self.networks.contains_key(name) {
            return Err(Rejection::UnknownNetwork(name.to_owned()));
        }
        if let Some((_, holder)) = self.derived.addresses.get(name).and_then(|held| held.first_key_value()) {
            return Err(Rejection::NetworkInUse { name: name.to_owned(), by: format!("instance {holder}") });
        }
        let using = self.deployments.values().find(|d| {
            d.desired == Desired::Running
                && self
                    .app_version(&d.spec.app, &d.spec.version)
                    .is_some_and(|v| v.run.networks.iter().any(|n| n == name))
        });
        if let Some(deployment) = using {
            return Err(Rejection::NetworkInUse {
                name: name.to_owned(),
                by: format!("deployment `{}`", deployment.spec.app),
            });
        }
        self.networks.remove(name);
        self.note(EventKind::NetworkRemoved { network: name.to_owned() });
        Ok(Outcome::Done)
    }

    fn scale(&mut self, app: &str, count: u32) -> ApplyResult {
        let deployment = self.deployments.get_mut(app).ok_or_else(|| Rejection::NotDeployed(app.to_owned()))?;
        deployment.spec.count = count;
        deployment.desired = Desired::Running;
        deployment.generation += 1;
        self.note(EventKind::Scaled { app: app.to_owned(), count });
        self.trim_slots(app, count);
        Ok(Outcome::Done)
    }

    fn stop_deployment(&mut self, app: &str) -> ApplyResult {
        let deployment = self.deployments.get_mut(app).ok_or_else(|| Rejection::NotDeployed(app.to_owned()))?;
        deployment.desired = Desired::Stopped;
        deployment.generation += 1;
        self.note(EventKind::DeploymentStopped { app: app.to_owned() });
        let live: Vec<InstanceId> = self.live_of(app).map(|i| i.id).collect();
        self.stop_instances(live, "the deployment was stopped");
        Ok(Outcome::Done)
    }

    /// Stops the instances in slots at or above `count`.
    fn trim_slots(&mut self, app: &str, count: u32) {
        let surplus: Vec<InstanceId> = self.live_of(app).filter(|i| i.slot >= count).map(|i| i.id).collect();
        self.stop_instances(surplus, "scaled down");
    }

    fn place(&mut self, app: &str, generation: u64, placements: &[PlacedInstance], at_ms: u64) -> ApplyResult {
        let deployment = self.deployments.get(app).ok_or_else(|| Rejection::NotDeployed(app.to_owned()))?;
        if deployment.generation != generation {
            return Err(Rejection::StalePlan {
                app: app.to_owned(),
                planned: generation,
                current: deployment.generation,
            });
        }
        if deployment.desired != Desired::Running {
            return Err(Rejection::NotDeployed(app.to_owned()));
        }
        let spec = deployment.spec.clone();
        let version = self
            .app_version(&spec.app, &spec.version)
            .ok_or_else(|| Rejection::UnknownVersion { app: spec.app.clone(), version: spec.version.clone() })?;
        let need = Resources { memory_mib: u64::from(version.run.memory_mib), vcpus: version.run.vcpus, instances: 1 };
        let constraints = version.constraints.clone();
        let networks = version.run.networks.clone();
        let demand = Demand {
            target: spec.target,
            need,
            constraints: &constraints,
            networks: &networks,
            provider: spec.provider.as_deref(),
        };

        // Check the whole plan before changing anything, accumulating what it adds per host.
        let mut adding: BTreeMap<&HostId, Resources> = BTreeMap::new();
        let mut ids = BTreeSet::new();
        let mut slots = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for placed in placements {
            if self.was_minted(placed.id) || !ids.insert(placed.id) {
                return Err(Rejection::IdReused(placed.id));
            }
            if placed.slot >= spec.count {
                return Err(Rejection::NoSuchSlot { app: app.to_owned(), slot: placed.slot, count: spec.count });
            }
            if self.slot_filler(app, &spec.version, placed.slot).is_some() || !slots.insert(placed.slot) {
                return Err(Rejection::SlotTaken { app: app.to_owned(), slot: placed.slot });
            }
            let host = self.hosts.get(&placed.host).ok_or_else(|| Rejection::UnknownHost(placed.host.clone()))?;
            let extra = adding.entry(&placed.host).or_default();
            *extra = extra.plus(need);
            let used = self.used(&host.id).plus(*extra);
            if let Err(reason) = feasible(host, used, &demand) {
                return Err(Rejection::Infeasible { host: host.id.clone(), reason: reason.describe(1) });
            }
            self.check_interfaces(placed, &networks, &mut addresses)?;
        }
        for placed in placements {
            let instance = InstanceEntry {
                id: placed.id,
                app: app.to_owned(),
                version: spec.version.clone(),
                target: spec.target,
                slot: placed.slot,
                host: placed.host.clone(),
                desired: Desired::Running,
                observed: Phase::Pending,
                restarts: 0,
                last_exit: None,
                message: String::new(),
                placed_at_ms: at_ms,
                reported_revision: 0,
                stopped_at_index: 0,
                released: false,
                interfaces: placed.interfaces.clone(),
                health: Health::None,
                healthy_since_ms: None,
                deregistered_at_ms: None,
                migrating: false,
                released_at_ms: None,
            };
            self.take_id(placed.id);
            for interface in &instance.interfaces {
                let next = Ipv4Addr::from(u32::from(interface.address.address).wrapping_add(1));
                self.address_cursors.insert(interface.network.clone(), next);
            }
            self.index(&instance, Held::of(&instance), true);
            self.stand(&instance, Standing::of(&instance), true);
            self.note(EventKind::Placed {
                app: app.to_owned(),
                version: instance.version.clone(),
                instance: placed.id,
                host: placed.host.clone(),
                slot: placed.slot,
            });
            self.instances.insert(placed.id, instance);
        }
        Ok(Outcome::Placed(placements.iter().map(|p| p.id).collect()))
    }

    /// A placement's interfaces: one per network of the app, in order, each with a free address
    /// of its network's pool (not held, not given twice in the plan), the network's prefix and
    /// gateway, and the MAC derived from the instance ID.
    fn check_interfaces(
        &self,
        placed: &PlacedInstance,
        networks: &[String],
        planned: &mut BTreeSet<(String, Ipv4Addr)>,
    ) -> Result<(), Rejection> {
        let invalid = |why: String| Rejection::Invalid(format!("instance {}: {why}", placed.id));
        if placed.interfaces.len() != networks.len() {
            return Err(invalid(format!("{} interfaces for {} networks", placed.interfaces.len(), networks.len())));
        }
        for (index, (interface, name)) in placed.interfaces.iter().zip(networks).enumerate() {
            let network = self.networks.get(name).ok_or_else(|| Rejection::UnknownNetwork(name.clone()))?;
            let address = interface.address.address;
            let expected = network.interface(address, MacAddress::for_instance(placed.id, index as u8));
            if interface.network != *name || !network.in_pool(address) || *interface != expected {
                return Err(invalid(format!("interface {index} is not an address of network `{name}`'s pool")));
            }
            if let Some(holder) = self.address_holder(name, address) {
                return Err(Rejection::AddressTaken { network: name.clone(), address, holder });
            }
            if !planned.insert((name.clone(), address)) {
                return Err(invalid(format!("address {address} is given twice in the plan")));
            }
        }
        Ok(())
    }

    fn stop_instances(&mut self, ids: impl IntoIterator<Item = InstanceId>, reason: &str) {
        let index = self.applied_index;
        for id in ids {
            self.update(id, |instance| ask_to_stop(instance, index, reason));
        }
    }

    /// Changes one instance, keeping the derived indexes in step: it releases its slot once it
    /// no longer holds it, gives it up to a replacement when it starts migrating, and its
    /// host's assignments change when what it must do does.
    fn update(&mut self, id: InstanceId, change: impl FnOnce(&mut InstanceEntry)) {
        let Some(instance) = self.instances.get_mut(&id) else { return };
        let (before, desired, standing) = (Held::of(instance), instance.desired, Standing::of(instance));
        let (phase, health) = (instance.observed, instance.health);
        change(instance);
        let instance = instance.clone();
        self.journal_change(&instance, desired, phase, health);
        let after = Held::of(&instance);
        if before != after {
            self.index(&instance, before, false);
            self.index(&instance, after, true);
        } else if before.holds && desired != instance.desired {
            self.bump_host_version(&instance.host);
        }
        let now_standing = Standing::of(&instance);
        if standing != now_standing {
            self.stand(&instance, standing, false);
            self.stand(&instance, now_standing, true);
        }
    }

    fn report(&mut self, host: &HostId, reports: &[InstanceReport], at_ms: u64) -> ApplyResult {
        if !self.hosts.contains_key(host) {
            return Err(Rejection::UnknownHost(host.clone()));
        }
        for report in reports {
            // Reports about instances placed elsewhere (a stale agent) change nothing.
            let Some(instance) = self.instances.get(&report.id).filter(|i| &i.host == host) else {
                continue;
            };
            if instance.observed == Phase::Lost && instance.desired == Desired::Stopped {
                // The host was declared down: whatever it says of its old instances now, they
                // were replaced (a returning host is told to stop them).
                continue;
            }
            // Older than what was applied already. The same revision again is the same state,
            // reported again to confirm a stop the host has now heard of.
            if report.revision < instance.reported_revision {
                continue;
            }
            let checked = self.health_checked(instance);
            self.update(report.id, |instance| {
                instance.reported_revision = report.revision;
                if instance.desired == Desired::Stopped
                    && report.phase.has_ended()
                    && report.assignments_index >= instance.stopped_at_index
                {
                    instance.released = true;
                    instance.released_at_ms.get_or_insert(at_ms);
                }
                instance.observed = report.phase;
                instance.restarts = report.restarts;
                instance.last_exit = report.last_exit;
                instance.health = report.health;
                if !report.message.is_empty() {
                    instance.message = report.message.clone();
                }
                let healthy = instance.observed == Phase::Running && (instance.health == Health::Healthy || !checked);
                instance.healthy_since_ms = healthy.then(|| instance.healthy_since_ms.unwrap_or(at_ms));
            });
            self.note_failure(report.id, at_ms);
        }
        Ok(Outcome::Done)
    }

    /// Adds an instance to (or takes it out of) the derived indexes its state puts it in. An
    /// index entry left empty is dropped, so the indexes equal those rebuilt from a snapshot.
    fn index(&mut self, instance: &InstanceEntry, held: Held, add: bool) {
        let (app, host, id) = (&instance.app, &instance.host, instance.id);
        for (member, sets) in [(held.live, &mut self.derived.live), (held.migrating, &mut self.derived.migrating)] {
            if member {
                change_set(
                    sets,
                    app,
                    add,
                    |ids| {
                        ids.insert(id);
                    },
                    |ids| {
                        ids.remove(&id);
                    },
                );
            }
        }
        if held.fills {
            let key = (instance.version.clone(), instance.slot);
            let fill = |slots: &mut BTreeMap<(String, u32), InstanceId>| {
                slots.insert(key.clone(), id);
            };
            let unfill = |slots: &mut BTreeMap<(String, u32), InstanceId>| {
                if slots.get(&key) == Some(&id) {
                    slots.remove(&key);
                }
            };
            change_set(&mut self.derived.slots, app, add, fill, unfill);
        }
        if !held.holds {
            return;
        }
        let need = self.need_of(instance);
        let used = self.derived.used.entry(host.clone()).or_default();
        *used = if add { used.plus(need) } else { used.minus(need) };
        if *used == Resources::default() {
            self.derived.used.remove(host);
        }
        for interface in &instance.interfaces {
            let address = interface.address.address;
            let hold = |held: &mut BTreeMap<Ipv4Addr, InstanceId>| {
                held.insert(address, id);
            };
            let release = |held: &mut BTreeMap<Ipv4Addr, InstanceId>| {
                if held.get(&address) == Some(&id) {
                    held.remove(&address);
                }
            };
            change_set(&mut self.derived.addresses, &interface.network, add, hold, release);
        }
        change_set(
            &mut self.derived.placed,
            host,
            add,
            |ids| {
                ids.insert(id);
            },
            |ids| {
                ids.remove(&id);
            },
        );
        self.bump_host_version(host);
    }

    /// Adds an instance that fills a slot, with its standing, to (or takes it out of) its
    /// version's [`Fillers`].
    fn stand(&mut self, instance: &InstanceEntry, standing: Option<Standing>, add: bool) {
        let Some(standing) = standing else { return };
        let (version, host, id) = (&instance.version, &instance.host, instance.id);
        let change = |fillers: &mut Fillers| {
            fillers.change(id, standing, add);
            fillers.count_on(host, add);
        };
        let add_to = |versions: &mut BTreeMap<String, Fillers>| change(versions.entry(version.clone()).or_default());
        let take_from = |versions: &mut BTreeMap<String, Fillers>| change_set(versions, version, false, |_| {}, change);
        change_set(&mut self.derived.fillers, &instance.app, add, add_to, take_from);
    }

    fn bump_host_version(&mut self, host: &HostId) {
        *self.derived.host_versions.entry(host.clone()).or_default() += 1;
        self.derived.changed_hosts.insert(host.clone());
    }

    /// The hosts whose assignments changed since the last call (what their watchers should
    /// look at again), and forgets them.
    pub fn take_changed_hosts(&mut self) -> BTreeSet<HostId> {
        std::mem::take(&mut self.derived.changed_hosts)
    }

    fn need_of(&self, instance: &InstanceEntry) -> Resources {
        let run = self.app_version(&instance.app, &instance.version).map(|v| (v.run.memory_mib, v.run.vcpus));
        let (memory_mib, vcpus) = run.unwrap_or((0, 0));
        Resources { memory_mib: u64::from(memory_mib), vcpus, instances: 1 }
    }
}

/// The keys of every slot of `version` in [`Derived::slots`].
fn slots_of(version: &str) -> RangeInclusive<(String, u32)> {
    (version.to_owned(), 0)..=(version.to_owned(), u32::MAX)
}

/// Adds to (`add`) or removes from the collection under `key`, dropping the entry once empty.
fn change_set<K: Ord + Clone, V: Default + IsEmpty>(
    index: &mut BTreeMap<K, V>,
    key: &K,
    add: bool,
    insert: impl FnOnce(&mut V),
    remove: impl FnOnce(&mut V),
) {
    if add {
        insert(index.entry(key.clone()).or_default());
    } else if let Some(values) = index.get_mut(key) {
        remove(values);
        if values.is_empty() {
            index.remove(key);
        }
    }
}

/// Collections that can say they are empty, for [`change_set`].
trait IsEmpty {
    fn is_empty(&self) -> bool;
}

impl<T> IsEmpty for BTreeSet<T> {
    fn is_empty(&self) -> bool {
        BTreeSet::is_empty(self)
    }
}

impl IsEmpty for Fillers {
    fn is_empty(&self) -> bool {
        Fillers::is_empty(self)
    }
}

impl<K, V> IsEmpty for BTreeMap<K, V> {
    fn is_empty(&self) -> bool {
        BTreeMap::is_empty(self)
    }
}

/// The instances a host must run, with their specs, and those it must stop.
pub type HostAssignments = (Vec<(InstanceId, InstanceSpec)>, Vec<InstanceId>);

/// Which state of a host's assignments a replica holds. The count of changes restarts when a
/// snapshot is loaded, in a new epoch (the applied index then, larger than any this replica
/// applied before, as raft only installs snapshots ahead of it), so a version seen before the
/// load never equals one after it, whatever the counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostVersion {
    rebuilt_at: u64,
    changes: u64,
}

/// Which derived indexes an instance's state puts it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    /// Its host's resources and assignments, its addresses.
    holds: bool,
    /// Its (version, slot).
    fills: bool,
    /// Its app's instances that should run.
    live: bool,
    /// Its app's instances that should run and are migrating.
    migrating: bool,
}

impl Held {
    fn of(instance: &InstanceEntry) -> Self {
        Self {
            holds: holds_slot(instance),
            fills: fills_slot(instance),
            live: instance.desired == Desired::Running,
            migrating: instance.desired == Desired::Running && instance.migrating,
        }
    }
}

/// Asks an instance to stop, unless it was asked already (its first reason stays).
fn ask_to_stop(instance: &mut InstanceEntry, index: u64, reason: &str) {
    if instance.desired == Desired::Running {
        instance.desired = Desired::Stopped;
        instance.stopped_at_index = index;
        instance.message = reason.to_owned();
    }
}

impl Resources {
    pub fn plus(self, other: Resources) -> Resources {
        Resources {
            memory_mib: self.memory_mib + other.memory_mib,
            vcpus: self.vcpus + other.vcpus,
            instances: self.instances + other.instances,
        }
    }

    pub fn minus(self, other: Resources) -> Resources {
        Resources {
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
            vcpus: self.vcpus.saturating_sub(other.vcpus),
            instances: self.instances.saturating_sub(other.instances),
        }
    }
}

/// Why a host cannot take an instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Infeasible {
    Down,
    /// Draining (`hosts drain`): it takes no new instances.
    Draining,
    LacksBackend(crate::target::Target),
    LacksLabel(String, String),
    LacksNetwork(String),
    LacksMemory,
    LacksVcpus,
    Full,
    /// Not a host's fault: the network's pool has no free address.
    NoAddress(String),
    /// Not a host's fault: the app names a network the cluster does not know.
    UnknownNetwork(String),
    /// Not a host's fault: the deployment comes after an app that is not healthy yet.
    Waiting(String),
    /// Not a host's fault: the slot's instances failed this many times, as often as the
    /// reschedule policy allows.
    GaveUp(u32),
    /// A provider that has launched as many machines as it may.
    ProviderFull(HostId, u32),
    /// Not the provider the deployment asks for.
    NotTheProvider(String),
    /// A provider whose machines (of this instance type) are smaller than an instance.
    MachineTooSmall(HostId, String),
}

impl Infeasible {
    /// Every [`Infeasible::kind`], and `no_hosts` (no host registered at all), in a fixed order:
    /// the bounded set of reasons a metric may be labelled with.
    pub const KINDS: [&'static str; 16] = [
        "no_hosts",
        "down",
        "draining",
        "lacks_backend",
        "lacks_label",
        "lacks_network",
        "lacks_memory",
        "lacks_vcpus",
        "full",
        "no_address",
        "unknown_network",
        "waiting",
        "gave_up",
        "provider_full",
        "not_the_provider",
        "machine_too_small",
    ];

    /// The reason's kind without its particulars (which backend, label or app), for labels
    /// whose number of values must stay bounded.
    pub const fn kind(&self) -> &'static str {
        match self {
            Infeasible::Down => "down",
            Infeasible::Draining => "draining",
            Infeasible::LacksBackend(_) => "lacks_backend",
            Infeasible::LacksLabel(..) => "lacks_label",
            Infeasible::LacksNetwork(_) => "lacks_network",
            Infeasible::LacksMemory => "lacks_memory",
            Infeasible::LacksVcpus => "lacks_vcpus",
            Infeasible::Full => "full",
            Infeasible::NoAddress(_) => "no_address",
            Infeasible::UnknownNetwork(_) => "unknown_network",
            Infeasible::Waiting(_) => "waiting",
            Infeasible::GaveUp(_) => "gave_up",
            Infeasible::ProviderFull(..) => "provider_full",
            Infeasible::NotTheProvider(_) => "not_the_provider",
            Infeasible::MachineTooSmall(..) => "machine_too_small",
        }
    }

    /// Whether the reason is not a host's (a pool, a network, a dependency, the reschedule
    /// policy): such a reason holds every slot it applies to, whatever the hosts.
    pub const fn is_cluster_wide(&self) -> bool {
        matches!(
            self,
            Infeasible::NoAddress(_) | Infeasible::UnknownNetwork(_) | Infeasible::Waiting(_) | Infeasible::GaveUp(_)
        )
    }

    /// "1 host lacks memory", "3 hosts lack backend xen".
    pub fn describe(&self, hosts: u32) -> String {
        let one = hosts == 1;
        let (subject, verb) = (if one { "host" } else { "hosts" }, if one { "lacks" } else { "lack" });
        match self {
            Infeasible::Down => format!("{hosts} {subject} {}", if one { "is down" } else { "are down" }),
            Infeasible::Draining => format!("{hosts} {subject} {}", if one { "is draining" } else { "are draining" }),
            Infeasible::LacksBackend(target) => {
                format!("{hosts} {subject} {verb} backend {target}")
            }
            Infeasible::LacksLabel(key, value) => {
                format!("{hosts} {subject} {verb} label {key}={value}")
            }
            Infeasible::LacksNetwork(network) => format!("{hosts} {subject} {verb} network {network}"),
            Infeasible::LacksMemory => format!("{hosts} {subject} {verb} memory"),
            Infeasible::LacksVcpus => format!("{hosts} {subject} {verb} vcpus"),
            Infeasible::Full => format!("{hosts} {subject} {}", if one { "is full" } else { "are full" }),
            Infeasible::NoAddress(network) => format!("network {network} has no free address"),
            Infeasible::UnknownNetwork(network) => format!("network {network} is not defined"),
            Infeasible::Waiting(app) => format!("waiting for {app} to be healthy"),
            Infeasible::GaveUp(attempts) => {
                format!(
                    "{hosts} {} failed {attempts} times and {} not rescheduled again",
                    if one { "slot" } else { "slots" },
                    if one { "is" } else { "are" }
                )
            }
            Infeasible::ProviderFull(provider, max) => format!("provider {provider} at its {max}-instance limit"),
            Infeasible::MachineTooSmall(provider, instance_type) => {
                format!("provider {provider}'s {instance_type} machines are too small")
            }
            Infeasible::NotTheProvider(provider) => {
                format!("{hosts} {subject} {} not provider {provider}", if one { "is" } else { "are" })
            }
        }
    }
}

/// What a deployment's instance asks of the place that takes it.
#[derive(Debug, Clone, Copy)]
pub struct Demand<'a> {
    pub target: crate::target::Target,
    /// One instance's share.
    pub need: Resources,
    pub constraints: &'a BTreeMap<String, String>,
    pub networks: &'a [String],
    /// The provider the deployment must run at, if it asks for one.
    pub provider: Option<&'a str>,
}

/// Whether `host` can take an instance that asks for `demand`, with `used` committed in total
/// (the instance included).
pub fn feasible(host: &Host, used: Resources, demand: &Demand) -> Result<(), Infeasible> {
    if let Some(provider) = demand.provider
        && (host.provider.is_none() || host.id.0 != provider)
    {
        return Err(Infeasible::NotTheProvider(provider.to_owned()));
    }
    if host.status != HostStatus::Up {
        return Err(Infeasible::Down);
    }
    if host.drain.is_some() {
        return Err(Infeasible::Draining);
    }
    let (target, constraints, networks) = (demand.target, demand.constraints, demand.networks);
    if !host.backends.contains(&target) {
        return Err(Infeasible::LacksBackend(target));
    }
    if let Some((key, value)) = constraints.iter().find(|(k, v)| host.labels.get(*k) != Some(*v)) {
        return Err(Infeasible::LacksLabel(key.clone(), value.clone()));
    }
    if let Some(network) = networks.iter().find(|n| !host.networks.contains(*n)) {
        return Err(Infeasible::LacksNetwork(network.clone()));
    }
    if used.memory_mib > host.capacity.memory_mib {
        return Err(Infeasible::LacksMemory);
    }
    if used.vcpus > host.capacity.vcpus {
        return Err(Infeasible::LacksVcpus);
    }
    if let Some(provider) = &host.provider {
        // Each instance gets a machine of its own: it must fit one.
        let machine = provider.machine().unwrap_or_default();
        if demand.need.memory_mib > machine.memory_mib || demand.need.vcpus > machine.vcpus {
            return Err(Infeasible::MachineTooSmall(host.id.clone(), provider.instance_type.clone()));
        }
        if used.instances > host.capacity.instances {
            return Err(Infeasible::ProviderFull(host.id.clone(), host.capacity.instances));
        }
    }
    if used.instances > host.capacity.instances {
        return Err(Infeasible::Full);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
