//! The raw disk images the leader launches providers' machines from: a `kvm` artifact (a
//! multiboot kernel), its file images and its boot arguments, made bootable by a PC BIOS
//! ([`mirari_build::disk_image`]). Made once per distinct content and kept while recent; the
//! provider keeps its own copy by the image's sha256.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;

use mirari_blobs::BlobStore;
use mirari_core::digest::Digest;

use super::{CloudError, CloudErrorKind};

/// Most raw images kept on disk; older ones are made again if ever needed.
const KEPT: usize = 16;

/// What one image is made of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    pub kernel: Digest,
    pub files: Vec<Digest>,
    pub boot_args: Vec<String>,
}

/// A raw image on this coordinator's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw {
    pub digest: Digest,
    pub path: PathBuf,
}

pub struct Images {
    dir: PathBuf,
    made: HashMap<Source, Raw>,
    order: VecDeque<Source>,
}

impl Images {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, made: HashMap::new(), order: VecDeque::new() }
    }

    /// The raw image of `source`, made now if it was not made recently.
    pub async fn raw(&mut self, blobs: &BlobStore, source: &Source) -> Result<Raw, CloudError> {
        if let Some(raw) = self.made.get(source).filter(|raw| raw.path.is_file()) {
            return Ok(raw.clone());
        }
        let blob = |digest: &Digest| {
            let path = blobs.path(digest);
            match path.is_file() {
                true => Ok(path),
                false => Err(CloudError::new(
                    CloudErrorKind::Retry,
                    "BlobMissing",
                    format!("blob {digest} has not reached this coordinator yet"),
                )),
            }
        };
        let kernel = blob(&source.kernel)?;
        let files = source.files.iter().map(blob).collect::<Result<Vec<_>, _>>()?;
        let (dir, boot_args) = (self.dir.clone(), source.boot_args.clone());
        let made = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let staging = dir.join(format!("staging-{:016x}.raw", rand::random::<u64>()));
            let image = mirari_build::disk_image::write_disk_image(&kernel, &files, &boot_args, &staging)
                .map_err(std::io::Error::other)?;
            let path = dir.join(format!("{}.raw", image.sha256));
            std::fs::rename(&staging, &path)?;
            Ok::<_, std::io::Error>(Raw { digest: image.sha256, path })
        })
        .await
        .map_err(|error| CloudError::new(CloudErrorKind::Invalid, "ImageFailed", error.to_string()))?
        .map_err(|error| CloudError::new(CloudErrorKind::Invalid, "ImageFailed", error.to_string()))?;
        tracing::info!(image = %made.digest, path = %made.path.display(), "made a disk image");
        self.made.insert(source.clone(), made.clone());
        self.order.push_back(source.clone());
        while self.order.len() > KEPT {
            if let Some(old) = self.order.pop_front().and_then(|old| self.made.remove(&old))
                && !self.made.values().any(|raw| raw.path == old.path)
            {
                let _ = std::fs::remove_file(&old.path);
            }
        }
        Ok(made)
    }
}
