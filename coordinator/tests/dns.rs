//! Service discovery through a real coordinator: one bootstrapped node in this process with
//! `dns_listen`, a registry built by proposals over its API (a host, a network, two deployments,
//! placements by the leader's scheduler, reports of health), and DNS queries over UDP and TCP.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_server::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RData, RecordType};
use mirari_coordinator::leader::LeaseTiming;
use mirari_coordinator::server::{self, CoordinatorConfig};
use mirari_core::digest::Digest;
use mirari_core::health::{Health, HealthCheck, Probe};
use mirari_core::ids::InstanceId;
use mirari_core::instance::Phase;
use mirari_core::network::Network;
use mirari_core::registry::{
    AppVersion, Command, DeploymentSpec, Host, HostId, HostStatus, InstanceReport, Request, Resources,
};
use mirari_core::spec::RunPolicy;
use mirari_core::target::Target;
use mirari_proto::coordinator::{self as pb, coordinator_client::CoordinatorClient};
use mirari_proto::endpoint::{Endpoint, Listener};
use mirari_proto::log_codec;
use tonic::transport::Channel;

/// A port free for both UDP and TCP on loopback, below the kernel's ephemeral range (where
/// outgoing connections could take it meanwhile).
fn free_dns_port() -> u16 {
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    (start..32_000)
        .find(|port| UdpSocket::bind(("127.0.0.1", *port)).is_ok() && TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port below 32000")
}

async fn propose(client: &mut CoordinatorClient<Channel>, request_id: &str, command: Command) {
    let entry = log_codec::encode(&Request { request_id: request_id.into(), command });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Refused until the node has elected itself.
        match client.propose(pb::ProposeRequest { entry: entry.clone() }).await {
            Ok(response) => {
                let response = response.into_inner();
                assert!(response.rejected.is_empty(), "{request_id} was refused: {}", response.rejected);
                return;
            }
            Err(status) if Instant::now() < deadline => {
                tracing::debug!(%status, "not yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("{request_id}: {status}"),
        }
    }
}

fn version(app: &str, checked: bool) -> AppVersion {
    let health = checked.then_some(HealthCheck {
        probe: Probe::Tcp { port: 8080 },
        interval_ms: HealthCheck::DEFAULT_INTERVAL_MS,
        timeout_ms: HealthCheck::DEFAULT_TIMEOUT_MS,
        grace_ms: 0,
        unhealthy_after: 3,
    });
    AppVersion {
        app: app.into(),
        version: "1".into(),
        artifacts: [(Target::Unix, Digest::of(app.as_bytes()))].into(),
        files: vec![],
        run: RunPolicy { memory_mib: 64, networks: vec!["service".into()], health, ..RunPolicy::default() },
        constraints: BTreeMap::new(),
    }
}

fn deploy(app: &str, count: u32) -> Command {
    let spec = DeploymentSpec::new(app, "1", Target::Unix, count);
    Command::Deploy { spec, at_ms: 1, by: "test".into(), cause: mirari_core::registry::RevisionCause::Deploy }
}

fn report(id: u64, health: Health) -> InstanceReport {
    InstanceReport {
        id: InstanceId::from_u64(id),
        phase: Phase::Running,
        restarts: 0,
        last_exit: None,
        message: String::new(),
        revision: 1,
        assignments_index: u64::MAX,
        health,
    }
}

/// The instances of `app` the leader placed, with their first address, once there are `count`.
async fn placed(client: &mut CoordinatorClient<Channel>, app: &str, count: usize) -> Vec<(u64, Ipv4Addr)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status =
            client.get_status(pb::StatusRequest { stale: true, ..Default::default() }).await.unwrap().into_inner();
        let instances: Vec<(u64, Ipv4Addr)> = status
            .instances
            .iter()
            .filter(|i| i.app == app)
            .map(|i| (i.id, i.interfaces[0].address.split('/').next().unwrap().parse().unwrap()))
            .collect();
        if instances.len() == count {
            return instances;
        }
        assert!(Instant::now() < deadline, "{app}: {} of {count} instances placed", instances.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn query(name: &str, record_type: RecordType) -> Message {
    let mut message = Message::new(0x4d49, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    message
}

fn ask_udp(server: SocketAddr, name: &str, record_type: RecordType) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket.send_to(&query(name, record_type).to_vec().unwrap(), server).unwrap();
    let mut buffer = [0; 4096];
    let (length, _) = socket.recv_from(&mut buffer).expect("a DNS answer over UDP");
    Message::from_vec(&buffer[..length]).unwrap()
}

fn ask_tcp(server: SocketAddr, name: &str, record_type: RecordType) -> Message {
    let mut stream = TcpStream::connect(server).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let bytes = query(name, record_type).to_vec().unwrap();
    stream.write_all(&(bytes.len() as u16).to_be_bytes()).unwrap();
    stream.write_all(&bytes).unwrap();
    let mut length = [0; 2];
    stream.read_exact(&mut length).unwrap();
    let mut answer = vec![0; u16::from_be_bytes(length) as usize];
    stream.read_exact(&mut answer).unwrap();
    Message::from_vec(&answer).unwrap()
}

fn addresses(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .map(|record| {
            assert_eq!(record.ttl, 5, "a short TTL");
            match record.data {
                RData::A(a) => a.0,
                ref other => panic!("not an A record: {other:?}"),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_healthy_instances_and_says_what_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint: Endpoint = format!("unix:{}", dir.path().join("coordinator.sock").display()).parse().unwrap();
    let listener = Listener::bind(&endpoint, None).await.unwrap();
    let dns: SocketAddr = ([127, 0, 0, 1], free_dns_port()).into();
    // The host below never renews a lease: it must not be declared down during the test.
    let hour = Duration::from_secs(3600);
    let config = CoordinatorConfig {
        id: 1,
        data_dir: dir.path().join("data"),
        advertise: endpoint.to_string(),
        bootstrap: true,
        tick: Duration::from_millis(20),
        snapshot_every: 10_000,
        leases: LeaseTiming { ttl: hour, grace: hour, ..LeaseTiming::default() },
        dns_listen: Some(dns),
        http_listen: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let coordinator = tokio::spawn(server::run(config, listener, async {
        let _ = stopped.await;
    }));
    let mut client = CoordinatorClient::new(endpoint.connect().await.unwrap());

    let network = Network {
        name: "service".into(),
        subnet: "10.77.0.0/24".parse().unwrap(),
        gateway: Some("10.77.0.1".parse().unwrap()),
        range: None,
        dns: vec![],
    };
    let host = Host {
        id: HostId("h1".into()),
        address: "unix:/nonexistent".into(),
        backends: [Target::Unix].into(),
        capacity: Resources { memory_mib: 4096, vcpus: 8, instances: 16 },
        labels: BTreeMap::new(),
        networks: ["service".to_owned()].into(),
        status: HostStatus::Up,
        registered_at_ms: 1,
        status_changed_at_ms: 1,
        drain: None,
        provider: None,
    };
    propose(&mut client, "network", Command::CreateNetwork { network }).await;
    propose(&mut client, "host", Command::RegisterHost { host }).await;
    propose(&mut client, "hello", Command::RegisterApp { version: version("hello", true) }).await;
    propose(&mut client, "idle", Command::RegisterApp { version: version("idle", true) }).await;
    propose(&mut client, "deploy-hello", deploy("hello", 3)).await;
    propose(&mut client, "deploy-idle", deploy("idle", 1)).await;
    let hello = placed(&mut client, "hello", 3).await;
    let idle = placed(&mut client, "idle", 1).await;
    let reports = vec![
        report(hello[0].0, Health::Healthy),
        report(hello[1].0, Health::Unhealthy),
        report(hello[2].0, Health::Healthy),
        report(idle[0].0, Health::Starting),
    ];
    propose(&mut client, "reports", Command::ReportInstances { host: HostId("h1".into()), reports, at_ms: 0 }).await;

    let mut healthy = vec![hello[0].1, hello[2].1];
    healthy.sort();
    for answer in
        [ask_udp(dns, "hello.service.mirari.", RecordType::A), ask_tcp(dns, "Hello.Service.Mirari.", RecordType::A)]
    {
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert!(answer.metadata.authoritative);
        assert_eq!(addresses(&answer), healthy, "the healthy instances, lowest first");
    }
    let nothing_healthy = ask_udp(dns, "idle.service.mirari.", RecordType::A);
    assert_eq!(nothing_healthy.metadata.response_code, ResponseCode::NoError);
    assert!(nothing_healthy.answers.is_empty());
    let other_type = ask_udp(dns, "hello.service.mirari.", RecordType::AAAA);
    assert_eq!(other_type.metadata.response_code, ResponseCode::NoError);
    assert!(other_type.answers.is_empty());
    assert_eq!(ask_udp(dns, "nope.service.mirari.", RecordType::A).metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(ask_tcp(dns, "hello.mirari.", RecordType::A).metadata.response_code, ResponseCode::NXDomain);
    let outside = ask_udp(dns, "example.com.", RecordType::A);
    assert_eq!(outside.metadata.response_code, ResponseCode::Refused);
    assert!(!outside.metadata.authoritative);

    stop.send(()).unwrap();
    coordinator.await.unwrap().unwrap();
}
