//! `mirari-coordinator`: one member of the raft group that holds the cluster registry. Its
//! flags are also the keys of its `--config` file (`mirari_proto::daemon_config`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use mirari_coordinator::server::{self, CoordinatorConfig};
use mirari_proto::daemon_config::ConfigFlag;
use mirari_proto::endpoint::{Endpoint, Listener};
use mirari_proto::tls::{self, ClientTls, ServerTls, TlsFlags};

/// Holds the authoritative registry of hosts, applications, deployments and instances,
/// replicated with raft. Start the first node with --bootstrap; start the others without it
/// and add them with `mirari cluster members add --id N --address HOST:PORT`.
#[derive(Debug, Parser)]
#[command(name = "mirari-coordinator", version)]
struct Cli {
    // Parsed here for `--help` and errors; `ConfigFlag::load` builds the settings in effect.
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    config: ConfigFlag,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Write man pages: mirari-coordinator.1 and one per subcommand
    Man {
        /// The directory to write them to (made if missing)
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
const DEFAULT_TICK_MS: u64 = 50;
const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;

/// Every setting of the coordinator: its flags, and the keys of its `--config` file. None has
/// a clap default, so a flag left out leaves the file's value (`mirari_proto::daemon_config`);
/// the defaults, which the help states, are applied in [`run`].
#[derive(Debug, Default, PartialEq, Eq, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// This node's raft ID: unique in the cluster, never reused (required, here or in --config)
    #[arg(long)]
    id: Option<u64>,
    /// Where the raft log, snapshots and hard state live, fsync'd (required, here or in --config)
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to serve the coordinator and peer APIs on (host:port) [default: 127.0.0.1:7400]
    #[arg(long)]
    listen: Option<Endpoint>,
    /// Address others reach this node at [default: the --listen address]
    #[arg(long)]
    advertise: Option<String>,
    /// Start a new cluster with this node as its only member (only if the data directory is
    /// empty); --bootstrap=false overrides bootstrap = true in --config
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    bootstrap: Option<bool>,
    /// Raft tick in milliseconds: the leader sends heartbeats every 2 ticks, and followers
    /// elect another after 12 to 24 ticks without hearing from it (0.6 to 1.2 s by default)
    /// [default: 50]
    #[arg(long)]
    tick_ms: Option<u64>,
    /// Take a snapshot and compact the log after this many entries, doubled for every doubling
    /// of the state machine past 4 MiB [default: 10000]
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Answer DNS on this address (UDP and TCP, host:port): `APP.service.mirari` gives the A
    /// records of the app's healthy instances, TTL 5 s [default: no DNS]
    #[arg(long, value_name = "ADDR")]
    dns_listen: Option<std::net::SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics. Plain HTTP without authentication:
    /// bind it to loopback or a management network [default: no metrics]
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    #[serde(default)]
    tls: TlsFlags,
}

fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let result = match cli.command {
        Some(Command::Man { out }) => mirari_proto::man::man_pages(Cli::command(), &out).map_err(Into::into),
        None => cli.config.load::<Settings>(&matches).map_err(Into::into).and_then(|settings| {
            let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
            runtime.block_on(run(settings))
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

async fn run(settings: Settings) -> anyhow::Result<()> {
    tls::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let id = settings.id.context("give this node's raft ID: --id N, or id = N in --config")?;
    let data_dir = settings
        .data_dir
        .context("give the node's data directory: --data-dir DIR, or data_dir = \"DIR\" in --config")?;
    let endpoint = match settings.listen {
        Some(endpoint) => endpoint,
        None => DEFAULT_LISTEN.parse()?,
    };
    let files = settings.tls.files()?.context(
        "a coordinator serves with mutual TLS only: give --tls-ca, --tls-cert and --tls-key (or a [tls] table in \
         --config); create them with `mirari tls`. Only `mirari dev` runs without TLS, on loopback",
    )?;
    tls::set_client_identity(ClientTls::load(&files)?);
    let server_tls = ServerTls::load(&files)?;
    let listener =
        Listener::bind(&endpoint, Some(server_tls)).await.with_context(|| format!("cannot listen on {endpoint}"))?;
    let advertise = settings
        .advertise
        .unwrap_or_else(|| listener.local_endpoint().map(|e| e.to_string()).unwrap_or(endpoint.to_string()));
    let config = CoordinatorConfig {
        id,
        data_dir,
        advertise: advertise.clone(),
        bootstrap: settings.bootstrap.unwrap_or(false),
        tick: Duration::from_millis(settings.tick_ms.unwrap_or(DEFAULT_TICK_MS)),
        snapshot_every: settings.snapshot_every.unwrap_or(DEFAULT_SNAPSHOT_EVERY),
        leases: Default::default(),
        dns_listen: settings.dns_listen,
        http_listen: settings.http_listen,
    };
    tracing::info!(id = config.id, %advertise, data_dir = %config.data_dir.display(), "mirari-coordinator starting");
    server::run(config, listener, shutdown_signal()).await.context("the coordinator stopped")
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

    /// The settings of `mirari-coordinator --config coordinator.toml ARGS...`, the file holding `text`.
    fn settings(text: &str, args: &[&str]) -> Result<Settings, String> {
        settings_over_text(Cli::command(), args, "coordinator.toml", text).map_err(|e| e.to_string())
    }

    const EVERY_KEY: &str = r#"
id = 2
data_dir = "/var/lib/mirari/coordinator"
listen = "10.0.0.2:7400"
advertise = "c2.example:7400"
bootstrap = true
tick_ms = 50
snapshot_every = 500
dns_listen = "10.0.0.2:53"
http_listen = "127.0.0.1:9100"

[tls]
ca = "/pki/ca.pem"
cert = "/pki/c2.pem"
key = "/pki/c2-key.pem"
"#;

    #[test]
    fn every_flag_is_a_key_of_the_config_file() {
        let expected = Settings {
            id: Some(2),
            data_dir: Some("/var/lib/mirari/coordinator".into()),
            listen: Some(Endpoint::Tcp("10.0.0.2:7400".into())),
            advertise: Some("c2.example:7400".into()),
            bootstrap: Some(true),
            tick_ms: Some(50),
            snapshot_every: Some(500),
            dns_listen: Some("10.0.0.2:53".parse().unwrap()),
            http_listen: Some("127.0.0.1:9100".parse().unwrap()),
            tls: TlsFlags {
                ca: Some("/pki/ca.pem".into()),
                cert: Some("/pki/c2.pem".into()),
                key: Some("/pki/c2-key.pem".into()),
            },
        };
        assert_eq!(settings(EVERY_KEY, &[]).unwrap(), expected);
        assert_eq!(settings("", &[]).unwrap(), Settings::default());
    }

    #[test]
    fn a_flag_wins_over_the_file() {
        let given = settings(EVERY_KEY, &["--id", "3", "--bootstrap=false", "--listen", "10.0.0.3:7400"]).unwrap();
        assert_eq!((given.id, given.bootstrap), (Some(3), Some(false)));
        assert_eq!(given.listen, Some(Endpoint::Tcp("10.0.0.3:7400".into())));
        assert_eq!(given.tick_ms, Some(50));
        assert_eq!(settings("bootstrap = false\n", &["--bootstrap"]).unwrap().bootstrap, Some(true));
        assert_eq!(settings("", &[]).unwrap().bootstrap, None);
    }

    #[test]
    fn mistakes_in_the_file_are_located() {
        let mistakes = [
            (
                "id = 1\n\ndata-dir = \"/srv\"\n",
                "coordinator.toml:3:1: unknown field `data-dir`, expected one of `id`, `data_dir`, ",
            ),
            ("id = \"one\"\n", "coordinator.toml:1:6: invalid type: string \"one\", expected u64"),
            ("listen = \"7400\"\n", "coordinator.toml:1:10: `7400` is not an endpoint"),
            ("bootstrap = \"yes\"\n", "coordinator.toml:1:13: invalid type: string \"yes\", expected a boolean"),
            ("dns_listen = \"localhost\"\n", "coordinator.toml:1:14: invalid socket address syntax"),
        ];
        for (text, expected) in mistakes {
            let error = settings(text, &[]).unwrap_err();
            assert!(error.starts_with(expected), "{error}");
        }
    }

    #[test]
    fn no_flag_has_a_clap_default_and_the_help_states_the_coordinators() {
        check_settings::<Settings>(&[
            ("listen", &DEFAULT_LISTEN),
            ("tick_ms", &DEFAULT_TICK_MS),
            ("snapshot_every", &DEFAULT_SNAPSHOT_EVERY),
        ])
        .unwrap();
    }
}
