//! Instances: launched one per instance slot, found again by their tags, terminated.
//!
//! Every instance carries `mirari:cluster`, `mirari:instance-id`, `mirari:app` and
//! `mirari:provider`, set at launch by `RunInstances` itself (so none exists untagged), and a
//! `ClientToken`, so a retried launch (by the SDK or by the caller with the same token) makes
//! no second instance.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, Instance, InstanceStateName, InstanceType, ResourceType, Tag, TagSpecification};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::error::Ec2Error;
use crate::{Ec2, tags};

/// What EC2 accepts as user data, before base64.
pub const MAX_USER_DATA: usize = 16 * 1024;
/// EC2's limits on one resource's tags.
const MAX_TAGS: usize = 50;
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;
/// Instance IDs per `TerminateInstances` call.
const TERMINATE_BATCH: usize = 1000;

/// An instance's state, as EC2 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ec2State {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
    /// A state this SDK does not know.
    Unknown(String),
}

impl From<&InstanceStateName> for Ec2State {
    fn from(name: &InstanceStateName) -> Self {
        match name {
            InstanceStateName::Pending => Self::Pending,
            InstanceStateName::Running => Self::Running,
            InstanceStateName::ShuttingDown => Self::ShuttingDown,
            InstanceStateName::Terminated => Self::Terminated,
            InstanceStateName::Stopping => Self::Stopping,
            InstanceStateName::Stopped => Self::Stopped,
            other => Self::Unknown(other.as_str().to_owned()),
        }
    }
}

/// One EC2 instance with what Mirari's tags say of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Instance {
    /// `i-…`
    pub ec2_id: String,
    pub state: Ec2State,
    /// Why it is in its state, when EC2 says (e.g. `Client.UserInitiatedShutdown: …`).
    pub state_reason: Option<String>,
    /// The `mirari:instance-id` tag.
    pub instance_id: Option<String>,
    /// The `mirari:app` tag.
    pub app: Option<String>,
    /// The `mirari:provider` tag.
    pub provider: Option<String>,
    pub private_ip: Option<String>,
    /// The AMI it was launched from.
    pub image: Option<String>,
    /// Every tag, Mirari's included.
    pub tags: BTreeMap<String, String>,
}

impl Ec2Instance {
    fn from_sdk(instance: &Instance) -> Self {
        let tags: BTreeMap<String, String> = instance
            .tags()
            .iter()
            .filter_map(|tag| Some((tag.key()?.to_owned(), tag.value().unwrap_or_default().to_owned())))
            .collect();
        let state_reason = instance.state_reason().and_then(|reason| reason.message().or(reason.code()));
        Self {
            ec2_id: instance.instance_id().unwrap_or_default().to_owned(),
            state: instance
                .state()
                .and_then(|state| state.name())
                .map_or(Ec2State::Unknown(String::new()), Ec2State::from),
            state_reason: state_reason.filter(|reason| !reason.is_empty()).map(str::to_owned),
            instance_id: tags.get(tags::INSTANCE_ID).cloned(),
            app: tags.get(tags::APP).cloned(),
            provider: tags.get(tags::PROVIDER).cloned(),
            private_ip: instance.private_ip_address().map(str::to_owned),
            image: instance.image_id().map(str::to_owned),
            tags,
        }
    }
}

/// One instance to launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub cluster: String,
    pub provider: String,
    pub instance_id: String,
    pub app: String,
    /// The AMI (`ami-…`).
    pub image: String,
    /// Handed to the instance as EC2 user data (at most [`MAX_USER_DATA`] bytes).
    pub user_data: Vec<u8>,
    /// Makes the launch idempotent: the same token launches at most one instance (at most 64
    /// ASCII characters).
    pub client_token: String,
    /// More tags for the instance; their keys may not start with `mirari:`.
    pub extra_tags: BTreeMap<String, String>,
}

impl Launch {
    /// Every tag of the instance, Mirari's first; refuses what EC2 would.
    fn tags(&self) -> Result<Vec<Tag>, String> {
        if let Some(key) = self.extra_tags.keys().find(|key| key.starts_with(tags::PREFIX)) {
            return Err(format!("extra tag `{key}` is in the `{}` namespace, which Mirari reserves", tags::PREFIX));
        }
        let ours = [
            (tags::CLUSTER, &self.cluster),
            (tags::INSTANCE_ID, &self.instance_id),
            (tags::APP, &self.app),
            (tags::PROVIDER, &self.provider),
        ];
        let all: Vec<(&str, &String)> =
            ours.into_iter().chain(self.extra_tags.iter().map(|(key, value)| (key.as_str(), value))).collect();
        if all.len() > MAX_TAGS {
            return Err(format!("{} tags: an instance has at most {MAX_TAGS}", all.len()));
        }
        all.into_iter()
            .map(|(key, value)| {
                if key.is_empty() || key.len() > MAX_TAG_KEY {
                    Err(format!("tag key `{key}` must have 1 to {MAX_TAG_KEY} characters"))
                } else if value.len() > MAX_TAG_VALUE {
                    Err(format!("tag `{key}` has a value of {} bytes: at most {MAX_TAG_VALUE}", value.len()))
                } else {
                    Ok(Tag::builder().key(key).value(value.as_str()).build())
                }
            })
            .collect()
    }

    fn check(&self) -> Result<(), String> {
        for (what, value) in [("cluster", &self.cluster), ("instance ID", &self.instance_id), ("image", &self.image)] {
            if value.is_empty() {
                return Err(format!("the launch has no {what}"));
            }
        }
        if self.user_data.len() > MAX_USER_DATA {
            return Err(format!("user data of {} bytes: EC2 takes at most {MAX_USER_DATA}", self.user_data.len()));
        }
        let token = &self.client_token;
        if token.is_empty() || token.len() > 64 || !token.is_ascii() {
            return Err(format!("client token `{token}` must be 1 to 64 ASCII characters"));
        }
        Ok(())
    }
}

fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder().name(format!("tag:{key}")).values(value).build()
}

impl Ec2 {
    /// Every instance tagged `mirari:cluster=CLUSTER` (all pages), in any state, with its tags.
    pub async fn describe_cluster(&self, cluster: &str) -> Result<Vec<Ec2Instance>, Ec2Error> {
        self.describe(vec![tag_filter(tags::CLUSTER, cluster)]).await
    }

    /// The instance tagged `mirari:instance-id=ID` in CLUSTER that is not terminated (nor on its
    /// way there), if any; of several (which a ClientToken should prevent), the first launched.
    pub async fn find_instance(&self, cluster: &str, instance_id: &str) -> Result<Option<Ec2Instance>, Ec2Error> {
        let alive = Filter::builder()
            .name("instance-state-name")
            .set_values(Some(["pending", "running", "stopping", "stopped"].map(str::to_owned).to_vec()))
            .build();
        let filters = vec![tag_filter(tags::CLUSTER, cluster), tag_filter(tags::INSTANCE_ID, instance_id), alive];
        Ok(self.describe(filters).await?.into_iter().next())
    }

    /// Instances matching `filters`, the first launched first.
    async fn describe(&self, filters: Vec<Filter>) -> Result<Vec<Ec2Instance>, Ec2Error> {
        const OPERATION: &str = "DescribeInstances";
        let pages = self
            .ec2
            .describe_instances()
            .set_filters(Some(filters))
            .max_results(1000)
            .into_paginator()
            .send()
            .try_collect()
            .await
            .map_err(|e| Ec2Error::from_sdk(OPERATION, e))?;
        let mut instances: Vec<&Instance> =
            pages.iter().flat_map(|page| page.reservations()).flat_map(|r| r.instances()).collect();
        instances.sort_by(|a, b| {
            let key = |i: &Instance| {
                (i.launch_time().map(|t| (t.secs(), t.subsec_nanos())), i.instance_id().map(str::to_owned))
            };
            key(a).cmp(&key(b))
        });
        Ok(instances.into_iter().map(Ec2Instance::from_sdk).collect())
    }

    /// Launches one instance (`RunInstances` with MinCount = MaxCount = 1) of the configured
    /// type, in the configured subnet and security groups, tagged as it launches.
    pub async fn launch(&self, launch: &Launch) -> Result<Ec2Instance, Ec2Error> {
        const OPERATION: &str = "RunInstances";
        launch.check().map_err(|message| Ec2Error::invalid(OPERATION, message))?;
        let tags = launch.tags().map_err(|message| Ec2Error::invalid(OPERATION, message))?;
        let mut request = self
            .ec2
            .run_instances()
            .min_count(1)
            .max_count(1)
            .client_token(&launch.client_token)
            .image_id(&launch.image)
            .instance_type(InstanceType::from(self.settings.instance_type.as_str()))
            .set_subnet_id(self.settings.subnet.clone())
            .tag_specifications(
                TagSpecification::builder().resource_type(ResourceType::Instance).set_tags(Some(tags)).build(),
            );
        if !self.settings.security_groups.is_empty() {
            request = request.set_security_group_ids(Some(self.settings.security_groups.clone()));
        }
        if !launch.user_data.is_empty() {
            request = request.user_data(BASE64.encode(&launch.user_data));
        }
        let output = request.send().await.map_err(|e| Ec2Error::from_sdk(OPERATION, e))?;
        match output.instances() {
            [instance] => Ok(Ec2Instance::from_sdk(instance)),
            other => Err(Ec2Error::unexpected(OPERATION, format!("asked for one instance, got {}", other.len()))),
        }
    }

    /// Terminates the instances (`i-…`); terminating one already terminated is no error.
    pub async fn terminate(&self, ec2_ids: &[String]) -> Result<(), Ec2Error> {
        for batch in ec2_ids.chunks(TERMINATE_BATCH) {
            self.ec2
                .terminate_instances()
                .set_instance_ids(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| Ec2Error::from_sdk("TerminateInstances", e))?;
        }
        Ok(())
    }

    /// The instance's console output (`GetConsoleOutput`, the latest EC2 keeps), decoded; bytes
    /// that are not UTF-8 are replaced.
    pub async fn console_output(&self, ec2_id: &str) -> Result<String, Ec2Error> {
        const OPERATION: &str = "GetConsoleOutput";
        let output = self
            .ec2
            .get_console_output()
            .instance_id(ec2_id)
            .send()
            .await
            .map_err(|e| Ec2Error::from_sdk(OPERATION, e))?;
        let encoded = output.output().unwrap_or_default();
        let bytes = BASE64
            .decode(encoded.trim())
            .map_err(|e| Ec2Error::unexpected(OPERATION, format!("console output is not base64: {e}")))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch() -> Launch {
        Launch {
            cluster: "prod".to_owned(),
            provider: "aws-eu".to_owned(),
            instance_id: "00000000000000ff".to_owned(),
            app: "hello".to_owned(),
            image: "ami-12345678".to_owned(),
            user_data: b"mirari".to_vec(),
            client_token: "00000000000000ff-1".to_owned(),
            extra_tags: BTreeMap::from([("team".to_owned(), "edge".to_owned())]),
        }
    }

    fn pairs(tags: &[Tag]) -> Vec<(&str, &str)> {
        tags.iter().map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default())).collect()
    }

    #[test]
    fn an_instance_carries_mirari_tags_then_the_extra_ones() {
        let tags = launch().tags().expect("valid tags");
        assert_eq!(
            pairs(&tags),
            [
                ("mirari:cluster", "prod"),
                ("mirari:instance-id", "00000000000000ff"),
                ("mirari:app", "hello"),
                ("mirari:provider", "aws-eu"),
                ("team", "edge"),
            ]
        );
    }

    #[test]
    fn launches_ec2_would_refuse_are_refused_before_sending() {
        let reserved = Launch { extra_tags: BTreeMap::from([("mirari:app".to_owned(), "x".to_owned())]), ..launch() };
        assert!(reserved.tags().expect_err("reserved").contains("`mirari:app` is in the `mirari:` namespace"));
        let long = Launch { extra_tags: BTreeMap::from([("k".to_owned(), "v".repeat(257))]), ..launch() };
        assert!(long.tags().expect_err("long value").contains("at most 256"));
        let many = Launch { extra_tags: (0..47).map(|i| (format!("k{i}"), String::new())).collect(), ..launch() };
        assert!(many.tags().expect_err("too many").contains("51 tags"));

        assert_eq!(launch().check(), Ok(()));
        let big = Launch { user_data: vec![0; MAX_USER_DATA + 1], ..launch() };
        assert!(big.check().expect_err("big").contains("16384"));
        let token = Launch { client_token: "t".repeat(65), ..launch() };
        assert!(token.check().expect_err("token").contains("1 to 64 ASCII"));
        let no_image = Launch { image: String::new(), ..launch() };
        assert_eq!(no_image.check(), Err("the launch has no image".to_owned()));
    }

    #[test]
    fn instances_are_read_with_their_tags() {
        use aws_sdk_ec2::types::{InstanceState, StateReason};
        let instance = Instance::builder()
            .instance_id("i-0abc")
            .state(InstanceState::builder().name(InstanceStateName::ShuttingDown).build())
            .state_reason(
                StateReason::builder()
                    .code("Client.UserInitiatedShutdown")
                    .message("Client.UserInitiatedShutdown: User initiated shutdown")
                    .build(),
            )
            .private_ip_address("10.0.0.7")
            .image_id("ami-1")
            .tags(Tag::builder().key("mirari:instance-id").value("0f").build())
            .tags(Tag::builder().key("mirari:app").value("hello").build())
            .tags(Tag::builder().key("Name").value("web").build())
            .build();
        let read = Ec2Instance::from_sdk(&instance);
        assert_eq!(read.ec2_id, "i-0abc");
        assert_eq!(read.state, Ec2State::ShuttingDown);
        assert_eq!(read.state_reason.as_deref(), Some("Client.UserInitiatedShutdown: User initiated shutdown"));
        assert_eq!(
            (read.instance_id.as_deref(), read.app.as_deref(), read.provider),
            (Some("0f"), Some("hello"), None)
        );
        assert_eq!((read.private_ip.as_deref(), read.image.as_deref()), (Some("10.0.0.7"), Some("ami-1")));
        assert_eq!(read.tags.get("Name").map(String::as_str), Some("web"));
        assert_eq!(Ec2State::from(&InstanceStateName::from("hibernated")), Ec2State::Unknown("hibernated".to_owned()));
    }
}
