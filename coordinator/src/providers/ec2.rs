//! Amazon EC2 as a [`Cloud`]: `mirari-ec2`'s calls, in the registry's terms.

use std::path::Path;

use mirari_core::digest::Digest;
use mirari_core::ids::InstanceId;
use mirari_core::provider::{Machine, MachineState, Provider};
use mirari_ec2::{Ec2, Ec2Error, Ec2ErrorKind, Ec2Instance, Ec2Settings, Ec2State};

use super::{Cloud, CloudError, CloudErrorKind, Launch};

pub struct Ec2Cloud {
    ec2: Ec2,
    /// The operator's tags for every machine.
    tags: std::collections::BTreeMap<String, String>,
}

impl Ec2Cloud {
    pub async fn connect(provider: &Provider) -> Result<Self, CloudError> {
        let settings = Ec2Settings {
            region: provider.region.clone(),
            endpoint: provider.endpoint.clone(),
            instance_type: provider.instance_type.clone(),
            subnet: provider.subnet.clone(),
            security_groups: provider.security_groups.clone(),
        };
        Ok(Self { ec2: Ec2::connect(&settings).await?, tags: provider.tags.clone() })
    }
}

fn machine(instance: Ec2Instance) -> Machine {
    Machine {
        instance: instance.instance_id.as_deref().and_then(|id| id.parse::<InstanceId>().ok()),
        state: match instance.state {
            Ec2State::Pending => MachineState::Pending,
            Ec2State::Running => MachineState::Running,
            Ec2State::Stopping => MachineState::Stopping,
            Ec2State::Stopped => MachineState::Stopped,
            Ec2State::ShuttingDown => MachineState::ShuttingDown,
            Ec2State::Terminated => MachineState::Terminated,
            // A state this SDK does not know yet: alive, so it is neither launched again nor
            // taken for gone.
            Ec2State::Unknown(_) => MachineState::Pending,
        },
        reason: instance.state_reason,
        cloud_id: instance.ec2_id,
    }
}

impl From<Ec2Error> for CloudError {
    fn from(error: Ec2Error) -> Self {
        let kind = match error.kind {
            Ec2ErrorKind::Throttled | Ec2ErrorKind::Server | Ec2ErrorKind::Io | Ec2ErrorKind::Other => {
                CloudErrorKind::Retry
            }
            Ec2ErrorKind::Capacity => CloudErrorKind::Capacity,
            Ec2ErrorKind::Auth => CloudErrorKind::Auth,
            Ec2ErrorKind::Unreachable => CloudErrorKind::Unreachable,
            Ec2ErrorKind::Invalid => CloudErrorKind::Invalid,
        };
        CloudError { kind, code: error.code, message: error.message }
    }
}

#[async_trait::async_trait]
impl Cloud for Ec2Cloud {
    async fn machines(&self, cluster: &str, provider: &str) -> Result<Vec<Machine>, CloudError> {
        let listed = self.ec2.describe_cluster(cluster).await?;
        Ok(listed.into_iter().filter(|i| i.provider.as_deref() == Some(provider)).map(machine).collect())
    }

    async fn find(&self, cluster: &str, instance: InstanceId) -> Result<Option<Machine>, CloudError> {
        Ok(self.ec2.find_instance(cluster, &instance.to_string()).await?.map(machine))
    }

    async fn launch(&self, launch: &Launch) -> Result<Machine, CloudError> {
        let instance = launch.instance.to_string();
        let request = mirari_ec2::Launch {
            cluster: launch.cluster.clone(),
            provider: launch.provider.clone(),
            instance_id: instance.clone(),
            app: launch.app.clone(),
            image: launch.image.clone(),
            user_data: launch.user_data.clone(),
            // Real EC2 answers a retried launch with the first one's machine; the look-up by
            // tag before each launch covers endpoints that ignore it.
            client_token: format!("mirari-{instance}"),
            extra_tags: self.tags.clone(),
        };
        Ok(machine(self.ec2.launch(&request).await?))
    }

    async fn terminate(&self, cloud_ids: &[String]) -> Result<(), CloudError> {
        Ok(self.ec2.terminate(cloud_ids).await?)
    }

    async fn image(&self, digest: Digest, raw: &Path) -> Result<String, CloudError> {
        if let Some(ami) = self.ec2.find_image(&digest).await? {
            return Ok(ami);
        }
        let image = self.ec2.upload_image(raw, &digest, &format!("mirari-{}", digest.short())).await?;
        tracing::info!(ami = %image.ami, snapshot = %image.snapshot, %digest, "registered an image");
        Ok(image.ami)
    }

    async fn console(&self, cloud_id: &str) -> Result<String, CloudError> {
        Ok(self.ec2.console_output(cloud_id).await?)
    }
}
