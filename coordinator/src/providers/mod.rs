//! What only the leader does at cloud providers: make each provider's machines match the
//! registry, one machine per instance the provider holds, and report what they do.
//!
//! The decision is [`provider::reconcile`] (pure): the machines the provider lists and the
//! registry in, the launches, terminations and reports out. This task lists, asks it, performs
//! what it says through the provider's API ([`Cloud`]) and proposes the reports and the
//! provider's condition. Before every call that changes something at the provider it confirms
//! it still leads (a read barrier: a quorum answered), so a deposed leader launches nothing.
//! Launches are idempotent: each is tagged with its instance ID and looked up by that tag
//! first; a leader that dies between a launch and its report leaves a machine the next leader
//! finds and adopts, and one the registry no longer wants is terminated as an orphan.

mod image;

#[cfg(feature = "ec2")]
mod ec2;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mirari_blobs::BlobStore;
use mirari_core::clock;
use mirari_core::digest::Digest;
use mirari_core::ids::InstanceId;
use mirari_core::provider::{self, Machine, Provider};
use mirari_core::registry::{Command, HostId, Registry, Request};

use crate::driver::RaftHandle;
use crate::leader::fresh_request_id;

/// How often the leader reconciles each provider.
const ROUND_INTERVAL: Duration = Duration::from_secs(2);
/// Most launches at one provider per round, so a big deployment cannot starve the others.
const LAUNCHES_PER_ROUND: usize = 16;

/// Why a provider's API call failed, in the provider's own words (`AuthFailure: …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CloudError {
    pub kind: CloudErrorKind,
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudErrorKind {
    /// Throttled or briefly unavailable: the call is tried again next round (the SDK already
    /// retried it with back-off and jitter).
    Retry,
    /// No capacity for the instance type now.
    Capacity,
    /// The credentials are missing or refused.
    Auth,
    /// The endpoint did not answer.
    Unreachable,
    /// The provider refused the request as given (an unknown image, subnet or group).
    Invalid,
    /// This coordinator cannot drive this kind of provider.
    Unsupported,
}

impl CloudError {
    fn new(kind: CloudErrorKind, code: &str, message: impl Into<String>) -> Self {
        Self { kind, code: code.to_owned(), message: message.into() }
    }
}

/// One machine to launch for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub cluster: String,
    pub provider: String,
    pub instance: InstanceId,
    pub app: String,
    /// The provider's image ID (an AMI).
    pub image: String,
    /// The instance's boot arguments, one line, for apps that read their user data.
    pub user_data: Vec<u8>,
}

/// A provider's API, as the leader uses it.
#[async_trait::async_trait]
pub trait Cloud: Send + Sync {
    /// Every machine of `cluster` at provider `provider`, in any state.
    async fn machines(&self, cluster: &str, provider: &str) -> Result<Vec<Machine>, CloudError>;
    /// The machine of `instance` that is not terminated, if any.
    async fn find(&self, cluster: &str, instance: InstanceId) -> Result<Option<Machine>, CloudError>;
    async fn launch(&self, launch: &Launch) -> Result<Machine, CloudError>;
    async fn terminate(&self, cloud_ids: &[String]) -> Result<(), CloudError>;
    /// The image made of the raw disk at `raw` (whose sha256 is `digest`): found by its digest
    /// tag, or uploaded and registered once.
    async fn image(&self, digest: Digest, raw: &Path) -> Result<String, CloudError>;
    /// What the machine printed on its console.
    async fn console(&self, cloud_id: &str) -> Result<String, CloudError>;
}

/// Connects to a provider's API with the settings the registry holds.
async fn connect(provider: &Provider) -> Result<Arc<dyn Cloud>, CloudError> {
    match provider.kind {
        #[cfg(feature = "ec2")]
        provider::ProviderKind::Ec2 => Ok(Arc::new(ec2::Ec2Cloud::connect(provider).await?)),
        #[cfg(not(feature = "ec2"))]
        provider::ProviderKind::Ec2 => Err(CloudError::new(
            CloudErrorKind::Unsupported,
            "Unsupported",
            "this coordinator was built without EC2 support (cargo feature `ec2` of mirari-coordinator)",
        )),
    }
}

/// What the machine of `instance` at `provider` printed on its console, as the provider kept
/// it. Any coordinator may ask: it only reads.
pub async fn console(provider: &Provider, cluster: &str, instance: InstanceId) -> Result<String, CloudError> {
    let cloud = connect(provider).await?;
    let machine = cloud.find(cluster, instance).await?.ok_or_else(|| {
        CloudError::new(CloudErrorKind::Invalid, "NoMachine", format!("no machine of instance {instance} is running"))
    })?;
    cloud.console(&machine.cloud_id).await
}

/// The leader's working state for its providers. A new leader starts afresh: everything it
/// needs is in the registry and at the providers.
pub struct Providers {
    raft: RaftHandle,
    blobs: BlobStore,
    images: image::Images,
    clouds: HashMap<HostId, (Provider, Arc<dyn Cloud>)>,
    /// Why launches failed so far, per provider and instance, for the instances' messages.
    failing: HashMap<HostId, BTreeMap<InstanceId, String>>,
    /// The provider's image of each raw disk, once found or uploaded.
    uploaded: HashMap<(HostId, Digest), String>,
}

impl fmt::Debug for Providers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Providers").field("connected", &self.clouds.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl Providers {
    pub fn new(raft: RaftHandle, blobs: BlobStore, work_dir: PathBuf) -> Self {
        Self {
            raft,
            blobs,
            images: image::Images::new(work_dir),
            clouds: HashMap::new(),
            failing: HashMap::new(),
            uploaded: HashMap::new(),
        }
    }

    /// Reconciles every provider whenever this node leads, until the process ends.
    pub async fn run(mut self) {
        let mut interval = tokio::time::interval(ROUND_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if self.raft.status().role != "leader" {
                self.clouds.clear();
                self.failing.clear();
                self.uploaded.clear();
                continue;
            }
            let providers: Vec<(HostId, Provider)> = {
                let machine = self.raft.machine();
                machine.registry.hosts().filter_map(|h| Some((h.id.clone(), h.provider.clone()?))).collect()
            };
            let known = |name: &HostId| providers.iter().any(|(provider, _)| provider == name);
            self.clouds.retain(|name, _| known(name));
            self.failing.retain(|name, _| known(name));
            self.uploaded.retain(|(name, _), _| known(name));
            for (name, settings) in providers {
                let condition = match self.reconcile(&name, &settings).await {
                    Ok(()) => None,
                    Err(Stop::Deposed) => break,
                    Err(Stop::Failed(error)) => Some(error.to_string()),
                };
                if condition != settings.condition {
                    self.set_condition(&name, condition).await;
                }
            }
        }
    }

    /// One round at one provider.
    async fn reconcile(&mut self, name: &HostId, settings: &Provider) -> Result<(), Stop> {
        let cloud = self.cloud(name, settings).await?;
        let cluster = self.raft.machine().cluster_id.clone().unwrap_or_default();
        // Listed before the registry is read: see `provider::reconcile`.
        let machines = cloud.machines(&cluster, &name.0).await?;
        let failing = self.failing.entry(name.clone()).or_default().clone();
        let (plan, launches) = {
            let machine = self.raft.machine();
            let plan = provider::reconcile(&machine.registry, name, &machines, &failing);
            let launches: Vec<Planned> =
                plan.launch.iter().take(LAUNCHES_PER_ROUND).filter_map(|id| planned(&machine.registry, *id)).collect();
            (plan, launches)
        };
        if !plan.terminate.is_empty() {
            self.confirm_leading().await?;
            cloud.terminate(&plan.terminate).await?;
            tracing::info!(provider = %name, machines = ?plan.terminate, "terminated machines");
        }
        let mut failure = None;
        for planned in launches {
            match self.launch(&cloud, &cluster, name, &planned).await {
                Ok(()) => {
                    self.failing.entry(name.clone()).or_default().remove(&planned.instance);
                }
                Err(Stop::Deposed) => return Err(Stop::Deposed),
                Err(Stop::Failed(error)) => {
                    tracing::warn!(provider = %name, instance = %planned.instance, %error, "launch failed");
                    self.failing.entry(name.clone()).or_default().insert(planned.instance, error.to_string());
                    let whole_provider = matches!(error.kind, CloudErrorKind::Auth | CloudErrorKind::Unreachable);
                    failure = Some(error);
                    if whole_provider {
                        break;
                    }
                }
            }
        }
        if let Some(live) = self.failing.get_mut(name) {
            live.retain(|id, _| plan.launch.contains(id));
        }
        if !plan.reports.is_empty() {
            let command =
                Command::ReportInstances { host: name.clone(), reports: plan.reports, at_ms: clock::wall_ms() };
            if let Err(error) = self.raft.propose(Request { request_id: fresh_request_id("provider"), command }).await {
                tracing::debug!(provider = %name, %error, "reports not committed; made again next round");
            }
        }
        failure.map_or(Ok(()), |error| Err(Stop::Failed(error)))
    }

    /// Launches `planned`'s machine unless it has one already: the image first (made and
    /// uploaded once per digest), then a look-up by its tag, then the launch.
    async fn launch(
        &mut self,
        cloud: &Arc<dyn Cloud>,
        cluster: &str,
        name: &HostId,
        planned: &Planned,
    ) -> Result<(), Stop> {
        let raw = self.images.raw(&self.blobs, &planned.source).await.map_err(Stop::Failed)?;
        let image = match self.uploaded.get(&(name.clone(), raw.digest)) {
            Some(image) => image.clone(),
            None => {
                self.confirm_leading().await?;
                let image = cloud.image(raw.digest, &raw.path).await?;
                self.uploaded.insert((name.clone(), raw.digest), image.clone());
                image
            }
        };
        if let Some(machine) = cloud.find(cluster, planned.instance).await? {
            tracing::info!(provider = %name, instance = %planned.instance, machine = %machine.cloud_id, "adopted a machine launched before");
            return Ok(());
        }
        self.confirm_leading().await?;
        let launch = Launch {
            cluster: cluster.to_owned(),
            provider: name.0.clone(),
            instance: planned.instance,
            app: planned.app.clone(),
            image,
            user_data: planned.source.boot_args.join(" ").into_bytes(),
        };
        let machine = cloud.launch(&launch).await.inspect_err(|error| {
            // The image may have been deregistered behind Mirari's back: look for it again.
            if error.kind == CloudErrorKind::Invalid {
                self.uploaded.remove(&(name.clone(), raw.digest));
            }
        })?;
        tracing::info!(provider = %name, instance = %planned.instance, machine = %machine.cloud_id, "launched a machine");
        Ok(())
    }

    async fn cloud(&mut self, name: &HostId, settings: &Provider) -> Result<Arc<dyn Cloud>, Stop> {
        let settings = Provider { condition: None, ..settings.clone() };
        if let Some((known, cloud)) = self.clouds.get(name)
            && *known == settings
        {
            return Ok(cloud.clone());
        }
        let cloud = connect(&settings).await?;
        self.clouds.insert(name.clone(), (settings, cloud.clone()));
        Ok(cloud)
    }

    /// A quorum still follows this node: only then may it change anything at a provider.
    async fn confirm_leading(&self) -> Result<(), Stop> {
        let confirmed = tokio::time::timeout(ROUND_INTERVAL, self.raft.read_barrier()).await;
        match confirmed {
            Ok(Ok(())) if self.raft.status().role == "leader" => Ok(()),
            _ => Err(Stop::Deposed),
        }
    }

    async fn set_condition(&self, name: &HostId, condition: Option<String>) {
        match &condition {
            Some(why) => tracing::warn!(provider = %name, %why, "provider cannot launch"),
            None => tracing::info!(provider = %name, "provider launches again"),
        }
        let command = Command::SetProviderCondition { name: name.clone(), condition };
        if let Err(error) = self.raft.propose(Request { request_id: fresh_request_id("condition"), command }).await {
            tracing::debug!(provider = %name, %error, "condition not committed");
        }
    }
}

/// Why a round at a provider ended early.
enum Stop {
    /// This node no longer leads: it leaves the providers alone.
    Deposed,
    Failed(CloudError),
}

impl From<CloudError> for Stop {
    fn from(error: CloudError) -> Self {
        Stop::Failed(error)
    }
}

impl fmt::Debug for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Deposed => f.write_str("deposed"),
            Stop::Failed(error) => write!(f, "{error}"),
        }
    }
}

/// An instance to launch, with what its image is made of.
struct Planned {
    instance: InstanceId,
    app: String,
    source: image::Source,
}

fn planned(registry: &Registry, id: InstanceId) -> Option<Planned> {
    let instance = registry.instance(id)?;
    let spec = registry.app_version(&instance.app, &instance.version)?.instance_spec(instance.target)?;
    let spec = spec.for_instance(id, instance.slot, Vec::new());
    Some(Planned {
        instance: id,
        app: instance.app.clone(),
        source: image::Source {
            kernel: spec.artifact,
            files: spec.files.iter().map(|f| f.digest).collect(),
            boot_args: spec.run.boot_args,
        },
    })
}
