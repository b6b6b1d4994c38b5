//! Build drivers: run the build for one target and store the artifact it produces.

use std::path::PathBuf;
use std::process::Command;

use mirari_blobs::{BlobError, BlobStore};
use mirari_core::config::TargetBuild;
use mirari_core::digest::Digest;
use mirari_core::target::Target;

use crate::BuildEvent;
use crate::project::Project;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("target `{0}` is not listed in [app] targets")]
    UnknownTarget(Target),
    #[error("{target}: cannot run `{command}`")]
    Spawn {
        target: Target,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{target}: `{command}` failed with {status}")]
    Failed { target: Target, command: String, status: std::process::ExitStatus },
    #[error("{target}: the build did not produce the artifact {}", path.display())]
    NoArtifact { target: Target, path: PathBuf },
    #[error("{target}: refusing the artifact {}", path.display())]
    BadArtifact {
        target: Target,
        path: PathBuf,
        #[source]
        source: mirari_core::artifact::ArtifactError,
    },
    #[error("{target}: cannot read the artifact {}", path.display())]
    ReadArtifact {
        target: Target,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{target}: cannot store the artifact")]
    Store {
        target: Target,
        #[source]
        source: BlobError,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltArtifact {
    pub target: Target,
    pub digest: Digest,
    pub path: PathBuf,
}

/// The shell commands a target's build runs, in order.
pub fn commands(build: &TargetBuild) -> Vec<String> {
    match build {
        TargetBuild::Command { configure, build, .. } => configure.iter().cloned().chain([build.clone()]).collect(),
        TargetBuild::Mirage { mirage_target, .. } => {
            vec![format!("mirage configure -t {mirage_target}"), "make".to_owned()]
        }
    }
}

/// Runs the build of `target` in the project directory and stores its artifact.
pub fn build_target(
    project: &Project,
    target: Target,
    store: &BlobStore,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<BuiltArtifact, BuildError> {
    let build = project.config.builds.get(&target).ok_or(BuildError::UnknownTarget(target))?;
    let commands = commands(build);
    for (index, command) in commands.iter().enumerate() {
        progress(BuildEvent::Step { index: index + 1, total: commands.len(), what: command.clone() });
        run_shell(project, target, command, progress)?;
    }
    let artifact = match build {
        TargetBuild::Command { artifact, .. } | TargetBuild::Mirage { artifact, .. } => artifact,
    };
    let path = project.dir.join(artifact);
    if !path.is_file() {
        return Err(BuildError::NoArtifact { target, path });
    }
    check_artifact(target, &path)?;
    let digest = store.put_file(&path).map_err(|source| BuildError::Store { target, source })?;
    Ok(BuiltArtifact { target, digest, path })
}

/// Refuses an artifact whose header says it cannot run on `target`.
fn check_artifact(target: Target, path: &std::path::Path) -> Result<(), BuildError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(mirari_core::artifact::ARM64_HEADER_BYTES);
    std::fs::File::open(path)
        .and_then(|file| file.take(mirari_core::artifact::ARM64_HEADER_BYTES as u64).read_to_end(&mut head))
        .map_err(|source| BuildError::ReadArtifact { target, path: path.to_owned(), source })?;
    mirari_core::artifact::check(target, &head).map_err(|source| BuildError::BadArtifact {
        target,
        path: path.to_owned(),
        source,
    })
}

/// Runs one command with `sh`, its stderr merged into stdout, each line sent as progress.
fn run_shell(
    project: &Project,
    target: Target,
    command: &str,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<(), BuildError> {
    // stderr joins stdout in the shell, so lines keep the order they were printed in.
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(format!("exec 2>&1\n{command}"))
        .current_dir(&project.dir)
        .env("MIRARI_TARGET", target.name())
        .env("MIRARI_APP", &project.config.name);
    let status = crate::process::run_streaming(&mut shell, progress).map_err(|source| BuildError::Spawn {
        target,
        command: command.to_owned(),
        source,
    })?;
    if !status.success() {
        return Err(BuildError::Failed { target, command: command.to_owned(), status });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirari_core::config::AppConfig;

    fn project(dir: &std::path::Path, build: &str) -> Project {
        project_for(dir, Target::Unix, build)
    }

    fn project_for(dir: &std::path::Path, target: Target, build: &str) -> Project {
        let text = format!(
            "[app]\nname = \"t\"\nversion = \"1\"\ntargets = [\"{target}\"]\n\
             [build.targets.{target}]\nconfigure = \"echo configuring $MIRARI_TARGET\"\n\
             build = \"{build}\"\nartifact = \"out/app\"\n"
        );
        Project {
            dir: dir.to_owned(),
            config_path: dir.join("mirari.toml"),
            config: AppConfig::parse("mirari.toml", &text).unwrap(),
        }
    }

    #[test]
    fn runs_the_commands_and_stores_the_artifact() {
        let app = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&app.path().join("store")).unwrap();
        let project = project(app.path(), "mkdir -p out && printf binary > out/app && echo built >&2");
        let mut events = Vec::new();
        let built = build_target(&project, Target::Unix, &store, &mut |e| events.push(e)).unwrap();
        assert_eq!(built.digest, Digest::of(b"binary"));
        assert!(store.contains(&built.digest));
        assert_eq!(events[0], BuildEvent::Step { index: 1, total: 2, what: "echo configuring $MIRARI_TARGET".into() });
        assert_eq!(events[1], BuildEvent::Output("configuring unix".into()));
        assert_eq!(events[3], BuildEvent::Output("built".into()));
    }

    #[test]
    fn reports_failures_and_missing_artifacts() {
        let app = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&app.path().join("store")).unwrap();
        let failing = project(app.path(), "exit 7");
        let error = build_target(&failing, Target::Unix, &store, &mut |_| {}).unwrap_err();
        assert_eq!(error.to_string(), "unix: `exit 7` failed with exit status: 7");
        let lazy = project(app.path(), "true");
        let error = build_target(&lazy, Target::Unix, &store, &mut |_| {}).unwrap_err();
        assert!(matches!(error, BuildError::NoArtifact { .. }), "{error}");
    }

    #[test]
    fn refuses_an_rpi_artifact_that_is_not_an_arm64_image_and_stores_nothing() {
        let app = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&app.path().join("store")).unwrap();
        let elf = project_for(app.path(), Target::Rpi, "mkdir -p out && printf ELF%061d 0 > out/app");
        let error = build_target(&elf, Target::Rpi, &store, &mut |_| {}).unwrap_err();
        assert_eq!(
            mirari_core::errors::chain(&error),
            format!(
                "rpi: refusing the artifact {}/out/app: an rpi artifact must be a Linux arm64 Image \
                 (what U-Boot's booti boots): it has no ARM\\x64 magic at byte 56 (an ELF file needs \
                 objcopy -O binary)",
                app.path().display()
            )
        );
        assert!(store.list().unwrap().is_empty(), "nothing is stored");
    }

    #[test]
    fn mirage_runs_configure_then_make() {
        let build = TargetBuild::Mirage { mirage_target: "virtio".into(), artifact: "dist/a.virtio".into() };
        assert_eq!(commands(&build), ["mirage configure -t virtio", "make"]);
    }
}
