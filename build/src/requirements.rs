//! Checking what an app's build needs, and installing it with the declared installer.

use std::env;
use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};

use mirari_core::config::{Requirements, TargetBuild};

use crate::BuildEvent;
use crate::project::Project;

/// One thing the build needs that this machine lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    Command(String),
    Apt(String),
    Opam(String),
    /// The installer itself (`opam`, `apt-get`) is not available.
    Installer {
        installer: &'static str,
        for_packages: Vec<String>,
    },
}

impl Missing {
    fn apt_package(&self) -> Option<&String> {
        match self {
            Missing::Apt(package) => Some(package),
            _ => None,
        }
    }

    fn opam_package(&self) -> Option<&String> {
        match self {
            Missing::Opam(package) => Some(package),
            _ => None,
        }
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Command(name) => write!(f, "command `{name}` is not on PATH"),
            Missing::Apt(name) => write!(f, "apt package `{name}` is not installed"),
            Missing::Opam(name) => write!(f, "opam package `{name}` is not installed"),
            Missing::Installer { installer, for_packages } => {
                write!(f, "`{installer}` is not available to install {}", for_packages.join(", "))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed with {status}")]
    Failed { command: String, status: std::process::ExitStatus },
}

/// Every requirement of the project, including the commands its build driver runs.
pub fn requirements_of(project: &Project) -> Requirements {
    let mut requires = project.config.requires.clone();
    let uses_mirage = project.config.builds.values().any(|b| matches!(b, TargetBuild::Mirage { .. }));
    if uses_mirage {
        for implied in ["mirage", "make"] {
            if !requires.commands.iter().any(|c| c == implied) {
                requires.commands.push(implied.to_owned());
            }
        }
    }
    requires
}

/// What of `requires` this machine lacks, in declaration order.
pub fn check(requires: &Requirements) -> Vec<Missing> {
    let mut missing: Vec<Missing> =
        requires.commands.iter().filter(|c| !on_path(c)).map(|c| Missing::Command(c.clone())).collect();
    if !requires.apt.is_empty() {
        if on_path("dpkg-query") {
            missing.extend(requires.apt.iter().filter(|p| !apt_installed(p)).map(|p| Missing::Apt(p.clone())));
        } else {
            missing.push(Missing::Installer { installer: "apt-get", for_packages: requires.apt.clone() });
        }
    }
    if !requires.opam.is_empty() {
        if on_path("opam") {
            missing.extend(requires.opam.iter().filter(|p| !opam_installed(p)).map(|p| Missing::Opam(p.clone())));
        } else {
            missing.push(Missing::Installer { installer: "opam", for_packages: requires.opam.clone() });
        }
    }
    missing
}

/// Installs the missing packages with their installers. Commands cannot be installed by name:
/// the app should list the package that provides them.
pub fn install(missing: &[Missing], progress: &mut dyn FnMut(BuildEvent)) -> Result<(), InstallError> {
    let apt: Vec<String> = missing.iter().filter_map(Missing::apt_package).cloned().collect();
    let opam: Vec<String> = missing.iter().filter_map(Missing::opam_package).cloned().collect();
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo", "-n"] };
    let apt_get = |args: &[&str], packages: &[String]| -> Vec<String> {
        sudo.iter().chain(&["apt-get"]).chain(args).map(|s| s.to_string()).chain(packages.iter().cloned()).collect()
    };
    let install_apt = apt_get(&["install", "-y", "--no-install-recommends"], &apt);
    let mut steps: Vec<Vec<String>> = Vec::new();
    if !apt.is_empty() {
        steps.push(install_apt.clone());
    }
    if !opam.is_empty() {
        steps.push(["opam", "install", "-y"].map(String::from).into_iter().chain(opam).collect());
    }
    let total = steps.len();
    for (index, argv) in steps.iter().enumerate() {
        progress(BuildEvent::Step { index: index + 1, total, what: argv.join(" ") });
        let ran = run(argv, progress);
        // A machine that never fetched the package lists finds nothing: fetch them, try again.
        if ran.is_err() && *argv == install_apt {
            progress(BuildEvent::Step { index: index + 1, total, what: "apt-get update, then again".into() });
            run(&apt_get(&["update"], &[]), progress)?;
            run(argv, progress)?;
        } else {
            ran?;
        }
    }
    Ok(())
}

fn run(argv: &[String], progress: &mut dyn FnMut(BuildEvent)) -> Result<(), InstallError> {
    let command = argv.join(" ");
    let status = crate::process::run_streaming(
        Command::new(&argv[0]).args(&argv[1..]).env("DEBIAN_FRONTEND", "noninteractive"),
        progress,
    )
    .map_err(|source| InstallError::Spawn { command: command.clone(), source })?;
    if !status.success() {
        return Err(InstallError::Failed { command, status });
    }
    Ok(())
}

fn on_path(command: &str) -> bool {
    let Some(path) = env::var_os("PATH") else {
        return false;
    };
    env::split_paths(&path).any(|dir| is_executable(&dir.join(command)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn apt_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn opam_installed(package: &str) -> bool {
    Command::new("opam")
        .args(["list", "--installed", "--short", "--color=never", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success() && !out.stdout.is_empty())
}

fn is_root() -> bool {
    // The effective uid is only exposed through libc or /proc; /proc needs no unsafe code.
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|status| status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_present_and_missing_commands() {
        let requires =
            Requirements { commands: vec!["sh".into(), "mirari-no-such-command".into()], ..Requirements::default() };
        assert_eq!(check(&requires), [Missing::Command("mirari-no-such-command".into())]);
    }
}
