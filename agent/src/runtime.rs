//! The agent runtime: the driver of the [`Host`] machine.
//!
//! One task owns the machine's decisions: it takes inputs (from the API, from backend tasks,
//! from coordinator calls) one at a time, hands each to [`Host::handle`] with the time, and
//! performs the effects in order. Persisting is done (fsync'd, on a blocking thread) before the
//! effects that follow it; everything that waits on a backend or the network runs in a task of
//! its own and comes back as an input, so the task itself only ever waits for the disk, for
//! the next input, or for the machine's next deadline (a lease running out is such a deadline:
//! no RPC can delay fencing). A record that cannot be persisted stops the agent: the machine
//! would otherwise be ahead of its disk. Cluster shims enforce the fencing deadline themselves,
//! so even a stopped agent's instances do not outlive its lease.
//!
//! Reads (lists, records, consoles) come from the machine's state as the task last left it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use mirari_blobs::{BlobError, BlobStore};
use mirari_core::clock;
use mirari_core::digest::Digest;

use mirari_core::ids::{self, InstanceId, ResolveIdError};
use mirari_core::instance::{Desired, Phase};
use mirari_core::spec::InstanceSpec;
use mirari_core::target::Target;
use tokio::sync::{mpsc, oneshot, watch};

use crate::backends::bhyve::BhyveBackend;
use crate::backends::js::JsBackend;
use crate::backends::kvm::KvmBackend;
use crate::backends::links;
use crate::backends::rpi::RpiBackend;
use crate::backends::rpi::plan::Board;
use crate::backends::unix::UnixBackend;
use crate::backends::xen::XenBackend;
use crate::backends::{Backend, BackendError, Ended, Fingerprint, Launch, Recovered, StopOutcome};
use crate::cluster::{self, ClusterConfig};
use crate::console::ConsoleBuffer;
use crate::machine::{self, Effect, Host, Input, Now};
use crate::metrics::AgentMetrics;
use crate::network::{self, HostNetwork};
use crate::probe;
use crate::state::{InstanceRecord, Origin, StateError, StateStore};
use crate::supervisor::client::ShimLauncher;
use crate::supervisor::fence;

/// Most instances one run request may create.
pub const MAX_RUN_COUNT: u32 = 1000;
/// The fencing deadline of this host's cluster instances, in the state directory.
const FENCE_FILE: &str = "cluster.fence";

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    /// Bytes of console output kept per instance.
    pub console_bytes: usize,
    /// The `mirari-agent` binary, whose `shim` subcommand supervises instances.
    pub shim_program: PathBuf,
    /// Where KVM is (tests point this elsewhere to exercise the TCG fallback).
    pub kvm_device: PathBuf,
    /// The board `rpi` instances boot on, and the U-Boot it boots (`None`: Debian's).
    pub rpi_board: Board,
    pub rpi_u_boot: Option<PathBuf>,
    /// Which bridge carries which network (`--network`).
    pub networks: Vec<HostNetwork>,
    /// Where the daemon serves `GET /metrics` (plain HTTP), if anywhere.
    pub http_listen: Option<std::net::SocketAddr>,
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
    #[error(
        "instance {id} belongs to the cluster, which would only start it again: stop it there \
         (mirari cluster scale {app} N, or mirari cluster stop {app})"
    )]
    ClusterInstance { id: InstanceId, app: String },
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
    #[error("the agent has stopped")]
    Stopped,
}

/// An input, and who waits for its effects to be performed (a run request waits until its
/// records are on disk).
struct Command {
    input: Input,
    done: Option<oneshot::Sender<Result<(), AgentError>>>,
}

/// Every backend this agent knows, set up for `config`.
fn backends(config: &AgentConfig) -> Vec<Arc<dyn Backend>> {
    let launcher = ShimLauncher { program: config.shim_program.clone(), console_bytes: config.console_bytes };
    vec![
        Arc::new(UnixBackend::new(launcher.clone())),
        Arc::new(JsBackend::new(launcher.clone())),
        Arc::new(KvmBackend::new(launcher.clone()).with_kvm_device(&config.kvm_device)),
        Arc::new(XenBackend::new(config.shim_program.clone(), config.console_bytes)),
        Arc::new(rpi_backend(launcher.clone(), config)),
        Arc::new(BhyveBackend::new(launcher)),
    ]
}

fn rpi_backend(launcher: ShimLauncher, config: &AgentConfig) -> RpiBackend {
    let backend = RpiBackend::for_board(launcher, config.rpi_board);
    match &config.rpi_u_boot {
        Some(u_boot) => backend.with_firmware(u_boot),
        None => backend,
    }
}

/// Removes the taps, veths and namespaces that this agent's ended instances left behind (an
/// agent killed between an instance's end and its clean-up). Before the driver starts: a start
/// running meanwhile could lose its links.
async fn sweep_leaked_links(records: &[InstanceRecord]) {
    let with_links = records.iter().filter(|r| !r.spec.interfaces.is_empty());
    let owned: BTreeSet<InstanceId> = with_links.clone().map(|r| r.id).collect();
    let live: BTreeSet<InstanceId> =
        with_links.filter(|r| r.handle.is_some() || r.lifecycle.phase.is_live()).map(|r| r.id).collect();
    match links::sweep_links(&owned, &live).await {
        Ok(removed) => {
            for what in removed {
                tracing::info!(%what, "removed a leaked network link");
            }
        }
        Err(error) => tracing::warn!(%error, "could not sweep leaked network links"),
    }
}

/// The configured networks whose bridges exist and are up (the others are logged).
pub fn usable_networks(config: &AgentConfig) -> BTreeMap<String, HostNetwork> {
    network::usable(&config.networks)
}

/// What each backend finds on this host.
pub async fn fingerprint(config: &AgentConfig) -> Vec<Fingerprint> {
    let mut fingerprints = Vec::new();
    for backend in backends(config) {
        fingerprints.push(backend.fingerprint().await);
    }
    fingerprints
}

#[derive(Debug, Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: AgentConfig,
    store: Arc<StateStore>,
    blobs: BlobStore,
    backends: BTreeMap<Target, Arc<dyn Backend>>,
    fingerprints: Vec<Fingerprint>,
    /// The networks whose bridges are usable, by name.
    networks: BTreeMap<String, HostNetwork>,
    /// Held while local instances are given addresses.
    allocating: tokio::sync::Mutex<()>,
    host: RwLock<Host>,
    consoles: Mutex<HashMap<InstanceId, Arc<ConsoleBuffer>>>,
    commands: mpsc::UnboundedSender<Command>,
    /// Bumped after every input the driver handled, for callers waiting on a state.
    changes: watch::Sender<u64>,
    cluster: Option<ClusterConfig>,
    metrics: AgentMetrics,
}

/// The driver's end: an error if it had to stop (a record could not be persisted).
pub type DriverEnd = oneshot::Receiver<Result<(), AgentError>>;

impl Agent {
    /// Opens the state directory and starts the driver, which first re-adopts surviving
    /// instances. `fingerprints` are what [`fingerprint`] found, `networks` those of
    /// [`usable_networks`]. With `cluster`, the host joins the cluster.
    pub async fn open(
        config: AgentConfig,
        fingerprints: Vec<Fingerprint>,
        networks: BTreeMap<String, HostNetwork>,
        cluster: Option<ClusterConfig>,
    ) -> Result<(Self, DriverEnd), AgentError> {
        std::fs::create_dir_all(config.state_dir.join("instances"))
            .map_err(|source| AgentError::StateDir { path: config.state_dir.clone(), source })?;
        let store = StateStore::open(&config.state_dir.join("agent.redb"))?;
        let blobs = BlobStore::open(&config.state_dir.join("blobs"))?;
        let backends = backends(&config).into_iter().map(|b| (b.target(), b)).collect();
        let records = store.load_all()?;
        sweep_leaked_links(&records).await;
        let metrics = AgentMetrics::default();
        metrics.note_records(&records);
        let consoles = records
            .iter()
            .map(|record| {
                let console = Arc::new(ConsoleBuffer::new(config.console_bytes));
                console.set_finished(!record.lifecycle.phase.is_live());
                (record.id, console)
            })
            .collect();
        // The previous run's fencing deadline says whether its lease outlived its stop.
        let deadline = fence::read(&config.state_dir.join(FENCE_FILE));
        let lease_ran_out = fence::passed(clock::boot_ms(), deadline);
        let machine_cluster =
            cluster.as_ref().map(|c| machine::Cluster { host: c.host.clone(), timing: c.timing, lease_ran_out });
        let (host, first) = Host::open(records, machine_cluster, Self::now());
        let (commands, receiver) = mpsc::unbounded_channel();
        let agent = Self {
            inner: Arc::new(Inner {
                config,
                store: Arc::new(store),
                blobs,
                backends,
                fingerprints,
                networks,
                allocating: tokio::sync::Mutex::new(()),
                host: RwLock::new(host),
                consoles: Mutex::new(consoles),
                commands,
                changes: watch::channel(0).0,
                cluster,
                metrics,
            }),
        };
        let (ended, end) = oneshot::channel();
        let driver = agent.clone();
        tokio::spawn(async move {
            let _ = ended.send(driver.drive(first, receiver).await);
        });
        Ok((agent, end))
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

    /// What the runtime counts, for the daemon's metrics registry.
    pub fn metrics(&self) -> &AgentMetrics {
        &self.inner.metrics
    }

    /// Where an instance's runs keep their files (the shim's `shim.json` among them).
    pub fn instance_dir(&self, id: InstanceId) -> PathBuf {
        self.inner.config.state_dir.join("instances").join(id.to_string())
    }

    fn host(&self) -> std::sync::RwLockReadGuard<'_, Host> {
        self.inner.host.read().expect("host lock")
    }

    /// Sends an input to the driver and waits until its effects were performed.
    async fn submit(&self, input: Input) -> Result<(), AgentError> {
        let (done, answer) = oneshot::channel();
        self.inner.commands.send(Command { input, done: Some(done) }).map_err(|_| AgentError::Stopped)?;
        answer.await.map_err(|_| AgentError::Stopped)?
    }

    /// Creates `count` instances of `spec`, each with a freshly minted ID, and has them started.
    pub async fn run(&self, spec: InstanceSpec, count: u32) -> Result<Vec<InstanceId>, AgentError> {
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
        let mut ids: Vec<InstanceId> = Vec::new();
        while ids.len() < count as usize {
            let id = InstanceId::from_u64(rand::random());
            let taken = self.host().record(id).is_some() || ids.contains(&id);
            if !taken && !self.inner.store.was_minted(id)? {
                ids.push(id);
            }
        }
        // Addresses are given out one request at a time: what one holds, the next sees held.
        let _allocating = self.inner.allocating.lock().await;
        let held = self
            .host()
            .records()
            .filter(|r| r.lifecycle.desired == Desired::Running || !r.lifecycle.phase.has_ended())
            .flat_map(|r| r.spec.interfaces.iter().map(|i| (i.network.clone(), i.address.address)))
            .collect();
        let interfaces = network::allocate_local(&self.inner.networks, &spec.run.networks, &ids, &held)
            .map_err(AgentError::InvalidRequest)?;
        let instances = ids
            .iter()
            .zip(interfaces)
            .enumerate()
            .map(|(slot, (id, interfaces))| (*id, spec.clone().for_instance(*id, slot as u32, interfaces)))
            .collect();
        self.submit(Input::Run { instances }).await?;
        Ok(ids)
    }

    /// A receiver that sees a new value after every change.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Every instance record, oldest first.
    pub fn list(&self) -> Vec<InstanceRecord> {
        let mut records: Vec<InstanceRecord> = self.host().records().cloned().collect();
        records.sort_by_key(|r| (r.created_at_ms, r.id));
        records
    }

    /// The instance a person means by `prefix` (a full ID or a unique prefix of one).
    pub fn resolve(&self, prefix: &str) -> Result<InstanceId, AgentError> {
        Ok(ids::resolve_prefix(prefix, self.host().records().map(|r| r.id))?)
    }

    pub fn get(&self, id: InstanceId) -> Option<InstanceRecord> {
        self.host().record(id).cloned()
    }

    pub fn console(&self, id: InstanceId) -> Option<Arc<ConsoleBuffer>> {
        self.inner.consoles.lock().expect("consoles lock").get(&id).cloned()
    }

    /// Asks for the instance to stop and waits until it has.
    /// Stops a local instance and waits until it has. A cluster instance is the cluster's to
    /// stop: refused, saying how.
    pub async fn stop(&self, id: InstanceId) -> Result<InstanceRecord, AgentError> {
        let mut changes = self.inner.changes.subscribe();
        let record = self.get(id).ok_or_else(|| ResolveIdError::NotFound(id.to_string()))?;
        if record.origin == Origin::Cluster {
            return Err(AgentError::ClusterInstance { id, app: record.spec.app });
        }
        self.submit(Input::Stop { id }).await?;
        loop {
            let (record, busy) = {
                let host = self.host();
                (host.record(id).cloned().ok_or_else(|| ResolveIdError::NotFound(id.to_string()))?, host.is_busy(id))
            };
            let settled = !record.lifecycle.phase.is_live() && record.lifecycle.phase != Phase::Pending;
            if settled && !busy {
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

    fn fence_file(&self) -> PathBuf {
        self.inner.config.state_dir.join(FENCE_FILE)
    }

    fn launch(&self, record: &InstanceRecord) -> Launch {
        let blobs = &self.inner.blobs;
        Launch {
            id: record.id,
            dir: self.instance_dir(record.id),
            artifact: blobs.path(&record.spec.artifact),
            files: record.spec.files.iter().map(|f| blobs.path(&f.digest)).collect(),
            spec: record.spec.clone(),
            fence: (record.origin == Origin::Cluster).then(|| self.fence_file()),
            bridges: record
                .spec
                .interfaces
                .iter()
                .map(|i| self.inner.networks.get(&i.network).map(|n| n.bridge.clone()).unwrap_or_default())
                .collect(),
        }
    }

    fn now() -> Now {
        Now { wall_ms: clock::wall_ms(), boot_ms: clock::boot_ms() }
    }

    /// The driver loop: inputs and deadlines in, effects out.
    async fn drive(self, first: Vec<Effect>, mut commands: mpsc::UnboundedReceiver<Command>) -> Result<(), AgentError> {
        let (inputs, mut from_tasks) = mpsc::unbounded_channel::<Input>();
        let mut watcher: Option<tokio::task::JoinHandle<()>> = None;
        self.perform(first, &inputs, &mut watcher).await?;
        loop {
            let now = Self::now();
            let wake_at = self.host().wake_at(now);
            let sleep = tokio::time::sleep(Duration::from_millis(wake_at.saturating_sub(now.boot_ms)));
            let (input, done) = tokio::select! {
                command = commands.recv() => match command {
                    Some(Command { input, done }) => (input, done),
                    None => return Ok(()),
                },
                input = from_tasks.recv() => (input.expect("the driver holds a sender"), None),
                () = sleep => (Input::Tick, None),
            };
            if matches!(input, Input::Ended { .. }) {
                self.inner.metrics.exits.inc();
            }
            let effects = {
                let mut host = self.inner.host.write().expect("host lock");
                host.handle(Self::now(), input)
            };
            let performed = self.perform(effects, &inputs, &mut watcher).await;
            self.inner.changes.send_modify(|n| *n += 1);
            if let Some(done) = done {
                let _ = done.send(if performed.is_ok() { Ok(()) } else { Err(AgentError::Stopped) });
            }
            performed?;
        }
    }

    async fn perform(
        &self,
        effects: Vec<Effect>,
        inputs: &mpsc::UnboundedSender<Input>,
        watcher: &mut Option<tokio::task::JoinHandle<()>>,
    ) -> Result<(), AgentError> {
        for effect in effects {
            match effect {
                Effect::Persist { new, changed } => {
                    let store = self.inner.store.clone();
                    let (written_new, written_changed) = (new.clone(), changed.clone());
                    tokio::task::spawn_blocking(move || store.write(&written_new, &written_changed))
                        .await
                        .map_err(|_| AgentError::Stopped)?
                        .inspect_err(|error| tracing::error!(%error, "cannot persist instance records: stopping"))?;
                    self.inner.metrics.note_records(new.iter().chain(&changed));
                    self.sync_consoles(new.iter().chain(&changed));
                }
                Effect::Forget(ids) => {
                    let store = self.inner.store.clone();
                    let forgotten = ids.clone();
                    tokio::task::spawn_blocking(move || store.forget(&forgotten))
                        .await
                        .map_err(|_| AgentError::Stopped)?
                        .inspect_err(|error| tracing::error!(%error, "cannot delete instance records: stopping"))?;
                    let mut consoles = self.inner.consoles.lock().expect("consoles lock");
                    for id in &ids {
                        consoles.remove(id);
                        if let Err(error) = std::fs::remove_dir_all(self.instance_dir(*id))
                            && error.kind() != std::io::ErrorKind::NotFound
                        {
                            tracing::warn!(%id, %error, "could not delete the directory of a forgotten instance");
                        }
                    }
                    tracing::info!(instances = ids.len(), "forgot instances that ended past their retention");
                }
                Effect::Start(record) => {
                    self.inner.metrics.starts.inc();
                    self.spawn_start(record, inputs.clone());
                }
                Effect::Watch(record) => self.spawn_watch(record, inputs.clone()),
                Effect::Stop { record, handle, timeout_secs } => {
                    let (agent, inputs) = (self.clone(), inputs.clone());
                    tokio::spawn(async move {
                        let launch = agent.launch(&record);
                        let outcome = match agent.inner.backends.get(&record.spec.target) {
                            Some(backend) => agent
                                .metrics()
                                .time(
                                    record.spec.target,
                                    "stop",
                                    backend.stop(&launch, &handle, Duration::from_secs(timeout_secs)),
                                )
                                .await
                                .map(|stopped| stopped == StopOutcome::Forced)
                                .map_err(|error| error.to_string()),
                            None => Err("this agent has no backend for it".into()),
                        };
                        let _ = inputs.send(Input::StopReturned { id: record.id, outcome, timeout_secs });
                    });
                }
                Effect::Release { record, handle } => {
                    let (agent, inputs) = (self.clone(), inputs.clone());
                    tokio::spawn(async move {
                        let launch = agent.launch(&record);
                        let destroyed = match agent.inner.backends.get(&record.spec.target) {
                            Some(backend) => {
                                agent.metrics().time(record.spec.target, "destroy", backend.destroy(&launch)).await
                            }
                            None => Ok(()),
                        };
                        if let Err(error) = &destroyed {
                            tracing::warn!(id = %record.id, %error, "cannot clean up after an instance");
                        }
                        let _ = inputs.send(Input::Released { id: record.id, handle, ok: destroyed.is_ok() });
                    });
                }
                Effect::Recover(record) => self.spawn_recover(record, inputs.clone()),
                Effect::Probe { id, run, address, probe, timeout_ms } => {
                    let inputs = inputs.clone();
                    tokio::spawn(async move {
                        let result = probe::run(address, &probe, Duration::from_millis(timeout_ms)).await;
                        let _ = inputs.send(Input::Probed { id, run, result });
                    });
                }
                Effect::Register(host) => {
                    let cluster = self.cluster();
                    let inputs = inputs.clone();
                    let sent_ms = clock::boot_ms();
                    tokio::spawn(async move {
                        let _ = inputs.send(cluster::register(&cluster.coordinators, host, sent_ms).await);
                    });
                }
                Effect::Renew => {
                    let cluster = self.cluster();
                    let inputs = inputs.clone();
                    let sent_ms = clock::boot_ms();
                    tokio::spawn(async move {
                        let _ = inputs.send(cluster::renew(&cluster.coordinators, &cluster.host.id.0, sent_ms).await);
                    });
                }
                Effect::Report(reports) => {
                    let cluster = self.cluster();
                    let inputs = inputs.clone();
                    tokio::spawn(async move {
                        let _ = inputs.send(cluster::report(&cluster.coordinators, &cluster.host.id.0, reports).await);
                    });
                }
                Effect::WatchAssignments { epoch } => {
                    let cluster = self.cluster();
                    if let Some(old) = watcher.take() {
                        old.abort();
                    }
                    let stream =
                        cluster::watch_assignments(cluster.coordinators, cluster.host.id.0, epoch, inputs.clone());
                    *watcher = Some(tokio::spawn(stream));
                }
                Effect::StopWatchingAssignments => {
                    if let Some(old) = watcher.take() {
                        old.abort();
                    }
                }
                Effect::FetchBlobs { generation, digests } => {
                    let (cluster, blobs, inputs) = (self.cluster(), self.inner.blobs.clone(), inputs.clone());
                    tokio::spawn(async move {
                        let _ =
                            inputs.send(cluster::fetch_blobs(&cluster.coordinators, &blobs, generation, digests).await);
                    });
                }
                Effect::FenceDeadline { boot_ms } => {
                    if let Err(error) = fence::write(&self.fence_file(), boot_ms) {
                        tracing::error!(%error, "cannot write the fencing deadline; cluster shims will fence early");
                    }
                }
            }
        }
        Ok(())
    }

    fn cluster(&self) -> ClusterConfig {
        self.inner.cluster.clone().expect("cluster effects come only from a joined agent")
    }

    /// A console is finished when nothing runs and nothing will without a new request.
    fn sync_consoles<'a>(&self, records: impl Iterator<Item = &'a InstanceRecord>) {
        let mut consoles = self.inner.consoles.lock().expect("consoles lock");
        for record in records {
            let life = &record.lifecycle;
            let active = life.phase.is_live() || life.phase == Phase::Pending || life.restart_due_ms.is_some();
            let console = consoles
                .entry(record.id)
                .or_insert_with(|| Arc::new(ConsoleBuffer::new(self.inner.config.console_bytes)));
            console.set_finished(!active);
        }
    }

    fn spawn_start(&self, record: InstanceRecord, inputs: mpsc::UnboundedSender<Input>) {
        let agent = self.clone();
        tokio::spawn(async move {
            let launch = agent.launch(&record);
            let missing = std::iter::once(&launch.artifact).chain(&launch.files).find(|p| !p.is_file());
            let outcome = match (agent.usable_backend(record.spec.target), missing) {
                (Err(error), _) => Err(error.to_string()),
                (Ok(_), Some(path)) => Err(format!("{} is missing from the blob store", path.display())),
                (Ok(backend), None) => {
                    match agent.metrics().time(record.spec.target, "start", backend.start(&launch)).await {
                        Ok(handle) => {
                            let inspected =
                                agent.metrics().time(record.spec.target, "inspect", backend.inspect(&launch, &handle));
                            let detail = inspected.await.map(|i| i.detail).unwrap_or_default();
                            Ok((handle, detail))
                        }
                        Err(error) => Err(error.to_string()),
                    }
                }
            };
            if let Err(message) = &outcome {
                tracing::warn!(id = %record.id, %message, "instance did not start");
            }
            let _ = inputs.send(Input::Started { id: record.id, outcome });
        });
    }

    /// Streams the run's console into its buffer, then reports how the run ended.
    fn spawn_watch(&self, record: InstanceRecord, inputs: mpsc::UnboundedSender<Input>) {
        let agent = self.clone();
        tokio::spawn(async move {
            let launch = agent.launch(&record);
            let Some(backend) = agent.inner.backends.get(&record.spec.target).cloned() else { return };
            agent.read_console(backend.as_ref(), &launch, record.id).await;
            let ended = backend.wait(&launch).await;
            let _ = inputs.send(Input::Ended { id: record.id, ended, context: String::new() });
        });
    }

    /// Copies a run's console into the instance's buffer until the console ends.
    async fn read_console(&self, backend: &dyn Backend, launch: &Launch, id: InstanceId) {
        if let (Ok(mut frames), Some(console)) = (backend.console(launch, 0).await, self.console(id)) {
            while let Some(frame) = frames.next().await {
                self.inner.metrics.console_bytes.inc_by(frame.data.len() as u64);
                console.push(&frame.data);
            }
        }
    }

    /// Finds a run that was live when the agent last ran: re-adopted, or ended meanwhile.
    fn spawn_recover(&self, record: InstanceRecord, inputs: mpsc::UnboundedSender<Input>) {
        let agent = self.clone();
        tokio::spawn(async move {
            let id = record.id;
            let launch = agent.launch(&record);
            let down = " while the agent was down".to_owned();
            let Some(backend) = agent.inner.backends.get(&record.spec.target).cloned() else {
                let context = " (this agent has no backend for it)".into();
                let _ = inputs.send(Input::Ended { id, ended: Ended::Lost, context });
                return;
            };
            let recovered = backend.recover(&launch, record.handle.as_ref());
            let input = match agent.metrics().time(record.spec.target, "recover", recovered).await {
                Ok(Recovered::Running(handle)) => Input::Adopted { id, handle },
                Ok(Recovered::Ended(ended)) => {
                    agent.read_console(backend.as_ref(), &launch, id).await;
                    Input::Ended { id, ended, context: down }
                }
                Err(error) => {
                    tracing::warn!(%id, %error, "cannot recover an instance");
                    Input::Ended { id, ended: Ended::Lost, context: down }
                }
            };
            let _ = inputs.send(input);
        });
    }
}
