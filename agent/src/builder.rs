//! Builds on this agent, for the cluster: fetch the source bundle by digest, unpack it, check
//! the requirements, run the build driver, and stream back progress and the artifact.

use std::path::{Path, PathBuf};

use mirari_blobs::BlobStore;
use mirari_build::cache::{self, BuildCache};
use mirari_build::project::Project;
use mirari_build::{BuildEvent, archive, driver, requirements};
use mirari_core::digest::Digest;
use mirari_core::target::Target;
use mirari_proto::agent::{self as pb, build_event};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tonic::Status;

use crate::cluster::Coordinators;

const CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Builder {
    pub coordinators: Coordinators,
    pub blobs: BlobStore,
    /// Where bundles are unpacked, one directory per build.
    pub scratch: PathBuf,
    /// The artifacts of earlier builds, by what went into them.
    pub cache: BuildCache,
    pub host: String,
}

type Events = mpsc::Sender<Result<pb::BuildEvent, Status>>;

fn event(event: build_event::Event) -> Result<pb::BuildEvent, Status> {
    Ok(pb::BuildEvent { event: Some(event) })
}

impl Builder {
    /// Starts the build; its events arrive on the returned channel.
    pub fn start(&self, job: pb::BuildJob) -> mpsc::Receiver<Result<pb::BuildEvent, Status>> {
        let (events, receiver) = mpsc::channel(256);
        let builder = self.clone();
        tokio::spawn(async move {
            if let Err(status) = builder.build(job, &events).await {
                let _ = events.send(Err(status)).await;
            }
        });
        receiver
    }

    async fn build(&self, job: pb::BuildJob, events: &Events) -> Result<(), Status> {
        let target: Target = job.target.parse().map_err(|e| Status::invalid_argument(format!("{e}")))?;
        let bundle: Digest = job.bundle_sha256.parse().map_err(|e| Status::invalid_argument(format!("{e}")))?;
        self.coordinators
            .fetch_blob(&self.blobs, bundle)
            .await
            .map_err(|e| Status::failed_precondition(format!("host {}: {e}", self.host)))?;
        std::fs::create_dir_all(&self.scratch).map_err(|e| Status::internal(format!("build directory: {e}")))?;
        let dir = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&self.scratch)
            .map_err(|e| Status::internal(format!("build directory: {e}")))?;
        let (project, host) = (self.unpack(&job, bundle, dir.path())?, &self.host);
        let requires = requirements::requirements_of(&project);
        let missing = requirements::check(&requires);
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
            return Err(Status::failed_precondition(format!("host {host} cannot build {target}: {}", list.join("; "))));
        }
        let key = cache::build_key(bundle, &job.config_toml, target, &cache::toolchain(&requires));
        let cached = self.cache.get(key).filter(|artifact| !job.rebuild && self.blobs.contains(artifact));
        let artifact = match cached {
            Some(artifact) => artifact,
            None => {
                let artifact = self.run_build(project, target, events).await?;
                if let Err(error) = self.cache.put(key, artifact) {
                    tracing::warn!(%error, "could not remember the build for reuse");
                }
                artifact
            }
        };
        self.send_artifact(artifact, cached.is_some(), events).await
    }

    async fn run_build(&self, project: Project, target: Target, events: &Events) -> Result<Digest, Status> {
        let (store, host) = (self.blobs.clone(), self.host.clone());
        let progress = events.clone();
        let built = tokio::task::spawn_blocking(move || {
            driver::build_target(&project, target, &store, &mut |e| {
                let wire = match e {
                    BuildEvent::Step { index, total, what } => {
                        build_event::Event::Step(pb::BuildStep { index: index as u32, total: total as u32, what })
                    }
                    BuildEvent::Output(line) => build_event::Event::Output(line),
                };
                let _ = progress.blocking_send(event(wire));
            })
        })
        .await
        .map_err(|e| Status::internal(format!("the build task failed: {e}")))?
        .map_err(|e| Status::aborted(format!("host {host}: {e}")))?;
        Ok(built.digest)
    }

    /// Streams the artifact back, then says it is done (and whether it was built earlier).
    async fn send_artifact(&self, artifact: Digest, cached: bool, events: &Events) -> Result<(), Status> {
        let path = self.blobs.path(&artifact);
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| Status::internal(format!("artifact: {e}")))?;
        let mut size = 0u64;
        loop {
            let mut chunk = vec![0u8; CHUNK_BYTES];
            let n = file.read(&mut chunk).await.map_err(|e| Status::internal(format!("artifact: {e}")))?;
            if n == 0 {
                break;
            }
            chunk.truncate(n);
            size += n as u64;
            if events.send(event(build_event::Event::ArtifactChunk(chunk))).await.is_err() {
                return Ok(());
            }
        }
        let done = pb::BuildDone { artifact_sha256: artifact.to_string(), size, host: self.host.clone(), cached };
        let _ = events.send(event(build_event::Event::Done(done))).await;
        Ok(())
    }

    /// Unpacks the bundle and writes the config the build was asked with.
    fn unpack(&self, job: &pb::BuildJob, bundle: Digest, dir: &Path) -> Result<Project, Status> {
        let file =
            std::fs::File::open(self.blobs.path(&bundle)).map_err(|e| Status::internal(format!("bundle: {e}")))?;
        archive::unpack(file, dir)
            .map_err(|e| Status::invalid_argument(format!("the source bundle does not unpack: {e}")))?;
        let name = Path::new(&job.config_path).file_name().map_or_else(|| "mirari.toml".into(), |n| n.to_os_string());
        let config = dir.join(name);
        std::fs::write(&config, &job.config_toml).map_err(|e| Status::internal(format!("config: {e}")))?;
        Project::load(&config).map_err(|e| Status::invalid_argument(e.to_string()))
    }
}
