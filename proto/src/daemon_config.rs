//! The daemons' config files: every flag of `mirari-agent` and `mirari-coordinator` can also be
//! set in the TOML file given with `--config`.
//!
//! A daemon's settings are one struct that is both its flags (`clap::Args`) and the shape of its
//! file (`serde::Deserialize` with `deny_unknown_fields`), so each setting is defined once. A key
//! is the flag's long name with `-` as `_` (`--state-dir` is `state_dir`); a repeatable flag is
//! an array (`label = ["rack=r1"]`); the TLS flags are the `[tls]` table (`ca`, `cert`, `key`).
//! A value is written as on the command line and parsed by the same `FromStr`, so it is refused
//! with the same message, at FILE:LINE:COLUMN ([`mirari_core::config::parse_toml`]).
//!
//! A flag given on the command line (or its environment variable) wins over the file, and the
//! file over the default. That falls out of clap's own `update_from_arg_matches`, which sets the
//! fields the command line gave and leaves the others as the file had them, as long as no
//! setting has a clap default: each is an `Option` or a `Vec`, its default is applied where the
//! daemon uses it, and its help says what it is ([`check_settings`] checks both in the
//! daemons' tests). A repeatable flag given on the command line replaces the file's whole list.

use std::path::{Path, PathBuf};

use mirari_core::config::ConfigError;
use serde::de::DeserializeOwned;

/// `--config FILE`, as both daemons take it.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ConfigFlag {
    /// A TOML file that sets any of these flags: each key is a long flag name with `-` as `_`
    /// (listen = "10.0.0.1:7400"), a repeatable flag is an array of its values, and the TLS
    /// flags are the [tls] table (ca, cert, key); an unknown key is an error. A flag given on
    /// the command line (or by its environment variable) wins over the file, and the file over
    /// the default
    #[arg(long = "config", value_name = "FILE", env = "MIRARI_CONFIG")]
    pub path: Option<PathBuf>,
}

impl ConfigFlag {
    /// The settings: the file's (none set without `--config`), then every flag in `matches`
    /// (the daemon's command line, parsed) over them.
    pub fn load<S>(&self, matches: &clap::ArgMatches) -> Result<S, DaemonConfigError>
    where
        S: clap::FromArgMatches + DeserializeOwned + Default,
    {
        let file = match &self.path {
            Some(path) => read(path)?,
            None => S::default(),
        };
        with_flags(file, matches)
    }
}

/// Reads a daemon's config file into its settings.
fn read<S: DeserializeOwned>(path: &Path) -> Result<S, DaemonConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| DaemonConfigError::Read { path: path.to_owned(), source })?;
    parse(&path.display().to_string(), &text)
}

fn parse<S: DeserializeOwned>(path: &str, text: &str) -> Result<S, DaemonConfigError> {
    mirari_core::config::parse_toml(path, text).map_err(|error| DaemonConfigError::Invalid(Box::new(error)))
}

fn with_flags<S: clap::FromArgMatches>(mut settings: S, matches: &clap::ArgMatches) -> Result<S, DaemonConfigError> {
    settings.update_from_arg_matches(matches).map_err(DaemonConfigError::Flags)?;
    Ok(settings)
}

/// What [`ConfigFlag::load`] makes of the flags `args` of a daemon whose command is `command`,
/// with a config file named `name` that holds `text` (for the daemons' tests: no file is read).
pub fn settings_over_text<S>(
    command: clap::Command,
    args: &[&str],
    name: &str,
    text: &str,
) -> Result<S, DaemonConfigError>
where
    S: clap::FromArgMatches + DeserializeOwned,
{
    let program = command.get_name().to_owned();
    let matches =
        command.try_get_matches_from([program.as_str()].iter().chain(args)).map_err(DaemonConfigError::Flags)?;
    with_flags(parse(name, text)?, &matches)
}

/// Checks what the module docs ask of a daemon's settings `S` (for the daemons' tests): that no
/// flag has a clap default, which would win over the config file, and that the help of each
/// flag in `defaults` (by field name) ends with `[default: VALUE]`, the default the daemon
/// applies.
pub fn check_settings<S: clap::Args>(defaults: &[(&str, &dyn std::fmt::Display)]) -> Result<(), String> {
    let mut command = S::augment_args(clap::Command::new("settings"));
    command.build();
    let with_defaults: Vec<String> = command
        .get_arguments()
        .filter(|arg| !arg.get_default_values().is_empty())
        .map(|arg| arg.get_id().to_string())
        .collect();
    if !with_defaults.is_empty() {
        return Err(format!("these flags have a clap default, which would win over the file: {with_defaults:?}"));
    }
    for (id, default) in defaults {
        let arg = command.get_arguments().find(|arg| arg.get_id() == *id).ok_or(format!("no flag `{id}`"))?;
        let help = arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
        if !help.ends_with(&format!("[default: {default}]")) {
            return Err(format!("the help of `{id}` does not end with [default: {default}]: {help}"));
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonConfigError {
    #[error("cannot read the config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(Box<ConfigError>),
    /// The command line, which clap has already checked when a daemon starts.
    #[error(transparent)]
    Flags(clap::Error),
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::endpoint::Endpoint;
    use crate::tls::TlsFlags;

    /// A daemon's settings, in little.
    #[derive(Debug, Default, PartialEq, Eq, Parser, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        /// Where to listen [default: 127.0.0.1:7400]
        #[arg(long)]
        listen: Option<Endpoint>,
        #[arg(long)]
        #[serde(default)]
        join: Vec<Endpoint>,
        #[arg(long)]
        tick_ms: Option<u64>,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        #[serde(default)]
        tls: TlsFlags,
    }

    fn load(text: &str, args: &[&str]) -> Result<Settings, String> {
        settings_over_text(Settings::command(), args, "daemon.toml", text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_flag_wins_over_the_file_and_the_file_over_the_default() {
        let file = "listen = \"127.0.0.1:7400\"\njoin = [\"a:1\", \"b:2\"]\ntick_ms = 50\n[tls]\nca = \"ca.pem\"\n";
        let settings = load(file, &["--tick-ms", "20", "--join", "c:3", "--tls-cert", "c.pem"]).unwrap();
        assert_eq!(settings.listen, Some(Endpoint::Tcp("127.0.0.1:7400".into())));
        assert_eq!(settings.tick_ms, Some(20));
        assert_eq!(settings.join, [Endpoint::Tcp("c:3".into())], "the command line's list replaces the file's");
        assert_eq!(settings.tls, TlsFlags { ca: Some("ca.pem".into()), cert: Some("c.pem".into()), key: None });
        assert_eq!(settings.name, None);
        assert_eq!(load("", &[]).unwrap(), Settings::default());
        check_settings::<Settings>(&[("listen", &"127.0.0.1:7400")]).unwrap();
        let wrong = check_settings::<Settings>(&[("listen", &"0.0.0.0:7400")]).unwrap_err();
        assert!(wrong.starts_with("the help of `listen` does not end with [default: 0.0.0.0:7400]"), "{wrong}");
    }

    #[test]
    fn a_clap_default_is_caught() {
        #[derive(Debug, clap::Args)]
        struct Defaulted {
            #[arg(long, default_value_t = 100)]
            tick_ms: u64,
            #[arg(long)]
            bootstrap: bool,
        }
        let error = check_settings::<Defaulted>(&[]).unwrap_err();
        assert!(error.ends_with(r#"["tick_ms", "bootstrap"]"#), "{error}");
    }

    #[test]
    fn the_config_flag_reads_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.toml");
        std::fs::write(&path, "name = \"from-file\"\ntick_ms = 50\n").unwrap();
        let matches = Settings::command().try_get_matches_from(["daemon", "--tick-ms", "20"]).unwrap();
        let settings: Settings = ConfigFlag { path: Some(path.clone()) }.load(&matches).unwrap();
        assert_eq!((settings.name.as_deref(), settings.tick_ms), (Some("from-file"), Some(20)));
        let unset: Settings = ConfigFlag { path: None }.load(&matches).unwrap();
        assert_eq!((unset.name, unset.tick_ms), (None, Some(20)));
        std::fs::write(&path, "tick_ms = 5\nnam = \"x\"\n").unwrap();
        let error = ConfigFlag { path: Some(path.clone()) }.load::<Settings>(&matches).unwrap_err().to_string();
        assert!(error.starts_with(&format!("{}:2:1: unknown field `nam`", path.display())), "{error}");
        let absent = ConfigFlag { path: Some(dir.path().join("absent.toml")) }.load::<Settings>(&matches);
        assert!(matches!(absent, Err(DaemonConfigError::Read { .. })), "{absent:?}");
    }

    #[test]
    fn unknown_keys_wrong_types_and_bad_values_are_located() {
        let unknown = load("tick_ms = 5\nlisten_on = \"x:1\"\n", &[]).unwrap_err();
        let expected = "daemon.toml:2:1: unknown field `listen_on`, expected one of `listen`, `join`, `tick_ms`, `name`, `tls`\n  |\n2 | listen_on = \"x:1\"\n  | ^^^^^^^^^\n";
        assert!(unknown.starts_with(expected), "{unknown}");
        // A value refused by its `FromStr` is located at itself, also inside an array.
        let value = load("join = [\"a:1\", \"nowhere\"]\n", &[]).unwrap_err();
        assert!(value.starts_with("daemon.toml:1:16: `nowhere` is not an endpoint"), "{value}");
        let flags = load("", &["--tick-ms", "x"]).unwrap_err();
        assert!(flags.contains("invalid value 'x' for '--tick-ms"), "{flags}");
    }
}
