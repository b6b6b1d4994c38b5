//! Which builds can be reused. A build is keyed by what went into it: the source bundle's
//! digest, the config it was asked with, the target, and the toolchain as the config's
//! `[requires]` names it (each command's resolved binary with its size and modification time,
//! each apt and opam package's installed version) and this build driver's version. The same
//! key means the same inputs, so the artifact built for it is used again.
//!
//! A tool the build runs that `[requires]` does not name is not part of the key: list it there
//! (or deploy with `--rebuild`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::UNIX_EPOCH;

use mirari_core::config::Requirements;
use mirari_core::digest::Digest;
use mirari_core::target::Target;

/// What the build's tools are on this machine, one line per tool, in `[requires]` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain(pub Vec<String>);

/// Reads this machine's toolchain for `requires` (a missing tool is a line too: installing it
/// changes the key).
pub fn toolchain(requires: &Requirements) -> Toolchain {
    let mut lines = Vec::new();
    for command in &requires.commands {
        lines.push(match resolve(command) {
            Some(path) => format!("command {command} {}", file_identity(&path)),
            None => format!("command {command} missing"),
        });
    }
    for package in &requires.apt {
        let version = output_of(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]));
        lines.push(format!("apt {package} {}", version.as_deref().unwrap_or("missing")));
    }
    for package in &requires.opam {
        let version =
            output_of(Command::new("opam").args(["list", "--installed", "--short", "--columns=version", package]));
        lines.push(format!("opam {package} {}", version.as_deref().unwrap_or("missing")));
    }
    Toolchain(lines)
}

/// The key of a build of `target` from `bundle` with `config_toml`, on `toolchain`.
pub fn build_key(bundle: Digest, config_toml: &str, target: Target, toolchain: &Toolchain) -> Digest {
    let mut input = format!(
        "mirari build cache 1\ndriver {}\nbundle {bundle}\ntarget {}\nconfig {}\n",
        env!("CARGO_PKG_VERSION"),
        target.name(),
        Digest::of(config_toml.as_bytes())
    );
    for line in &toolchain.0 {
        input.push_str(line);
        input.push('\n');
    }
    Digest::of(input.as_bytes())
}

/// Build keys and the artifacts built for them, one small file per key.
#[derive(Debug, Clone)]
pub struct BuildCache {
    dir: PathBuf,
}

impl BuildCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The artifact built for `key`, if one was.
    pub fn get(&self, key: Digest) -> Option<Digest> {
        std::fs::read_to_string(self.dir.join(key.to_string())).ok()?.trim().parse().ok()
    }

    /// Records that `artifact` was built for `key` (written whole, then renamed into place).
    pub fn put(&self, key: Digest, artifact: Digest) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(key.to_string());
        let partial = path.with_extension("partial");
        std::fs::write(&partial, format!("{artifact}\n"))?;
        std::fs::rename(partial, path)
    }
}

fn resolve(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(command)).find(|candidate| candidate.is_file())
}

/// The binary a command runs (symbolic links followed: `gcc` is `gcc-12`), its size and mtime.
fn file_identity(path: &Path) -> String {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let metadata = std::fs::metadata(&real).ok();
    let size = metadata.as_ref().map_or(0, std::fs::Metadata::len);
    let modified = metadata
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{} {size} {modified}", real.display())
}

fn output_of(command: &mut Command) -> Option<String> {
    let out = command.stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toolchain_of(lines: &[&str]) -> Toolchain {
        Toolchain(lines.iter().map(|l| (*l).to_owned()).collect())
    }

    #[test]
    fn the_key_changes_with_every_input_and_only_then() {
        let bundle = Digest::of(b"sources");
        let tools = toolchain_of(&["command gcc /usr/bin/gcc-12 100 1"]);
        let key = build_key(bundle, "[app]", Target::Unix, &tools);
        assert_eq!(key, build_key(bundle, "[app]", Target::Unix, &tools.clone()));
        assert_ne!(key, build_key(Digest::of(b"other sources"), "[app]", Target::Unix, &tools));
        assert_ne!(key, build_key(bundle, "[app] ", Target::Unix, &tools));
        assert_ne!(key, build_key(bundle, "[app]", Target::Kvm, &tools));
        assert_ne!(
            key,
            build_key(bundle, "[app]", Target::Unix, &toolchain_of(&["command gcc /usr/bin/gcc-12 100 2"]))
        );
    }

    #[test]
    fn a_missing_tool_is_part_of_the_toolchain_and_a_present_one_is_resolved() {
        let requires =
            Requirements { commands: vec!["sh".into(), "surely-not-a-command".into()], apt: vec![], opam: vec![] };
        let Toolchain(lines) = toolchain(&requires);
        assert!(lines[0].starts_with("command sh /"), "{lines:?}");
        assert_eq!(lines[1], "command surely-not-a-command missing");
    }

    #[test]
    fn the_cache_remembers_artifacts_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BuildCache::new(dir.path().join("builds"));
        let (key, artifact) = (Digest::of(b"key"), Digest::of(b"artifact"));
        assert_eq!(cache.get(key), None);
        cache.put(key, artifact).unwrap();
        assert_eq!(cache.get(key), Some(artifact));
    }
}
