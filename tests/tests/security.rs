//! Mutual TLS and roles, against every listening port of a 3-coordinator, 2-agent cluster:
//! certificates that are missing, foreign, expired or of the wrong role are refused, with the
//! reason in the server's log and in the client's error; the right ones work; and no port
//! speaks plaintext.

use std::path::Path;
use std::time::Duration;

use mirari_core::registry::{Command, Request};
use mirari_proto::agent::GetHostInfoRequest;
use mirari_proto::agent::agent_client::AgentClient;
use mirari_proto::coordinator::coordinator_client::CoordinatorClient;
use mirari_proto::coordinator::peer_client::PeerClient;
use mirari_proto::coordinator::{
    ClusterInfoRequest, HeartbeatRequest, ProposeRequest, RaftBatch, RegisterHostRequest, ReportInstancesRequest,
    WatchAssignmentsRequest,
};
use mirari_proto::log_codec;
use mirari_proto::registry::Host as RegistryHost;
use mirari_tests::cluster::Cluster;
use mirari_tests::pki::{Identity, Pki};
use mirari_tests::{eventually, stderr};
use tonic::transport::Channel;

use mirari_tests::pki::connect as channel;

/// Calls a harmless read on whatever service listens at `address`; the error if refused.
async fn probe(address: &str, agent: bool, ca: &Path, identity: Option<&Identity>) -> Result<(), String> {
    let channel = channel(address, ca, identity).await?;
    let outcome = if agent {
        AgentClient::new(channel).get_host_info(GetHostInfoRequest {}).await.map(|_| ())
    } else {
        CoordinatorClient::new(channel).get_cluster_info(ClusterInfoRequest {}).await.map(|_| ())
    };
    outcome.map_err(|status| format!("{}: {}", status.code(), mirari_core::errors::chain(&status)))
}

struct Ports {
    coordinators: Vec<String>,
    agents: Vec<String>,
}

impl Ports {
    fn all(&self) -> impl Iterator<Item = (&String, bool)> {
        self.coordinators.iter().map(|a| (a, false)).chain(self.agents.iter().map(|a| (a, true)))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_port_refuses_what_it_must_and_serves_what_it_may() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(3, 2)).await.unwrap();
    let pki = cluster.pki();
    let ca = pki.dir().join("ca.pem");
    let ports = Ports {
        coordinators: cluster.coordinators.iter().map(|c| c.address.clone()).collect(),
        agents: cluster.agents.iter().map(|a| a.address().to_owned()).collect(),
    };
    let reader = pki.issue("reader", "reader", &[]);
    let operator = pki.issue("operator", "operator", &[]);
    let agent = pki.issue("agent", "rogue-agent", &[]);
    let coordinator = pki.issue("coordinator", "coordinator-probe", &[]);
    // Issued by another CA, presented to servers this client trusts.
    let foreign = Identity {
        ca: ca.clone(),
        ..Pki::new(&cluster.dir.path().join("elsewhere")).issue("operator", "stranger", &[])
    };
    let expired = pki.issue_for_days("operator", "expired", 0);

    // Let the zero-day certificate run out.
    let expiry = std::fs::metadata(&expired.cert).unwrap().modified().unwrap();
    eventually(Duration::from_secs(10), "the zero-day certificate to expire", || {
        if expiry.elapsed().unwrap_or_default() > Duration::from_secs(2) { Ok(()) } else { Err("not yet".into()) }
    });
    let cli = |identity: &Identity, args: Vec<String>| {
        let mut command = cluster.mirari_command(&args.iter().map(String::as_str).collect::<Vec<_>>());
        identity.apply(&mut command);
        command.output().expect("mirari")
    };
    for (address, is_agent) in ports.all() {
        // Refused at the handshake: no client certificate, another CA's, an expired one.
        for (identity, what) in [
            (None, "no certificate"),
            (Some(&foreign), "a foreign certificate"),
            (Some(&expired), "an expired certificate"),
        ] {
            assert!(probe(address, is_agent, &ca, identity).await.is_err(), "{address} accepted {what}");
        }
        // People see why.
        let ask = |identity| {
            let args = if is_agent {
                vec!["--agent".to_owned(), address.clone(), "host".to_owned()]
            } else {
                vec!["cluster".to_owned(), "info".to_owned(), "--coordinator".to_owned(), address.clone()]
            };
            tokio::task::block_in_place(|| cli(identity, args))
        };
        for (identity, alert) in [(&foreign, "UnknownCA"), (&expired, "CertificateExpired")] {
            let out = ask(identity);
            assert!(!out.status.success());
            let expected = format!("refused this client's TLS certificate: received fatal alert: {alert}");
            assert!(stderr(&out).contains(&expected), "{address}: {}", stderr(&out));
        }
        // No plaintext.
        let plaintext = Channel::from_shared(format!("http://{address}")).unwrap().connect().await;
        let refused = match plaintext {
            Err(_) => true,
            Ok(channel) => CoordinatorClient::new(channel).get_cluster_info(ClusterInfoRequest {}).await.is_err(),
        };
        assert!(refused, "{address} answered in plaintext");
    }

    // The servers say why in their logs.
    let logs: String = cluster.coordinators.iter().map(|c| c.log()).collect();
    for reason in ["peer sent no certificates", "UnknownIssuer", "certificate expired", "does not speak TLS"] {
        assert!(
            logs.contains("refused a TLS connection") && logs.contains(reason),
            "no `{reason}` in the coordinators' logs"
        );
    }

    // Roles.
    for address in &ports.coordinators {
        probe(address, false, &ca, Some(&reader)).await.expect("readers read");
        for (identity, role) in [(&operator, "operator"), (&agent, "agent"), (&reader, "reader")] {
            let mut peer = PeerClient::new(channel(address, &ca, Some(identity)).await.unwrap());
            let error = peer.send(RaftBatch::default()).await.expect_err("only coordinators join raft");
            assert_eq!(error.code(), tonic::Code::PermissionDenied, "{address}: {error}");
            assert!(
                error.message().contains(&format!("a {role} certificate may not call Send")),
                "{}",
                error.message()
            );
        }
    }
    // An agent certificate speaks only for its own host (its name): this one is not a host's.
    for address in &ports.coordinators {
        let mut client = CoordinatorClient::new(channel(address, &ca, Some(&agent)).await.unwrap());
        let victim = cluster.agents[0].name.clone();
        let heartbeat = client.heartbeat(HeartbeatRequest { host: victim.clone() }).await;
        let report = client.report_instances(ReportInstancesRequest { host: victim.clone(), reports: vec![] }).await;
        let watch = client.watch_assignments(WatchAssignmentsRequest { host: victim.clone() }).await.map(|_| ());
        let host = RegistryHost { id: victim.clone(), address: "10.9.9.9:1".into(), status: 1, ..Default::default() };
        let register = client.register_host(RegisterHostRequest { host: Some(host) }).await.map(|_| ());
        let outcomes = [
            ("heartbeat", heartbeat.map(|_| ())),
            ("report", report.map(|_| ())),
            ("watch", watch),
            ("register", register),
        ];
        for (what, outcome) in outcomes {
            let error = outcome.expect_err("another host's certificate");
            assert_eq!(error.code(), tonic::Code::PermissionDenied, "{what}: {error}");
            let expected =
                format!("the agent certificate of `rogue-agent` may act only for host `rogue-agent`, not `{victim}`");
            assert!(error.message().contains(&expected), "{what}: {}", error.message());
        }
    }
    // A count far above the limit is refused where it is decoded; the leader lives on.
    let huge =
        Request { request_id: "huge".into(), command: Command::Scale { app: "hello".into(), count: 4_000_000_000 } };
    let mut client = CoordinatorClient::new(channel(&ports.coordinators[0], &ca, Some(&operator)).await.unwrap());
    let error = client.propose(ProposeRequest { entry: log_codec::encode(&huge) }).await.expect_err("refused");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("scale.count is 4000000000, above the limit of 100000"), "{}", error.message());
    probe(&ports.coordinators[0], false, &ca, Some(&reader)).await.expect("the coordinator still serves");

    for address in &ports.agents {
        for identity in [&operator, &agent, &reader] {
            let error = probe(address, true, &ca, Some(identity)).await.expect_err("only coordinators instruct agents");
            assert!(error.starts_with("The caller does not have permission"), "{address}: {error}");
        }
        probe(address, true, &ca, Some(&coordinator)).await.expect("coordinators instruct agents");
    }

    // Through the CLI: deploy as an operator; an agent or a reader may not; a reader may not
    // attach a console but may read the status.
    let run = |identity: &Identity, args: &[&str]| cli(identity, args.iter().map(|a| a.to_string()).collect());
    let deployed = tokio::task::block_in_place(|| run(&operator, &["cluster", "deploy", "-t", "unix", "--count", "2"]));
    assert!(deployed.status.success(), "{}", stderr(&deployed));
    for (identity, role) in [(&agent, "agent"), (&reader, "reader")] {
        let out = tokio::task::block_in_place(|| run(identity, &["cluster", "scale", "hello", "3"]));
        assert!(!out.status.success());
        assert!(stderr(&out).contains(&format!("a {role} certificate may not call Propose")), "{}", stderr(&out));
    }
    let status = tokio::task::block_in_place(|| run(&reader, &["cluster", "status", "--output", "json"]));
    assert!(status.status.success(), "{}", stderr(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let id = status["instances"][0]["id"].as_str().unwrap().to_owned();
    let console = tokio::task::block_in_place(|| run(&reader, &["console", &id]));
    assert!(stderr(&console).contains("a reader certificate may not call StreamConsole"), "{}", stderr(&console));
    let logs = tokio::task::block_in_place(|| run(&reader, &["logs", &id]));
    assert!(logs.status.success(), "readers read logs: {}", stderr(&logs));
}
