//! Where and how instances are launched: the region, an endpoint override, the instance type and
//! the network placement. Checked here, where the settings are decoded, so a typo is refused
//! with what was wrong before any call is made; the checks are the registry's own
//! (`mirari_core::provider`), which refuses the same mistakes when a provider is added.

use mirari_core::provider::{check_endpoint, check_resource_id, validate_region};

/// How to reach EC2 and what to launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Settings {
    /// e.g. `eu-west-1`.
    pub region: String,
    /// An endpoint URL for both EC2 and EBS instead of the region's (a stand-in such as moto,
    /// or a VPC endpoint).
    pub endpoint: Option<String>,
    /// e.g. `t3.micro`.
    pub instance_type: String,
    /// The subnet to launch in (`subnet-…`); the account's default VPC when `None`.
    pub subnet: Option<String>,
    /// Security group IDs (`sg-…`); the VPC's default group when empty.
    pub security_groups: Vec<String>,
}

impl Ec2Settings {
    /// Every field's syntax: region, endpoint URL, instance type, subnet and group IDs.
    pub fn validate(&self) -> Result<(), String> {
        validate_region(&self.region)?;
        if let Some(endpoint) = &self.endpoint {
            check_endpoint(endpoint)?;
        }
        validate_instance_type(&self.instance_type)?;
        if let Some(subnet) = &self.subnet {
            check_resource_id(subnet, "subnet", "subnet")?;
        }
        for group in &self.security_groups {
            check_resource_id(group, "sg", "security group")?;
        }
        Ok(())
    }
}

/// An instance type: a family and a size joined by one dot (`t3.micro`, `u-6tb1.metal`).
fn validate_instance_type(instance_type: &str) -> Result<(), String> {
    if instance_type.is_empty() {
        return Err("instance type is empty: name one, e.g. `t3.micro`".to_owned());
    }
    let word = |part: &str| {
        !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    match instance_type.split_once('.') {
        Some((family, size)) if word(family) && word(size) => Ok(()),
        _ => Err(format!("instance type `{instance_type}` is not an EC2 instance type: expected e.g. `t3.micro`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Ec2Settings {
        Ec2Settings {
            region: "eu-west-1".to_owned(),
            endpoint: None,
            instance_type: "t3.micro".to_owned(),
            subnet: Some("subnet-0123abcd".to_owned()),
            security_groups: vec!["sg-89ef".to_owned()],
        }
    }

    #[test]
    fn settings_are_checked_field_by_field() {
        assert_eq!(settings().validate(), Ok(()));
        let with_endpoint = Ec2Settings { endpoint: Some("http://127.0.0.1:5000".to_owned()), ..settings() };
        assert_eq!(with_endpoint.validate(), Ok(()));

        let cases = [
            (Ec2Settings { region: "mars-1".to_owned(), ..settings() }, "region `mars-1`"),
            (Ec2Settings { endpoint: Some("127.0.0.1:5000".to_owned()), ..settings() }, "endpoint `127.0.0.1:5000`"),
            (Ec2Settings { endpoint: Some("http://".to_owned()), ..settings() }, "endpoint `http://`"),
            (Ec2Settings { instance_type: String::new(), ..settings() }, "instance type is empty"),
            (Ec2Settings { instance_type: "micro".to_owned(), ..settings() }, "instance type `micro`"),
            (Ec2Settings { subnet: Some("sub-1".to_owned()), ..settings() }, "`sub-1` is not a subnet ID"),
            (
                Ec2Settings { security_groups: vec!["default".to_owned()], ..settings() },
                "`default` is not a security group ID",
            ),
        ];
        for (settings, expected) in cases {
            let error = settings.validate().expect_err(expected);
            assert!(error.contains(expected), "{error:?} should contain {expected:?}");
        }
    }
}
