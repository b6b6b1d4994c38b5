//! `mirari`: the command line. A thin layer over `mirari-build` (configure, build) and the
//! agent API (run, ps, console, logs, stop, host).

mod agent_cmds;
mod client;
mod cluster_cmds;
mod coordinators;
mod deploy;
mod dev;
mod docs;
mod events_cmds;
mod output;
mod progress;
mod project_cmds;
mod provider_cmds;
mod rollout_cmds;
mod tls_cmds;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use mirari_core::target::Target;
use mirari_proto::endpoint::Endpoint;

use crate::output::Format;

/// Mirari deploys unikernel applications: one mirari.toml describes an app; `configure` checks
/// and installs what its build needs and bakes its file images, `build` compiles it for each
/// target, and `run` starts instances on the local agent, each with a unique ID.
/// Where `--help` lists the options every command takes, apart from the command's own.
const GLOBAL: &str = "Global options";

#[derive(Debug, Parser)]
#[command(name = "mirari", version)]
struct Cli {
    /// The agent to talk to: unix:/path or host:port
    /// [default: unix:/run/mirari/agent.sock for root, else $XDG_RUNTIME_DIR/mirari/agent.sock]
    #[arg(long, global = true, env = "MIRARI_AGENT", help_heading = GLOBAL)]
    agent: Option<Endpoint>,
    /// Coordinators to talk to for `cluster` commands: host:port or unix:/path, comma separated
    /// [default: the socket of `mirari dev`, unix:/var/lib/mirari/dev/coordinator.sock for root,
    /// else in $XDG_STATE_HOME/mirari/dev]
    #[arg(long, global = true, env = "MIRARI_ADDR", value_delimiter = ',', help_heading = GLOBAL)]
    coordinator: Vec<Endpoint>,
    #[command(flatten, next_help_heading = GLOBAL)]
    tls: mirari_proto::tls::TlsArgs,
    /// Output format for results
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table, help_heading = GLOBAL)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct AppArgs {
    /// The application's config file
    #[arg(long, short = 'f', default_value = "mirari.toml")]
    file: PathBuf,
    /// Where built artifacts are kept, by sha256
    /// [default: $XDG_DATA_HOME/mirari/store, else ~/.local/share/mirari/store]
    #[arg(long, env = "MIRARI_STORE")]
    store: Option<PathBuf>,
}

/// A deployment's instance count, within the limit the coordinators enforce.
fn instance_count(text: &str) -> Result<u32, String> {
    let max = mirari_core::limits::MAX_INSTANCES_PER_DEPLOYMENT;
    match text.parse::<u64>() {
        Ok(count) if count <= u64::from(max) => Ok(count as u32),
        Ok(_) => Err(format!("a deployment has at most {max} instances")),
        Err(error) => Err(error.to_string()),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check what the build needs (and install it with --install); bake the file images
    Configure {
        #[command(flatten)]
        app: AppArgs,
        /// Install missing packages with their declared installer (apt, opam), then check again
        #[arg(long)]
        install: bool,
    },
    /// Build the app for each target (or those given) and store the artifacts by sha256
    Build {
        #[command(flatten)]
        app: AppArgs,
        /// Build only this target (repeatable)
        #[arg(long, short = 't')]
        target: Vec<Target>,
    },
    /// Start instances of the built app on the agent; each gets a unique ID
    Run {
        #[command(flatten)]
        app: AppArgs,
        /// The target to run [default: the first listed in the config]
        #[arg(long, short = 't')]
        target: Option<Target>,
        /// How many instances to start
        #[arg(long, short = 'n', default_value_t = 1)]
        count: u32,
    },
    /// List instances
    Ps,
    /// Show an instance's console output (the agent keeps the most recent part)
    Console {
        /// Instance ID or a unique prefix of one
        id: String,
        /// Keep printing new output until the instance ends
        #[arg(long, short = 'F')]
        follow: bool,
    },
    /// Show an instance's lifecycle log: starts, exits, restarts, stops
    Logs {
        /// Instance ID or a unique prefix of one
        id: String,
    },
    /// Stop an instance: gracefully, then forced after its stop timeout
    Stop {
        /// Instance ID or a unique prefix of one
        id: String,
    },
    /// Show the agent's host and which backends work there (and why not)
    Host,
    /// Run a single-node coordinator and a local agent in this process (loopback only)
    Dev {
        /// Where both keep their state [default: /var/lib/mirari/dev for root, else $XDG_STATE_HOME/mirari/dev]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The bridge instances' interfaces join (made if missing, with the subnet's first
        /// address; as root only). Left in place at exit: instances outlive `mirari dev`
        #[arg(long, default_value = "mirari0")]
        bridge: String,
        /// The subnet of the `service` network: cluster instances get addresses from its lower
        /// part, `mirari run` instances from the top 55
        #[arg(long, default_value = "10.89.0.0/24")]
        subnet: mirari_core::network::Ipv4Cidr,
        /// Serve the coordinator's web console and metrics here, e.g. 127.0.0.1:9400 (the console
        /// only on a loopback address)
        #[arg(long, value_name = "ADDR")]
        http_listen: Option<std::net::SocketAddr>,
    },
    /// Print a shell completion script, e.g. `mirari completions bash > /etc/bash_completion.d/mirari`
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
    /// Write man pages: mirari.1 and one per subcommand (mirari-cluster-deploy.1, ...)
    Man {
        /// The directory to write them to (made if missing)
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Supervises one instance's process (started by `mirari dev`'s agent, not by people)
    #[command(hide = true)]
    Shim(mirari_agent::supervisor::shim::ShimArgs),
    /// The cluster: coordinators, hosts, deployments
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// A certificate authority for a cluster, and certificates that carry roles
    #[command(subcommand)]
    Tls(TlsCommand),
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Create a certificate authority
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Issue certificates
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
}

#[derive(Debug, Subcommand)]
enum CaAction {
    /// Create the CA: ca.pem and ca-key.pem (mode 0600) in --dir
    Create {
        /// Where to write ca.pem and ca-key.pem
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The CA's name [default: "Mirari CA" and a random suffix, so two clusters' CAs never share a name]
        #[arg(long)]
        name: Option<String>,
        /// Days the CA is valid
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
}

#[derive(Debug, Subcommand)]
enum CertAction {
    /// Issue NAME.pem and NAME-key.pem (mode 0600) signed by the CA in --ca-dir
    Create {
        /// coordinator, agent, operator or reader
        #[arg(long)]
        role: mirari_proto::tls::Role,
        /// The holder's name (the certificate's common name and file name)
        #[arg(long)]
        name: String,
        /// A DNS name servers holding this certificate answer to (repeatable)
        #[arg(long)]
        dns: Vec<String>,
        /// An IP address servers holding this certificate answer at (repeatable)
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
        /// Where the CA's ca.pem and ca-key.pem are
        #[arg(long, default_value = ".")]
        ca_dir: PathBuf,
        /// Where to write the certificate and key [default: --ca-dir]
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Days the certificate is valid
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// The coordinator's view of the raft group: role, term, leader, commit and applied index
    Info,
    /// List, add or remove coordinators (raft members)
    Members {
        #[command(subcommand)]
        action: Option<MembersAction>,
    },
    /// Build an app on a cluster host and run COUNT instances of it across the cluster. A new
    /// version (any change to the artifact, files, [run], networks or health check) rolls out
    /// slot by slot under [update]: each new instance healthy before the old one of its slot
    /// stops; the same config again changes nothing and says so
    Deploy {
        #[command(flatten)]
        app: AppArgs,
        /// The target to deploy [default: the first listed in the config]
        #[arg(long, short = 't')]
        target: Option<Target>,
        /// How many instances to run across the cluster
        #[arg(long, short = 'n', default_value_t = 1, value_parser = instance_count)]
        count: u32,
        /// binpack fills hosts one by one; spread prefers the emptiest
        #[arg(long, value_enum, default_value_t = PlacementArg::Binpack)]
        placement: PlacementArg,
        /// Give up waiting for the rollout after this long
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Build even if the host built the same sources, config and toolchain before (the
        /// toolchain is what the config's [requires] names)
        #[arg(long)]
        rebuild: bool,
        /// Run the instances only on this provider's machines (mirari cluster providers list)
        /// [default: on hosts, bursting to a provider when they are full]
        #[arg(long)]
        provider: Option<String>,
        #[command(flatten)]
        update: deploy::UpdateOverrides,
    },
    /// Let a rollout waiting on its canaries replace the remaining instances
    Promote {
        /// The deployed app
        app: String,
        /// Give up waiting for the rollout after this long
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Every version of an app ever deployed: digests, when, by whom, and how it ended
    History {
        /// The app
        app: String,
    },
    /// Roll back to an earlier version from the history, with the same rolling update
    Rollback {
        /// The deployed app
        app: String,
        /// The version (its registry name or label) [default: the last healthy one before the current]
        #[arg(long)]
        to: Option<String>,
        /// Give up waiting for the rollout after this long
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Change how many instances of a deployed app run
    Scale {
        /// The deployed app
        app: String,
        /// How many instances should run
        #[arg(value_parser = instance_count)]
        count: u32,
        /// Give up waiting for the instances after this long
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Stop every instance of a deployed app
    Stop {
        /// The deployed app
        app: String,
        /// Give up waiting for its instances to end after this long
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// What the registry's log changed, event by event: deployments, placements, rollouts,
    /// hosts up, down and draining, instances' phases and health
    Events {
        /// Keep printing events as they happen (moving to another coordinator if this one goes away)
        #[arg(long, short)]
        follow: bool,
        /// Only events about this app
        #[arg(long)]
        app: Option<String>,
        /// Only events about this host
        #[arg(long)]
        host: Option<String>,
        /// Start at this raft index (every coordinator keeps the newest 20,000 events)
        #[arg(long, value_name = "INDEX")]
        from: Option<u64>,
        /// Without --from: start with the newest N events
        #[arg(long, value_name = "N", default_value_t = 20)]
        last: u32,
    },
    /// Deployments (desired, placed, running, unplaced and why), hosts (instances, memory and
    /// vCPUs used), networks and instances by state; or, with --instances or a filter, the
    /// instances. `--output json` has both: the summary and every instance (those of the filters,
    /// at most --limit), read from the coordinators a page at a time
    Status {
        /// Serve from the contacted coordinator's state without confirming it is current
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        query: deploy::StatusQuery,
    },
    /// List the hosts in the registry; drain, make eligible or remove one
    Hosts {
        /// Serve from the contacted coordinator's state without confirming it is current
        #[arg(long)]
        stale: bool,
        #[command(subcommand)]
        action: Option<HostsAction>,
    },
    /// Declare, list or remove networks: subnets whose addresses instances get. Agents say
    /// which bridge carries each (mirari-agent --network NAME=BRIDGE)
    Network {
        #[command(subcommand)]
        action: Option<NetworkAction>,
    },
    /// Add, list or remove cloud providers: accounts whose machines run instances (one each)
    /// when the hosts are full, or only there for a deployment that names one (--provider)
    Providers {
        /// Serve from the contacted coordinator's state without confirming it is current
        #[arg(long)]
        stale: bool,
        #[command(subcommand)]
        action: Option<ProvidersAction>,
    },
}

#[derive(Debug, Subcommand)]
enum ProvidersAction {
    /// List the providers, with why one cannot launch (the default)
    List,
    /// Add a provider, or change its settings. Credentials come from the standard chain of the
    /// coordinators' environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, instance
    /// metadata); only the raft leader calls the provider's API
    Add(provider_cmds::ProviderArgs),
    /// Forget a provider that runs no instances and that no deployment names
    Remove {
        /// The provider's name
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum HostsAction {
    /// List the hosts (the default)
    List,
    /// Stop placing instances on HOST and move its instances elsewhere, each replacement
    /// healthy before the old one stops; what is left at the deadline is stopped
    Drain {
        /// The host's name in the cluster
        host: String,
        /// How long its instances may take to move; what is left then is stopped
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
    },
    /// Let a drained host take instances again
    Eligible {
        /// The host's name in the cluster
        host: String,
    },
    /// Forget a host that is down, or drained and empty
    Remove {
        /// The host's name in the cluster
        host: String,
    },
}

#[derive(Debug, Subcommand)]
enum NetworkAction {
    /// List the networks and how many of their addresses are held (the default)
    List,
    /// Declare a network (again with the same definition: no change)
    Create {
        /// The network's name, as apps' [[network]] tables and agents' --network flags say it
        name: String,
        /// The IPv4 subnet, written with its network address: 10.88.0.0/16
        #[arg(long)]
        subnet: mirari_core::network::Ipv4Cidr,
        /// The router instances reach other networks through
        #[arg(long)]
        gateway: Option<std::net::Ipv4Addr>,
        /// Only these addresses go to instances: FIRST-LAST [default: the whole subnet]
        #[arg(long, value_parser = parse_range)]
        range: Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
        /// DNS servers for instances (comma separated)
        #[arg(long, value_delimiter = ',')]
        dns: Vec<std::net::Ipv4Addr>,
    },
    /// Forget a network no deployment uses and no instance holds an address of
    Remove {
        /// The network's name
        name: String,
    },
}

fn parse_range(text: &str) -> Result<(std::net::Ipv4Addr, std::net::Ipv4Addr), String> {
    let (first, last) = text.split_once('-').ok_or_else(|| format!("`{text}` is not FIRST-LAST"))?;
    let address = |a: &str| a.parse().map_err(|_| format!("`{a}` is not an IPv4 address"));
    Ok((address(first)?, address(last)?))
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PlacementArg {
    Binpack,
    Spread,
}

#[derive(Debug, Subcommand)]
enum MembersAction {
    /// List the members (the default)
    List,
    /// Add a coordinator; start it first (without --bootstrap) with the same --id
    Add {
        /// The new coordinator's raft ID (its --id)
        #[arg(long)]
        id: u64,
        /// The new coordinator's address (host:port)
        #[arg(long)]
        address: String,
    },
    /// Remove a coordinator from the group
    Remove {
        /// The coordinator's raft ID
        #[arg(long)]
        id: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Shim(args) = cli.command {
        return match mirari_agent::supervisor::shim::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let documented = match &cli.command {
        Command::Completions { shell } => Some(docs::completions(*shell, Cli::command(), &mut std::io::stdout())),
        Command::Man { out } => Some(mirari_proto::man::man_pages(Cli::command(), out).map_err(Into::into)),
        _ => None,
    };
    if let Some(result) = documented {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {}", chain(&error));
                ExitCode::FAILURE
            }
        };
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each once: "what failed: why: root cause".
fn chain(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    mirari_proto::tls::install_crypto_provider();
    // `mirari dev` serves without TLS on owner-only sockets; its parts talk to each other there.
    if !matches!(cli.command, Command::Dev { .. })
        && let Some(files) = cli.tls.files()?
    {
        mirari_proto::tls::set_client_identity(mirari_proto::tls::ClientTls::load(&files)?);
    }
    let agent = cli.agent.unwrap_or_else(mirari_agent::paths::default_agent_endpoint);
    let coordinators =
        if cli.coordinator.is_empty() { vec![dev::coordinator_socket(&dev::default_dir())] } else { cli.coordinator };
    let format = cli.output;
    match cli.command {
        Command::Configure { app, install } => project_cmds::configure(&app, install, format),
        Command::Build { app, target } => project_cmds::build(&app, &target, format),
        Command::Run { app, target, count } => agent_cmds::run(&agent, &app, target, count, format).await,
        Command::Ps => agent_cmds::ps(&agent, format).await,
        Command::Console { id, follow } => agent_cmds::console(&agent, &coordinators, &id, follow).await,
        Command::Logs { id } => agent_cmds::logs(&agent, &coordinators, &id, format).await,
        Command::Dev { dir, bridge, subnet, http_listen } => dev::run(dir, &bridge, subnet, http_listen).await,
        Command::Tls(TlsCommand::Ca { action: CaAction::Create { dir, name, days } }) => {
            let name = name.unwrap_or_else(|| format!("Mirari CA {:08x}", rand::random::<u32>()));
            tls_cmds::create_ca(&dir, &name, days)
        }
        Command::Tls(TlsCommand::Cert {
            action: CertAction::Create { role, name, dns, ip, ca_dir, out_dir, days },
        }) => {
            let out_dir = out_dir.unwrap_or_else(|| ca_dir.clone());
            tls_cmds::create_cert(&tls_cmds::CertRequest { ca_dir, out_dir, role, name, dns, ips: ip, days })
        }
        Command::Shim(_) | Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before the runtime starts")
        }
        Command::Stop { id } => agent_cmds::stop(&agent, &id, format).await,
        Command::Host => agent_cmds::host(&agent, format).await,
        Command::Cluster(command) => {
            let mut connection = coordinators::Coordinators::new(&coordinators);
            let coordinators = &coordinators;
            match command {
                ClusterCommand::Deploy { app, target, count, placement, timeout, rebuild, provider, update } => {
                    let placement = match placement {
                        PlacementArg::Binpack => mirari_core::registry::Placement::Binpack,
                        PlacementArg::Spread => mirari_core::registry::Placement::Spread,
                    };
                    let options =
                        deploy::DeployOptions { target, count, placement, timeout, rebuild, provider, update };
                    deploy::deploy(&mut connection, &app, options, format).await
                }
                ClusterCommand::Promote { app, timeout } => {
                    rollout_cmds::promote(&mut connection, &app, timeout, format).await
                }
                ClusterCommand::History { app } => rollout_cmds::history(&mut connection, &app, format).await,
                ClusterCommand::Rollback { app, to, timeout } => {
                    rollout_cmds::rollback(&mut connection, &app, to.as_deref(), timeout, format).await
                }
                ClusterCommand::Scale { app, count, timeout } => {
                    deploy::scale(&mut connection, &app, count, timeout, format).await
                }
                ClusterCommand::Stop { app, timeout } => deploy::stop(&mut connection, &app, timeout, format).await,
                ClusterCommand::Status { stale, query } => deploy::status(&mut connection, stale, &query, format).await,
                ClusterCommand::Info => cluster_cmds::info(coordinators, format).await,
                ClusterCommand::Members { action: None | Some(MembersAction::List) } => {
                    cluster_cmds::members(coordinators, format).await
                }
                ClusterCommand::Members { action: Some(MembersAction::Add { id, address }) } => {
                    cluster_cmds::add_member(coordinators, id, &address, format).await
                }
                ClusterCommand::Members { action: Some(MembersAction::Remove { id }) } => {
                    cluster_cmds::remove_member(coordinators, id, format).await
                }
                ClusterCommand::Hosts { stale, action: None | Some(HostsAction::List) } => {
                    cluster_cmds::hosts(coordinators, stale, format).await
                }
                ClusterCommand::Hosts { action: Some(HostsAction::Drain { host, deadline }), .. } => {
                    rollout_cmds::drain(&mut connection, &host, deadline, format).await
                }
                ClusterCommand::Hosts { action: Some(HostsAction::Eligible { host }), .. } => {
                    rollout_cmds::eligible(&mut connection, &host, format).await
                }
                ClusterCommand::Hosts { action: Some(HostsAction::Remove { host }), .. } => {
                    rollout_cmds::remove_host(&mut connection, &host, format).await
                }
                ClusterCommand::Network { action: None | Some(NetworkAction::List) } => {
                    deploy::networks(&mut connection, format).await
                }
                ClusterCommand::Network {
                    action: Some(NetworkAction::Create { name, subnet, gateway, range, dns }),
                } => {
                    let network = mirari_core::network::Network { name, subnet, gateway, range, dns };
                    deploy::create_network(&mut connection, network, format).await
                }
                ClusterCommand::Network { action: Some(NetworkAction::Remove { name }) } => {
                    deploy::remove_network(&mut connection, &name, format).await
                }
                ClusterCommand::Providers { stale, action: None | Some(ProvidersAction::List) } => {
                    provider_cmds::list(&mut connection, stale, format).await
                }
                ClusterCommand::Providers { action: Some(ProvidersAction::Add(args)), .. } => {
                    provider_cmds::add(&mut connection, args, format).await
                }
                ClusterCommand::Providers { action: Some(ProvidersAction::Remove { name }), .. } => {
                    provider_cmds::remove(&mut connection, &name, format).await
                }
                ClusterCommand::Events { follow, app, host, from, last } => {
                    let options = events_cmds::EventsOptions { follow, app, host, from, last };
                    events_cmds::events(&mut connection, options, format).await
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of every visible command, with the command's path.
    fn arguments(command: &clap::Command, path: &str, out: &mut Vec<(String, clap::Arg)>) {
        for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
            out.push((path.to_owned(), arg.clone()));
        }
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            arguments(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_has_help_text() {
        let mut all = Vec::new();
        let mut command = Cli::command();
        command.build();
        arguments(&command, "mirari", &mut all);
        let missing: Vec<String> = all
            .iter()
            .filter(|(_, arg)| arg.get_help().is_none() && !["help", "version"].contains(&arg.get_id().as_str()))
            .map(|(path, arg)| format!("{path}: {}", arg.get_id()))
            .collect();
        assert!(missing.is_empty(), "arguments without help text:\n{}", missing.join("\n"));
    }
}
