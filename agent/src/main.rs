//! `mirari-agent`: the host daemon. A thin binary over the `mirari_agent` library. Its flags
//! are also the keys of its `--config` file (`mirari_proto::daemon_config`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use mirari_agent::backends::domain_fence::{self, DomainFenceArgs};
use mirari_agent::backends::rpi::plan::Board;
use mirari_agent::daemon::{self, JoinConfig};
use mirari_agent::network::HostNetwork;
use mirari_agent::paths;
use mirari_agent::runtime::AgentConfig;
use mirari_agent::supervisor::shim::{self, ShimArgs};
use mirari_core::registry::Resources;
use mirari_proto::daemon_config::ConfigFlag;
use mirari_proto::endpoint::{Endpoint, Listener};
use mirari_proto::tls::{self, ClientTls, ServerTls, TlsFlags};

/// Runs unikernel instances on this host through its backends (unix processes, QEMU/KVM) and
/// serves the agent API. Instances keep running while the agent restarts; a restarted agent
/// re-adopts them. With --join, the host joins a cluster: it registers with the coordinators,
/// keeps a lease, runs what they assign, builds for them, and stops its cluster instances if it
/// loses the lease.
#[derive(Debug, Parser)]
#[command(name = "mirari-agent", version)]
struct Cli {
    // Parsed here for `--help` and errors; `ConfigFlag::load` builds the settings in effect.
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    config: ConfigFlag,
    #[command(subcommand)]
    command: Option<Command>,
}

const DEFAULT_CONSOLE_BYTES: usize = 256 * 1024;
const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";
const DEFAULT_RPI_BOARD: Board = Board::Virt;
const DEFAULT_MAX_INSTANCES: u32 = 64;

/// Every setting of the agent: its flags, and the keys of its `--config` file. None has a clap
/// default, so a flag left out leaves the file's value (`mirari_proto::daemon_config`); the
/// defaults, which the help states, are applied in [`serve`].
#[derive(Debug, Default, PartialEq, Eq, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Where the agent keeps its database, blobs and instance directories
    /// [default: /var/lib/mirari/agent for root, else $XDG_STATE_HOME/mirari/agent]
    #[arg(long, env = "MIRARI_AGENT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Where to serve the agent API: unix:/path or host:port (a cluster agent needs host:port)
    /// [default: unix:/run/mirari/agent.sock for root, else $XDG_RUNTIME_DIR/mirari/agent.sock]
    #[arg(long, env = "MIRARI_AGENT_LISTEN")]
    listen: Option<Endpoint>,
    /// Bytes of console output kept per instance [default: 262144]
    #[arg(long)]
    console_bytes: Option<usize>,
    /// The KVM device to use for accelerated guests [default: /dev/kvm]
    #[arg(long)]
    kvm_device: Option<PathBuf>,
    /// The board rpi instances boot on: virt (QEMU's arm64 machine, netbooted by TFTP) or
    /// raspi3b (QEMU's Raspberry Pi 3, booted from an SD card image) [default: virt]
    #[arg(long)]
    rpi_board: Option<Board>,
    /// The U-Boot build rpi boards boot [default: Debian's for the board, under /usr/lib/u-boot]
    #[arg(long)]
    rpi_u_boot: Option<PathBuf>,
    /// Join the cluster of these coordinators (host:port, comma separated or repeated)
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    join: Vec<Endpoint>,
    /// This host's name in the cluster [default: the hostname]
    #[arg(long)]
    name: Option<String>,
    /// Where coordinators reach this agent (host:port) [default: the --listen address]
    #[arg(long)]
    advertise: Option<String>,
    /// A label for placement constraints, KEY=VALUE (repeatable)
    #[arg(long, value_name = "KEY=VALUE")]
    #[serde(default)]
    label: Vec<Label>,
    /// Memory offered to instances, in MiB [default: the machine's, less 512 MiB]
    #[arg(long)]
    memory_mib: Option<u64>,
    /// vCPUs offered to instances [default: 8 per CPU of the machine]
    #[arg(long)]
    vcpus: Option<u32>,
    /// Most instances this host runs [default: 64]
    #[arg(long)]
    max_instances: Option<u32>,
    /// A network this host carries: NAME=BRIDGE, instances' interfaces on it join the bridge
    /// (which must exist and be up). Add ,subnet=CIDR[,gateway=IP][,range=FIRST-LAST] to give
    /// instances started without coordinators (mirari run) addresses from that subnet, apart
    /// from the cluster network's range (repeatable)
    #[arg(long, value_name = "NAME=BRIDGE[,subnet=CIDR...]")]
    // `networks` is what config files said before every flag could be set in them.
    #[serde(default, alias = "networks")]
    network: Vec<HostNetwork>,
    /// Serve Prometheus metrics at http://ADDR/metrics. Plain HTTP without authentication:
    /// bind it to loopback or a management network [default: no metrics]
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    #[serde(default)]
    tls: TlsFlags,
}

/// One `--label KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Label {
    key: String,
    value: String,
}

impl FromStr for Label {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (key, value) = text.split_once('=').ok_or_else(|| format!("`{text}` is not KEY=VALUE"))?;
        Ok(Self { key: key.to_owned(), value: value.to_owned() })
    }
}

impl<'de> serde::Deserialize<'de> for Label {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        mirari_core::config::deserialize_from_str(deserializer)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Supervises one instance's process (started by the agent, not by people).
    #[command(hide = true)]
    Shim(ShimArgs),
    /// Destroys a cluster Xen domain once the host's fencing deadline passes (started by the
    /// agent beside each one, not by people).
    #[command(hide = true)]
    DomainFence(DomainFenceArgs),
    /// Write man pages: mirari-agent.1 and one per subcommand
    Man {
        /// The directory to write them to (made if missing)
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let result = match cli.command {
        Some(Command::Shim(args)) => shim::run(args).map_err(Into::into),
        Some(Command::DomainFence(args)) => domain_fence::run(args),
        Some(Command::Man { out }) => mirari_proto::man::man_pages(Cli::command(), &out).map_err(Into::into),
        None => cli.config.load::<Settings>(&matches).map_err(Into::into).and_then(|settings| {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Runtime::new().map_err(Into::into).and_then(|runtime| runtime.block_on(serve(settings)))
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    tls::install_crypto_provider();
    let config = AgentConfig {
        state_dir: settings.state_dir.unwrap_or_else(paths::default_state_dir),
        console_bytes: settings.console_bytes.unwrap_or(DEFAULT_CONSOLE_BYTES),
        shim_program: std::env::current_exe().context("cannot find the mirari-agent binary")?,
        kvm_device: settings.kvm_device.unwrap_or_else(|| DEFAULT_KVM_DEVICE.into()),
        rpi_board: settings.rpi_board.unwrap_or(DEFAULT_RPI_BOARD),
        rpi_u_boot: settings.rpi_u_boot,
        networks: settings.network,
        http_listen: settings.http_listen,
    };
    let endpoint = settings.listen.unwrap_or_else(paths::default_agent_endpoint);
    let files = settings.tls.files()?;
    let server_tls = match (&endpoint, &files) {
        (Endpoint::Unix(_), _) => None,
        (Endpoint::Tcp(_), Some(files)) => Some(ServerTls::load(files)?),
        (Endpoint::Tcp(_), None) => anyhow::bail!(
            "on TCP the agent serves with mutual TLS only: give --tls-ca, --tls-cert and --tls-key (or a [tls] \
             table in --config); create them with `mirari tls`"
        ),
    };
    if let Some(files) = &files {
        tls::set_client_identity(ClientTls::load(files)?);
    } else if !settings.join.is_empty() {
        anyhow::bail!(
            "--join needs this agent's TLS identity (--tls-ca, --tls-cert, --tls-key): coordinators accept TLS only"
        );
    }
    let listener =
        Listener::bind(&endpoint, server_tls).await.with_context(|| format!("cannot listen on {endpoint}"))?;
    let join = if settings.join.is_empty() {
        None
    } else {
        let advertise = match (settings.advertise, listener.local_endpoint()?) {
            (Some(advertise), _) => advertise,
            (None, Endpoint::Tcp(address)) if !address.starts_with("0.0.0.0") && !address.starts_with("[::]") => {
                address
            }
            (None, _) => anyhow::bail!(
                "--join needs a host:port the coordinators can reach: give --listen HOST:PORT or --advertise"
            ),
        };
        Some(JoinConfig {
            coordinators: settings.join,
            name: settings.name.unwrap_or_else(daemon::hostname),
            advertise,
            labels: settings.label.into_iter().map(|label| (label.key, label.value)).collect::<BTreeMap<_, _>>(),
            capacity: Resources {
                memory_mib: settings.memory_mib.unwrap_or_else(daemon::default_memory_mib),
                vcpus: settings.vcpus.unwrap_or_else(daemon::default_vcpus),
                instances: settings.max_instances.unwrap_or(DEFAULT_MAX_INSTANCES),
            },
            timing: Default::default(),
        })
    };
    daemon::run(config, join, listener, shutdown_signal()).await.map_err(Into::into)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use mirari_proto::daemon_config::{check_settings, settings_over_text};

    use super::*;

    /// The settings of `mirari-agent --config agent.toml ARGS...`, the file holding `text`.
    fn settings(text: &str, args: &[&str]) -> Result<Settings, String> {
        settings_over_text(Cli::command(), args, "agent.toml", text).map_err(|e| e.to_string())
    }

    const EVERY_KEY: &str = r#"
state_dir = "/srv/mirari/agent"
listen = "10.0.0.1:7401"
console_bytes = 65536
kvm_device = "/dev/null"
rpi_board = "raspi3b"
rpi_u_boot = "/srv/u-boot.bin"
join = ["10.0.0.1:7400", "10.0.0.2:7400"]
name = "h1"
advertise = "h1.example:7401"
label = ["rack=r1", "zone=a=b"]
memory_mib = 2048
vcpus = 4
max_instances = 8
network = ["service=br0", "dev=mirari0,subnet=10.89.0.0/24"]
http_listen = "127.0.0.1:9101"

[tls]
ca = "/pki/ca.pem"
cert = "/pki/h1.pem"
key = "/pki/h1-key.pem"
"#;

    fn label(key: &str, value: &str) -> Label {
        Label { key: key.into(), value: value.into() }
    }

    #[test]
    fn every_flag_is_a_key_of_the_config_file() {
        let expected = Settings {
            state_dir: Some("/srv/mirari/agent".into()),
            listen: Some(Endpoint::Tcp("10.0.0.1:7401".into())),
            console_bytes: Some(65536),
            kvm_device: Some("/dev/null".into()),
            rpi_board: Some(Board::Raspi3b),
            rpi_u_boot: Some("/srv/u-boot.bin".into()),
            join: vec![Endpoint::Tcp("10.0.0.1:7400".into()), Endpoint::Tcp("10.0.0.2:7400".into())],
            name: Some("h1".into()),
            advertise: Some("h1.example:7401".into()),
            label: vec![label("rack", "r1"), label("zone", "a=b")],
            memory_mib: Some(2048),
            vcpus: Some(4),
            max_instances: Some(8),
            network: vec!["service=br0".parse().unwrap(), "dev=mirari0,subnet=10.89.0.0/24".parse().unwrap()],
            http_listen: Some("127.0.0.1:9101".parse().unwrap()),
            tls: TlsFlags {
                ca: Some("/pki/ca.pem".into()),
                cert: Some("/pki/h1.pem".into()),
                key: Some("/pki/h1-key.pem".into()),
            },
        };
        assert_eq!(settings(EVERY_KEY, &[]).unwrap(), expected);
        // What config files said before every flag could be set in them.
        let old = settings("networks = [\"service=br0\"]\n", &[]).unwrap();
        assert_eq!(old.network, ["service=br0".parse().unwrap()]);
        assert_eq!(settings("", &[]).unwrap(), Settings::default());
    }

    #[test]
    fn a_flag_wins_over_the_file() {
        let file = "name = \"from-file\"\nmax_instances = 8\nlabel = [\"rack=r1\"]\n[tls]\nca = \"/pki/ca.pem\"\n";
        let given = settings(file, &["--name", "from-flag", "--label", "zone=a", "--tls-ca", "/other/ca.pem"]).unwrap();
        assert_eq!(given.name.as_deref(), Some("from-flag"));
        assert_eq!(given.label, [label("zone", "a")], "a list on the command line replaces the file's");
        assert_eq!(given.max_instances, Some(8));
        assert_eq!(given.tls.ca, Some("/other/ca.pem".into()));
        assert_eq!(given.state_dir, None);
    }

    #[test]
    fn mistakes_in_the_file_are_located() {
        let mistakes = [
            (
                "name = \"h1\"\nlabels = [\"rack=r1\"]\n",
                "agent.toml:2:1: unknown field `labels`, expected one of `state_dir`, `listen`, ",
            ),
            ("label = [\"rack\"]\n", "agent.toml:1:10: `rack` is not KEY=VALUE"),
            ("network = [\"service=br0\",\n  \"Bad=br1\"]\n", "agent.toml:2:3: --network `Bad=br1`: "),
            ("max_instances = \"many\"\n", "agent.toml:1:17: invalid type: string \"many\", expected u32"),
            ("rpi_board = \"pi5\"\n", "agent.toml:1:13: unknown variant `pi5`, expected `virt` or `raspi3b`"),
            (
                "[tls]\ncert = \"h1.pem\"\nkey_file = \"k.pem\"\n",
                "agent.toml:3:1: unknown field `key_file`, expected one of `ca`, `cert`, `key`",
            ),
        ];
        for (text, expected) in mistakes {
            let error = settings(text, &[]).unwrap_err();
            assert!(error.starts_with(expected), "{error}");
        }
        let error = settings(mistakes[0].0, &[]).unwrap_err();
        assert!(error.contains("2 | labels = [\"rack=r1\"]\n  | ^^^^^^\n"), "{error}");
    }

    #[test]
    fn no_flag_has_a_clap_default_and_the_help_states_the_agents() {
        let board = DEFAULT_RPI_BOARD.name();
        check_settings::<Settings>(&[
            ("console_bytes", &DEFAULT_CONSOLE_BYTES),
            ("kvm_device", &DEFAULT_KVM_DEVICE),
            ("rpi_board", &board),
            ("max_instances", &DEFAULT_MAX_INSTANCES),
        ])
        .unwrap();
    }
}
