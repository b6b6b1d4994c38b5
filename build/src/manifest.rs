//! The build manifest, `_mirari/build.json`: the digests configure and build produced, which
//! `run` turns into instance specs.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use mirari_core::digest::Digest;
use mirari_core::spec::{FileImageRef, InstanceSpec};
use mirari_core::target::Target;
use serde::{Deserialize, Serialize};

use crate::project::Project;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub files: Vec<FileImageRef>,
    pub artifacts: BTreeMap<Target, Digest>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot {action} the build manifest {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the build manifest {} is damaged; run `mirari build` again", path.display())]
    Damaged {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("target `{0}` has not been built; run `mirari build -t {0}`")]
    NotBuilt(Target),
}

impl Manifest {
    pub fn path(project: &Project) -> PathBuf {
        project.output_dir().join("build.json")
    }

    /// Reads the manifest; an app never configured or built has an empty one.
    pub fn load(project: &Project) -> Result<Self, ManifestError> {
        let path = Self::path(project);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ManifestError::Damaged { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ManifestError::Io { action: "read", path, source }),
        }
    }

    pub fn save(&self, project: &Project) -> Result<(), ManifestError> {
        let path = Self::path(project);
        let io = |action| move |source| ManifestError::Io { action, path: Self::path(project), source };
        fs::create_dir_all(project.output_dir()).map_err(io("create the directory of"))?;
        let json = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        mirari_blobs::write_atomically(&path, &json).map_err(io("write"))
    }

    /// The spec of an instance of `target`, from the project's run policy and this build.
    pub fn instance_spec(&self, project: &Project, target: Target) -> Result<InstanceSpec, ManifestError> {
        let artifact = *self.artifacts.get(&target).ok_or(ManifestError::NotBuilt(target))?;
        Ok(InstanceSpec {
            app: project.config.name.clone(),
            version: project.config.version.clone(),
            target,
            artifact,
            files: self.files.clone(),
            run: project.config.run.clone(),
            interfaces: Vec::new(),
        })
    }
}
