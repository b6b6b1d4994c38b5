//! The Debian packages, installed on this machine: `deploy/package.sh` builds a .deb per binary
//! (a release build), `dpkg -i` installs them, systemd accepts the units (`systemd-analyze
//! verify`), the binaries run, and the CLI's man pages and completions are where man and the
//! shells look. The packages are purged at the end, whatever happened.
//!
//! Ignored by default (a release build takes minutes, and it installs into /usr as root). Run
//! it with `cargo test -p mirari-tests --test packaging -- --ignored --nocapture`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use mirari_tests::{eventually, stderr, stdout};

const PACKAGES: [&str; 3] = ["mirari", "mirari-agent", "mirari-coordinator"];

fn run(command: &mut Command) -> Output {
    let out = command.output().expect("run");
    assert!(out.status.success(), "{command:?} failed: {}{}", stdout(&out), stderr(&out));
    out
}

/// Purges the packages when dropped, so a failed check leaves nothing installed.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").arg("--purge").args(PACKAGES).output();
    }
}

#[test]
#[ignore = "builds release packages and installs them as root; run with --ignored"]
fn the_packages_install_their_binaries_units_man_pages_and_completions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = run(&mut Command::new(root.join("deploy/package.sh")));
    let debs: Vec<PathBuf> = stdout(&built).lines().filter(|l| l.ends_with(".deb")).map(PathBuf::from).collect();
    assert_eq!(debs.len(), 3, "one .deb per binary: {}", stdout(&built));
    for (deb, package) in debs.iter().zip(PACKAGES) {
        let name = run(Command::new("dpkg-deb").args(["--field"]).arg(deb).arg("Package"));
        assert_eq!(stdout(&name).trim(), package);
    }

    let _installed = Installed;
    run(Command::new("dpkg").arg("-i").args(&debs));
    let units = ["/lib/systemd/system/mirari-agent.service", "/lib/systemd/system/mirari-coordinator.service"];
    let verified = run(Command::new("systemd-analyze").arg("verify").args(units));
    assert!(stderr(&verified).trim().is_empty(), "systemd-analyze verify: {}", stderr(&verified));
    let agent_unit = std::fs::read_to_string(units[0]).unwrap();
    assert!(agent_unit.contains("\nKillMode=process\n"), "instances outlive an agent restart: {agent_unit}");

    for binary in ["/usr/bin/mirari", "/usr/bin/mirari-agent", "/usr/bin/mirari-coordinator"] {
        let version = run(Command::new(binary).arg("--version"));
        assert!(stdout(&version).contains(env!("CARGO_PKG_VERSION")), "{binary}: {}", stdout(&version));
    }
    // The shipped config files are read as they are: the agent serves (its state and socket
    // moved by flags, which win over the file), the coordinator asks for the id it lacks.
    let scratch = tempfile::tempdir().unwrap();
    let socket = format!("unix:{}", scratch.path().join("agent.sock").display());
    let mut agent = Command::new("/usr/bin/mirari-agent")
        .args(["--config", "/etc/mirari/agent.toml", "--listen", &socket, "--state-dir"])
        .arg(scratch.path().join("state"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let host = eventually(Duration::from_secs(30), "the packaged agent to answer", || {
        let out = Command::new("/usr/bin/mirari").args(["--agent", &socket, "host"]).output().unwrap();
        if out.status.success() { Ok(stdout(&out)) } else { Err(stderr(&out)) }
    });
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(host.contains("unix"), "{host}");
    let coordinator = Command::new("/usr/bin/mirari-coordinator")
        .args(["--config", "/etc/mirari/coordinator.toml"])
        .output()
        .unwrap();
    assert!(!coordinator.status.success());
    assert!(stderr(&coordinator).contains("--id N, or id = N in --config"), "{}", stderr(&coordinator));
    for name in ["mirari-cluster-deploy", "mirari-agent", "mirari-coordinator"] {
        let page = run(Command::new("man").args(["-w", name]));
        assert!(stdout(&page).contains(&format!("/usr/share/man/man1/{name}.1")), "{}", stdout(&page));
    }
    for completion in [
        "/usr/share/bash-completion/completions/mirari",
        "/usr/share/zsh/vendor-completions/_mirari",
        "/usr/share/fish/vendor_completions.d/mirari.fish",
    ] {
        assert!(Path::new(completion).is_file(), "{completion} is installed");
    }
}
