//! Wire <-> core conversions. What arrives from the wire is checked here, once, so the layers
//! above only see valid core types.

use mirari_core::digest::Digest;
use mirari_core::health::{Health, HealthCheck, Probe};
use mirari_core::ids::InstanceId;
use mirari_core::instance::{ExitStatus, Phase};
use mirari_core::limits;
use mirari_core::network::{self, Interface};
use mirari_core::spec::{Accelerator, FileImageRef, InstanceSpec, RestartPolicy, RunPolicy};
use mirari_core::target::Target;

use crate::agent as pb;

/// A wire message that does not describe a valid core value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct WireError {
    pub field: &'static str,
    pub reason: String,
}

impl WireError {
    fn new(field: &'static str, reason: impl ToString) -> Self {
        Self { field, reason: reason.to_string() }
    }
}

impl From<WireError> for tonic::Status {
    fn from(error: WireError) -> Self {
        tonic::Status::invalid_argument(error.to_string())
    }
}

/// Refuses a number above its limit (see `mirari_core::limits`).
pub fn bounded<T: PartialOrd + std::fmt::Display>(field: &'static str, value: T, max: T) -> Result<T, WireError> {
    match limits::exceeds(field, &value, &max) {
        Some(reason) => Err(WireError::new(field, reason)),
        None => Ok(value),
    }
}

/// Refuses an empty or overlong name.
pub fn name(field: &'static str, text: &str) -> Result<String, WireError> {
    if text.is_empty() {
        return Err(WireError::new(field, "is empty"));
    }
    bounded(field, text.len(), limits::MAX_NAME_BYTES).map(|_| text.to_owned())
}

/// Labels or constraints: bounded in number and size.
pub fn labels(
    field: &'static str,
    labels: &std::collections::HashMap<String, String>,
) -> Result<std::collections::BTreeMap<String, String>, WireError> {
    bounded(field, labels.len(), limits::MAX_LABELS)?;
    labels
        .iter()
        .map(|(key, value)| {
            Ok((name(field, key)?, bounded(field, value.len(), limits::MAX_NAME_BYTES).map(|_| value.clone())?))
        })
        .collect()
}

pub fn parse_id(field: &'static str, text: &str) -> Result<InstanceId, WireError> {
    text.parse().map_err(|e| WireError::new(field, e))
}

pub fn parse_digest(field: &'static str, text: &str) -> Result<Digest, WireError> {
    text.parse().map_err(|e| WireError::new(field, e))
}

impl From<&InstanceSpec> for pb::InstanceSpec {
    fn from(spec: &InstanceSpec) -> Self {
        Self {
            app: spec.app.clone(),
            version: spec.version.clone(),
            target: spec.target.name().to_owned(),
            artifact_sha256: spec.artifact.to_string(),
            files: spec
                .files
                .iter()
                .map(|f| pb::FileImage { name: f.name.clone(), sha256: f.digest.to_string() })
                .collect(),
            run: Some(pb::RunPolicy::from(&spec.run)),
            interfaces: spec.interfaces.iter().map(pb::Interface::from).collect(),
        }
    }
}

impl TryFrom<&pb::InstanceSpec> for InstanceSpec {
    type Error = WireError;

    fn try_from(spec: &pb::InstanceSpec) -> Result<Self, WireError> {
        let run = spec.run.as_ref().ok_or_else(|| WireError::new("spec.run", "missing"))?;
        bounded("spec.files", spec.files.len(), limits::MAX_FILE_IMAGES)?;
        Ok(Self {
            app: name("spec.app", &spec.app)?,
            version: name("spec.version", &spec.version)?,
            target: spec.target.parse().map_err(|e| WireError::new("spec.target", e))?,
            artifact: parse_digest("spec.artifact_sha256", &spec.artifact_sha256)?,
            files: spec
                .files
                .iter()
                .map(|f| {
                    Ok(FileImageRef { name: f.name.clone(), digest: parse_digest("spec.files.sha256", &f.sha256)? })
                })
                .collect::<Result<_, WireError>>()?,
            run: RunPolicy::try_from(run)?,
            interfaces: interfaces("spec.interfaces", &spec.interfaces)?,
        })
    }
}

impl From<&Interface> for pb::Interface {
    fn from(interface: &Interface) -> Self {
        Self {
            network: interface.network.clone(),
            address: interface.address.to_string(),
            gateway: interface.gateway.map(|g| g.to_string()).unwrap_or_default(),
            mac: interface.mac.to_string(),
        }
    }
}

/// A list of interfaces: bounded, each with a valid network name, address, gateway and MAC.
pub fn interfaces(field: &'static str, list: &[pb::Interface]) -> Result<Vec<Interface>, WireError> {
    bounded(field, list.len(), limits::MAX_INTERFACES)?;
    list.iter()
        .map(|i| {
            network::check_name(&i.network).map_err(|e| WireError::new(field, e))?;
            Ok(Interface {
                network: i.network.clone(),
                address: i.address.parse().map_err(|e| WireError::new(field, e))?,
                gateway: optional_address(field, &i.gateway)?,
                mac: i.mac.parse().map_err(|e| WireError::new(field, e))?,
            })
        })
        .collect()
}

/// An IPv4 address, or none when empty.
pub fn optional_address(field: &'static str, text: &str) -> Result<Option<std::net::Ipv4Addr>, WireError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| WireError::new(field, format!("`{text}` is not an IPv4 address")))
}

/// Network names: bounded in number, each valid, none twice.
pub fn network_names(field: &'static str, names: &[String], max: usize) -> Result<Vec<String>, WireError> {
    bounded(field, names.len(), max)?;
    for (index, name) in names.iter().enumerate() {
        network::check_name(name).map_err(|e| WireError::new(field, e))?;
        if names[..index].contains(name) {
            return Err(WireError::new(field, format!("`{name}` is listed twice")));
        }
    }
    Ok(names.to_vec())
}

impl From<&HealthCheck> for pb::HealthCheck {
    fn from(check: &HealthCheck) -> Self {
        let probe = match &check.probe {
            Probe::Tcp { port } => pb::health_check::Probe::TcpPort(u32::from(*port)),
            Probe::Http { port, path, status } => pb::health_check::Probe::Http(pb::HttpProbe {
                port: u32::from(*port),
                path: path.clone(),
                status: u32::from(*status),
            }),
        };
        Self {
            probe: Some(probe),
            interval_ms: check.interval_ms,
            timeout_ms: check.timeout_ms,
            grace_ms: check.grace_ms,
            unhealthy_after: check.unhealthy_after,
        }
    }
}

impl TryFrom<&pb::HealthCheck> for HealthCheck {
    type Error = WireError;

    fn try_from(check: &pb::HealthCheck) -> Result<Self, WireError> {
        let port = |port: u32| {
            u16::try_from(port).map_err(|_| WireError::new("run.health", format!("port {port} is above 65535")))
        };
        let probe = match check.probe.as_ref().ok_or_else(|| WireError::new("run.health.probe", "missing"))? {
            pb::health_check::Probe::TcpPort(p) => Probe::Tcp { port: port(*p)? },
            pb::health_check::Probe::Http(http) => Probe::Http {
                port: port(http.port)?,
                path: http.path.clone(),
                status: u16::try_from(http.status).unwrap_or(0),
            },
        };
        let check = HealthCheck {
            probe,
            interval_ms: check.interval_ms,
            timeout_ms: check.timeout_ms,
            grace_ms: check.grace_ms,
            unhealthy_after: check.unhealthy_after,
        };
        check.validate().map_err(|e| WireError::new("run.health", e))?;
        Ok(check)
    }
}

impl From<Health> for pb::Health {
    fn from(health: Health) -> Self {
        match health {
            Health::None => pb::Health::None,
            Health::Starting => pb::Health::Starting,
            Health::Healthy => pb::Health::Healthy,
            Health::Unhealthy => pb::Health::Unhealthy,
        }
    }
}

impl From<pb::Health> for Health {
    fn from(health: pb::Health) -> Self {
        match health {
            pb::Health::None => Health::None,
            pb::Health::Starting => Health::Starting,
            pb::Health::Healthy => Health::Healthy,
            pb::Health::Unhealthy => Health::Unhealthy,
        }
    }
}

impl From<&RunPolicy> for pb::RunPolicy {
    fn from(run: &RunPolicy) -> Self {
        let (policy, limit) = match run.restart {
            RestartPolicy::Never => ("never", 0),
            RestartPolicy::OnFailure { limit } => ("on-failure", limit),
            RestartPolicy::Always => ("always", 0),
        };
        Self {
            memory_mib: run.memory_mib,
            vcpus: run.vcpus,
            boot_args: run.boot_args.clone(),
            restart: Some(pb::RestartPolicy { policy: policy.to_owned(), limit }),
            accelerator: run.accelerator.name().to_owned(),
            stop_timeout_secs: run.stop_timeout_secs,
            networks: run.networks.clone(),
            health: run.health.as_ref().map(pb::HealthCheck::from),
        }
    }
}

impl TryFrom<&pb::RunPolicy> for RunPolicy {
    type Error = WireError;

    fn try_from(run: &pb::RunPolicy) -> Result<Self, WireError> {
        let restart = run.restart.as_ref().ok_or_else(|| WireError::new("run.restart", "missing"))?;
        let restart = match restart.policy.as_str() {
            "never" => RestartPolicy::Never,
            "on-failure" => RestartPolicy::OnFailure {
                limit: bounded("run.restart.limit", restart.limit, limits::MAX_RESTART_LIMIT)?,
            },
            "always" => RestartPolicy::Always,
            other => {
                return Err(WireError::new("run.restart.policy", format!("unknown `{other}`")));
            }
        };
        let accelerator = match run.accelerator.as_str() {
            "kvm" => Accelerator::Kvm,
            "tcg" => Accelerator::Tcg,
            "auto" => Accelerator::Auto,
            other => {
                return Err(WireError::new("run.accelerator", format!("unknown `{other}`")));
            }
        };
        if run.memory_mib == 0 || run.vcpus == 0 {
            return Err(WireError::new("run", "memory_mib and vcpus must be at least 1"));
        }
        bounded("run.boot_args", run.boot_args.len(), limits::MAX_BOOT_ARGS)?;
        let length: usize = run.boot_args.iter().map(|arg| arg.len() + 1).sum();
        bounded("run.boot_args bytes", length, limits::MAX_BOOT_ARGS_BYTES)?;
        Ok(Self {
            memory_mib: bounded("run.memory_mib", run.memory_mib, limits::MAX_MEMORY_MIB)?,
            vcpus: bounded("run.vcpus", run.vcpus, limits::MAX_VCPUS)?,
            boot_args: run.boot_args.clone(),
            restart,
            accelerator,
            stop_timeout_secs: bounded("run.stop_timeout_secs", run.stop_timeout_secs, limits::MAX_STOP_TIMEOUT_SECS)?,
            networks: network_names("run.networks", &run.networks, limits::MAX_INTERFACES)?,
            health: run.health.as_ref().map(HealthCheck::try_from).transpose()?,
        })
    }
}

impl From<ExitStatus> for pb::ExitStatus {
    fn from(exit: ExitStatus) -> Self {
        let how = match exit {
            ExitStatus::Code(code) => pb::exit_status::How::Code(code),
            ExitStatus::Signal(signal) => pb::exit_status::How::Signal(signal),
        };
        Self { how: Some(how) }
    }
}

impl From<&pb::ExitStatus> for Option<ExitStatus> {
    fn from(exit: &pb::ExitStatus) -> Self {
        match exit.how? {
            pb::exit_status::How::Code(code) => Some(ExitStatus::Code(code)),
            pb::exit_status::How::Signal(signal) => Some(ExitStatus::Signal(signal)),
        }
    }
}

impl From<Phase> for pb::Phase {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Pending => pb::Phase::Pending,
            Phase::Starting => pb::Phase::Starting,
            Phase::Running => pb::Phase::Running,
            Phase::Stopping => pb::Phase::Stopping,
            Phase::Exited => pb::Phase::Exited,
            Phase::Stopped => pb::Phase::Stopped,
            Phase::Failed => pb::Phase::Failed,
            Phase::Lost => pb::Phase::Lost,
        }
    }
}

impl TryFrom<pb::Phase> for Phase {
    type Error = WireError;

    fn try_from(phase: pb::Phase) -> Result<Self, WireError> {
        Ok(match phase {
            pb::Phase::Unspecified => return Err(WireError::new("phase", "unspecified")),
            pb::Phase::Pending => Phase::Pending,
            pb::Phase::Starting => Phase::Starting,
            pb::Phase::Running => Phase::Running,
            pb::Phase::Stopping => Phase::Stopping,
            pb::Phase::Exited => Phase::Exited,
            pb::Phase::Stopped => Phase::Stopped,
            pb::Phase::Failed => Phase::Failed,
            pb::Phase::Lost => Phase::Lost,
        })
    }
}

/// Parses a target name from the wire.
pub fn parse_target(field: &'static str, text: &str) -> Result<Target, WireError> {
    text.parse().map_err(|e| WireError::new(field, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_survive_the_wire() {
        let spec = InstanceSpec {
            app: "hello".into(),
            version: "1".into(),
            target: Target::Kvm,
            artifact: Digest::of(b"kernel"),
            files: vec![FileImageRef { name: "data".into(), digest: Digest::of(b"tar") }],
            run: RunPolicy {
                boot_args: vec!["--ip=10.0.0.2".into()],
                restart: RestartPolicy::OnFailure { limit: 2 },
                accelerator: Accelerator::Tcg,
                networks: vec!["service".into()],
                health: Some(HealthCheck {
                    probe: Probe::Http { port: 80, path: "/".into(), status: 200 },
                    interval_ms: 2000,
                    timeout_ms: 1000,
                    grace_ms: 0,
                    unhealthy_after: 3,
                }),
                ..RunPolicy::default()
            },
            interfaces: vec![Interface {
                network: "service".into(),
                address: "10.88.0.7/16".parse().unwrap(),
                gateway: None,
                mac: "02:00:00:00:00:07".parse().unwrap(),
            }],
        };
        let wire = pb::InstanceSpec::from(&spec);
        assert_eq!(InstanceSpec::try_from(&wire), Ok(spec));
    }

    #[test]
    fn rejects_what_core_would_not_accept() {
        let mut wire = pb::InstanceSpec::from(&InstanceSpec {
            app: "a".into(),
            version: "1".into(),
            target: Target::Unix,
            artifact: Digest::of(b""),
            files: vec![],
            run: RunPolicy::default(),
            interfaces: vec![],
        });
        wire.target = "hvt".into();
        let error = InstanceSpec::try_from(&wire).unwrap_err();
        assert_eq!(error.field, "spec.target");
    }

    #[test]
    fn refuses_numbers_above_their_limits() {
        let good = pb::RunPolicy::from(&RunPolicy::default());
        type Spoil = fn(&mut pb::RunPolicy);
        let cases: [(Spoil, &str); 4] = [
            (|run| run.stop_timeout_secs = u32::MAX, "run.stop_timeout_secs"),
            (|run| run.memory_mib = u32::MAX, "run.memory_mib"),
            (|run| run.boot_args = vec!["x".into(); limits::MAX_BOOT_ARGS + 1], "run.boot_args"),
            (|run| run.boot_args = vec!["x".repeat(limits::MAX_BOOT_ARGS_BYTES)], "run.boot_args bytes"),
        ];
        for (spoil, field) in cases {
            let mut run = good.clone();
            spoil(&mut run);
            let error = RunPolicy::try_from(&run).unwrap_err();
            assert_eq!(error.field, field);
            assert!(error.reason.contains("above the limit"), "{error}");
        }
    }
}

impl From<&mirari_core::registry::Event> for crate::coordinator::ClusterEvent {
    fn from(event: &mirari_core::registry::Event) -> Self {
        let kind = &event.kind;
        Self {
            index: event.index,
            offset: event.offset,
            at_ms: event.at_ms,
            kind: kind.name().to_owned(),
            app: kind.app().unwrap_or_default().to_owned(),
            host: kind.host().map(|host| host.0.clone()).unwrap_or_default(),
            instance: kind.instance().map_or(0, InstanceId::as_u64),
            text: kind.to_string(),
        }
    }
}

/// A cluster event as JSON, the same for `mirari cluster events -o json` and the web console.
#[derive(Debug, serde::Serialize)]
pub struct ClusterEventJson<'a> {
    pub index: u64,
    pub offset: u32,
    pub at_ms: u64,
    pub kind: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub app: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub host: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub text: &'a str,
}

impl<'a> From<&'a crate::coordinator::ClusterEvent> for ClusterEventJson<'a> {
    fn from(event: &'a crate::coordinator::ClusterEvent) -> Self {
        Self {
            index: event.index,
            offset: event.offset,
            at_ms: event.at_ms,
            kind: &event.kind,
            app: &event.app,
            host: &event.host,
            instance: (event.instance != 0).then(|| InstanceId::from_u64(event.instance).to_string()),
            text: &event.text,
        }
    }
}
