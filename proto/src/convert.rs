//! Wire <-> core conversions. What arrives from the wire is checked here, once, so the layers
//! above only see valid core types.

use mirari_core::digest::Digest;
use mirari_core::ids::InstanceId;
use mirari_core::instance::{ExitStatus, Phase};
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
        }
    }
}

impl TryFrom<&pb::InstanceSpec> for InstanceSpec {
    type Error = WireError;

    fn try_from(spec: &pb::InstanceSpec) -> Result<Self, WireError> {
        let run = spec.run.as_ref().ok_or_else(|| WireError::new("spec.run", "missing"))?;
        Ok(Self {
            app: spec.app.clone(),
            version: spec.version.clone(),
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
        })
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
        }
    }
}

impl TryFrom<&pb::RunPolicy> for RunPolicy {
    type Error = WireError;

    fn try_from(run: &pb::RunPolicy) -> Result<Self, WireError> {
        let restart = run.restart.as_ref().ok_or_else(|| WireError::new("run.restart", "missing"))?;
        let restart = match restart.policy.as_str() {
            "never" => RestartPolicy::Never,
            "on-failure" => RestartPolicy::OnFailure { limit: restart.limit },
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
        Ok(Self {
            memory_mib: run.memory_mib,
            vcpus: run.vcpus,
            boot_args: run.boot_args.clone(),
            restart,
            accelerator,
            stop_timeout_secs: run.stop_timeout_secs,
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
                ..RunPolicy::default()
            },
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
        });
        wire.target = "hvt".into();
        let error = InstanceSpec::try_from(&wire).unwrap_err();
        assert_eq!(error.field, "spec.target");
    }
}
