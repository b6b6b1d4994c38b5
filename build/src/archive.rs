//! Deterministic tar archives of a directory: the same files always give the same bytes.
//!
//! Entries are sorted by path, owned by root, dated 0; a file keeps only whether it is
//! executable (0755 or 0644). File images and source bundles are both written this way.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Writes `root` as a tar archive to `out`, leaving out the paths `skip` names (relative to
/// `root`; a skipped directory is skipped whole).
pub fn write_dir(root: &Path, out: impl Write, skip: &dyn Fn(&Path) -> bool) -> io::Result<()> {
    let mut paths = Vec::new();
    collect(root, Path::new(""), skip, &mut paths)?;
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Deterministic);
    for path in &paths {
        let full = root.join(path);
        let metadata = fs::metadata(&full)?;
        let mut header = tar::Header::new_ustar();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if metadata.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, path, io::empty())?;
        } else {
            let executable = metadata.permissions().mode() & 0o111 != 0;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if executable { 0o755 } else { 0o644 });
            header.set_size(metadata.len());
            builder.append_data(&mut header, path, File::open(&full)?)?;
        }
    }
    builder.into_inner()?.flush()
}

/// Unpacks an archive into `dir` (which must exist). Archives come over the wire, so only what
/// [`write_dir`] writes is accepted: files and directories (no links, devices or FIFOs), within
/// `dir`, and no setuid, setgid or sticky bits (an agent unpacks as root).
pub fn unpack(archive: impl Read, dir: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(archive);
    archive.set_preserve_permissions(true);
    archive.set_mask(0o7000);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            let path = entry.path().map_or_else(|_| "an entry".into(), |p| p.display().to_string());
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path} is a {kind:?}: archives hold only files and directories"),
            ));
        }
        if !entry.unpack_in(dir)? {
            let path = entry.path().map_or_else(|_| "an entry".into(), |p| p.display().to_string());
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{path} would land outside the directory")));
        }
    }
    Ok(())
}

fn collect(root: &Path, relative: &Path, skip: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(root.join(relative))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = relative.join(entry.file_name());
        if skip(&path) {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            out.push(path.clone());
            collect(root, &path, skip, out)?;
        } else if kind.is_file() {
            out.push(path);
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is neither a file nor a directory (symlinks are not archived)", path.display()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_deterministic_and_round_trip() {
        let source = tempfile::tempdir().unwrap();
        fs::create_dir_all(source.path().join("sub")).unwrap();
        fs::write(source.path().join("sub/a.txt"), "ay").unwrap();
        fs::write(source.path().join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(source.path().join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir_all(source.path().join("_build")).unwrap();
        fs::write(source.path().join("_build/junk"), "x").unwrap();
        let skip = |p: &Path| p == Path::new("_build");
        let mut first = Vec::new();
        write_dir(source.path(), &mut first, &skip).unwrap();
        let mut second = Vec::new();
        write_dir(source.path(), &mut second, &skip).unwrap();
        assert_eq!(first, second);

        let target = tempfile::tempdir().unwrap();
        unpack(first.as_slice(), target.path()).unwrap();
        assert_eq!(fs::read_to_string(target.path().join("sub/a.txt")).unwrap(), "ay");
        assert!(!target.path().join("_build").exists());
        let mode = fs::metadata(target.path().join("run.sh")).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "the executable bit survives");
    }

    /// An archive of one entry, made by hand as a hostile client would.
    fn archive_of(path: &str, kind: tar::EntryType, mode: u32) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(if kind.is_file() { 2 } else { 0 });
        if kind.is_symlink() {
            header.set_link_name("/etc/passwd").unwrap();
        }
        // `set_path` refuses `..`; a hostile archive writes the name bytes itself.
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        let data: &[u8] = if kind.is_file() { b"hi" } else { b"" };
        builder.append(&header, data).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn links_escapes_and_setuid_bits_are_refused() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("in");
        fs::create_dir(&dir).unwrap();
        let link = unpack(archive_of("link", tar::EntryType::Symlink, 0o777).as_slice(), &dir).unwrap_err();
        assert!(link.to_string().contains("link is a Symlink"), "{link}");
        let escape = unpack(archive_of("../out", tar::EntryType::Regular, 0o644).as_slice(), &dir);
        assert!(escape.is_err() && !parent.path().join("out").exists(), "{escape:?}");

        unpack(archive_of("suid", tar::EntryType::Regular, 0o4755).as_slice(), &dir).unwrap();
        let mode = fs::metadata(dir.join("suid")).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755, "the setuid bit is dropped");
    }
}
