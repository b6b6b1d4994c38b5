//! `mirari dev`: a single-node coordinator and a local agent in one process, for trying Mirari
//! on one machine. Both listen on Unix sockets in the dev directory that only their owner may
//! open (0600): with no TLS, a socket's permissions are the whole access control. As root it
//! also makes a bridge and the `service` network on it, so instances get reachable addresses.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::Context;
use mirari_agent::daemon::{self, JoinConfig};
use mirari_agent::network::HostNetwork;
use mirari_agent::runtime::AgentConfig;
use mirari_coordinator::server::{self, CoordinatorConfig};
use mirari_core::network::{Ipv4Cidr, Network};
use mirari_core::registry::{self, Resources};
use mirari_proto::endpoint::{Endpoint, Listener};

/// `/var/lib/mirari/dev` for root, else `$XDG_STATE_HOME/mirari/dev`.
pub fn default_dir() -> PathBuf {
    mirari_agent::paths::default_state_dir().parent().map_or_else(|| PathBuf::from("mirari-dev"), |p| p.join("dev"))
}

/// The coordinator socket of the dev cluster in `dir`.
pub fn coordinator_socket(dir: &Path) -> Endpoint {
    Endpoint::Unix(dir.join("coordinator.sock"))
}

/// The agent socket of the dev cluster in `dir`.
pub fn agent_socket(dir: &Path) -> Endpoint {
    Endpoint::Unix(dir.join("agent.sock"))
}

/// The network the example asks for.
const NETWORK: &str = "service";
/// The top addresses of the subnet, for `mirari run` instances; the registry gives out the rest.
const LOCAL_ADDRESSES: u32 = 55;

/// The dev cluster's `service` network on `subnet` (gateway: its first address), and the part
/// of it kept for instances run without coordinators.
fn dev_networks(subnet: Ipv4Cidr) -> anyhow::Result<(Network, Network)> {
    anyhow::ensure!(subnet.prefix <= 25, "--subnet {subnet} is too small for mirari dev: use /25 or larger");
    let (first, broadcast) = (u32::from(subnet.network()), u32::from(subnet.broadcast()));
    let split = broadcast - LOCAL_ADDRESSES;
    let network = |range: (u32, u32)| Network {
        name: NETWORK.into(),
        subnet,
        gateway: Some(Ipv4Addr::from(first + 1)),
        range: Some((Ipv4Addr::from(range.0), Ipv4Addr::from(range.1))),
        dns: vec![],
    };
    let (cluster, local) = (network((first + 2, split - 1)), network((split, broadcast - 1)));
    cluster.validate()?;
    local.validate()?;
    Ok((cluster, local))
}

/// Makes `bridge` with the gateway's address, unless it exists; brings it up.
fn ensure_bridge(bridge: &str, network: &Network) -> anyhow::Result<()> {
    let ip = |args: &[&str]| Command::new("ip").args(args).output();
    let exists = ip(&["link", "show", bridge]).is_ok_and(|o| o.status.success());
    if !exists {
        let gateway = network.gateway.context("the dev network has a gateway")?;
        let address = format!("{gateway}/{}", network.subnet.prefix);
        for args in [vec!["link", "add", bridge, "type", "bridge"], vec!["addr", "add", &address, "dev", bridge]] {
            let output = ip(&args).context("cannot run `ip` (install iproute2)")?;
            anyhow::ensure!(
                output.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
    let output = ip(&["link", "set", bridge, "up"]).context("cannot run `ip` (install iproute2)")?;
    anyhow::ensure!(output.status.success(), "cannot bring {bridge} up: {}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
}

/// Declares the dev network once the coordinator answers (retried with the same request ID,
/// so it applies once).
async fn declare_network(endpoint: Endpoint, network: Network) {
    let mut coordinators = crate::coordinators::Coordinators::new(&[endpoint]);
    let request = registry::Request {
        request_id: format!("dev-network-{}-{}", network.name, network.subnet),
        command: registry::Command::CreateNetwork { network },
    };
    loop {
        match crate::deploy::propose(&mut coordinators, "declaring the dev network", request.clone()).await {
            Ok(_) => return,
            Err(error) if error.to_string().contains("refused") => {
                eprintln!("mirari dev: {error:#}");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits until the local agent's host is registered and up, so a deploy right after finds a
/// host to build on.
async fn await_host(endpoint: Endpoint, name: &str) {
    let mut coordinators = crate::coordinators::Coordinators::new(&[endpoint]);
    loop {
        let hosts = coordinators
            .call("listing hosts", async |mut client| {
                Ok(client.list_hosts(mirari_proto::coordinator::ReadRequest { stale: false }).await?.into_inner())
            })
            .await;
        let up = hosts.is_ok_and(|hosts| {
            hosts.hosts.iter().any(|h| h.id == name && h.status() == mirari_proto::registry::HostStatus::Up)
        });
        if up {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(
    dir: Option<PathBuf>,
    bridge: &str,
    subnet: Ipv4Cidr,
    http_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,raft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let dir = dir.unwrap_or_else(default_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", dir.display()))?;
    let (coordinator_endpoint, agent_endpoint) = (coordinator_socket(&dir), agent_socket(&dir));
    let coordinator_listener = Listener::bind(&coordinator_endpoint, None)
        .await
        .with_context(|| format!("cannot listen on {coordinator_endpoint}"))?;
    let agent_listener =
        Listener::bind(&agent_endpoint, None).await.with_context(|| format!("cannot listen on {agent_endpoint}"))?;
    let coordinator = CoordinatorConfig {
        id: 1,
        data_dir: dir.join("coordinator"),
        advertise: coordinator_endpoint.to_string(),
        bootstrap: true,
        tick: Duration::from_millis(100),
        snapshot_every: 10_000,
        leases: Default::default(),
        dns_listen: None,
        http_listen,
    };
    let (cluster_network, local_network) = dev_networks(subnet)?;
    let networked = is_root();
    if networked {
        ensure_bridge(bridge, &cluster_network)?;
    } else {
        eprintln!(
            "mirari dev: not root, so no bridge: instances get no network, and apps that ask for one \
             (the example does) stay unplaced"
        );
    }
    let agent = AgentConfig {
        state_dir: dir.join("agent"),
        console_bytes: 256 * 1024,
        shim_program: std::env::current_exe().context("cannot find the mirari binary")?,
        kvm_device: "/dev/kvm".into(),
        rpi_board: mirari_agent::backends::rpi::plan::Board::Virt,
        rpi_u_boot: None,
        networks: networked
            .then(|| HostNetwork { name: NETWORK.into(), bridge: bridge.into(), local: Some(local_network) })
            .into_iter()
            .collect(),
        http_listen: None,
    };
    let join = JoinConfig {
        coordinators: vec![coordinator_endpoint.clone()],
        name: daemon::hostname(),
        advertise: agent_endpoint.to_string(),
        labels: Default::default(),
        capacity: Resources { memory_mib: daemon::default_memory_mib(), vcpus: daemon::default_vcpus(), instances: 64 },
        timing: Default::default(),
    };
    let env = if dir == default_dir() {
        String::new()
    } else {
        format!("\n  in another shell: export MIRARI_ADDR={coordinator_endpoint} MIRARI_AGENT={agent_endpoint}")
    };
    eprintln!(
        "mirari dev: a single-node coordinator on {coordinator_endpoint} and a local agent on {agent_endpoint}, \
         sockets only you may open, no TLS; state in {}{env}\n  try: mirari cluster deploy -f examples/hello/mirari.toml --count 3\n       mirari cluster status\n  \
         stop with Ctrl-C (instances keep running; the next `mirari dev` re-adopts them)",
        dir.display()
    );
    match http_listen {
        Some(address) if address.ip().is_loopback() => {
            eprintln!("  web console: http://{address}/ (metrics at /metrics)")
        }
        Some(address) => {
            eprintln!("  metrics: http://{address}/metrics (no web console: it is served on loopback only)")
        }
        None => eprintln!("  web console: add --http-listen 127.0.0.1:9400"),
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let coordinator_task = tokio::spawn(server::run(coordinator, coordinator_listener, wait(stopped.clone())));
    if networked {
        eprintln!(
            "  network {NETWORK}: {subnet} on bridge {bridge} (gateway {}; this machine reaches every instance)",
            cluster_network.gateway.map_or_else(String::new, |g| g.to_string())
        );
    }
    // Ready once the agent's host is up and the network declared (in that order: a script that
    // waits for the network may deploy right away).
    let host_name = join.name.clone();
    let declared = async {
        await_host(coordinator_endpoint.clone(), &host_name).await;
        if networked {
            declare_network(coordinator_endpoint.clone(), cluster_network).await;
        }
        eprintln!("mirari dev: ready");
    };
    let agent_task = tokio::spawn(daemon::run(agent, Some(join), agent_listener, wait(stopped)));
    let ((), interrupted) = tokio::join!(declared, tokio::signal::ctrl_c());
    interrupted?;
    let _ = stop.send(true);
    agent_task.await??;
    coordinator_task.await??;
    Ok(ExitCode::SUCCESS)
}
