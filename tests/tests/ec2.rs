//! Amazon EC2 as a provider, end to end: 3 coordinators and 1 agent host in network
//! namespaces, and moto (the EC2 stand-in, signature checking and AMI validation on) reached
//! through a fault-injecting proxy on this machine. A deployment bursts to EC2 when the host is
//! full; EC2 machines are tagged with their instance IDs and DescribeInstances agrees with the
//! registry at every step: after launches retried under throttling, a machine terminated behind
//! Mirari's back (replaced), the leader killed between a launch and its report (adopted, no
//! duplicate, no orphan), a scale down (EC2 first) and a stop. The image the machines boot is
//! the raw disk the leader made, which boots in QEMU here, and the snapshot read back from EBS
//! has its sha256. Wrong credentials show as the provider's condition, and clear when fixed; the
//! provider is removed once nothing runs there.
//!
//! Needs the `ec2` feature and a coordinator built with it:
//! `cargo build -p mirari-coordinator --features ec2 && cargo test -p mirari-tests --features ec2 --test ec2`.
#![cfg(feature = "ec2")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mirari_tests::cluster::{Cluster, DEADLINE, Options};
use mirari_tests::fault_proxy::{Fault, FaultProxy};
use mirari_tests::moto::{self, MotoEnv, REGION, Secret};
use mirari_tests::{eventually, stderr};
use serde_json::{Value, json};

const PROVIDER: &str = "aws1";

/// The live (not terminated) machines moto holds for the cluster: instance ID tag -> EC2 IDs.
fn machines(env: &MotoEnv) -> BTreeMap<String, Vec<String>> {
    let answer = env.call("ec2", "describe_instances", json!({}));
    let mut machines: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for reservation in answer["Reservations"].as_array().into_iter().flatten() {
        for instance in reservation["Instances"].as_array().into_iter().flatten() {
            let state = instance["State"]["Name"].as_str().unwrap_or_default();
            if state == "terminated" || state == "shutting-down" {
                continue;
            }
            let tag = |key: &str| {
                instance["Tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|t| t["Key"] == key)
                    .and_then(|t| t["Value"].as_str())
            };
            assert_eq!(tag("mirari:provider"), Some(PROVIDER), "{instance}");
            assert_eq!(tag("mirari:app"), Some("hello"), "{instance}");
            assert_eq!(tag("team"), Some("edge"), "the provider's own tag: {instance}");
            let id = tag("mirari:instance-id").expect("every machine carries its instance ID").to_owned();
            machines.entry(id).or_default().push(instance["InstanceId"].as_str().unwrap().to_owned());
        }
    }
    machines
}

/// Instances the registry wants running, by host.
fn running(cluster: &Cluster) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let status = cluster.status()?;
    let mut hosts: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for instance in status["instances"].as_array().into_iter().flatten() {
        if instance["desired"] == "running" && instance["observed"] == "running" {
            let host = instance["host"].as_str().unwrap_or_default().to_owned();
            hosts.entry(host).or_default().insert(instance["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    Ok(hosts)
}

/// Waits until `agent` instances run on the host and `ec2` on the provider, each with exactly
/// one machine at EC2, and no other machine there; returns the provider's instance IDs.
fn settled(cluster: &Cluster, env: &MotoEnv, agent: usize, ec2: usize) -> BTreeSet<String> {
    eventually(DEADLINE, &format!("{agent} on the host and {ec2} on EC2, EC2 agreeing"), || {
        let running = running(cluster)?;
        let on_ec2 = running.get(PROVIDER).cloned().unwrap_or_default();
        let on_host = running.get("agent-0").map_or(0, BTreeSet::len);
        let machines = machines(env);
        let agreed =
            machines.keys().cloned().collect::<BTreeSet<_>>() == on_ec2 && machines.values().all(|ids| ids.len() == 1);
        if on_host == agent && on_ec2.len() == ec2 && agreed {
            Ok(on_ec2)
        } else {
            Err(format!("registry {running:?}, EC2 {machines:?}"))
        }
    })
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}", stderr(&out));
    stderr(&out)
}

fn refused(cluster: &Cluster, args: &[&str], needle: &str) {
    let out = cluster.mirari(args);
    assert!(!out.status.success(), "{args:?} should have been refused");
    assert!(stderr(&out).contains(needle), "{args:?}: expected {needle:?} in: {}", stderr(&out));
}

fn provider(cluster: &Cluster) -> Value {
    let out = cluster.mirari(&["cluster", "providers", "--output", "json"]);
    ok(out.clone(), "providers list");
    let providers: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    providers.as_array().and_then(|p| p.first()).cloned().expect("one provider")
}

/// Boots a raw disk image under QEMU (TCG) until it prints `needle`; what it printed.
fn boot(image: &Path, needle: &str) -> String {
    let console = image.with_extension("console");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-machine", "pc,accel=tcg", "-m", "64", "-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide,snapshot=on", image.display()))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("start qemu-system-x86_64");
    let printed = eventually(Duration::from_secs(60), &format!("the image to print {needle:?}"), || {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains(needle) { Ok(text) } else { Err(text) }
    });
    let _ = qemu.kill();
    let _ = qemu.wait();
    printed
}

/// A `mirari` command left running while the test goes on.
fn background(cluster: &Cluster, args: &[&str]) -> std::process::Child {
    let log = std::fs::File::create(cluster.dir.path().join(format!("{}.log", args.join("-")))).expect("log");
    cluster.mirari_command(args).stdout(log.try_clone().expect("log fd")).stderr(log).spawn().expect("start mirari")
}

/// Every byte of `path` from `offset` on is zero.
fn assert_only_zeros_after(path: &Path, offset: u64) {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path).expect("open");
    file.seek(std::io::SeekFrom::Start(offset)).expect("seek");
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).expect("read");
        if read == 0 {
            return;
        }
        assert!(buffer[..read].iter().all(|b| *b == 0), "{} holds more than the image", path.display());
    }
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned()
}

#[test]
fn a_deployment_bursts_to_ec2_which_agrees_with_the_registry_through_faults_and_failover() {
    moto::run(Secret::Right, |env| async move { scenario(env).await });
}

async fn scenario(env: MotoEnv) {
    let options = Options { coordinators: 3, agents: 1, agent_max_instances: 2, ..Options::default() };
    let (mut cluster, _) = Cluster::start_with(options);
    assert!(cluster.network.isolated(), "the cluster tests need network namespaces: run them as root");
    // The hosts reach this machine at the gateway; moto listens on loopback behind the proxy.
    let proxy = FaultProxy::start_on(cluster.network.gateway(), env.endpoint.trim_start_matches("http://"));
    // EC2 machines get no cluster network: the example without [[network]] (nor its health check).
    mirari_tests::copy_example(&cluster.app_dir, false);

    // Bad input is refused with what and where.
    let add = |region: &str, max: &str| {
        let args = ["cluster", "providers", "add", "ec2", PROVIDER, "--region", region, "--endpoint", &proxy.endpoint];
        let settings = ["--max-instances", max, "--instance-type", "t3.micro", "--tag", "team=edge"];
        cluster.mirari(&[&args[..], &settings[..]].concat())
    };
    let out = add("useast1", "4");
    assert!(
        !out.status.success() && stderr(&out).contains("region `useast1` is not a region name"),
        "{}",
        stderr(&out)
    );
    let out = add(REGION, "0");
    assert!(!out.status.success() && stderr(&out).contains("--max-instances must be at least 1"), "{}", stderr(&out));
    ok(add(REGION, "4"), "providers add");
    let listed = provider(&cluster);
    assert_eq!((listed["name"].as_str(), listed["max_instances"].as_u64()), (Some(PROVIDER), Some(4)), "{listed}");
    refused(&cluster, &["cluster", "deploy", "-t", "kvm", "--provider", "nope"], "unknown provider `nope`");
    refused(
        &cluster,
        &["cluster", "deploy", "-t", "unix", "--provider", PROVIDER],
        "runs kvm images; deploy with -t kvm",
    );

    // 4 instances, the host takes 2: the other 2 burst to EC2.
    ok(cluster.mirari(&["cluster", "deploy", "-t", "kvm", "--count", "4"]), "deploy");
    let first = settled(&cluster, &env, 2, 2);

    // The image: the raw disk the leader made, tagged with its sha256 at EC2, boots here, and
    // its snapshot reads back with the same sha256.
    let leader = cluster.leader().expect("a leader");
    let images: Vec<PathBuf> = std::fs::read_dir(cluster.coordinators[leader].data_dir.join("images"))
        .expect("the leader's images")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "raw"))
        .collect();
    assert_eq!(images.len(), 1, "one image for one version: {images:?}");
    let digest = sha256_of(&images[0]);
    assert_eq!(images[0].file_stem().unwrap().to_string_lossy(), digest);
    let tagged = json!([{ "Name": "tag:mirari:image-digest", "Values": [digest] }]);
    let amis = env.call("ec2", "describe_images", json!({ "Owners": ["self"], "Filters": tagged }));
    assert_eq!(amis["Images"].as_array().map(Vec::len), Some(1), "one AMI for the image: {amis}");
    // moto keeps no block device mapping of a registered image: the snapshot is found by its tag.
    let snapshots = env.call("ec2", "describe_snapshots", json!({ "OwnerIds": ["self"], "Filters": tagged }));
    let snapshot = snapshots["Snapshots"][0]["SnapshotId"].as_str().expect("the image's snapshot").to_owned();
    let read_back = cluster.dir.path().join("snapshot.raw");
    let settings = mirari_ec2::Ec2Settings {
        region: REGION.into(),
        endpoint: Some(env.endpoint.clone()),
        instance_type: "t3.micro".into(),
        subnet: None,
        security_groups: Vec::new(),
    };
    let ec2 = mirari_ec2::Ec2::connect(&settings).await.expect("an EC2 client");
    ec2.read_snapshot(&snapshot, &read_back).await.expect("the snapshot reads back");
    // The volume is whole GiB: the image, then zeros.
    let image_len = std::fs::metadata(&images[0]).expect("the image").len();
    assert_only_zeros_after(&read_back, image_len);
    std::fs::OpenOptions::new().write(true).open(&read_back).and_then(|f| f.set_len(image_len)).expect("truncate");
    assert_eq!(sha256_of(&read_back), digest, "the snapshot holds the image, byte for byte");
    let printed = boot(&images[0], "hello: heartbeat 2");
    assert!(printed.contains("greeting=hello-from-mirari"), "{printed}");

    // The console of an instance on EC2 is what EC2 kept of it.
    let on_ec2 = first.iter().next().unwrap();
    let out = cluster.mirari(&["console", on_ec2]);
    assert!(out.status.success() && !out.stdout.is_empty(), "console of {on_ec2}: {}", stderr(&out));

    // Throttled launches are retried, and succeed.
    let launches = proxy.requests("RunInstances");
    proxy.fail_next("RunInstances", 2, Fault::Throttle);
    ok(cluster.mirari(&["cluster", "scale", "hello", "5"]), "scale 5");
    let second = settled(&cluster, &env, 2, 3);
    assert!(first.is_subset(&second));
    assert_eq!(proxy.requests("RunInstances"), launches + 3, "2 throttled, then launched");

    // No capacity: the provider and the waiting instance say so; once there is, it launches.
    proxy.fail_next("RunInstances", 12, Fault::NoCapacity);
    let mut scaling = background(&cluster, &["cluster", "scale", "hello", "6"]);
    eventually(DEADLINE, "the provider's condition", || {
        let condition = provider(&cluster)["condition"].as_str().map(str::to_owned).unwrap_or_default();
        if condition.starts_with("InsufficientInstanceCapacity") { Ok(()) } else { Err(condition) }
    });
    let waiting = eventually(DEADLINE, "the waiting instance's message", || {
        let status = cluster.status()?;
        let pending = status["instances"].as_array().into_iter().flatten().find(|i| i["observed"] == "pending");
        let message = pending.and_then(|i| i["message"].as_str()).unwrap_or_default().to_owned();
        if message.contains("launch failed, retrying: InsufficientInstanceCapacity") {
            Ok(message)
        } else {
            Err(message)
        }
    });
    eprintln!("an instance waiting for capacity: {waiting}");
    settled(&cluster, &env, 2, 4);
    assert!(scaling.wait().expect("scale 6 ends").success());
    eventually(DEADLINE, "the condition to clear", || {
        let listed = provider(&cluster);
        if listed["condition"].is_null() { Ok(()) } else { Err(listed.to_string()) }
    });
    ok(cluster.mirari(&["cluster", "scale", "hello", "5"]), "scale 5");
    let second = settled(&cluster, &env, 2, 3);

    // A machine terminated behind Mirari's back: its instance fails, a new one replaces it.
    let victim = first.iter().next().unwrap().clone();
    let victim_machine = machines(&env)[&victim][0].clone();
    env.call("ec2", "terminate_instances", json!({ "InstanceIds": [victim_machine] }));
    let third = eventually(DEADLINE, "a replacement for the terminated machine", || {
        let now = settled(&cluster, &env, 2, 3);
        if now.contains(&victim) { Err(format!("{victim} still counted: {now:?}")) } else { Ok(now) }
    });
    assert_eq!(third.difference(&second).count(), 1, "exactly one new instance");

    // The leader killed between RunInstances and its report: the next leader adopts the machine.
    proxy.hold("RunInstances");
    let mut scaling = background(&cluster, &["cluster", "scale", "hello", "6"]);
    eventually(
        DEADLINE,
        "a launch held at the proxy",
        || {
            if proxy.held() >= 1 { Ok(()) } else { Err("none yet".into()) }
        },
    );
    let leader = cluster.leader().expect("a leader");
    cluster.coordinators[leader].kill();
    proxy.release();
    let fourth = settled(&cluster, &env, 2, 4);
    assert!(third.is_subset(&fourth));
    cluster.coordinators[leader].restart();
    assert!(scaling.wait().expect("scale 6 ends").success(), "scale 6 waited on another coordinator");

    // Scaling down stops the highest slots, where the burst put the EC2 machines.
    ok(cluster.mirari(&["cluster", "scale", "hello", "1"]), "scale 1");
    settled(&cluster, &env, 1, 0);
    ok(cluster.mirari(&["cluster", "stop", "hello"]), "stop");
    settled(&cluster, &env, 0, 0);

    // Wrong credentials: the provider says so, the instance says why it waits; fixed, it runs.
    for coordinator in &mut cluster.coordinators {
        coordinator.kill();
        coordinator.env = vec![("AWS_SECRET_ACCESS_KEY".into(), "wrong".into())];
        coordinator.restart();
    }
    let mut deploying = background(&cluster, &["cluster", "deploy", "-t", "kvm", "--count", "3"]);
    let condition = eventually(DEADLINE, "the provider's condition", || {
        let condition = provider(&cluster)["condition"].as_str().map(str::to_owned);
        condition
            .filter(|c| c.contains("AuthFailure") || c.contains("SignatureDoesNotMatch"))
            .ok_or_else(|| "ok".into())
    });
    eprintln!("the provider's condition with a wrong secret: {condition}");
    for coordinator in &mut cluster.coordinators {
        coordinator.kill();
        coordinator.env.clear();
        coordinator.restart();
    }
    settled(&cluster, &env, 2, 1);
    let _ = deploying.kill();
    let _ = deploying.wait();
    eventually(DEADLINE, "the condition to clear", || {
        let listed = provider(&cluster);
        if listed["condition"].is_null() { Ok(()) } else { Err(listed.to_string()) }
    });

    // A provider is removed only once nothing runs there.
    let remove = ["cluster", "providers", "remove", PROVIDER];
    refused(&cluster, &remove, "it holds 1 instance(s); stop or scale down what runs there first");
    ok(cluster.mirari(&["cluster", "stop", "hello"]), "stop");
    settled(&cluster, &env, 0, 0);
    ok(cluster.mirari(&remove), "providers remove");
    let out = cluster.mirari(&["cluster", "providers", "--output", "json"]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).ok(), Some(json!([])), "{}", stderr(&out));
    refused(&cluster, &remove, "unknown provider `aws1`");
}
