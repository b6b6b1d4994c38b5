//! One host, end to end, through the real `mirari` and `mirari-agent` binaries: configure,
//! build, run on unix and kvm, console, stop (graceful and forced), the restart policy, and
//! recovery after the agent is killed with SIGKILL.

use std::process::Command;
use std::time::Duration;

use mirari_tests::{World, eventually, stderr, stdout};

#[test]
fn configure_lists_missing_requirements() {
    let world = World::new();
    world.edit_config(r#"commands = ["gcc", "make"]"#, r#"commands = ["gcc", "mirari-no-such-tool"]"#);
    let out = world.mirari(&["configure"]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("command `mirari-no-such-tool` is not on PATH"), "{}", stdout(&out));
    assert!(stderr(&out).contains("1 requirement(s) missing"), "{}", stderr(&out));
}

#[test]
fn bad_config_is_reported_with_line_and_column() {
    let world = World::new();
    world.edit_config("memory_mib = 32", "memory_mb = 32");
    let out = world.mirari(&["configure"]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(text.contains("mirari.toml:43:1: unknown field `memory_mb`"), "{text}");
    assert!(text.contains("43 | memory_mb = 32"), "{text}");

    world.edit_config("memory_mb = 32", "memory_mib = 32");
    world.edit_config(r#"targets = ["unix", "kvm", "xen", "js", "rpi"]"#, r#"targets = ["unix", "hvt"]"#);
    let text = stderr(&world.mirari(&["build"]));
    assert!(text.contains("mirari.toml:9:20: unknown target `hvt`"), "{text}");
    assert!(text.contains("known targets: unix, kvm, xen, freebsd"), "{text}");
}

#[test]
fn builds_are_reproducible() {
    let world = World::new();
    let first = world.build();
    std::fs::remove_dir_all(world.app_dir().join("_build")).unwrap();
    let second = world.mirari_json(&["build"]);
    assert_eq!(first.as_array().unwrap().len(), 5);
    for (a, b) in first.as_array().unwrap().iter().zip(second.as_array().unwrap()) {
        assert_eq!(a["target"], b["target"]);
        assert_eq!(a["sha256"], b["sha256"], "rebuilding {} changed its hash", a["target"]);
    }
}

#[test]
fn runs_on_unix_and_kvm_with_console_and_unique_ids() {
    let mut world = World::new();
    world.build();
    world.start_agent();
    let unix = world.run("unix", 2);
    let kvm = world.run("kvm", 1);
    let mut all: Vec<&String> = unix.iter().chain(&kvm).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3, "instance IDs must be unique");

    for id in unix.iter().chain(&kvm) {
        let console = world.console_until(id, "hello: heartbeat 2");
        // Each instance's own address from the agent's subnet, the gateway that subnet's.
        let bridge = world.bridge.as_ref().expect("a bridge (root)");
        let cidr = world.instance(id)["addresses"][0].as_str().expect("an address").to_owned();
        let args =
            format!("hello: boot args: --ipv4={cidr} --ipv4-gateway={} greeting=hello-from-mirari", bridge.gateway);
        assert!(console.contains(&args), "{console}");
        assert!(console.contains("hello: file conf/app.conf (68 bytes)"), "{console}");
        assert!(console.contains("hello: files: 3 entries"), "{console}");
    }
    let kvm_instance = world.instance(&kvm[0]);
    assert_eq!(kvm_instance["phase"], "running");
    assert!(kvm_instance["detail"].as_str().unwrap().contains("qemu pid"), "{kvm_instance}");

    // A person types a prefix; the table output is for people.
    let table = stdout(&world.mirari(&["ps"]));
    assert!(table.starts_with("ID "), "{table}");
    let prefix = &unix[0][..6];
    let out = world.mirari(&["stop", prefix]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(world.instance(&unix[0])["phase"], "stopped");
}

#[test]
fn stop_is_graceful_then_forced_after_the_timeout() {
    let mut world = World::new();
    world.edit_config("stop_timeout_secs = 10", "stop_timeout_secs = 2");
    world.edit_config("accelerator = \"auto\"", "accelerator = \"tcg\"");
    world.build();
    world.start_agent();
    for target in ["unix", "kvm"] {
        let id = world.run(target, 1).remove(0);
        world.console_until(&id, "hello: heartbeat 1");
        let stopped = world.mirari_json(&["stop", &id]);
        assert_eq!(stopped["forced"], false, "{target}: {stopped}");
        assert_eq!(stopped["instance"]["phase"], "stopped");
        assert_eq!(stopped["instance"]["last_exit"]["code"], 0);
        let console = world.console_until(&id, "hello: stopping");
        let why = if target == "unix" { "(control)" } else { "(power button)" };
        assert!(console.contains(why), "{target}: {console}");
    }

    world.edit_config("greeting=hello-from-mirari\"", "greeting=hello-from-mirari\", \"ignore-stop\"");
    world.mirari_json(&["build"]);
    for target in ["unix", "kvm"] {
        let id = world.run(target, 1).remove(0);
        world.console_until(&id, "hello: heartbeat 1");
        let stopped = world.mirari_json(&["stop", &id]);
        assert_eq!(stopped["forced"], true, "{target}: {stopped}");
        assert_eq!(stopped["instance"]["phase"], "stopped");
        world.console_until(&id, "hello: ignoring stop request");
        let logs = stdout(&world.mirari(&["logs", &id]));
        assert!(logs.contains("forced off after the 2s stop timeout"), "{logs}");
    }
}

#[test]
fn restart_policy_restarts_failures_up_to_the_limit() {
    let mut world = World::new();
    world.edit_config("greeting=hello-from-mirari\"", "greeting=hello-from-mirari\", \"exit-after=1\"");
    world.edit_config("restart_limit = 3", "restart_limit = 2");
    world.edit_config("accelerator = \"auto\"", "accelerator = \"tcg\"");
    world.build();
    world.start_agent();
    for target in ["unix", "kvm"] {
        let id = world.run(target, 1).remove(0);
        let failed = world.wait_phase(&id, "failed");
        assert_eq!(failed["restarts"], 2, "{target}: {failed}");
        assert_eq!(failed["last_exit"]["code"], 3);
        assert!(failed["message"].as_str().unwrap().contains("restart limit of 2 reached"), "{failed}");
        let logs = stdout(&world.mirari(&["logs", &id]));
        assert_eq!(logs.matches("exited with exit code 3").count(), 3, "{logs}");
        // The console keeps every run's output, after the end.
        let console = stdout(&world.mirari(&["console", &id]));
        assert_eq!(console.matches("hello: exiting with failure").count(), 3, "{console}");
    }

    world.edit_config("restart = \"on-failure\"\nrestart_limit = 2", "restart = \"never\"");
    world.mirari_json(&["build"]);
    let id = world.run("unix", 1).remove(0);
    let exited = world.wait_phase(&id, "exited");
    assert_eq!(exited["restarts"], 0);
}

#[test]
fn a_killed_agent_readopts_its_instances_without_duplicates() {
    let mut world = World::new();
    world.edit_config("accelerator = \"auto\"", "accelerator = \"tcg\"");
    world.build();
    world.start_agent();
    let unix = world.run("unix", 2);
    let kvm = world.run("kvm", 1);
    for id in unix.iter().chain(&kvm) {
        world.console_until(id, "hello: heartbeat 1");
    }
    let before: Vec<(String, u32)> = world.live_shims();
    assert_eq!(before.len(), 3);

    world.kill_agent();
    // While the agent is down, one instance dies.
    let (victim, victim_pid) = before.iter().find(|(id, _)| *id == unix[1]).cloned().unwrap();
    std::process::Command::new("kill").args(["-9", &victim_pid.to_string()]).status().unwrap();
    eventually(Duration::from_secs(10), "the victim to be gone", || {
        if world.live_shims().iter().any(|(id, _)| *id == victim) { Err("alive".into()) } else { Ok(()) }
    });

    world.start_agent();
    // The survivors keep their processes: re-adopted, not restarted.
    for id in [&unix[0], &kvm[0]] {
        let instance = world.wait_phase(id, "running");
        assert_eq!(instance["restarts"], 0, "{instance}");
        let pid = before.iter().find(|(i, _)| i == id).unwrap().1;
        assert!(world.live_shims().contains(&(id.clone(), pid)), "{id} was not re-adopted with pid {pid}");
        let logs = stdout(&world.mirari(&["logs", id]));
        assert!(logs.contains("re-adopted after an agent restart"), "{logs}");
    }
    // The one that died meanwhile is marked and restarted per its policy.
    let logs = eventually(Duration::from_secs(30), "the victim's restart", || {
        let logs = stdout(&world.mirari(&["logs", &victim]));
        if logs.contains("restarting (restart 1)") { Ok(logs) } else { Err(logs) }
    });
    assert!(logs.contains("exited with signal 9 while the agent was down"), "{logs}");
    world.wait_phase(&victim, "running");

    // Exactly one shim per instance (and one QEMU for the kvm one): no duplicates.
    for id in &unix {
        assert_eq!(world.processes_of(id).len(), 1, "{id}: {:?}", world.processes_of(id));
    }
    assert_eq!(world.processes_of(&kvm[0]).len(), 2, "shim and qemu: {:?}", world.processes_of(&kvm[0]));
    assert_eq!(world.instances().len(), 3, "{}", world.agent_log());
}

#[test]
fn configure_installs_missing_apt_packages() {
    let world = World::new();
    world.edit_config(r#"commands = ["gcc", "make"]"#, "commands = [\"gcc\", \"make\"]\napt = [\"hello\"]");
    let installed = || {
        std::process::Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", "hello"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
    };
    if !installed() {
        let out = world.mirari(&["configure"]);
        assert!(!out.status.success());
        assert!(stdout(&out).contains("apt package `hello` is not installed"), "{}", stdout(&out));
    }
    let out = world.mirari(&["configure", "--install"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(installed(), "configure --install did not install GNU hello");
    assert!(stdout(&out).contains("all requirements  present"), "{}", stdout(&out));
}

#[test]
fn console_follows_an_instance_to_its_end_and_the_host_says_what_it_cannot_run() {
    let mut world = World::new();
    world.edit_config("greeting=hello-from-mirari\"", "greeting=hello-from-mirari\", \"exit-after=2\"");
    world.edit_config("restart = \"on-failure\"\nrestart_limit = 3", "restart = \"never\"");
    world.build();
    world.start_agent();
    let id = world.run("unix", 1).remove(0);
    let followed = world.mirari(&["console", &id, "--follow"]);
    assert!(followed.status.success(), "{}", stderr(&followed));
    let text = stdout(&followed);
    assert!(text.contains("hello: heartbeat 2") && text.ends_with("hello: exiting with failure\n"), "{text}");

    // This machine is no Xen dom0: the agent says so instead of failing.
    let host = world.mirari_json(&["host"]);
    let xen = host["backends"].as_array().unwrap().iter().find(|b| b["target"] == "xen").unwrap().clone();
    assert_eq!(xen["available"], false, "{xen}");
    assert!(xen["reason"].as_str().unwrap().contains("not a Xen dom0"), "{xen}");
    let unix = host["backends"].as_array().unwrap().iter().find(|b| b["target"] == "unix").unwrap().clone();
    assert_eq!(unix["capabilities"], serde_json::json!(["graceful-stop", "recover"]), "{unix}");
}

/// `mirari host` fingerprints the rpi backend with its board, and says what is missing.
#[test]
fn the_host_names_the_rpi_board_and_says_why_one_cannot_boot() {
    let backend_of = |world: &World| {
        let host = world.mirari_json(&["host"]);
        host["backends"].as_array().unwrap().iter().find(|b| b["target"] == "rpi").unwrap().clone()
    };
    let mut world = World::new();
    world.start_agent();
    let virt = backend_of(&world);
    assert_eq!(virt["available"], true, "{virt}");
    assert_eq!(virt["attributes"]["board"], "virt", "{virt}");
    assert_eq!(virt["capabilities"], serde_json::json!(["graceful-stop", "recover", "enforces-resources"]), "{virt}");
    world.kill_agent();

    world.start_agent_with(&["--rpi-board", "raspi3b", "--rpi-u-boot", "/nonexistent/u-boot.bin"]);
    let pi = backend_of(&world);
    assert_eq!(pi["available"], false, "{pi}");
    assert_eq!(
        pi["reason"], "U-Boot for raspi3b is missing at /nonexistent/u-boot.bin; run deploy/rpi/install-u-boot-rpi.sh",
        "{pi}"
    );
}

/// Completion scripts and man pages come from the same definitions as `--help`.
#[test]
fn the_cli_writes_shell_completions_and_man_pages() {
    let world = World::new();
    let script = stdout(&world.mirari(&["completions", "bash"]));
    let path = world.root.path().join("mirari.bash");
    std::fs::write(&path, &script).unwrap();
    // Sourced in bash, it completes `mirari cluster de` to `deploy`.
    let completion = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(mirari cluster de); COMP_CWORD=2; _mirari mirari de cluster; echo \"${{COMPREPLY[@]}}\"",
            path.display()
        ))
        .output()
        .unwrap();
    assert!(completion.status.success(), "{}", stderr(&completion));
    assert_eq!(stdout(&completion).trim(), "deploy", "{}", stderr(&completion));
    for shell in ["zsh", "fish"] {
        let out = world.mirari(&["completions", shell]);
        assert!(out.status.success() && stdout(&out).contains("rollback"), "{shell}: {}", stderr(&out));
    }

    let pages = world.root.path().join("man");
    let out = world.mirari(&["man", "--out", pages.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let deploy = std::fs::read_to_string(pages.join("mirari-cluster-deploy.1")).unwrap();
    assert!(deploy.contains(".TH mirari-cluster-deploy 1"), "{deploy}");
    assert!(deploy.contains("max\\-parallel"), "{deploy}");
    assert!(pages.join("mirari.1").exists() && pages.join("mirari-cluster-hosts-drain.1").exists());
    assert!(!pages.join("mirari-shim.1").exists(), "hidden commands have no page");
}
