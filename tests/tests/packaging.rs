//! The Debian packages, installed on this machine: `deploy/package.sh` builds a .deb per binary
//! (a release build), `dpkg -i` installs them, systemd accepts the units (`systemd-analyze
//! verify`), the binaries run, and the CLI's man pages and completions are where man and the
//! shells look. The packages are purged at the end, whatever happened.
//!
//! Ignored by default (a release build takes minutes, and it installs into /usr as root). Run
//! it with `cargo test -p mirari-tests --test packaging -- --ignored --nocapture`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mirari_tests::{stderr, stdout};

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
    for config in ["/etc/mirari/agent.toml", "/etc/mirari/coordinator.toml"] {
        assert!(Path::new(config).is_file(), "{config} is installed");
    }
    let page = run(Command::new("man").args(["-w", "mirari-cluster-deploy"]));
    assert!(stdout(&page).contains("/usr/share/man/man1/mirari-cluster-deploy.1"), "{}", stdout(&page));
    for completion in [
        "/usr/share/bash-completion/completions/mirari",
        "/usr/share/zsh/vendor-completions/_mirari",
        "/usr/share/fish/vendor_completions.d/mirari.fish",
    ] {
        assert!(Path::new(completion).is_file(), "{completion} is installed");
    }
}
