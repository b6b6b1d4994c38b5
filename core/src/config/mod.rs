//! `mirari.toml`: one file that holds an application's policy.
//!
//! [`AppConfig::parse`] turns the file's text into a validated config or a [`ConfigError`] that
//! names file, line and column and says what to change. The file looks like this:
//!
//! ```toml
//! [app]
//! name = "hello"
//! version = "0.1.0"
//! targets = ["unix", "kvm"]
//!
//! [requires]
//! commands = ["gcc", "make"]    # must be on PATH
//! apt = ["build-essential"]     # Debian packages, installed with apt-get
//! opam = []                     # OCaml packages, installed with opam
//!
//! [build]
//! driver = "command"            # or "mirage"
//!
//! [build.targets.unix]
//! build = "make unix"
//! artifact = "_build/hello"
//!
//! [[files]]                     # baked into a read-only tar image, attached in order
//! name = "data"
//! source = "data"
//!
//! [run]
//! memory_mib = 32
//! vcpus = 1
//! args = ["--ipv4=10.0.0.2/24"] # boot arguments: network settings go here
//! restart = "on-failure"        # never | on-failure | always
//! restart_limit = 3
//! accelerator = "auto"          # kvm | tcg | auto
//! stop_timeout_secs = 10
//!
//! [[network]]                   # one interface per table, in order, on a cluster network
//! name = "service"
//!
//! [health]                      # probed at the first interface's address
//! http = { port = 80, path = "/", status = 200 }   # or: tcp = 80
//! interval_secs = 2
//! timeout_secs = 1
//! grace_secs = 10               # failures right after a start do not count
//! unhealthy_after = 3           # failures in a row; then it is restarted
//!
//! [update]                      # how a new version replaces the running one, slot by slot
//! max_parallel = 1              # slots replaced at a time
//! min_healthy_time_secs = 10    # a new instance healthy this long replaces the old one
//! healthy_deadline_secs = 300   # not healthy by then: the update fails
//! canary = 0                    # new instances first, beside the old, until promoted
//! auto_promote = false
//! auto_revert = false           # a failed update goes back to the last healthy version
//! shutdown_delay_secs = 5       # a replaced instance runs this long after DNS stops naming it
//!
//! [reschedule]                  # a slot whose instance failed for good runs on another host
//! attempts = 5
//! delay_secs = 5                # doubling after each failure, at most 5 minutes
//! ```
//!
//! `[app] after = ["db"]` places an app's instances only once the named apps' deployments are
//! healthy.
//!
//! Boot arguments may hold placeholders filled per instance: `{net.service.cidr}`,
//! `{net.service.gateway}`, `{instance.id}` and the others listed in [`crate::args`].
//!
//! The daemons' config files (`mirari-agent --config`, `mirari-coordinator --config`) are read
//! with the same machinery: [`parse_toml`] into their own serde shape, errors located alike.

mod error;
mod raw;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::ops::Range;
use std::str::FromStr;

use toml::Spanned;

pub use self::error::{ConfigError, Location};
use self::raw::{
    RawBuild, RawConfig, RawFiles, RawHealth, RawNetwork, RawRequires, RawReschedule, RawRun, RawTargetBuild, RawUpdate,
};
use crate::args;
use crate::health::{HealthCheck, Probe};
use crate::limits;
use crate::network;
use crate::registry::{ReschedulePolicy, UpdatePolicy};
use crate::spec::{Accelerator, RestartPolicy, RunPolicy};
use crate::target::Target;

/// A validated application config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    pub name: String,
    pub version: String,
    pub targets: Vec<Target>,
    pub requires: Requirements,
    pub builds: BTreeMap<Target, TargetBuild>,
    pub files: Vec<FileDirective>,
    pub run: RunPolicy,
    pub update: UpdatePolicy,
    pub reschedule: ReschedulePolicy,
    /// Apps whose deployments must be healthy before this one's instances are placed.
    pub after: Vec<String>,
}

/// What must be present before building.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    pub commands: Vec<String>,
    pub apt: Vec<String>,
    pub opam: Vec<String>,
}

/// How one target is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetBuild {
    /// Shell commands run in the app directory, and the file they produce.
    Command { configure: Option<String>, build: String, artifact: String },
    /// `mirage configure -t <mirage_target>`, then `make`; the artifact lands in `dist/`.
    Mirage { mirage_target: String, artifact: String },
}

/// A directory of the app baked into a read-only tar image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDirective {
    pub name: String,
    /// Relative to the app directory.
    pub source: String,
    /// Where `source` was written, for errors found when the directory is read.
    pub source_location: Location,
}

impl AppConfig {
    /// Parses and validates the text of a config file. `path` is only used in error messages.
    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        let cx = Cx { path, text };
        let raw: RawConfig = parse_toml(path, text)?;
        let name = cx.check_name(&raw.app.name, "app name")?;
        let version = cx.non_empty(&raw.app.version, "app version")?;
        if version.len() > limits::MAX_NAME_BYTES || version.contains(char::is_whitespace) || version.contains('#') {
            return Err(cx.error(raw.app.version.span(), "invalid app version").with_help(format!(
                "use up to {} characters without whitespace or `#` (the registry names other contents under the same label `LABEL#DIGEST`)",
                limits::MAX_NAME_BYTES
            )));
        }
        let targets = cx.targets(&raw.app.targets)?;
        let requires = cx.requirements(&raw.requires)?;
        let builds = cx.builds(&raw.build, &name, &targets, &raw.app.targets)?;
        let files = cx.files(&raw.files)?;
        let mut run = cx.run(&raw.run)?;
        run.networks = cx.networks(&raw.network)?;
        cx.check_templates(&raw.run, &run.networks)?;
        run.health = raw.health.as_ref().map(|health| cx.health(health, &run.networks)).transpose()?;
        let update = cx.update(&raw.update)?;
        let reschedule = cx.reschedule(&raw.reschedule)?;
        let after = cx.after(&raw.app.after, &name)?;
        Ok(Self { name, version, targets, requires, builds, files, run, update, reschedule, after })
    }
}

/// Deserializes the text of a TOML file into `T`, or says where it is wrong: a syntax error, an
/// unknown key (for a shape that denies them: `unknown field \`x\`, expected one of ...`), a
/// missing one, a wrong type or a value `T` refuses. `path` is only used in error messages.
pub fn parse_toml<T: serde::de::DeserializeOwned>(path: &str, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| Cx { path, text }.toml_error(&e))
}

/// Deserializes a string with the type's `FromStr`, so a value in a config file is written as
/// its flag would be and refused with the same message (located by [`parse_toml`]). A type
/// implements `Deserialize` with it as its whole body.
pub fn deserialize_from_str<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    // Parsed inside the visitor, so the error is raised while the value is being read and toml
    // locates it at the value (after it, toml knows only the enclosing array or table).
    struct Parse<T>(std::marker::PhantomData<T>);
    impl<T: FromStr<Err: Display>> serde::de::Visitor<'_> for Parse<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<T, E> {
            text.parse().map_err(E::custom)
        }
    }
    deserializer.deserialize_str(Parse(std::marker::PhantomData))
}

/// Parsing context: the file's path and text, to turn spans into located errors.
struct Cx<'a> {
    path: &'a str,
    text: &'a str,
}

impl Cx<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.path, Location::of(self.text, span), message)
    }

    fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span().unwrap_or(0..0);
        let message = error.message().trim_end().to_owned();
        let located = self.error(span, message.clone());
        if message.starts_with("unknown field") {
            located.with_help("remove or rename the key; see the expected keys listed above")
        } else if message.starts_with("missing field") {
            located.with_help("add the key to this table")
        } else {
            located
        }
    }

    fn non_empty(&self, value: &Spanned<String>, what: &str) -> Result<String, ConfigError> {
        if value.get_ref().trim().is_empty() {
            return Err(self.error(value.span(), format!("{what} is empty")));
        }
        Ok(value.get_ref().clone())
    }

    /// App and file-image names end up in file names, domain names and URLs.
    fn check_name(&self, value: &Spanned<String>, what: &str) -> Result<String, ConfigError> {
        let name = value.get_ref();
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(self
                .error(value.span(), format!("invalid {what} `{name}`"))
                .with_help("use 1 to 63 lowercase letters, digits and `-`, starting with a letter or digit"));
        }
        Ok(name.clone())
    }

    fn targets(&self, raw: &Spanned<Vec<Spanned<String>>>) -> Result<Vec<Target>, ConfigError> {
        if raw.get_ref().is_empty() {
            return Err(self
                .error(raw.span(), "no targets listed")
                .with_help(format!("list at least one of: {}", Target::known_names())));
        }
        let mut targets = Vec::new();
        for item in raw.get_ref() {
            let target: Target = item.get_ref().parse().map_err(|_| {
                self.error(item.span(), format!("unknown target `{}`", item.get_ref()))
                    .with_help(format!("known targets: {}", Target::known_names()))
            })?;
            if targets.contains(&target) {
                return Err(self.error(item.span(), format!("target `{target}` is listed twice")));
            }
            targets.push(target);
        }
        Ok(targets)
    }

    fn requirements(&self, raw: &RawRequires) -> Result<Requirements, ConfigError> {
        // These names reach a shell or a package manager's argv: keep them to plain words.
        let words = |list: &[Spanned<String>], what: &str| -> Result<Vec<String>, ConfigError> {
            list.iter()
                .map(|item| {
                    let word = item.get_ref();
                    let plain = !word.is_empty()
                        && !word.starts_with('-')
                        && word.chars().all(|c| c.is_ascii_alphanumeric() || "._+-:=".contains(c));
                    if plain {
                        Ok(word.clone())
                    } else {
                        Err(self.error(item.span(), format!("invalid {what} `{word}`")).with_help(
                            "use a plain name of letters, digits and . _ + - : =, \
                             not starting with `-`",
                        ))
                    }
                })
                .collect()
        };
        Ok(Requirements {
            commands: words(&raw.commands, "command name")?,
            apt: words(&raw.apt, "apt package name")?,
            opam: words(&raw.opam, "opam package name")?,
        })
    }

    fn builds(
        &self,
        raw: &RawBuild,
        app_name: &str,
        targets: &[Target],
        targets_span: &Spanned<Vec<Spanned<String>>>,
    ) -> Result<BTreeMap<Target, TargetBuild>, ConfigError> {
        let mirage = match &raw.driver {
            None => false,
            Some(driver) => match driver.get_ref().as_str() {
                "command" => false,
                "mirage" => true,
                other => {
                    return Err(self
                        .error(driver.span(), format!("unknown build driver `{other}`"))
                        .with_help("use \"command\" or \"mirage\""));
                }
            },
        };
        let mut sections = BTreeMap::new();
        for (key, section) in &raw.targets {
            let target: Target = key.get_ref().parse().map_err(|_| {
                self.error(key.span(), format!("unknown target `{}`", key.get_ref()))
                    .with_help(format!("known targets: {}", Target::known_names()))
            })?;
            if !targets.contains(&target) {
                return Err(self
                    .error(key.span(), format!("build section for `{target}`, which [app] targets does not list"))
                    .with_help(format!("add \"{target}\" to [app] targets or remove this section")));
            }
            sections.insert(target, section);
        }
        targets
            .iter()
            .map(|&target| {
                let section = sections.get(&target).copied();
                let build = if mirage {
                    self.mirage_build(app_name, target, section, targets_span)?
                } else {
                    self.command_build(target, section, targets_span)?
                };
                Ok((target, build))
            })
            .collect()
    }

    fn command_build(
        &self,
        target: Target,
        section: Option<&Spanned<RawTargetBuild>>,
        targets_span: &Spanned<Vec<Spanned<String>>>,
    ) -> Result<TargetBuild, ConfigError> {
        let Some(section) = section else {
            return Err(self
                .error(targets_span.span(), format!("target `{target}` has no build commands"))
                .with_help(format!("add a [build.targets.{target}] table with `build` and `artifact`")));
        };
        let inner = section.get_ref();
        if let Some(mirage_target) = &inner.mirage_target {
            return Err(self.error(mirage_target.span(), "`mirage_target` only applies to driver = \"mirage\""));
        }
        let required = |value: &Option<Spanned<String>>, key: &str| {
            value.as_ref().map(|v| self.non_empty(v, key)).transpose()?.ok_or_else(|| {
                self.error(section.span(), format!("[build.targets.{target}] has no `{key}`"))
                    .with_help(format!("add `{key} = \"...\"` to this table"))
            })
        };
        Ok(TargetBuild::Command {
            configure: inner.configure.as_ref().map(|v| self.non_empty(v, "configure")).transpose()?,
            build: required(&inner.build, "build")?,
            artifact: required(&inner.artifact, "artifact")?,
        })
    }

    fn mirage_build(
        &self,
        app_name: &str,
        target: Target,
        section: Option<&Spanned<RawTargetBuild>>,
        targets_span: &Spanned<Vec<Spanned<String>>>,
    ) -> Result<TargetBuild, ConfigError> {
        let inner = section.map(Spanned::get_ref);
        let commands = inner.into_iter().flat_map(|s| [&s.configure, &s.build]).flatten();
        if let Some(command) = commands.into_iter().next() {
            return Err(self
                .error(command.span(), "commands only apply to driver = \"command\"")
                .with_help("the mirage driver runs `mirage configure -t TARGET` and `make`"));
        }
        let overridden = inner.and_then(|s| s.mirage_target.as_ref());
        let mirage_target = match (overridden, target) {
            (Some(value), _) => self.non_empty(value, "mirage_target")?,
            (None, Target::Unix) => "unix".to_owned(),
            (None, Target::Kvm) => "virtio".to_owned(),
            (None, Target::Xen) => "xen".to_owned(),
            (None, other @ (Target::Freebsd | Target::Rpi | Target::Js)) => {
                return Err(self
                    .error(targets_span.span(), format!("the mirage driver has no default for `{other}`"))
                    .with_help(format!("set `mirage_target` in [build.targets.{other}]")));
            }
        };
        let artifact = match inner.and_then(|s| s.artifact.as_ref()) {
            Some(value) => self.non_empty(value, "artifact")?,
            None if mirage_target == "unix" => format!("dist/{app_name}"),
            None => format!("dist/{app_name}.{mirage_target}"),
        };
        Ok(TargetBuild::Mirage { mirage_target, artifact })
    }

    fn files(&self, raw: &[RawFiles]) -> Result<Vec<FileDirective>, ConfigError> {
        let mut files: Vec<FileDirective> = Vec::new();
        if let Some(extra) = raw.get(limits::MAX_FILE_IMAGES) {
            return Err(self.error(extra.name.span(), format!("more than {} file images", limits::MAX_FILE_IMAGES)));
        }
        for entry in raw {
            let name = self.check_name(&entry.name, "file image name")?;
            if files.iter().any(|f| f.name == name) {
                return Err(self.error(entry.name.span(), format!("file image `{name}` is declared twice")));
            }
            let source = self.non_empty(&entry.source, "source directory")?;
            if source.starts_with('/') || source.split('/').any(|part| part == "..") {
                return Err(self
                    .error(entry.source.span(), format!("source `{source}` leaves the app directory"))
                    .with_help("use a path relative to the directory of mirari.toml"));
            }
            files.push(FileDirective { name, source, source_location: Location::of(self.text, entry.source.span()) });
        }
        Ok(files)
    }

    fn run(&self, raw: &RawRun) -> Result<RunPolicy, ConfigError> {
        let defaults = RunPolicy::default();
        let ranged = |value: &Option<Spanned<i64>>, key: &str, range: Range<i64>, default: u32| {
            let Some(value) = value else {
                return Ok(default);
            };
            let n = *value.get_ref();
            if range.contains(&n) {
                Ok(u32::try_from(n).unwrap_or(default))
            } else {
                Err(self.error(value.span(), format!("`{key}` = {n} is out of range")).with_help(format!(
                    "use a value from {} to {}",
                    range.start,
                    range.end - 1
                )))
            }
        };
        let mut boot_args = Vec::new();
        if let Some(extra) = raw.args.get(limits::MAX_BOOT_ARGS) {
            return Err(self
                .error(extra.span(), format!("more than {} boot arguments", limits::MAX_BOOT_ARGS))
                .with_help("put long settings in a file image instead"));
        }
        let mut length = 0;
        for arg in &raw.args {
            length += arg.get_ref().len() + 1;
            if length > limits::MAX_BOOT_ARGS_BYTES {
                return Err(self
                    .error(
                        arg.span(),
                        format!("the boot arguments are longer than {} bytes", limits::MAX_BOOT_ARGS_BYTES),
                    )
                    .with_help("put long settings in a file image instead"));
            }
            if arg.get_ref().is_empty() || arg.get_ref().contains(char::is_whitespace) {
                return Err(self
                    .error(arg.span(), "boot argument is empty or contains whitespace")
                    .with_help("kernels receive one space-separated command line; split it into several arguments"));
            }
            boot_args.push(arg.get_ref().clone());
        }
        Ok(RunPolicy {
            memory_mib: ranged(
                &raw.memory_mib,
                "memory_mib",
                1..i64::from(limits::MAX_MEMORY_MIB) + 1,
                defaults.memory_mib,
            )?,
            vcpus: ranged(&raw.vcpus, "vcpus", 1..i64::from(limits::MAX_VCPUS) + 1, defaults.vcpus)?,
            boot_args,
            restart: self.restart(raw)?,
            accelerator: match &raw.accelerator {
                None => defaults.accelerator,
                Some(value) => match value.get_ref().as_str() {
                    "kvm" => Accelerator::Kvm,
                    "tcg" => Accelerator::Tcg,
                    "auto" => Accelerator::Auto,
                    other => {
                        return Err(self
                            .error(value.span(), format!("unknown accelerator `{other}`"))
                            .with_help("use \"kvm\", \"tcg\" or \"auto\""));
                    }
                },
            },
            stop_timeout_secs: ranged(
                &raw.stop_timeout_secs,
                "stop_timeout_secs",
                0..i64::from(limits::MAX_STOP_TIMEOUT_SECS) + 1,
                defaults.stop_timeout_secs,
            )?,
            networks: Vec::new(),
            health: None,
        })
    }

    fn networks(&self, raw: &[RawNetwork]) -> Result<Vec<String>, ConfigError> {
        let mut names: Vec<String> = Vec::new();
        if let Some(extra) = raw.get(limits::MAX_INTERFACES) {
            return Err(self.error(extra.name.span(), format!("more than {} networks", limits::MAX_INTERFACES)));
        }
        for entry in raw {
            let name = entry.name.get_ref();
            network::check_name(name).map_err(|e| self.error(entry.name.span(), e.to_string()))?;
            if names.contains(name) {
                return Err(self
                    .error(entry.name.span(), format!("network `{name}` is listed twice"))
                    .with_help("an instance has one interface per [[network]] table; list each network once"));
            }
            names.push(name.clone());
        }
        Ok(names)
    }

    /// Placeholders in boot arguments must name known things: located at the placeholder.
    fn check_templates(&self, raw: &RawRun, networks: &[String]) -> Result<(), ConfigError> {
        let args: Vec<String> = raw.args.iter().map(|a| a.get_ref().clone()).collect();
        args::check(&args, networks).map_err(|error| {
            let span = raw.args[error.arg].span();
            // Past the opening quote; exact for arguments without escapes.
            let start = span.start + 1 + error.offset;
            self.error(start..start + 1, error.message).with_help(error.help)
        })
    }

    fn health(&self, raw: &Spanned<RawHealth>, networks: &[String]) -> Result<HealthCheck, ConfigError> {
        let section = raw.get_ref();
        if networks.is_empty() {
            return Err(self
                .error(raw.span(), "[health] needs a network to probe")
                .with_help("add a [[network]] table: the agent probes the first interface's address"));
        }
        let number = |value: &Option<Spanned<i64>>, key: &str, range: Range<i64>, default: i64| {
            self.ranged(value, key, range, default)
        };
        let port = |value: &Spanned<i64>| number(&Some(value.clone()), "port", 1..65_536, 0).map(|p| p as u16);
        let probe = match (&section.tcp, &section.http) {
            (Some(tcp), None) => Probe::Tcp { port: port(tcp)? },
            (None, Some(http)) => {
                let http = http.get_ref();
                let path = http.path.as_ref().map_or_else(|| "/".to_owned(), |p| p.get_ref().clone());
                if !path.starts_with('/') || path.contains(char::is_whitespace) || path.len() > 1024 {
                    let span = http.path.as_ref().map_or(raw.span(), Spanned::span);
                    return Err(self
                        .error(span, format!("HTTP path `{path}` is not a path"))
                        .with_help("start it with `/`, without spaces, e.g. \"/health\""));
                }
                let status = number(&http.status, "status", 100..600, 200)? as u16;
                Probe::Http { port: port(&http.port)?, path, status }
            }
            (Some(tcp), Some(_)) => {
                return Err(self.error(tcp.span(), "[health] has both `tcp` and `http`").with_help("keep one of them"));
            }
            (None, None) => {
                return Err(self
                    .error(raw.span(), "[health] says neither `tcp` nor `http`")
                    .with_help("add `tcp = PORT` or `http = { port = 80, path = \"/\" }`"));
            }
        };
        let secs = |value: &Option<Spanned<i64>>, key: &str, min: i64, default_ms: u64| {
            number(value, key, min..3_601, (default_ms / 1000) as i64).map(|s| s as u64 * 1000)
        };
        Ok(HealthCheck {
            probe,
            interval_ms: secs(&section.interval_secs, "interval_secs", 1, HealthCheck::DEFAULT_INTERVAL_MS)?,
            timeout_ms: secs(&section.timeout_secs, "timeout_secs", 1, HealthCheck::DEFAULT_TIMEOUT_MS)?,
            grace_ms: secs(&section.grace_secs, "grace_secs", 0, HealthCheck::DEFAULT_GRACE_MS)?,
            unhealthy_after: number(
                &section.unhealthy_after,
                "unhealthy_after",
                1..101,
                i64::from(HealthCheck::DEFAULT_UNHEALTHY_AFTER),
            )? as u32,
        })
    }

    /// A number of a policy table in `range`, or `default` when the key is absent.
    fn ranged(
        &self,
        value: &Option<Spanned<i64>>,
        key: &str,
        range: Range<i64>,
        default: i64,
    ) -> Result<i64, ConfigError> {
        match value {
            None => Ok(default),
            Some(value) if range.contains(value.get_ref()) => Ok(*value.get_ref()),
            Some(value) => Err(self
                .error(value.span(), format!("`{key}` = {} is out of range", value.get_ref()))
                .with_help(format!("use a value from {} to {}", range.start, range.end - 1))),
        }
    }

    fn update(&self, raw: &RawUpdate) -> Result<UpdatePolicy, ConfigError> {
        let defaults = UpdatePolicy::default();
        let count = i64::from(limits::MAX_INSTANCES_PER_DEPLOYMENT) + 1;
        let secs = |value: &Option<Spanned<i64>>, key: &str, default_ms: u64| {
            self.ranged(value, key, 0..86_401, (default_ms / 1000) as i64).map(|s| s as u64 * 1000)
        };
        Ok(UpdatePolicy {
            max_parallel: self.ranged(&raw.max_parallel, "max_parallel", 1..count, i64::from(defaults.max_parallel))?
                as u32,
            min_healthy_time_ms: secs(
                &raw.min_healthy_time_secs,
                "min_healthy_time_secs",
                defaults.min_healthy_time_ms,
            )?,
            healthy_deadline_ms: secs(
                &raw.healthy_deadline_secs,
                "healthy_deadline_secs",
                defaults.healthy_deadline_ms,
            )?,
            canary: self.ranged(&raw.canary, "canary", 0..count, i64::from(defaults.canary))? as u32,
            auto_promote: raw.auto_promote.unwrap_or(defaults.auto_promote),
            auto_revert: raw.auto_revert.unwrap_or(defaults.auto_revert),
            shutdown_delay_ms: secs(&raw.shutdown_delay_secs, "shutdown_delay_secs", defaults.shutdown_delay_ms)?,
        })
    }

    fn reschedule(&self, raw: &RawReschedule) -> Result<ReschedulePolicy, ConfigError> {
        let defaults = ReschedulePolicy::default();
        Ok(ReschedulePolicy {
            attempts: self.ranged(&raw.attempts, "attempts", 0..1001, i64::from(defaults.attempts))? as u32,
            delay_ms: self.ranged(&raw.delay_secs, "delay_secs", 0..3601, (defaults.delay_ms / 1000) as i64)? as u64
                * 1000,
        })
    }

    fn after(&self, raw: &[Spanned<String>], app: &str) -> Result<Vec<String>, ConfigError> {
        if let Some(extra) = raw.get(limits::MAX_AFTER) {
            return Err(self.error(extra.span(), format!("more than {} apps in `after`", limits::MAX_AFTER)));
        }
        let mut after: Vec<String> = Vec::new();
        for entry in raw {
            let name = self.check_name(entry, "app name")?;
            if name == app {
                return Err(self
                    .error(entry.span(), "an app cannot come after itself")
                    .with_help("remove it from `after`"));
            }
            if after.contains(&name) {
                return Err(self.error(entry.span(), format!("`{name}` is listed twice in `after`")));
            }
            after.push(name);
        }
        Ok(after)
    }

    fn restart(&self, raw: &RawRun) -> Result<RestartPolicy, ConfigError> {
        let policy = raw.restart.as_ref().map_or("on-failure", |p| p.get_ref().as_str());
        match (policy, &raw.restart_limit) {
            ("on-failure", None) => Ok(RestartPolicy::default()),
            ("on-failure", Some(limit)) => match u32::try_from(*limit.get_ref()) {
                Ok(limit) if limit <= limits::MAX_RESTART_LIMIT => Ok(RestartPolicy::OnFailure { limit }),
                _ => Err(self
                    .error(limit.span(), format!("`restart_limit` = {} is out of range", limit.get_ref()))
                    .with_help(format!("use a value from 0 to {}", limits::MAX_RESTART_LIMIT))),
            },
            ("never" | "always", Some(limit)) => Err(self
                .error(limit.span(), format!("`restart_limit` does not apply to restart = \"{policy}\""))
                .with_help("remove it, or use restart = \"on-failure\"")),
            ("never", None) => Ok(RestartPolicy::Never),
            ("always", None) => Ok(RestartPolicy::Always),
            (other, _) => {
                let span = raw.restart.as_ref().map_or(0..0, Spanned::span);
                Err(self
                    .error(span, format!("unknown restart policy `{other}`"))
                    .with_help("use \"never\", \"on-failure\" or \"always\""))
            }
        }
    }
}

#[cfg(test)]
mod tests;
