//! The EC2 provider's calls (`mirari-ec2`) against moto with signature checking and AMI
//! validation on, each test with a moto of its own and its credentials found through the SDK's
//! standard chain (see `mirari_tests::moto`). moto's state is checked through boto3, a client
//! that is not the one under test. Faults EC2 gives under load come from a proxy in front of
//! moto. Run with `cargo test -p mirari-tests --features ec2 --test ec2_api`.
#![cfg(feature = "ec2")]

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mirari_core::digest::{Digest, Hasher};
use mirari_ec2::image::BLOCK;
use mirari_ec2::{Ec2, Ec2ErrorKind, Ec2Settings, Ec2State, Launch, MAX_ATTEMPTS};
use mirari_tests::fault_proxy::{Fault, FaultProxy};
use mirari_tests::moto::{self, MotoEnv, REGION, Secret};
use serde_json::{Value, json};

fn settings(endpoint: &str) -> Ec2Settings {
    Ec2Settings {
        region: REGION.to_owned(),
        endpoint: Some(endpoint.to_owned()),
        instance_type: "t3.micro".to_owned(),
        subnet: None,
        security_groups: Vec::new(),
    }
}

fn launch(cluster: &str, instance_id: &str, image: &str) -> Launch {
    Launch {
        cluster: cluster.to_owned(),
        provider: "aws-test".to_owned(),
        instance_id: instance_id.to_owned(),
        app: "hello".to_owned(),
        image: image.to_owned(),
        user_data: format!("mirari instance {instance_id}\n").into_bytes(),
        client_token: format!("{cluster}-{instance_id}"),
        extra_tags: BTreeMap::from([("team".to_owned(), "edge".to_owned())]),
    }
}

/// An AMI registered with boto3 (moto makes one of any name).
fn any_image(moto: &MotoEnv) -> String {
    let made = moto.call("ec2", "register_image", json!({ "Name": "any-image" }));
    made["ImageId"].as_str().expect("ImageId").to_owned()
}

fn tags_of(resource: &Value) -> BTreeMap<String, String> {
    let tags = resource["Tags"].as_array().cloned().unwrap_or_default();
    tags.iter()
        .map(|tag| (tag["Key"].as_str().unwrap_or("").to_owned(), tag["Value"].as_str().unwrap_or("").to_owned()))
        .collect()
}

/// boto3's view of one instance.
fn boto3_instance(moto: &MotoEnv, ec2_id: &str) -> Value {
    let found = moto.call("ec2", "describe_instances", json!({ "InstanceIds": [ec2_id] }));
    found["Reservations"][0]["Instances"][0].clone()
}

#[test]
fn instances_are_launched_tagged_found_by_tag_and_terminated() {
    moto::run(Secret::Right, |moto| async move {
        // A subnet of moto's default VPC and a security group of our own, so the launch has
        // both to pass on.
        let subnets = moto.call("ec2", "describe_subnets", json!({}));
        let subnet = subnets["Subnets"][0]["SubnetId"].as_str().expect("a default subnet").to_owned();
        let vpc = subnets["Subnets"][0]["VpcId"].as_str().expect("its VPC").to_owned();
        let group = moto.call(
            "ec2",
            "create_security_group",
            json!({ "GroupName": "mirari", "Description": "t", "VpcId": vpc }),
        );
        let group = group["GroupId"].as_str().expect("GroupId").to_owned();
        let ec2 = Ec2::connect(&Ec2Settings {
            subnet: Some(subnet.clone()),
            security_groups: vec![group.clone()],
            ..settings(&moto.endpoint)
        })
        .await
        .expect("connect");
        let image = any_image(&moto);

        let wanted = launch("prod", "00000000000000a1", &image);
        let launched = ec2.launch(&wanted).await.expect("launch");
        assert!(launched.ec2_id.starts_with("i-"), "{launched:?}");
        assert!(matches!(launched.state, Ec2State::Pending | Ec2State::Running), "{launched:?}");
        assert_eq!(launched.instance_id.as_deref(), Some("00000000000000a1"));
        assert_eq!((launched.app.as_deref(), launched.provider.as_deref()), (Some("hello"), Some("aws-test")));
        assert_eq!(launched.image.as_deref(), Some(image.as_str()));
        assert!(launched.private_ip.is_some(), "{launched:?}");

        // What moto holds, through boto3: the instance's type, subnet, group, tags, user data.
        let seen = boto3_instance(&moto, &launched.ec2_id);
        assert_eq!(seen["InstanceType"], "t3.micro");
        assert_eq!(seen["SubnetId"], subnet.as_str());
        assert_eq!(seen["SecurityGroups"][0]["GroupId"], group.as_str());
        let expected_tags = BTreeMap::from(
            [
                ("mirari:cluster", "prod"),
                ("mirari:instance-id", "00000000000000a1"),
                ("mirari:app", "hello"),
                ("mirari:provider", "aws-test"),
                ("team", "edge"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        assert_eq!(tags_of(&seen), expected_tags);
        let user_data = moto.call(
            "ec2",
            "describe_instance_attribute",
            json!({ "InstanceId": launched.ec2_id, "Attribute": "userData" }),
        );
        let encoded = user_data["UserData"]["Value"].as_str().expect("user data");
        assert_eq!(BASE64.decode(encoded).expect("base64"), wanted.user_data);

        // Another cluster's instance, and a second one of ours.
        let other = ec2.launch(&launch("staging", "00000000000000a1", &image)).await.expect("launch in staging");
        let second = ec2.launch(&launch("prod", "00000000000000a2", &image)).await.expect("second launch");

        let listed = ec2.describe_cluster("prod").await.expect("describe prod");
        let ids: Vec<&str> = listed.iter().map(|i| i.ec2_id.as_str()).collect();
        assert_eq!(ids.len(), 2, "{listed:?}");
        assert!(ids.contains(&launched.ec2_id.as_str()) && ids.contains(&second.ec2_id.as_str()), "{listed:?}");
        assert!(!ids.contains(&other.ec2_id.as_str()), "staging's instance is not prod's: {listed:?}");
        let first = listed.iter().find(|i| i.ec2_id == launched.ec2_id).expect("listed");
        assert_eq!(first.tags, expected_tags);

        let found = ec2.find_instance("prod", "00000000000000a1").await.expect("find").expect("found");
        assert_eq!(found.ec2_id, launched.ec2_id);
        assert_eq!(ec2.find_instance("prod", "00000000000000ff").await.expect("find"), None);
        let in_staging = ec2.find_instance("staging", "00000000000000a1").await.expect("find").expect("found");
        assert_eq!(in_staging.ec2_id, other.ec2_id);

        let console = ec2.console_output(&launched.ec2_id).await.expect("console output");
        assert!(!console.is_empty());

        // An AMI moto does not know is refused, and said so with EC2's code.
        let error =
            ec2.launch(&launch("prod", "00000000000000a3", "ami-0123456789abcdef0")).await.expect_err("unknown AMI");
        assert_eq!(error.kind, Ec2ErrorKind::Invalid, "{error}");
        assert_eq!(error.code, "InvalidAMIID.NotFound", "{error}");
        assert!(!error.retryable());

        ec2.terminate(std::slice::from_ref(&launched.ec2_id)).await.expect("terminate");
        let after = ec2.describe_cluster("prod").await.expect("describe prod");
        let gone = after.iter().find(|i| i.ec2_id == launched.ec2_id).expect("a terminated instance is still listed");
        assert_eq!(gone.state, Ec2State::Terminated, "{gone:?}");
        assert_eq!(ec2.find_instance("prod", "00000000000000a1").await.expect("find"), None);
        ec2.terminate(&[]).await.expect("terminating nothing");
    });
}

#[test]
fn a_raw_image_becomes_an_ami_whose_snapshot_holds_the_same_bytes() {
    moto::run(Secret::Right, |moto| async move {
        let dir = tempfile::tempdir().expect("scratch dir");
        let raw = dir.path().join("disk.raw");
        let (digest, data_blocks) = write_image(&raw);
        // Through the proxy, which keeps what RegisterImage sent: moto keeps only its name.
        let proxy = FaultProxy::start(moto.endpoint.trim_start_matches("http://"));
        let ec2 = Ec2::connect(&settings(&proxy.endpoint)).await.expect("connect");
        assert_eq!(ec2.find_image(&digest).await.expect("find image"), None);

        let image = ec2.upload_image(&raw, &digest, "mirari-hello-test").await.expect("upload");
        assert!(image.ami.starts_with("ami-") && image.snapshot.starts_with("snap-"), "{image:?}");
        let registered = proxy.bodies("RegisterImage");
        let sent: Vec<&str> = registered.first().expect("RegisterImage went through the proxy").split('&').collect();
        let snapshot_pair = format!("BlockDeviceMapping.1.Ebs.SnapshotId={}", image.snapshot);
        let digest_pair = format!("TagSpecification.1.Tag.1.Value={digest}");
        for expected in [
            "Name=mirari-hello-test",
            "Architecture=x86_64",
            "VirtualizationType=hvm",
            "BootMode=legacy-bios",
            "RootDeviceName=%2Fdev%2Fxvda",
            "BlockDeviceMapping.1.DeviceName=%2Fdev%2Fxvda",
            &snapshot_pair,
            "TagSpecification.1.ResourceType=image",
            "TagSpecification.1.Tag.1.Key=mirari%3Aimage-digest",
            &digest_pair,
        ] {
            assert!(sent.contains(&expected), "RegisterImage sent no {expected}: {sent:?}");
        }
        assert_eq!(ec2.find_image(&digest).await.expect("find image").as_deref(), Some(image.ami.as_str()));
        assert_eq!(ec2.find_image(&Digest::of(b"another image")).await.expect("find image"), None);

        // The snapshot holds the data blocks only (zero blocks were not sent), and its tag.
        let blocks = moto.call("ebs", "list_snapshot_blocks", json!({ "SnapshotId": image.snapshot }));
        let mut indexes: Vec<u64> =
            blocks["Blocks"].as_array().expect("blocks").iter().filter_map(|b| b["BlockIndex"].as_u64()).collect();
        indexes.sort_unstable();
        assert_eq!(indexes, data_blocks);
        assert_eq!(blocks["VolumeSize"], 1, "a few MiB make a 1 GiB volume");
        let snapshots = moto.call("ec2", "describe_snapshots", json!({ "SnapshotIds": [image.snapshot] }));
        assert_eq!(tags_of(&snapshots["Snapshots"][0]).get("mirari:image-digest"), Some(&digest.to_string()));

        // Read back: the file's bytes, then zeros to the end of the volume.
        let back = dir.path().join("back.raw");
        ec2.read_snapshot(&image.snapshot, &back).await.expect("read the snapshot");
        let length = std::fs::metadata(&raw).expect("image").len();
        let (prefix, rest_is_zero) = digest_of_prefix(&back, length);
        assert_eq!(prefix, digest, "the snapshot's first {length} bytes are the image");
        assert!(rest_is_zero, "the rest of the volume reads as zeros");
        assert_eq!(std::fs::metadata(&back).expect("read back").len(), 1 << 30);

        let launched = ec2.launch(&launch("prod", "00000000000000b1", &image.ami)).await.expect("launch from the AMI");
        assert_eq!(launched.image.as_deref(), Some(image.ami.as_str()));

        // A file whose digest is not the one named is not made an image, and leaves no snapshot.
        let wrong = Digest::of(b"not this file");
        let error = ec2.upload_image(&raw, &wrong, "mirari-wrong").await.expect_err("digest mismatch");
        assert_eq!((error.kind, error.code.as_str()), (Ec2ErrorKind::Invalid, "DigestMismatch"), "{error}");
        let filter = json!({ "OwnerIds": ["self"], "Filters": [{ "Name": "tag:mirari:image-digest", "Values": [wrong.to_string()] }] });
        let left = moto.call("ec2", "describe_snapshots", filter);
        assert_eq!(left["Snapshots"], json!([]), "the failed upload's snapshot was deleted");
        assert_eq!(ec2.find_image(&wrong).await.expect("find image"), None);
    });
}

#[test]
fn a_wrong_secret_key_is_an_auth_error() {
    moto::run(Secret::Wrong, |moto| async move {
        let ec2 = Ec2::connect(&settings(&moto.endpoint)).await.expect("connect");
        let error = ec2.describe_cluster("prod").await.expect_err("a wrong signature");
        assert_eq!(error.kind, Ec2ErrorKind::Auth, "{error}");
        assert_eq!(error.code, "AuthFailure", "{error}");
        assert!(error.to_string().starts_with("AuthFailure: "), "{error}");
        assert!(!error.retryable());
        let error = ec2.launch(&launch("prod", "00000000000000c1", "ami-0123456789abcdef0")).await.expect_err("launch");
        assert_eq!((error.kind, error.code.as_str()), (Ec2ErrorKind::Auth, "AuthFailure"), "{error}");

        // EBS too (moto answers it in EC2's XML, which the EBS client cannot read: the 403 says it).
        let dir = tempfile::tempdir().expect("scratch dir");
        let raw = dir.path().join("disk.raw");
        let (digest, _) = write_image(&raw);
        let error = ec2.upload_image(&raw, &digest, "mirari-auth").await.expect_err("upload");
        assert_eq!(error.kind, Ec2ErrorKind::Auth, "{error}");
    });
}

#[test]
fn throttled_launches_are_retried_with_back_off() {
    moto::run(Secret::Right, |moto| async move {
        let proxy = FaultProxy::start(moto.endpoint.trim_start_matches("http://"));
        let ec2 = Ec2::connect(&settings(&proxy.endpoint)).await.expect("connect");
        let image = any_image(&moto);

        proxy.fail_next("RunInstances", 2, Fault::Throttle);
        let launched = ec2.launch(&launch("prod", "00000000000000d1", &image)).await.expect("launch after 2 throttles");
        assert_eq!(proxy.requests("RunInstances"), 3, "two throttled attempts, then the one that passed");
        // Every attempt carried the launch's client token, so EC2 makes one instance however many
        // reach it (moto does not deduplicate by token, so it is checked on the wire).
        let token = "ClientToken=prod-00000000000000d1";
        assert!(proxy.bodies("RunInstances").iter().all(|body| body.split('&').any(|pair| pair == token)));
        assert_eq!(ec2.describe_cluster("prod").await.expect("describe").len(), 1, "one instance for three attempts");
        assert_eq!(launched.instance_id.as_deref(), Some("00000000000000d1"));

        // Throttled on every attempt: the error says so, and may be retried later.
        proxy.fail_next("RunInstances", MAX_ATTEMPTS, Fault::Throttle);
        let error = ec2.launch(&launch("prod", "00000000000000d2", &image)).await.expect_err("throttled throughout");
        assert_eq!((error.kind, error.code.as_str()), (Ec2ErrorKind::Throttled, "RequestLimitExceeded"), "{error}");
        assert!(error.retryable());
        assert_eq!(proxy.requests("RunInstances"), 3 + MAX_ATTEMPTS);
    });
}

#[test]
fn no_capacity_and_no_answer_are_told_apart() {
    moto::run(Secret::Right, |moto| async move {
        let mut proxy = FaultProxy::start(moto.endpoint.trim_start_matches("http://"));
        let ec2 = Ec2::connect(&settings(&proxy.endpoint)).await.expect("connect");
        let image = any_image(&moto);

        proxy.fail_next("RunInstances", MAX_ATTEMPTS, Fault::NoCapacity);
        let error = ec2.launch(&launch("prod", "00000000000000e1", &image)).await.expect_err("no capacity");
        assert_eq!(
            (error.kind, error.code.as_str()),
            (Ec2ErrorKind::Capacity, "InsufficientInstanceCapacity"),
            "{error}"
        );
        assert!(error.retryable());
        assert_eq!(proxy.requests("RunInstances"), MAX_ATTEMPTS, "the SDK retries a 500 as transient");
        // The capacity came back: the same launch goes through.
        ec2.launch(&launch("prod", "00000000000000e1", &image)).await.expect("launch once capacity is back");

        proxy.refuse_connections();
        let error = ec2.describe_cluster("prod").await.expect_err("nobody listens");
        assert_eq!((error.kind, error.code.as_str()), (Ec2ErrorKind::Unreachable, "DispatchFailure"), "{error}");
        assert!(error.retryable());
    });
}

/// A raw image of 5 MiB and 1000 bytes: 11 blocks of 512 KiB, the last one partial; blocks 0, 1,
/// 4, 5, 6 and 9 all zeros, the others deterministic data. Returns its digest and the indexes
/// of its data blocks.
fn write_image(path: &Path) -> (Digest, Vec<u64>) {
    let data_blocks = vec![2, 3, 7, 8, 10];
    let length = 10 * BLOCK + 1000;
    let mut bytes = vec![0u8; length];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for &block in &data_blocks {
        let start = block as usize * BLOCK;
        for byte in &mut bytes[start..(start + BLOCK).min(length)] {
            // xorshift64: deterministic bytes that do not repeat within a block.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = (state >> 24) as u8;
        }
    }
    std::fs::write(path, &bytes).expect("write the image");
    (Digest::of(&bytes), data_blocks)
}

/// The digest of the first `length` bytes of the file, and whether the rest is zeros.
fn digest_of_prefix(path: &Path, length: u64) -> (Digest, bool) {
    use std::io::Read;
    let mut file = std::fs::File::open(path).expect("open");
    let mut hasher = Hasher::default();
    let mut buffer = vec![0u8; 1 << 20];
    let mut read = 0u64;
    let mut rest_is_zero = true;
    loop {
        let n = file.read(&mut buffer).expect("read");
        if n == 0 {
            break;
        }
        let in_prefix = usize::try_from(length.saturating_sub(read)).unwrap_or(usize::MAX).min(n);
        hasher.update(&buffer[..in_prefix]);
        rest_is_zero &= buffer[in_prefix..n].iter().all(|&b| b == 0);
        read += n as u64;
    }
    (hasher.finish(), rest_is_zero)
}

#[test]
fn https_endpoints_are_spoken_to_in_tls() {
    // Run as the others for the credentials in its environment (the SDK signs before it
    // connects); moto itself is not asked.
    moto::run(Secret::Right, |_moto| async move {
        // A server that answers in plain HTTP where TLS is expected.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listen");
        let port = listener.local_addr().expect("bound").port();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut client, _)) = listener.accept().await {
                let _ = client.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
            }
        });
        let ec2 = Ec2::connect(&settings(&format!("https://127.0.0.1:{port}"))).await.expect("connect");
        // rustls (on ring) did the handshake, and the failure is one of reaching EC2.
        let error = ec2.describe_cluster("prod").await.expect_err("no TLS there");
        assert_eq!((error.kind, error.code.as_str()), (Ec2ErrorKind::Unreachable, "DispatchFailure"), "{error}");
        assert!(error.message.contains("TLS handshake failed"), "{error}");
    });
}
