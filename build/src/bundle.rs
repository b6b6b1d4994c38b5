//! Source bundles: an app's directory as one content-addressed archive, so a build can run on
//! any agent. Build outputs and version-control data stay out.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use mirari_blobs::{BlobError, BlobStore};
use mirari_core::digest::Digest;

use crate::archive;
use crate::project::Project;

/// Top-level directories never bundled.
const LEFT_OUT: [&str; 4] = ["_build", "_mirari", ".git", "target"];

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot bundle the sources in {}", dir.display())]
    Write {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot store the source bundle")]
    Store(#[source] BlobError),
}

/// Bundles the project's directory into `_mirari/bundle.tar` and stores it.
pub fn create(project: &Project, store: &BlobStore) -> Result<Digest, BundleError> {
    let write_error = |source| BundleError::Write { dir: project.dir.clone(), source };
    let out_dir = project.output_dir();
    std::fs::create_dir_all(&out_dir).map_err(write_error)?;
    let path = out_dir.join("bundle.tar");
    let out = File::create(&path).map_err(write_error)?;
    let skip = |relative: &Path| LEFT_OUT.iter().any(|name| relative == Path::new(name));
    archive::write_dir(&project.dir, BufWriter::new(out), &skip).map_err(write_error)?;
    store.put_file(&path).map_err(BundleError::Store)
}
