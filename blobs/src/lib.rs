//! A content-addressed blob store on the local disk.
//!
//! Artifacts and file images live at `ROOT/sha256/<hex>`, written once through a temporary file
//! that is hashed as it is written, fsync'd, checked against the digest the writer expected,
//! and renamed into place. A blob that is present is therefore complete and verified. Blobs are
//! read-only and executable (a `unix` artifact is run straight from the store).
//!
//! [`write_atomically`] is the one way Mirari replaces a small file durably (shim records,
//! build manifests).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mirari_core::digest::{Digest, Hasher};
use tempfile::NamedTempFile;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob content has sha256 {actual}, not the expected {expected}")]
    Mismatch { expected: Digest, actual: Digest },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BlobError + use<> {
    let path = path.to_owned();
    move |source| BlobError::Io { action, path, source }
}

/// Replaces the file at `path` with `bytes` so that a crash leaves either the old content or
/// the new, never a torn file: written to a temporary file beside it, fsync'd, renamed over
/// it, and the directory fsync'd so the rename itself survives a power loss.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut file = NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        let dir = root.join("sha256");
        fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        Ok(Self { dir })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.to_string())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Starts writing a blob; `expected` (if known) is checked when it is finished.
    pub fn writer(&self, expected: Option<Digest>) -> Result<BlobWriter, BlobError> {
        let file = NamedTempFile::new_in(&self.dir).map_err(io_error("create a file in", &self.dir))?;
        Ok(BlobWriter { store: self.clone(), file, hasher: Hasher::default(), size: 0, expected })
    }

    pub fn put_bytes(&self, data: &[u8]) -> Result<Digest, BlobError> {
        let mut writer = self.writer(None)?;
        writer.write(data)?;
        Ok(writer.finish()?.0)
    }

    /// Every blob the store holds, with how long ago it was written (temporary files of writes
    /// under way are not blobs).
    pub fn list(&self) -> Result<Vec<(Digest, std::time::Duration)>, BlobError> {
        let entries = fs::read_dir(&self.dir).map_err(io_error("list", &self.dir))?;
        let now = std::time::SystemTime::now();
        Ok(entries
            .flatten()
            .filter_map(|entry| {
                let digest: Digest = entry.file_name().to_str()?.parse().ok()?;
                let written = entry.metadata().ok()?.modified().ok()?;
                Some((digest, now.duration_since(written).unwrap_or_default()))
            })
            .collect())
    }

    /// Deletes a blob (nothing if it is not there).
    pub fn remove(&self, digest: &Digest) -> Result<(), BlobError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(io_error("remove", &path)(error)),
            _ => Ok(()),
        }
    }

    /// Copies a file into the store.
    pub fn put_file(&self, source: &Path) -> Result<Digest, BlobError> {
        let mut file = File::open(source).map_err(io_error("open", source))?;
        let mut writer = self.writer(None)?;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buffer).map_err(io_error("read", source))?;
            if n == 0 {
                break;
            }
            writer.write(&buffer[..n])?;
        }
        Ok(writer.finish()?.0)
    }
}

/// A blob being written. Dropping it without [`BlobWriter::finish`] leaves nothing behind.
#[derive(Debug)]
pub struct BlobWriter {
    store: BlobStore,
    file: NamedTempFile,
    hasher: Hasher,
    size: u64,
    expected: Option<Digest>,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), BlobError> {
        self.file.write_all(data).map_err(io_error("write", self.file.path()))?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    /// Verifies, syncs and publishes the blob; returns its digest and size.
    pub fn finish(self) -> Result<(Digest, u64), BlobError> {
        let actual = self.hasher.finish();
        if let Some(expected) = self.expected
            && expected != actual
        {
            return Err(BlobError::Mismatch { expected, actual });
        }
        let target = self.store.path(&actual);
        if target.is_file() {
            return Ok((actual, self.size));
        }
        let temp_path = self.file.path().to_owned();
        let file = self.file.as_file();
        file.set_permissions(fs::Permissions::from_mode(0o555)).map_err(io_error("chmod", &temp_path))?;
        file.sync_all().map_err(io_error("sync", &temp_path))?;
        self.file.persist(&target).map_err(|e| BlobError::Io {
            action: "publish",
            path: target.clone(),
            source: e.error,
        })?;
        File::open(&self.store.dir).and_then(|dir| dir.sync_all()).map_err(io_error("sync", &self.store.dir))?;
        Ok((actual, self.size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
    }

    #[test]
    fn stores_by_content_and_verifies() {
        let root = tempfile::tempdir().unwrap();
        let store = BlobStore::open(root.path()).unwrap();
        let digest = store.put_bytes(b"kernel").unwrap();
        assert_eq!(digest, Digest::of(b"kernel"));
        assert_eq!(fs::read(store.path(&digest)).unwrap(), b"kernel");
        assert_eq!(store.put_bytes(b"kernel").unwrap(), digest);

        let mut writer = store.writer(Some(Digest::of(b"other"))).unwrap();
        writer.write(b"kernel!").unwrap();
        assert!(matches!(writer.finish(), Err(BlobError::Mismatch { .. })));
        assert!(!store.contains(&Digest::of(b"kernel!")));
        let leftovers = fs::read_dir(root.path().join("sha256")).unwrap().count();
        assert_eq!(leftovers, 1, "a failed write leaves no temporary file");
        let listed: Vec<Digest> = store.list().unwrap().into_iter().map(|(d, _)| d).collect();
        assert_eq!(listed, [digest]);
        store.remove(&digest).unwrap();
        store.remove(&digest).unwrap();
        assert!(store.list().unwrap().is_empty());
    }
}
