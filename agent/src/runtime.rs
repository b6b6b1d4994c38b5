//! The agent runtime: instance records, the reconcile loop, and the tasks that start, watch and
//! stop instances through backends.
//!
//! Decisions come from `mirari_core::reconcile`; this module performs them and feeds back what
//! it observed. Every change to a record is persisted before anything acts on it. One task per
//! running instance streams its console into a [`ConsoleBuffer`] and waits for its end. On
//! start-up the runtime re-adopts instances that kept running while the agent was down (their
//! shims outlive the agent), and records the end of those that died meanwhile.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use mirari_blobs::{BlobError, BlobStore};
use mirari_core::digest::Digest;
use mirari_core::ids::{self, InstanceId, ResolveIdError};
use mirari_core::instance::{Desired, Phase};
use mirari_core::reconcile::{self, Action};
use mirari_core::spec::InstanceSpec;
use mirari_core::target::Target;
use tokio::sync::{Notify, watch};

use crate::backends::kvm::KvmBackend;
use crate::backends::unix::UnixBackend;
use crate::backends::xen::XenBackend;
use crate::backends::{Backend, BackendError, Ended, Fingerprint, Handle, Launch, Recovered};
use crate::clock::now_ms;
use crate::console::ConsoleBuffer;
use crate::state::{InstanceRecord, Origin, StateError, StateStore};
use crate::supervisor::client::ShimLauncher;

/// The reconcile loop looks again at least this often, even without news.
const RECHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How long a fencing stop waits for a graceful shutdown before forcing.
const QUICK_STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// Most instances one run request may create.
pub const MAX_RUN_COUNT: u32 = 1000;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    /// Bytes of console output kept per instance.
    pub console_bytes: usize,
    /// The `mirari-agent` binary, whose `shim` subcommand supervises instances.
    pub shim_program: PathBuf,
    /// Where KVM is (tests point this elsewhere to exercise the TCG fallback).
    pub kvm_device: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    NoSuchInstance(#[from] ResolveIdError),
    #[error("the {target} backend is not available on this host: {reason}")]
    BackendUnavailable { target: Target, reason: String },
    #[error("the agent lacks blobs {}; upload them first", .0.iter().map(|d| d.short()).collect::<Vec<_>>().join(", "))]
    MissingBlobs(Vec<Digest>),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cannot create {}", path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: AgentConfig,
    store: StateStore,
    blobs: BlobStore,
    backends: BTreeMap<Target, Arc<dyn Backend>>,
    fingerprints: Vec<Fingerprint>,
    instances: Mutex<BTreeMap<InstanceId, Slot>>,
    /// Wakes the reconcile loop.
    wake: Arc<Notify>,
    /// Bumped after every record change, for callers waiting on a state.
    changes: watch::Sender<u64>,
}

#[derive(Debug)]
struct Slot {
    record: InstanceRecord,
    console: Arc<ConsoleBuffer>,
}

impl Agent {
    /// Opens the state directory, fingerprints the backends, re-adopts surviving instances and
    /// starts the reconcile loop.
    pub async fn open(config: AgentConfig) -> Result<Self, AgentError> {
        std::fs::create_dir_all(config.state_dir.join("instances"))
            .map_err(|source| AgentError::StateDir { path: config.state_dir.clone(), source })?;
        let store = StateStore::open(&config.state_dir.join("agent.redb"))?;
        let blobs = BlobStore::open(&config.state_dir.join("blobs"))?;
        let launcher = ShimLauncher { program: config.shim_program.clone(), console_bytes: config.console_bytes };
        let all: Vec<Arc<dyn Backend>> = vec![
            Arc::new(UnixBackend::new(launcher.clone())),
            Arc::new(KvmBackend::new(launcher).with_kvm_device(&config.kvm_device)),
            Arc::new(XenBackend::default()),
        ];
        let mut fingerprints = Vec::new();
        let mut backends = BTreeMap::new();
        for backend in all {
            fingerprints.push(backend.fingerprint().await);
            backends.insert(backend.target(), backend);
        }
        let records = store.load_all()?;
        let instances = records
            .into_iter()
            .map(|record| {
                let console = Arc::new(ConsoleBuffer::new(config.console_bytes));
                console.set_finished(!record.lifecycle.phase.is_live());
                (record.id, Slot { record, console })
            })
            .collect();
        let agent = Self {
            inner: Arc::new(Inner {
                config,
                store,
                blobs,
                backends,
                fingerprints,
                instances: Mutex::new(instances),
                wake: Arc::new(Notify::new()),
                changes: watch::channel(0).0,
            }),
        };
        agent.recover_all().await;
        tokio::spawn(reconcile_loop(Arc::downgrade(&agent.inner), agent.inner.wake.clone()));
        Ok(agent)
    }

    pub fn fingerprints(&self) -> &[Fingerprint] {
        &self.inner.fingerprints
    }

    pub fn capabilities(&self, target: Target) -> Option<crate::backends::Capabilities> {
        self.inner.backends.get(&target).map(|b| b.capabilities())
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    /// Creates `count` instances of `spec`, each with a freshly minted ID, and has them started.
    pub fn run(&self, spec: InstanceSpec, count: u32) -> Result<Vec<InstanceId>, AgentError> {
        if !(1..=MAX_RUN_COUNT).contains(&count) {
            return Err(AgentError::InvalidRequest(format!("count must be 1 to {MAX_RUN_COUNT}, not {count}")));
        }
        self.usable_backend(spec.target)?;
        let missing: Vec<Digest> = std::iter::once(spec.artifact)
            .chain(spec.files.iter().map(|f| f.digest))
            .filter(|d| !self.inner.blobs.contains(d))
            .collect();
        if !missing.is_empty() {
            return Err(AgentError::MissingBlobs(missing));
        }
        let now = now_ms();
        let mut instances = self.inner.instances.lock().expect("instances lock");
        let mut records: Vec<InstanceRecord> = Vec::new();
        while records.len() < count as usize {
            let id = InstanceId::from_u64(rand::random());
            let taken = instances.contains_key(&id) || records.iter().any(|r| r.id == id);
            if !taken && !self.inner.store.was_minted(id)? {
                records.push(InstanceRecord::new(id, Origin::Local, spec.clone(), now));
            }
        }
        self.inner.store.create(&records)?;
        let ids = records.iter().map(|r| r.id).collect();
        for record in records {
            let console = Arc::new(ConsoleBuffer::new(self.inner.config.console_bytes));
            instances.insert(record.id, Slot { record, console });
        }
        drop(instances);
        self.changed();
        Ok(ids)
    }

    /// Makes this host's cluster instances exactly `assigned`: creates the missing ones with
    /// the coordinators' IDs, wants stopped ones running again, stops the rest. The blobs of
    /// new instances must already be in the store.
    pub fn apply_assignments(&self, assigned: &[(InstanceId, InstanceSpec)]) -> Result<(), AgentError> {
        let now = now_ms();
        let wanted: BTreeMap<InstanceId, &InstanceSpec> = assigned.iter().map(|(id, spec)| (*id, spec)).collect();
        let mut instances = self.inner.instances.lock().expect("instances lock");
        let new: Vec<InstanceRecord> = wanted
            .iter()
            .filter(|(id, _)| !instances.contains_key(id))
            .map(|(id, spec)| {
                let mut record = InstanceRecord::new(*id, Origin::Cluster, (*spec).clone(), now);
                record.log(now, "assigned to this host by the cluster");
                record
            })
            .collect();
        let missing: Vec<Digest> = new
            .iter()
            .flat_map(|r| std::iter::once(r.spec.artifact).chain(r.spec.files.iter().map(|f| f.digest)))
            .filter(|d| !self.inner.blobs.contains(d))
            .collect();
        if !missing.is_empty() {
            return Err(AgentError::MissingBlobs(missing));
        }
        self.inner.store.create(&new)?;
        for record in new {
            let console = Arc::new(ConsoleBuffer::new(self.inner.config.console_bytes));
            instances.insert(record.id, Slot { record, console });
        }
        for slot in instances.values_mut().filter(|s| s.record.origin == Origin::Cluster) {
            let record = &mut slot.record;
            let assigned = wanted.contains_key(&record.id);
            let running = record.lifecycle.desired == Desired::Running;
            if assigned == running {
                continue;
            }
            if assigned {
                record.lifecycle.on_run_requested();
                record.quick_stop = false;
                record.log(now, "assigned to this host again");
            } else {
                record.lifecycle.on_stop_requested();
                record.log(now, "no longer assigned to this host: stopping");
            }
            self.inner.store.save(record)?;
        }
        drop(instances);
        self.changed();
        Ok(())
    }

    /// The host lost its cluster lease: stops every cluster instance at once, before the
    /// coordinators run replacements elsewhere.
    pub fn fence(&self) -> Result<usize, AgentError> {
        let now = now_ms();
        let mut fenced = 0;
        let mut instances = self.inner.instances.lock().expect("instances lock");
        for slot in instances.values_mut() {
            let record = &mut slot.record;
            if record.origin != Origin::Cluster || record.lifecycle.desired != Desired::Running {
                continue;
            }
            record.lifecycle.on_stop_requested();
            record.quick_stop = true;
            record.log(now, "fenced: this host lost its cluster lease; stopping before the cluster replaces it");
            self.inner.store.save(record)?;
            fenced += 1;
        }
        drop(instances);
        self.changed();
        Ok(fenced)
    }

    /// A receiver that sees a new value after every change to any record.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Every instance record, oldest first.
    pub fn list(&self) -> Vec<InstanceRecord> {
        let instances = self.inner.instances.lock().expect("instances lock");
        let mut records: Vec<InstanceRecord> = instances.values().map(|s| s.record.clone()).collect();
        records.sort_by_key(|r| (r.created_at_ms, r.id));
        records
    }

    /// The instance a person means by `prefix` (a full ID or a unique prefix of one).
    pub fn resolve(&self, prefix: &str) -> Result<InstanceId, AgentError> {
        let instances = self.inner.instances.lock().expect("instances lock");
        Ok(ids::resolve_prefix(prefix, instances.keys().copied())?)
    }

    pub fn get(&self, id: InstanceId) -> Option<InstanceRecord> {
        self.inner.instances.lock().expect("instances lock").get(&id).map(|s| s.record.clone())
    }

    pub fn console(&self, id: InstanceId) -> Option<Arc<ConsoleBuffer>> {
        self.inner.instances.lock().expect("instances lock").get(&id).map(|s| s.console.clone())
    }

    /// Asks for the instance to stop and waits until it has.
    pub async fn stop(&self, id: InstanceId) -> Result<InstanceRecord, AgentError> {
        let mut changes = self.inner.changes.subscribe();
        self.update(id, |record, _| {
            if record.lifecycle.desired != mirari_core::instance::Desired::Stopped {
                record.lifecycle.on_stop_requested();
                record.stop_forced = None;
                record.log(now_ms(), "stop requested");
            }
        })?;
        loop {
            let record = self.get(id).ok_or_else(|| ResolveIdError::NotFound(id.to_string()))?;
            let settled = !record.lifecycle.phase.is_live() && record.lifecycle.phase != Phase::Pending;
            if settled && !record.stop_in_flight {
                return Ok(record);
            }
            if changes.changed().await.is_err() {
                return Ok(record);
            }
        }
    }

    fn usable_backend(&self, target: Target) -> Result<Arc<dyn Backend>, AgentError> {
        let unavailable = |reason: String| AgentError::BackendUnavailable { target, reason };
        let fingerprint = self.inner.fingerprints.iter().find(|f| f.target == target);
        if let Some(reason) = fingerprint.and_then(|f| f.unavailable.clone()) {
            return Err(unavailable(reason));
        }
        self.inner.backends.get(&target).cloned().ok_or_else(|| unavailable("this agent has no such backend".into()))
    }

    fn launch(&self, record: &InstanceRecord) -> Launch {
        let blobs = &self.inner.blobs;
        Launch {
            id: record.id,
            dir: self.inner.config.state_dir.join("instances").join(record.id.to_string()),
            artifact: blobs.path(&record.spec.artifact),
            files: record.spec.files.iter().map(|f| blobs.path(&f.digest)).collect(),
            spec: record.spec.clone(),
        }
    }

    /// Applies `change` to a record, persists it, and tells waiters. If it cannot be persisted,
    /// the record is left as it was.
    fn update<R>(
        &self,
        id: InstanceId,
        change: impl FnOnce(&mut InstanceRecord, &ConsoleBuffer) -> R,
    ) -> Result<R, AgentError> {
        let mut instances = self.inner.instances.lock().expect("instances lock");
        let slot = instances.get_mut(&id).ok_or_else(|| ResolveIdError::NotFound(id.to_string()))?;
        let before = slot.record.clone();
        let result = change(&mut slot.record, &slot.console);
        if slot.record != before
            && let Err(error) = self.inner.store.save(&slot.record)
        {
            slot.record = before;
            return Err(error.into());
        }
        drop(instances);
        self.changed();
        Ok(result)
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|n| *n += 1);
        self.inner.wake.notify_one();
    }

    /// Runs one reconcile pass; returns when something next falls due.
    fn reconcile_once(&self) -> Option<u64> {
        let plan = {
            let instances = self.inner.instances.lock().expect("instances lock");
            reconcile::plan(instances.iter().map(|(id, slot)| (*id, &slot.record.lifecycle)), now_ms())
        };
        for action in plan.actions {
            match action {
                Action::Start(id) => self.begin_start(id),
                Action::Stop(id) => self.begin_stop(id),
            }
        }
        plan.wake_at_ms
    }

    fn begin_start(&self, id: InstanceId) {
        let started = self.update(id, |record, _| {
            let restart = record.lifecycle.phase != Phase::Pending;
            record.lifecycle.on_starting();
            let what =
                if restart { format!("restarting (restart {})", record.lifecycle.restarts) } else { "starting".into() };
            record.log(now_ms(), what);
            record.clone()
        });
        match started {
            Ok(record) => {
                let agent = self.clone();
                tokio::spawn(async move { agent.start(record).await });
            }
            Err(error) => tracing::error!(%id, %error, "cannot record the start of an instance"),
        }
    }

    async fn start(&self, record: InstanceRecord) {
        let id = record.id;
        let launch = self.launch(&record);
        let missing = std::iter::once(&launch.artifact).chain(&launch.files).find(|p| !p.is_file());
        let started = match (self.usable_backend(record.spec.target), missing) {
            (Err(error), _) => Err(error.to_string()),
            (Ok(_), Some(path)) => Err(format!("{} is missing from the blob store", path.display())),
            (Ok(backend), None) => match backend.start(&launch).await {
                Ok(handle) => {
                    let detail = backend.inspect(&launch, &handle).await.map(|i| i.detail).unwrap_or_default();
                    Ok((backend, handle, detail))
                }
                Err(error) => Err(error.to_string()),
            },
        };
        let policy = record.spec.run.restart;
        match started {
            Ok((backend, handle, detail)) => {
                let recorded = self.update(id, |record, console| {
                    record.lifecycle.on_running(now_ms());
                    record.handle = Some(handle);
                    record.log(now_ms(), format!("running: {detail}"));
                    record.detail = detail;
                    console.set_finished(false);
                });
                match recorded {
                    Ok(()) => self.spawn_watch(id, launch, backend),
                    Err(error) => {
                        tracing::error!(%id, %error, "cannot record that an instance runs")
                    }
                }
            }
            Err(message) => {
                tracing::warn!(%id, %message, "instance did not start");
                let _ = self.update(id, |record, console| {
                    record.lifecycle.on_start_failed(message, policy, now_ms());
                    self.log_outcome(record, console);
                });
            }
        }
    }

    fn spawn_watch(&self, id: InstanceId, launch: Launch, backend: Arc<dyn Backend>) {
        let Some(console) = self.console(id) else {
            return;
        };
        let agent = self.clone();
        tokio::spawn(async move {
            if let Ok(mut frames) = backend.console(&launch, 0).await {
                while let Some(frame) = frames.next().await {
                    console.push(&frame.data);
                }
            }
            let ended = backend.wait(&launch).await;
            agent.finish_run(id, &launch, Some(backend.as_ref()), ended, "").await;
        });
    }

    /// Records how a run ended and releases what it held.
    async fn finish_run(
        &self,
        id: InstanceId,
        launch: &Launch,
        backend: Option<&dyn Backend>,
        ended: Ended,
        context: &str,
    ) {
        let policy = launch.spec.run.restart;
        let recorded = self.update(id, |record, console| {
            let now = now_ms();
            let ended_run = record.handle.clone();
            match ended {
                Ended::Exited(status) => {
                    record.lifecycle.on_exit(status, policy, now);
                    record.log(now, format!("exited with {status}{context}"));
                }
                Ended::Lost => {
                    record.lifecycle.on_lost(policy, now);
                    record.log(now, format!("lost{context}: it is gone and nothing recorded how it ended"));
                }
            }
            self.log_outcome(record, console);
            ended_run
        });
        match recorded {
            Ok(ended_run) => self.release(id, launch, backend, ended_run).await,
            Err(error) => tracing::error!(%id, %error, "cannot record the end of an instance"),
        }
    }

    /// Destroys what an ended run held, then forgets its handle. A handle still on an ended
    /// instance means its clean-up never finished (the agent died first): the next start of
    /// the agent does it.
    async fn release(&self, id: InstanceId, launch: &Launch, backend: Option<&dyn Backend>, ended_run: Option<Handle>) {
        if let Some(Err(error)) = futures::future::OptionFuture::from(backend.map(|b| b.destroy(launch))).await {
            tracing::warn!(%id, %error, "cannot clean up after an instance");
            return;
        }
        // A restart may already have started a new run with a new handle: keep that one.
        let _ = self.update(id, |record, _| {
            if record.handle == ended_run {
                record.handle = None;
            }
        });
    }

    /// Logs what follows an end (a restart, a final state) and closes the console if final.
    fn log_outcome(&self, record: &mut InstanceRecord, console: &ConsoleBuffer) {
        let now = now_ms();
        let life = &record.lifecycle;
        let line = match (life.phase, life.restart_due_ms) {
            (_, Some(due)) => Some(format!("restart in {} ms", due.saturating_sub(now))),
            (Phase::Failed, None) => Some(format!("failed: {}", life.message.clone().unwrap_or_default())),
            (Phase::Exited, None) => life.message.clone(),
            _ => None,
        };
        console.set_finished(life.restart_due_ms.is_none());
        if let Some(line) = line {
            record.log(now, line);
        }
    }

    fn begin_stop(&self, id: InstanceId) {
        let stopping = self.update(id, |record, _| {
            let handle = record.handle.clone().filter(|_| record.lifecycle.phase == Phase::Running)?;
            record.lifecycle.on_stopping();
            record.stop_in_flight = true;
            record.log(now_ms(), "stopping");
            Some((record.clone(), handle))
        });
        let Ok(Some((record, handle))) = stopping else {
            return;
        };
        let agent = self.clone();
        tokio::spawn(async move {
            let launch = agent.launch(&record);
            let timeout = if record.quick_stop {
                QUICK_STOP_TIMEOUT
            } else {
                Duration::from_secs(u64::from(record.spec.run.stop_timeout_secs))
            };
            let Some(backend) = agent.inner.backends.get(&record.spec.target).cloned() else {
                return;
            };
            let outcome = backend.stop(&launch, &handle, timeout).await;
            let _ = agent.update(record.id, |record, _| {
                record.stop_in_flight = false;
                match outcome {
                    Ok(outcome) => {
                        let forced = outcome == crate::backends::StopOutcome::Forced;
                        record.stop_forced = Some(forced);
                        let how = if forced {
                            format!("forced off after the {}s stop timeout", timeout.as_secs())
                        } else {
                            "stopped gracefully".into()
                        };
                        record.log(now_ms(), how);
                    }
                    Err(error) => {
                        // Back to running: the next reconcile pass tries again.
                        record.lifecycle.phase = Phase::Running;
                        record.log(now_ms(), format!("stop failed: {error}"));
                    }
                }
            });
        });
    }

    /// Re-adopts instances that were live when the agent last ran, and finishes the clean-up
    /// of runs that ended without it.
    async fn recover_all(&self) {
        let unreleased: Vec<InstanceRecord> =
            self.list().into_iter().filter(|r| !r.lifecycle.phase.is_live() && r.handle.is_some()).collect();
        for record in unreleased {
            let launch = self.launch(&record);
            let backend = self.inner.backends.get(&record.spec.target).cloned();
            self.release(record.id, &launch, backend.as_deref(), record.handle.clone()).await;
        }
        let live: Vec<InstanceRecord> = self.list().into_iter().filter(|r| r.lifecycle.phase.is_live()).collect();
        for record in live {
            let id = record.id;
            let launch = self.launch(&record);
            let Some(backend) = self.inner.backends.get(&record.spec.target).cloned() else {
                self.finish_run(id, &launch, None, Ended::Lost, " (this agent has no backend for it)").await;
                continue;
            };
            match backend.recover(&launch, record.handle.as_ref()).await {
                Ok(Recovered::Running(handle)) => {
                    let adopted = self.update(id, |record, _| {
                        if record.lifecycle.started_at_ms.is_none() {
                            record.lifecycle.on_running(now_ms());
                        }
                        // A stop that was under way is issued again by the reconcile loop.
                        record.lifecycle.phase = Phase::Running;
                        record.handle = Some(handle);
                        record.log(now_ms(), "re-adopted after an agent restart");
                    });
                    if adopted.is_ok() {
                        self.spawn_watch(id, launch, backend);
                    }
                }
                Ok(Recovered::Ended(ended)) => {
                    if let (Ok(mut frames), Some(console)) = (backend.console(&launch, 0).await, self.console(id)) {
                        while let Some(frame) = frames.next().await {
                            console.push(&frame.data);
                        }
                    }
                    self.finish_run(id, &launch, Some(backend.as_ref()), ended, " while the agent was down").await;
                }
                Err(error) => {
                    tracing::warn!(%id, %error, "cannot recover an instance");
                    self.finish_run(id, &launch, Some(backend.as_ref()), Ended::Lost, " while the agent was down")
                        .await;
                }
            }
        }
    }
}

async fn reconcile_loop(agent: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let Some(inner) = agent.upgrade() else { return };
        let wake_at = Agent { inner }.reconcile_once();
        let until_due = wake_at.map_or(RECHECK_INTERVAL, |due| Duration::from_millis(due.saturating_sub(now_ms())));
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(until_due.min(RECHECK_INTERVAL)) => {}
        }
    }
}
