//! The agent's decisions, with no I/O: instance records, their lifecycles, and the cluster
//! link (registration, the lease, fencing, reports, assignments).
//!
//! [`Host::handle`] takes the time and one [`Input`] (a backend reported, an RPC answered, a
//! person asked, time passed) and returns the [`Effect`]s the agent must now perform, in order;
//! [`Host::wake_at`] says when to look again. The driver (`runtime.rs`) performs effects
//! against real backends, disks and coordinators; the whole-cluster simulation performs them
//! against simulated ones. Nothing here reads a clock, touches a disk or a socket.
//!
//! Ordering rules the driver keeps: a [`Effect::Persist`] is durable before any effect after
//! it is performed (every decision is on disk before anything acts on it); effects are
//! performed in the order given.
//!
//! Fencing: the lease runs out at `valid_until` (boot clock), counted from when the last
//! acknowledged renewal was *sent*; at that moment every cluster instance is asked to stop,
//! gracefully for at most `fence_stop`. Independently, shims of cluster instances kill their
//! payload once the boot clock passes the deadline in [`Effect::FenceDeadline`]
//! (`valid_until + fence_stop`), so a slot cannot outlive its lease even when the agent itself
//! is dead or frozen.
//!
//! Health: a running instance whose spec has a health check is probed at its first
//! interface's address ([`Effect::Probe`], one at a time, every interval);
//! [`mirari_core::health::HealthTracker`] turns the results into its health, recorded (and so
//! reported) when it changes. An instance that turns unhealthy is stopped, and its end judged
//! by the restart policy as a failed run.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mirari_core::clock::millis;
use mirari_core::digest::Digest;
use mirari_core::health::{Health, HealthTracker, Probe};
use mirari_core::ids::InstanceId;
use mirari_core::instance::{Desired, Phase};
use mirari_core::lease::LeaseTiming;
use mirari_core::reconcile::{self, Action};
use mirari_core::registry::{self, InstanceReport};
use mirari_core::spec::InstanceSpec;

use crate::backends::{Ended, Handle};
use crate::state::{InstanceRecord, Origin};

/// Wait this long before trying a failed registration, renewal or report again (on the next
/// coordinator: the driver moves on after a failure).
pub const RETRY_MS: u64 = 200;
/// Wait this long before fetching an assignment's blobs again.
pub const FETCH_RETRY_MS: u64 = 1_000;
/// Look at everything at least this often.
const RECHECK_MS: u64 = 5_000;

/// How long records of instances that ended for good are kept after their last change, and how
/// many of them at most (the newest); then they and their directories are forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepEnded {
    pub for_ms: u64,
    pub at_most: usize,
}

impl Default for KeepEnded {
    /// An hour, and 100: enough for `ps` and `logs` after a bad night.
    fn default() -> Self {
        Self { for_ms: 3_600_000, at_most: 100 }
    }
}

/// The two clocks, read by the driver: wall time for records and people, boot time for
/// deadlines (it never jumps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub wall_ms: u64,
    pub boot_ms: u64,
}

/// What a coordinator granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub ttl_ms: u64,
    /// The cluster does not hold this host as up: register again.
    pub register_again: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Time passed; whatever fell due is done.
    Tick,
    /// `mirari run`: new local instances, with IDs the driver minted and checked, each with
    /// its spec (interfaces allocated, boot arguments filled in).
    Run {
        instances: Vec<(InstanceId, InstanceSpec)>,
    },
    /// A person asked for an instance to stop.
    Stop {
        id: InstanceId,
    },
    /// The backend started a run (its handle and a description for people), or could not.
    Started {
        id: InstanceId,
        outcome: Result<(Handle, String), String>,
    },
    /// A run ended, as its watcher (or recovery) saw. `context` is for the log: "" or
    /// " while the agent was down".
    Ended {
        id: InstanceId,
        ended: Ended,
        context: String,
    },
    /// A backend stop returned: `Ok(forced)`, or why it failed.
    StopReturned {
        id: InstanceId,
        outcome: Result<bool, String>,
        timeout_secs: u64,
    },
    /// The clean-up after run `handle` finished (or failed: it is tried again at the next
    /// start of the agent). `None`: a run whose handle was never recorded.
    Released {
        id: InstanceId,
        handle: Option<Handle>,
        ok: bool,
    },
    /// Recovery found the instance still running.
    Adopted {
        id: InstanceId,
        handle: Handle,
    },
    /// Answers from the coordinators, for calls sent at `sent_ms` (boot clock).
    Registered {
        sent_ms: u64,
        outcome: Result<Lease, ()>,
    },
    Renewed {
        sent_ms: u64,
        outcome: Result<Lease, ()>,
    },
    Reported {
        reports: Vec<InstanceReport>,
        ok: bool,
    },
    /// The assignment stream of lease epoch `epoch` sent the full set of instances this host
    /// must run, and those it must stop that the cluster has not seen ended.
    Assigned {
        epoch: u64,
        /// The registry index the set is as of.
        index: u64,
        instances: Vec<(InstanceId, InstanceSpec)>,
        stopping: Vec<InstanceId>,
    },
    /// The blobs of assignment set `generation` are in the store (or could not be fetched).
    BlobsFetched {
        generation: u64,
        ok: bool,
    },
    /// A health probe of run `run` answered: passed, or why not.
    Probed {
        id: InstanceId,
        run: u64,
        result: Result<(), String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Make these records durable; `new` ones also mark their IDs as minted.
    Persist {
        new: Vec<InstanceRecord>,
        changed: Vec<InstanceRecord>,
    },
    Start(InstanceRecord),
    /// Stream the run's console and wait for its end.
    Watch(InstanceRecord),
    Stop {
        record: InstanceRecord,
        handle: Handle,
        timeout_secs: u64,
    },
    /// Release what the ended run `handle` held on the host (`None`: the agent died before it
    /// recorded the handle; the backend finds what to release from the instance alone).
    Release {
        record: InstanceRecord,
        handle: Option<Handle>,
    },
    /// Find a run that was live when the agent last ran.
    Recover(InstanceRecord),
    Register(registry::Host),
    Renew,
    Report(Vec<InstanceReport>),
    /// Follow the assignment stream for lease epoch `epoch` (replacing any other).
    WatchAssignments {
        epoch: u64,
    },
    /// Stop following it: the lease ran out.
    StopWatchingAssignments,
    /// Get these blobs into the store, for assignment set `generation`.
    FetchBlobs {
        generation: u64,
        digests: Vec<Digest>,
    },
    /// Shims of cluster instances kill their payload once the boot clock passes this.
    FenceDeadline {
        boot_ms: u64,
    },
    /// Probe run `run` of an instance at `address`, giving up after `timeout_ms`; answer with
    /// [`Input::Probed`].
    Probe {
        id: InstanceId,
        run: u64,
        address: std::net::Ipv4Addr,
        probe: Probe,
        timeout_ms: u64,
    },
    /// Delete these records and what they left on the host (their instance directories,
    /// consoles): they ended for good past their [`KeepEnded`] retention. Their IDs stay minted.
    Forget(Vec<InstanceId>),
}

/// A backend operation under way for an instance's run; the reconciler leaves it alone
/// meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Busy {
    Recovering,
    Starting,
    Releasing,
}

#[derive(Debug)]
struct Tracked {
    record: InstanceRecord,
    busy: Option<Busy>,
    /// A backend stop is under way (it may answer after the run's end was seen).
    stopping: bool,
    /// The next stop waits only `fence_stop` before forcing (the host was fenced).
    quick_stop: bool,
    /// Re-adopted while a stop from before the agent restarted was under way: that stop may
    /// still end the run, and such an end is not the app's own.
    stop_from_before: bool,
    /// The health checks of the current run, if it has any.
    checks: Option<Checks>,
}

/// The health checks of one run.
#[derive(Debug)]
struct Checks {
    /// Tells this run's probe answers from an earlier run's.
    run: u64,
    tracker: HealthTracker,
    next_probe_ms: u64,
    probing: bool,
}

impl Tracked {
    fn new(record: InstanceRecord) -> Self {
        Self { record, busy: None, stopping: false, quick_stop: false, stop_from_before: false, checks: None }
    }

    fn is_busy(&self) -> bool {
        self.busy.is_some() || self.stopping
    }
}

/// The cluster link: this host's standing with the coordinators.
#[derive(Debug)]
struct Link {
    host: registry::Host,
    timing: LeaseTiming,
    registered: bool,
    /// The lease runs out at this boot time; `None` while there is none.
    valid_until: Option<u64>,
    /// Bumped every time the lease is regained: assignments heard in an earlier epoch are
    /// never acted on.
    epoch: u64,
    /// The epoch whose assignments were last applied.
    applied_epoch: Option<u64>,
    /// The registry index of the last assignment set applied: reports carry it, so the
    /// cluster knows which stops the host had heard of.
    assignments_index: u64,
    /// A registration or renewal under way.
    calling: bool,
    next_call_ms: u64,
    /// The revision of each instance's record last reported, to send only changes.
    reported: HashMap<InstanceId, u64>,
    /// Instances the cluster asked this host to stop that it has no record of: it never ran
    /// them (a record is made before anything starts), and says so.
    never_ran: BTreeSet<InstanceId>,
    /// Ended instances the cluster asked this host to stop, to report again with at least
    /// this assignments index: that report confirms the stop.
    confirm_stop: BTreeMap<InstanceId, u64>,
    /// What the last assignment set applied asks this host to stop: the cluster has not let
    /// these go yet.
    stopping_applied: BTreeSet<InstanceId>,
    reporting: bool,
    /// A report failed: send again at `next_report_ms`.
    report_retry: bool,
    next_report_ms: u64,
    /// The latest assignment set heard in the current epoch, and whether its blobs are in.
    assigned: Option<Assigned>,
    generation: u64,
}

#[derive(Debug)]
struct Assigned {
    generation: u64,
    index: u64,
    instances: Vec<(InstanceId, InstanceSpec)>,
    stopping: Vec<InstanceId>,
    /// When to fetch its blobs again, after a failure.
    retry_fetch_ms: Option<u64>,
}

/// How this host is part of a cluster, as the agent starts.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub host: registry::Host,
    pub timing: LeaseTiming,
    /// The lease of the agent's previous run had run out by the time this one started (its
    /// fencing deadline passed): whatever cluster instances survived are no longer its own.
    pub lease_ran_out: bool,
}

/// Everything this agent decides.
#[derive(Debug)]
pub struct Host {
    instances: BTreeMap<InstanceId, Tracked>,
    link: Option<Link>,
    /// Numbers the runs whose health is checked.
    runs_checked: u64,
    keep_ended: KeepEnded,
}

impl Host {
    /// The machine over the records the agent found on disk, and what to do first: clean up
    /// after runs that ended without the agent, and find the runs that were live. If the
    /// cluster lease ran out while the agent was down, its cluster instances are fenced now,
    /// and the host rejoins only once they are stopped.
    pub fn open(records: Vec<InstanceRecord>, cluster: Option<Cluster>, now: Now) -> (Self, Vec<Effect>) {
        let mut effects = Vec::new();
        let mut instances = BTreeMap::new();
        let mut fenced = Vec::new();
        for mut record in records {
            let fence = cluster.as_ref().is_some_and(|c| c.lease_ran_out)
                && record.origin == Origin::Cluster
                && record.lifecycle.desired == Desired::Running;
            if fence {
                record.lifecycle.on_stop_requested();
                record.revision += 1;
                record.log(now.wall_ms, "fenced: this host's cluster lease ran out while the agent was down");
                fenced.push(record.clone());
            }
            let busy = if record.lifecycle.phase.is_live() {
                effects.push(Effect::Recover(record.clone()));
                Some(Busy::Recovering)
            } else if record.handle.is_some() {
                effects.push(Effect::Release { record: record.clone(), handle: record.handle.clone() });
                Some(Busy::Releasing)
            } else {
                None
            };
            instances.insert(record.id, Tracked { busy, quick_stop: fence, ..Tracked::new(record) });
        }
        if !fenced.is_empty() {
            tracing::warn!(instances = fenced.len(), "the cluster lease ran out while the agent was down: fencing");
            effects.insert(0, Effect::Persist { new: Vec::new(), changed: fenced });
        }
        let link = cluster.map(|Cluster { host, timing, .. }| Link {
            host,
            timing,
            registered: false,
            valid_until: None,
            epoch: 0,
            applied_epoch: None,
            assignments_index: 0,
            calling: false,
            next_call_ms: 0,
            reported: HashMap::new(),
            never_ran: BTreeSet::new(),
            confirm_stop: BTreeMap::new(),
            stopping_applied: BTreeSet::new(),
            reporting: false,
            report_retry: false,
            next_report_ms: 0,
            assigned: None,
            generation: 0,
        });
        (Self { instances, link, runs_checked: 0, keep_ended: KeepEnded::default() }, effects)
    }

    /// Keeps ended records as `keep` says instead of [`KeepEnded::default`].
    pub fn set_keep_ended(&mut self, keep: KeepEnded) {
        self.keep_ended = keep;
    }

    pub fn records(&self) -> impl Iterator<Item = &InstanceRecord> {
        self.instances.values().map(|t| &t.record)
    }

    pub fn record(&self, id: InstanceId) -> Option<&InstanceRecord> {
        self.instances.get(&id).map(|t| &t.record)
    }

    /// Whether a backend operation is under way for the instance.
    pub fn is_busy(&self, id: InstanceId) -> bool {
        self.instances.get(&id).is_some_and(Tracked::is_busy)
    }

    /// Whether this host holds a cluster lease at `now`.
    pub fn has_lease(&self, now: Now) -> bool {
        self.link.as_ref().and_then(|l| l.valid_until).is_some_and(|until| now.boot_ms < until)
    }

    /// Whether this host holds a lease and has applied the assignments heard under it.
    fn assignments_current(&self, now: Now) -> bool {
        self.has_lease(now) && self.link.as_ref().is_some_and(|l| l.applied_epoch == Some(l.epoch))
    }

    /// The current lease epoch (0 before the first lease).
    pub fn lease_epoch(&self) -> u64 {
        self.link.as_ref().map_or(0, |l| l.epoch)
    }

    /// When something next falls due, in boot time (at the latest a while from `now`).
    pub fn wake_at(&self, now: Now) -> u64 {
        let mut wake = now.boot_ms + RECHECK_MS;
        let plan = reconcile::plan(self.idle_lifecycles(), now.wall_ms);
        if let Some(due) = plan.wake_at_ms {
            wake = wake.min(now.boot_ms + due.saturating_sub(now.wall_ms));
        }
        if let Some(link) = &self.link {
            if !link.calling {
                wake = wake.min(link.next_call_ms);
            }
            if let Some(until) = link.valid_until {
                wake = wake.min(until);
            }
            if let Some(retry) = link.assigned.as_ref().and_then(|a| a.retry_fetch_ms) {
                wake = wake.min(retry);
            }
            if link.report_retry {
                wake = wake.min(link.next_report_ms);
            }
        }
        let probes = self.instances.values().filter_map(|t| t.checks.as_ref().filter(|c| !c.probing));
        if let Some(due) = probes.map(|c| c.next_probe_ms).min() {
            wake = wake.min(due);
        }
        wake.max(now.boot_ms)
    }

    fn idle_lifecycles(&self) -> impl Iterator<Item = (InstanceId, &reconcile::Lifecycle)> {
        self.instances.iter().filter(|(_, t)| !t.is_busy()).map(|(id, t)| (*id, &t.record.lifecycle))
    }

    /// Applies one input; returns what to do, in order.
    pub fn handle(&mut self, now: Now, input: Input) -> Vec<Effect> {
        let mut step = Step::default();
        let input_was_tick = matches!(input, Input::Tick);
        self.apply(now, input, &mut step);
        self.expire_lease(now, &mut step);
        self.retry_fetch(now, &mut step);
        self.call_coordinators(now, &mut step);
        self.reconcile(now, &mut step);
        self.probe(now, &mut step);
        self.report(now, &mut step);
        // Retention is counted in minutes: looked at when time passes, not on every input.
        if input_was_tick {
            self.forget_ended(now, &mut step);
        }
        step.finish(self)
    }

    /// Forgets records that ended for good: asked to stop, ended, released, and (for cluster
    /// instances) gone from the cluster's current assignments with their end reported, so the
    /// cluster has let them go too and never assigns them again. Kept as [`KeepEnded`] says.
    fn forget_ended(&mut self, now: Now, step: &mut Step) {
        let current = self.assignments_current(now);
        let link = self.link.as_ref();
        let still_named = |id: &InstanceId| {
            link.is_some_and(|link| link.confirm_stop.contains_key(id) || link.stopping_applied.contains(id))
        };
        let reported =
            |t: &Tracked| link.is_some_and(|link| link.reported.get(&t.record.id) == Some(&t.record.revision));
        let mut ended: Vec<(u64, InstanceId)> = self
            .instances
            .iter()
            .filter(|(id, t)| {
                let lifecycle = &t.record.lifecycle;
                let done = !t.is_busy()
                    && t.record.handle.is_none()
                    && lifecycle.desired == Desired::Stopped
                    && lifecycle.phase.has_ended();
                let let_go = match t.record.origin {
                    Origin::Local => true,
                    Origin::Cluster => current && !still_named(id) && reported(t),
                };
                done && let_go
            })
            .map(|(id, t)| (t.record.events.back().map_or(t.record.created_at_ms, |e| e.at_ms), *id))
            .collect();
        // Newest first: the first `at_most` within the retention stay.
        ended.sort_by(|a, b| b.cmp(a));
        let keep = self.keep_ended;
        let forget: Vec<InstanceId> = ended
            .iter()
            .enumerate()
            .filter(|(rank, (changed_ms, _))| {
                *rank >= keep.at_most || now.wall_ms.saturating_sub(*changed_ms) >= keep.for_ms
            })
            .map(|(_, (_, id))| *id)
            .collect();
        for id in &forget {
            self.instances.remove(id);
            if let Some(link) = self.link.as_mut() {
                link.reported.remove(id);
            }
        }
        if !forget.is_empty() {
            step.forget = forget;
        }
    }

    fn apply(&mut self, now: Now, input: Input, step: &mut Step) {
        match input {
            Input::Tick => {}
            Input::Run { instances } => {
                for (id, spec) in instances {
                    let record = InstanceRecord::new(id, Origin::Local, spec, now.wall_ms);
                    step.new.push(id);
                    self.instances.insert(id, Tracked::new(record));
                }
            }
            Input::Stop { id } => {
                self.change(id, step, |t| {
                    if t.record.lifecycle.desired != Desired::Stopped {
                        t.record.lifecycle.on_stop_requested();
                        t.record.stop_forced = None;
                        t.record.log(now.wall_ms, "stop requested");
                    }
                });
            }
            Input::Started { id, outcome } => {
                let running = self.change(id, step, |t| {
                    t.busy = None;
                    match outcome {
                        Ok((handle, detail)) => {
                            t.record.lifecycle.on_running(now.wall_ms);
                            t.record.handle = Some(handle);
                            t.record.log(now.wall_ms, format!("running: {detail}"));
                            t.record.detail = detail;
                            true
                        }
                        Err(message) => {
                            let policy = t.record.spec.run.restart;
                            t.record.lifecycle.on_start_failed(message, policy, now.wall_ms);
                            log_outcome(&mut t.record, now);
                            // A failed start may leave something behind (a half-created
                            // domain): it is released before anything else happens.
                            t.busy = Some(Busy::Releasing);
                            false
                        }
                    }
                });
                match running {
                    Some(true) => {
                        self.start_checks(id, now, step);
                        step.watch.push(id);
                    }
                    Some(false) => step.release.push((id, None)),
                    None => {}
                }
            }
            Input::Ended { id, ended, context } => {
                let mut ended_run = None;
                self.change(id, step, |t| {
                    let policy = t.record.spec.run.restart;
                    if std::mem::take(&mut t.stop_from_before) && t.record.lifecycle.phase == Phase::Running {
                        t.record.lifecycle.on_stopping();
                    }
                    match ended {
                        _ if t.record.lifecycle.phase == Phase::Starting => {
                            // Found ended by recovery while its start was under way: what ended
                            // may be an older run, and this one may never have started.
                            t.record.lifecycle.on_start_interrupted();
                            t.record.log(now.wall_ms, format!("its start was interrupted{context}; starting again"));
                        }
                        Ended::Exited(status) => {
                            t.record.lifecycle.on_exit(status, policy, now.wall_ms);
                            t.record.log(now.wall_ms, format!("exited with {status}{context}"));
                        }
                        Ended::Lost => {
                            t.record.lifecycle.on_lost(policy, now.wall_ms);
                            t.record.log(
                                now.wall_ms,
                                format!("lost{context}: it is gone and nothing recorded how it ended"),
                            );
                        }
                    }
                    log_outcome(&mut t.record, now);
                    t.checks = None;
                    t.record.health = Health::None;
                    // Whatever the run held is released before anything else happens to the
                    // instance; a stop under way ends with the run (its answer may still come).
                    t.busy = Some(Busy::Releasing);
                    ended_run = Some(t.record.handle.clone());
                });
                if let Some(handle) = ended_run {
                    step.release.push((id, handle));
                }
            }
            Input::StopReturned { id, outcome, timeout_secs } => {
                self.change(id, step, |t| {
                    t.stopping = false;
                    match outcome {
                        Ok(forced) => {
                            t.record.stop_forced = Some(forced);
                            let how = if forced {
                                format!("forced off after the {timeout_secs}s stop timeout")
                            } else {
                                "stopped gracefully".into()
                            };
                            t.record.log(now.wall_ms, how);
                        }
                        Err(error) => {
                            t.record.log(now.wall_ms, format!("stop failed: {error}"));
                            // Still running: the reconciler tries again.
                            if t.record.lifecycle.phase == Phase::Stopping {
                                t.record.lifecycle.phase = Phase::Running;
                            }
                        }
                    }
                });
            }
            Input::Released { id, handle, ok } => {
                self.change(id, step, |t| {
                    if t.busy == Some(Busy::Releasing) {
                        t.busy = None;
                    }
                    // A failed clean-up keeps the handle: the next start of the agent tries again.
                    if ok && t.record.handle == handle {
                        t.record.handle = None;
                    }
                });
            }
            Input::Adopted { id, handle } => {
                let adopted = self.change(id, step, |t| {
                    t.busy = None;
                    if t.record.lifecycle.started_at_ms.is_none() {
                        t.record.lifecycle.on_running(now.wall_ms);
                    }
                    // A stop that was under way is issued again by the reconciler (if still
                    // wanted); the one from before may end the run first.
                    t.stop_from_before = t.record.lifecycle.phase == Phase::Stopping;
                    t.record.lifecycle.phase = Phase::Running;
                    t.record.handle = Some(handle);
                    t.record.log(now.wall_ms, "re-adopted after an agent restart");
                });
                if adopted.is_some() {
                    self.start_checks(id, now, step);
                    step.watch.push(id);
                }
            }
            Input::Probed { id, run, result } => self.probed(id, run, result, now, step),
            Input::Registered { sent_ms, outcome } => {
                let Some(link) = self.link.as_mut() else { return };
                link.calling = false;
                match outcome {
                    Ok(lease) => {
                        tracing::info!(host = %link.host.id, "joined the cluster");
                        link.registered = true;
                        link.reported.clear();
                        link.next_call_ms = sent_ms + millis(link.timing.heartbeat_for(lease.ttl_ms));
                        self.extend_lease(now, sent_ms, lease, step);
                    }
                    Err(()) => link.next_call_ms = now.boot_ms + RETRY_MS,
                }
            }
            Input::Renewed { sent_ms, outcome } => {
                let Some(link) = self.link.as_mut() else { return };
                link.calling = false;
                match outcome {
                    Ok(lease) if lease.register_again => {
                        tracing::warn!(host = %link.host.id, "the cluster does not hold this host as up; registering again");
                        link.registered = false;
                        link.next_call_ms = now.boot_ms;
                    }
                    Ok(lease) => {
                        // A large cluster grants longer leases, to be renewed as much less often.
                        link.next_call_ms = sent_ms + millis(link.timing.heartbeat_for(lease.ttl_ms));
                        self.extend_lease(now, sent_ms, lease, step);
                    }
                    Err(()) => link.next_call_ms = now.boot_ms + RETRY_MS,
                }
            }
            Input::Reported { reports, ok } => {
                let Some(link) = self.link.as_mut() else { return };
                link.reporting = false;
                if ok {
                    for report in reports {
                        link.never_ran.remove(&report.id);
                        link.reported.insert(report.id, report.revision);
                        if link.confirm_stop.get(&report.id).is_some_and(|needed| *needed <= report.assignments_index) {
                            link.confirm_stop.remove(&report.id);
                        }
                    }
                } else {
                    link.report_retry = true;
                    link.next_report_ms = now.boot_ms + RETRY_MS;
                }
            }
            Input::Assigned { epoch, index, instances, stopping } => {
                let valid = self.has_lease(now);
                let Some(link) = self.link.as_mut() else { return };
                let newest =
                    link.assigned.as_ref().map_or(link.assignments_index, |a| a.index.max(link.assignments_index));
                if !valid || epoch != link.epoch || index < newest {
                    return; // Heard before a lapse, or older than a set already heard: never acted on.
                }
                link.generation += 1;
                let digests = blobs_of(&instances);
                link.assigned =
                    Some(Assigned { generation: link.generation, index, instances, stopping, retry_fetch_ms: None });
                step.effects.push(Effect::FetchBlobs { generation: link.generation, digests });
            }
            Input::BlobsFetched { generation, ok } => {
                let valid = self.has_lease(now);
                let Some(link) = self.link.as_mut() else { return };
                let Some(assigned) = link.assigned.as_mut().filter(|a| a.generation == generation) else { return };
                if !ok {
                    tracing::warn!("cannot fetch what an assigned instance needs; trying again");
                    assigned.retry_fetch_ms = Some(now.boot_ms + FETCH_RETRY_MS);
                    return;
                }
                if !valid {
                    return; // The lease lapsed while fetching.
                }
                if let Some(assigned) = link.assigned.take() {
                    link.applied_epoch = Some(link.epoch);
                    link.assignments_index = link.assignments_index.max(assigned.index);
                    self.apply_assignments(now, &assigned.instances, &assigned.stopping, step);
                }
            }
        }
    }

    /// Applies `change` to an instance's tracking and notes the record for persisting if it
    /// changed. `None` if there is no such instance.
    fn change<R>(&mut self, id: InstanceId, step: &mut Step, change: impl FnOnce(&mut Tracked) -> R) -> Option<R> {
        let tracked = self.instances.get_mut(&id)?;
        let before = tracked.record.clone();
        let result = change(tracked);
        if tracked.record != before {
            tracked.record.revision = before.revision + 1;
            step.changed.push(id);
        }
        Some(result)
    }

    /// A run is up: its health checks begin (if its spec has any and it has an address),
    /// `starting` until the first pass.
    fn start_checks(&mut self, id: InstanceId, now: Now, step: &mut Step) {
        self.runs_checked += 1;
        let run = self.runs_checked;
        self.change(id, step, |t| {
            let Some(check) = &t.record.spec.run.health else { return };
            if t.record.spec.interfaces.is_empty() {
                return;
            }
            // The first probe soon after the start, then one every interval.
            let first = now.boot_ms + check.interval_ms.min(1_000);
            let tracker = HealthTracker::started(now.boot_ms);
            t.checks = Some(Checks { run, tracker, next_probe_ms: first, probing: false });
            t.record.health = Health::Starting;
            t.record.health_message.clear();
        });
    }

    /// Sends the probes that are due, one per run at a time.
    fn probe(&mut self, now: Now, step: &mut Step) {
        for (id, t) in &mut self.instances {
            let (Some(checks), Some(check), Some(interface)) =
                (t.checks.as_mut(), t.record.spec.run.health.as_ref(), t.record.spec.interfaces.first())
            else {
                continue;
            };
            if checks.probing || now.boot_ms < checks.next_probe_ms || t.record.lifecycle.phase != Phase::Running {
                continue;
            }
            checks.probing = true;
            step.effects.push(Effect::Probe {
                id: *id,
                run: checks.run,
                address: interface.address.address,
                probe: check.probe.clone(),
                timeout_ms: check.timeout_ms,
            });
        }
    }

    /// A probe answered: the health follows; an instance that just turned unhealthy is
    /// stopped, and its end judged as a failed run.
    fn probed(&mut self, id: InstanceId, run: u64, result: Result<(), String>, now: Now, step: &mut Step) {
        let mut stop = None;
        self.change(id, step, |t| {
            let (Some(checks), Some(check)) = (t.checks.as_mut().filter(|c| c.run == run), &t.record.spec.run.health)
            else {
                return;
            };
            checks.probing = false;
            checks.next_probe_ms = now.boot_ms + check.interval_ms;
            let verdict = checks.tracker.record(check, now.boot_ms, result);
            if !verdict.changed {
                return;
            }
            let (health, why) = (checks.tracker.health, checks.tracker.last_failure.clone());
            t.record.health = health;
            t.record.health_message = why.clone();
            match health {
                Health::Unhealthy => t.record.log(now.wall_ms, format!("unhealthy: {why}")),
                _ => t.record.log(now.wall_ms, format!("health: {}", health.name())),
            }
            let running = t.record.lifecycle.phase == Phase::Running && !t.stopping;
            if let (true, true, Some(handle)) = (verdict.restart, running, t.record.handle.clone()) {
                t.record.lifecycle.on_unhealthy(why);
                t.record.log(now.wall_ms, "stopping: its health checks failed");
                t.stopping = true;
                t.checks = None;
                stop = Some((handle, u64::from(t.record.spec.run.stop_timeout_secs)));
            }
        });
        if let Some((handle, timeout_secs)) = stop {
            step.stop.push((id, handle, timeout_secs));
        }
    }

    fn extend_lease(&mut self, now: Now, sent_ms: u64, lease: Lease, step: &mut Step) {
        let Some(link) = self.link.as_mut() else { return };
        let until = sent_ms + lease.ttl_ms;
        if until <= now.boot_ms {
            return; // Acknowledged too late to count.
        }
        let regained = link.valid_until.is_none_or(|current| current <= now.boot_ms);
        link.valid_until = Some(link.valid_until.map_or(until, |current| current.max(until)));
        let fence_at = link.valid_until.unwrap_or(until) + millis(link.timing.fence_stop);
        step.effects.push(Effect::FenceDeadline { boot_ms: fence_at });
        if regained {
            link.epoch += 1;
            link.assigned = None;
            step.effects.push(Effect::WatchAssignments { epoch: link.epoch });
        }
    }

    /// The lease ran out: stop every cluster instance at once, before the coordinators run
    /// replacements elsewhere.
    fn expire_lease(&mut self, now: Now, step: &mut Step) {
        let Some(link) = self.link.as_mut() else { return };
        let Some(until) = link.valid_until.filter(|until| *until <= now.boot_ms) else { return };
        link.valid_until = None;
        link.assigned = None;
        step.effects.push(Effect::StopWatchingAssignments);
        let late = now.boot_ms - until;
        let ids: Vec<InstanceId> = self
            .instances
            .iter()
            .filter(|(_, t)| t.record.origin == Origin::Cluster && t.record.lifecycle.desired == Desired::Running)
            .map(|(id, _)| *id)
            .collect();
        tracing::warn!(instances = ids.len(), late_ms = late, "lease lost: fenced this host's cluster instances");
        for id in ids {
            self.change(id, step, |t| {
                t.record.lifecycle.on_stop_requested();
                t.quick_stop = true;
                t.record.log(
                    now.wall_ms,
                    "fenced: this host lost its cluster lease; stopping before the cluster replaces it",
                );
            });
        }
    }

    /// Fetches the blobs of the latest assignment set again, once its retry is due.
    fn retry_fetch(&mut self, now: Now, step: &mut Step) {
        let Some(assigned) = self.link.as_mut().and_then(|l| l.assigned.as_mut()) else { return };
        if assigned.retry_fetch_ms.is_some_and(|due| due <= now.boot_ms) {
            assigned.retry_fetch_ms = None;
            let digests = blobs_of(&assigned.instances);
            step.effects.push(Effect::FetchBlobs { generation: assigned.generation, digests });
        }
    }

    fn call_coordinators(&mut self, now: Now, step: &mut Step) {
        // A host rejoins only once its fenced instances are stopped: the cluster may place
        // their replacements here as soon as it is back.
        let fencing = self.instances.values().any(|t| {
            t.record.origin == Origin::Cluster
                && t.record.lifecycle.desired == Desired::Stopped
                && (t.record.lifecycle.phase.is_live() || t.is_busy())
        });
        let Some(link) = self.link.as_mut() else { return };
        if link.calling || now.boot_ms < link.next_call_ms || (!link.registered && fencing) {
            return;
        }
        link.calling = true;
        step.effects.push(if link.registered { Effect::Renew } else { Effect::Register(link.host.clone()) });
    }

    /// Makes this host's cluster instances exactly `assigned`: creates the missing ones with
    /// the coordinators' IDs, wants stopped ones running again, stops the rest. Of `stopping`,
    /// those it has no record of are reported as never run.
    fn apply_assignments(
        &mut self,
        now: Now,
        assigned: &[(InstanceId, InstanceSpec)],
        stopping: &[InstanceId],
        step: &mut Step,
    ) {
        // Of those to stop: unknown ones never ran here; ones already ended are reported
        // again, now that the host has heard of their stop (which is what frees their slots).
        let ended: Vec<InstanceId> = stopping
            .iter()
            .filter(|id| self.instances.get(id).is_some_and(|t| t.record.lifecycle.phase.has_ended()))
            .copied()
            .collect();
        let unknown = stopping.iter().filter(|id| !self.instances.contains_key(id));
        if let Some(link) = self.link.as_mut() {
            link.never_ran.extend(unknown);
            let index = link.assignments_index;
            link.confirm_stop.extend(ended.into_iter().map(|id| (id, index)));
            link.stopping_applied = stopping.iter().copied().collect();
        }
        let wanted: BTreeMap<InstanceId, &InstanceSpec> = assigned.iter().map(|(id, spec)| (*id, spec)).collect();
        for (id, spec) in &wanted {
            if !self.instances.contains_key(id) {
                let mut record = InstanceRecord::new(*id, Origin::Cluster, (*spec).clone(), now.wall_ms);
                record.log(now.wall_ms, "assigned to this host by the cluster");
                step.new.push(*id);
                self.instances.insert(*id, Tracked::new(record));
            }
        }
        let cluster: Vec<InstanceId> =
            self.instances.iter().filter(|(_, t)| t.record.origin == Origin::Cluster).map(|(id, _)| *id).collect();
        for id in cluster {
            let assigned = wanted.contains_key(&id);
            self.change(id, step, |t| {
                let running = t.record.lifecycle.desired == Desired::Running;
                if assigned == running {
                    return;
                }
                if assigned {
                    t.record.lifecycle.on_run_requested();
                    t.quick_stop = false;
                    t.record.log(now.wall_ms, "assigned to this host again");
                } else {
                    t.record.lifecycle.on_stop_requested();
                    t.record.log(now.wall_ms, "no longer assigned to this host: stopping");
                }
            });
        }
        tracing::info!(instances = wanted.len(), "applied the cluster's assignments");
    }

    fn reconcile(&mut self, now: Now, step: &mut Step) {
        let plan = reconcile::plan(self.idle_lifecycles(), now.wall_ms);
        for action in plan.actions {
            match action {
                Action::Start(id) => {
                    // A cluster instance starts (or restarts) only once the cluster's
                    // assignments of the current lease were applied: only they say it is
                    // still this host's (after a lapse it may run elsewhere by now).
                    let origin = self.instances.get(&id).map(|t| t.record.origin);
                    if origin == Some(Origin::Cluster) && !self.assignments_current(now) {
                        continue;
                    }
                    self.change(id, step, |t| {
                        let restart = t.record.lifecycle.phase != Phase::Pending;
                        t.record.lifecycle.on_starting();
                        let what = if restart {
                            format!("restarting (restart {})", t.record.lifecycle.restarts)
                        } else {
                            "starting".into()
                        };
                        t.record.log(now.wall_ms, what);
                        t.busy = Some(Busy::Starting);
                    });
                    step.start.push(id);
                }
                Action::Stop(id) => {
                    let fence_stop = self.link.as_ref().map_or(1, |l| l.timing.fence_stop.as_secs());
                    let mut stop = None;
                    self.change(id, step, |t| {
                        let Some(handle) =
                            t.record.handle.clone().filter(|_| t.record.lifecycle.phase == Phase::Running)
                        else {
                            return;
                        };
                        t.record.lifecycle.on_stopping();
                        t.record.log(now.wall_ms, "stopping");
                        t.stopping = true;
                        t.checks = None;
                        let timeout_secs =
                            if t.quick_stop { fence_stop } else { u64::from(t.record.spec.run.stop_timeout_secs) };
                        stop = Some((handle, timeout_secs));
                    });
                    if let Some((handle, timeout_secs)) = stop {
                        step.stop.push((id, handle, timeout_secs));
                    }
                }
            }
        }
    }

    /// Sends what changed in the cluster instances' observed states, one report at a time.
    fn report(&mut self, now: Now, step: &mut Step) {
        let valid = self.has_lease(now);
        let Some(link) = self.link.as_mut() else { return };
        if !link.registered || !valid || link.reporting || now.boot_ms < link.next_report_ms {
            return;
        }
        // Final: no record will ever follow, so no later report can be newer.
        let never_ran = link.never_ran.iter().map(|id| InstanceReport {
            id: *id,
            phase: Phase::Stopped,
            restarts: 0,
            last_exit: None,
            message: "never ran on this host".into(),
            revision: u64::MAX,
            assignments_index: link.assignments_index,
            health: Health::None,
        });
        let reports: Vec<InstanceReport> = self
            .instances
            .values()
            .map(|t| &t.record)
            .filter(|r| r.origin == Origin::Cluster)
            .filter(|r| link.reported.get(&r.id) != Some(&r.revision) || link.confirm_stop.contains_key(&r.id))
            .map(|r| InstanceReport {
                id: r.id,
                // Lost here means it vanished without an exit status, and may be restarted: to
                // the cluster that is an exit, not an end (which only the cluster declares).
                phase: if r.lifecycle.phase == Phase::Lost { Phase::Exited } else { r.lifecycle.phase },
                restarts: r.lifecycle.restarts,
                last_exit: r.lifecycle.last_exit,
                message: match (r.health, &r.lifecycle.message) {
                    (Health::Unhealthy, _) => format!("unhealthy: {}", r.health_message),
                    (_, message) => message.clone().unwrap_or_default(),
                },
                revision: r.revision,
                assignments_index: link.assignments_index,
                health: r.health,
            })
            .chain(never_ran)
            .collect();
        if !reports.is_empty() {
            link.reporting = true;
            link.report_retry = false;
            step.effects.push(Effect::Report(reports));
        }
    }
}

fn blobs_of(instances: &[(InstanceId, InstanceSpec)]) -> Vec<Digest> {
    let mut digests: Vec<Digest> = instances
        .iter()
        .flat_map(|(_, spec)| std::iter::once(spec.artifact).chain(spec.files.iter().map(|f| f.digest)))
        .collect();
    digests.sort();
    digests.dedup();
    digests
}

/// Logs what follows an end (a restart, a final state).
fn log_outcome(record: &mut InstanceRecord, now: Now) {
    let life = &record.lifecycle;
    let line = match (life.phase, life.restart_due_ms) {
        (_, Some(due)) => Some(format!("restart in {} ms", due.saturating_sub(now.wall_ms))),
        (Phase::Failed, None) => Some(format!("failed: {}", life.message.clone().unwrap_or_default())),
        (Phase::Exited, None) => life.message.clone(),
        _ => None,
    };
    if let Some(line) = line {
        record.log(now.wall_ms, line);
    }
}

/// What one input led to, gathered as it is handled and put in order at the end.
#[derive(Debug, Default)]
struct Step {
    new: Vec<InstanceId>,
    changed: Vec<InstanceId>,
    effects: Vec<Effect>,
    start: Vec<InstanceId>,
    watch: Vec<InstanceId>,
    stop: Vec<(InstanceId, Handle, u64)>,
    release: Vec<(InstanceId, Option<Handle>)>,
    forget: Vec<InstanceId>,
}

impl Step {
    /// Persist first, then act: coordinator calls and fencing deadlines, then backends.
    fn finish(self, host: &Host) -> Vec<Effect> {
        let record = |id: &InstanceId| host.instances.get(id).map(|t| t.record.clone());
        let mut effects = Vec::new();
        let new: Vec<InstanceRecord> = self.new.iter().filter_map(record).collect();
        let changed: BTreeSet<InstanceId> = self.changed.into_iter().filter(|id| !self.new.contains(id)).collect();
        let changed: Vec<InstanceRecord> = changed.iter().filter_map(record).collect();
        if !new.is_empty() || !changed.is_empty() {
            effects.push(Effect::Persist { new, changed });
        }
        effects.extend(self.effects);
        effects.extend(self.stop.into_iter().filter_map(|(id, handle, timeout_secs)| {
            Some(Effect::Stop { record: record(&id)?, handle, timeout_secs })
        }));
        effects.extend(
            self.release.into_iter().filter_map(|(id, handle)| Some(Effect::Release { record: record(&id)?, handle })),
        );
        effects.extend(self.watch.iter().filter_map(record).map(Effect::Watch));
        effects.extend(self.start.iter().filter_map(record).map(Effect::Start));
        if !self.forget.is_empty() {
            effects.push(Effect::Forget(self.forget));
        }
        effects
    }
}

#[cfg(test)]
mod tests;
