//! The EC2 provider's calls to AWS: one instance per instance slot, found again by its tags, and
//! AMIs made of raw disk images. The coordinator's leader drives these; this crate decides
//! nothing about what should run, it only performs a call and says how it failed.
//!
//! - [`settings`]: the region, endpoint, instance type and network placement, checked.
//! - [`instances`]: launch (tagged, idempotent by client token), describe by tag, terminate,
//!   console output.
//! - [`image`]: a raw disk image into an EBS snapshot (EBS direct APIs) and an AMI, found again
//!   by its digest; a snapshot read back.
//! - [`error`]: every failure as an [`Ec2Error`] of a kind the caller acts on.
//!
//! Credentials come from the SDK's standard chain (environment, profile files, IMDS). Every
//! call has a connect timeout and a per-attempt timeout, and the SDK's standard retry mode
//! (exponential back-off with jitter, throttling and transient errors) makes at most
//! [`MAX_ATTEMPTS`] attempts before an error reaches the caller. HTTPS is rustls on ring.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

pub mod error;
pub mod image;
pub mod instances;
pub mod settings;

pub use error::{Ec2Error, Ec2ErrorKind};
pub use image::Image;
pub use instances::{Ec2Instance, Ec2State, Launch};
pub use settings::Ec2Settings;

/// Attempts per call, the first included, before its error is returned.
pub const MAX_ATTEMPTS: u32 = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One attempt of one call (a 512 KiB block upload included).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// The tags Mirari puts on what it makes.
pub mod tags {
    /// Every tag key Mirari sets starts with this.
    pub const PREFIX: &str = "mirari:";
    pub const CLUSTER: &str = "mirari:cluster";
    pub const INSTANCE_ID: &str = "mirari:instance-id";
    pub const APP: &str = "mirari:app";
    pub const PROVIDER: &str = "mirari:provider";
    /// On AMIs and their snapshots: the sha256 of the raw disk image.
    pub const IMAGE_DIGEST: &str = "mirari:image-digest";
}

/// EC2 and EBS clients for one region (or endpoint), with the settings launches use.
#[derive(Debug, Clone)]
pub struct Ec2 {
    ec2: aws_sdk_ec2::Client,
    ebs: aws_sdk_ebs::Client,
    settings: Ec2Settings,
}

impl Ec2 {
    /// Clients for `settings`, after checking them; credentials are looked up when the first
    /// call needs them.
    pub async fn connect(settings: &Ec2Settings) -> Result<Self, Ec2Error> {
        settings.validate().map_err(|message| Ec2Error::invalid("Connect", message))?;
        let https =
            aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .http_client(https)
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            );
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let config = loader.load().await;
        Ok(Self {
            ec2: aws_sdk_ec2::Client::new(&config),
            ebs: aws_sdk_ebs::Client::new(&config),
            settings: settings.clone(),
        })
    }
}
