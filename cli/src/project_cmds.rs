//! `configure` and `build`: work on the app's sources, on this machine.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use mirari_blobs::BlobStore;
use mirari_build::BuildEvent;
use mirari_build::manifest::Manifest;
use mirari_build::project::Project;
use mirari_build::{driver, images, requirements};
use mirari_core::target::Target;
use serde::Serialize;

use crate::AppArgs;
use crate::output::{self, Format, Table};

pub fn store_dir(app: &AppArgs) -> PathBuf {
    app.store.clone().unwrap_or_else(|| {
        let data = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".local/share")
        });
        data.join("mirari/store")
    })
}

pub fn open(app: &AppArgs) -> anyhow::Result<(Project, BlobStore)> {
    let project = Project::load(&app.file)?;
    let store = BlobStore::open(&store_dir(app)).context("cannot open the artifact store")?;
    Ok((project, store))
}

/// Progress goes to stderr, so stdout holds only the result (and stays valid JSON).
fn show_progress(event: BuildEvent) {
    match event {
        BuildEvent::Step { index, total, what } => eprintln!("[{index}/{total}] {what}"),
        BuildEvent::Output(line) => eprintln!("    {line}"),
    }
}

#[derive(Debug, Serialize)]
struct ConfigureReport {
    app: String,
    missing: Vec<String>,
    installed: bool,
    files: Vec<mirari_core::spec::FileImageRef>,
}

pub fn configure(app: &AppArgs, install: bool, format: Format) -> anyhow::Result<ExitCode> {
    let (project, store) = open(app)?;
    let requires = requirements::requirements_of(&project);
    let mut missing = requirements::check(&requires);
    let mut installed = false;
    if install && !missing.is_empty() {
        eprintln!("installing {} missing requirement(s)", missing.len());
        requirements::install(&missing, &mut show_progress).context("installation failed")?;
        installed = true;
        missing = requirements::check(&requires);
    }
    let files = if missing.is_empty() {
        let files = images::bake_all(&project, &store)?;
        let mut manifest = Manifest::load(&project)?;
        manifest.files = files.clone();
        manifest.save(&project)?;
        files
    } else {
        Vec::new()
    };
    let report = ConfigureReport {
        app: project.config.name.clone(),
        missing: missing.iter().map(ToString::to_string).collect(),
        installed,
        files,
    };
    output::print(format, &report, |report| {
        let mut table = Table::new(&["REQUIREMENT", "STATUS"]);
        for missing in &report.missing {
            table.row(vec![missing.clone(), "missing".into()]);
        }
        for file in &report.files {
            table.row(vec![format!("file image {}", file.name), format!("baked sha256:{}", file.digest)]);
        }
        if report.missing.is_empty() {
            table.row(vec!["all requirements".into(), "present".into()]);
        }
        table
    });
    if report.missing.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "error: {} requirement(s) missing; run `mirari configure --install` to install packages, \
         and install missing commands (or list the package providing them under [requires])",
        report.missing.len()
    );
    Ok(ExitCode::FAILURE)
}

#[derive(Debug, Serialize)]
struct BuiltReport {
    target: Target,
    sha256: String,
    artifact: PathBuf,
}

pub fn build(app: &AppArgs, targets: &[Target], format: Format) -> anyhow::Result<ExitCode> {
    let (project, store) = open(app)?;
    let targets: Vec<Target> = if targets.is_empty() { project.config.targets.clone() } else { targets.to_vec() };
    let mut manifest = Manifest::load(&project)?;
    // Builds read the file images only through their digests; re-baking is cheap and keeps
    // them current when files changed since configure.
    manifest.files = images::bake_all(&project, &store)?;
    let mut built = Vec::new();
    for (index, &target) in targets.iter().enumerate() {
        eprintln!("==> building {target} ({}/{})", index + 1, targets.len());
        let artifact = driver::build_target(&project, target, &store, &mut show_progress)?;
        manifest.artifacts.insert(target, artifact.digest);
        manifest.save(&project)?;
        built.push(BuiltReport { target, sha256: artifact.digest.to_string(), artifact: artifact.path });
    }
    output::print(format, &built, |built| {
        let mut table = Table::new(&["TARGET", "SHA256", "ARTIFACT"]);
        for b in built {
            table.row(vec![b.target.to_string(), b.sha256.clone(), b.artifact.display().to_string()]);
        }
        table
    });
    Ok(ExitCode::SUCCESS)
}
