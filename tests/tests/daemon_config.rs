//! The daemons started with nothing but `--config FILE`: the settings in the file take effect
//! (the coordinator's ID, data directory, address, bootstrap and DNS; the agent's state
//! directory, address, cluster, name, labels and capacity), and a file with a mistake stops
//! the daemon with the file, line and column of it. On loopback, at ports below the ephemeral
//! range, since they are written into the files before the processes start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use mirari_tests::coordinators::free_port;
use mirari_tests::pki::{Identity, Pki};
use mirari_tests::{bin, eventually, resolve, stderr};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

/// A daemon started from a config file; killed when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `program --config FILE`, FILE holding `config`, with none of the environment
    /// variables the daemons read: everything comes from the file.
    fn start(program: &str, dir: &Path, config: &str) -> Self {
        let log = dir.join(format!("{program}.log"));
        let child = daemon_command(program, dir, config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the daemon");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon_command(program: &str, dir: &Path, config: &str) -> Command {
    let path = dir.join(format!("{program}.toml"));
    std::fs::write(&path, config).expect("write the config file");
    let mut command = Command::new(bin(program));
    command.arg("--config").arg(&path).stdin(Stdio::null());
    for variable in ["MIRARI_CONFIG", "MIRARI_CACERT", "MIRARI_CERT", "MIRARI_KEY"] {
        command.env_remove(variable);
    }
    command.env_remove("MIRARI_AGENT_STATE_DIR").env_remove("MIRARI_AGENT_LISTEN");
    command
}

/// Runs `program --config FILE` with a file that must be refused; its stderr.
fn refused(program: &str, dir: &Path, config: &str) -> String {
    let out: Output = daemon_command(program, dir, config).output().expect("run the daemon");
    assert!(!out.status.success(), "{program} accepted a bad config file: {}", stderr(&out));
    stderr(&out)
}

fn tls_table(identity: &Identity) -> String {
    format!(
        "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        identity.ca.display(),
        identity.cert.display(),
        identity.key.display()
    )
}

/// `mirari ARGS --output json` as an operator, against the coordinator at `address`.
fn mirari_json(pki: &Pki, address: &str, args: &[&str]) -> Result<Value, String> {
    let mut command = Command::new(bin("mirari"));
    command.args(args).args(["--output", "json", "--coordinator", address]).env_remove("MIRARI_CONFIG");
    pki.issue("operator", "operator", &[]).apply(&mut command);
    let out = command.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(stderr(&out));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// A bootstrapped coordinator with ID 7 whose settings all come from its config file; its
/// address and DNS address.
fn coordinator(dir: &Path, pki: &Pki) -> (Daemon, String, String) {
    let (address, dns) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let identity = pki.issue("coordinator", "coordinator-7", &["127.0.0.1"]);
    let config = format!(
        "id = 7\ndata_dir = \"{}\"\nlisten = \"{address}\"\nbootstrap = true\ntick_ms = 50\ndns_listen = \"{dns}\"\n\n{}",
        dir.join("coordinator-data").display(),
        tls_table(&identity)
    );
    let daemon = Daemon::start("mirari-coordinator", dir, &config);
    eventually(DEADLINE, "the coordinator to lead", || {
        let info = mirari_json(pki, &address, &["cluster", "info"])?;
        if info["role"] == "leader" { Ok(()) } else { Err(info.to_string()) }
    });
    (daemon, address, dns)
}

#[test]
fn the_coordinator_runs_from_its_config_file() {
    let dir = tempfile::Builder::new().prefix("mirari-daemon-config-").tempdir().expect("scratch dir");
    let pki = Pki::new(dir.path());
    let (coordinator, address, dns) = coordinator(dir.path(), &pki);

    let info = mirari_json(&pki, &address, &["cluster", "info"]).expect("cluster info");
    assert_eq!(info["id"], 7, "{info}");
    assert_eq!(info["members"][0]["address"], address.as_str(), "{info}");
    let data: Vec<_> = std::fs::read_dir(dir.path().join("coordinator-data")).expect("the data directory").collect();
    assert!(!data.is_empty(), "the coordinator keeps nothing in its data directory");
    // `dns_listen`: the zone's apex exists, with no address.
    eventually(DEADLINE, "the coordinator to answer DNS", || resolve(&dns, "mirari.").map(|_| ()));
    assert!(coordinator.log().contains("mirari-coordinator starting"), "{}", coordinator.log());

    let bad_dir = dir.path().join("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let text = refused("mirari-coordinator", &bad_dir, "id = 8\ndata_dir = \"/tmp/x\"\npeers = [\"127.0.0.1:7400\"]\n");
    let path = bad_dir.join("mirari-coordinator.toml");
    let expected = format!("error: {}:3:1: unknown field `peers`, expected one of `id`, `data_dir`, ", path.display());
    assert!(text.starts_with(&expected), "{text}");
    assert!(text.contains("3 | peers = [\"127.0.0.1:7400\"]\n  | ^^^^^"), "{text}");
}

#[test]
fn the_agent_runs_from_its_config_file() {
    let dir = tempfile::Builder::new().prefix("mirari-daemon-config-").tempdir().expect("scratch dir");
    let pki = Pki::new(dir.path());
    let (_coordinator, coordinator_address, _) = coordinator(dir.path(), &pki);
    let agent_address = format!("127.0.0.1:{}", free_port());
    let state_dir = dir.path().join("agent-state");
    let identity = pki.issue("agent", "configured-host", &["127.0.0.1"]);
    let config = format!(
        "state_dir = \"{}\"\nlisten = \"{agent_address}\"\njoin = [\"{coordinator_address}\"]\nname = \"configured-host\"\n\
         label = [\"rack=r7\", \"zone=b\"]\nmemory_mib = 1536\nvcpus = 3\nmax_instances = 5\nconsole_bytes = 4096\n\n{}",
        state_dir.display(),
        tls_table(&identity)
    );
    let agent = Daemon::start("mirari-agent", dir.path(), &config);

    let host = eventually(DEADLINE, "the agent's host to be up", || {
        let hosts = mirari_json(&pki, &coordinator_address, &["cluster", "hosts"])?;
        let host = hosts["hosts"].as_array().and_then(|h| h.first()).cloned().ok_or_else(|| hosts.to_string())?;
        if host["status"] == "up" { Ok(host) } else { Err(host.to_string()) }
    });
    assert_eq!(host["id"], "configured-host", "{host}");
    assert_eq!(host["address"], agent_address.as_str(), "{host}");
    assert_eq!(host["labels"], serde_json::json!({"rack": "r7", "zone": "b"}), "{host}");
    assert_eq!((&host["memory_mib"], &host["vcpus"], &host["max_instances"]), (&1536.into(), &3.into(), &5.into()));
    assert!(state_dir.join("agent.redb").is_file(), "no database in the state directory: {}", agent.log());

    let bad_dir = dir.path().join("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let long_value = "r".repeat(10_000);
    let text = refused("mirari-agent", &bad_dir, &format!("name = \"h\"\nlabel = [\"rack={long_value}\", \"zone\"]\n"));
    let path = bad_dir.join("mirari-agent.toml");
    let expected = format!("error: {}:2:10019: `zone` is not KEY=VALUE\n", path.display());
    assert!(text.starts_with(&expected), "{text}");
    assert!(text.len() < 1_000, "the 10,000-character line is shown whole: {text}");
    assert!(text.contains("rrr\", \"zone\"]\n"), "{text}");
}
