//! Service discovery over DNS: `APP.service.mirari.` answers the A records of the app's healthy
//! instances (`mirari_core::discovery`), on UDP and TCP at `--dns-listen`.
//!
//! hickory-server reads and writes the wire (and truncates a UDP answer that does not fit, so the
//! client asks again over TCP); [`answer`] decides from the registry alone. Answers come from this
//! coordinator's applied registry without a ReadIndex round: a follower, or a leader cut off from
//! the others, may answer from a registry some entries behind. That is fine for DNS, whose answers
//! are a few seconds old anyway ([`TTL_SECS`]), and it keeps a lookup off the raft path. A node
//! that knows no leader, or is more than [`MAX_LAG_ENTRIES`] behind what it knows committed (a
//! restarted coordinator replaying its log passes through every older state), answers SERVFAIL,
//! so resolvers ask another coordinator.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_server::net::NetError;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{DNSClass, LowerName, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use mirari_core::discovery;
use mirari_core::registry::Registry;
use tokio::net::{TcpListener, UdpSocket};

use crate::driver::RaftHandle;

/// How long resolvers may keep an answer: short, so a stopped or unhealthy instance drops out of
/// clients' answers within seconds.
pub const TTL_SECS: u32 = 5;
/// The most A records in one answer (the lowest addresses).
pub const MAX_ANSWERS: usize = 64;
/// How far behind its known commit index a coordinator may be and still answer.
pub const MAX_LAG_ENTRIES: u64 = 64;
/// The zone served, and the label under it that holds the apps.
const ZONE: &[u8] = b"mirari";
const SERVICES: &[u8] = b"service";
/// A TCP connection that sends no query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// Answers queued for one TCP connection.
const TCP_QUEUE: usize = 32;
/// The largest UDP answer we send to a client that offers EDNS (the DNS flag day's size: no
/// fragmentation on common paths).
const MAX_UDP_PAYLOAD: u16 = 1232;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen for DNS on {protocol} {address}")]
    Bind {
        protocol: &'static str,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the DNS server failed")]
    Serve(#[source] NetError),
    #[error("the DNS server stopped")]
    Stopped,
}

/// A UDP socket and a TCP listener on one address.
#[derive(Debug)]
pub struct DnsListener {
    udp: UdpSocket,
    tcp: TcpListener,
    address: SocketAddr,
}

impl DnsListener {
    /// Binds UDP at `address`, then TCP at the port UDP got (so port 0 picks one for both).
    pub async fn bind(address: SocketAddr) -> Result<Self, DnsError> {
        let bind_error = |protocol, address| move |source| DnsError::Bind { protocol, address, source };
        let udp = UdpSocket::bind(address).await.map_err(bind_error("UDP", address))?;
        let address = udp.local_addr().map_err(bind_error("UDP", address))?;
        let tcp = TcpListener::bind(address).await.map_err(bind_error("TCP", address))?;
        Ok(Self { udp, tcp, address })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }
}

/// Serves DNS on `listener` from `raft`'s applied registry until it fails; dropping the future
/// stops the server.
pub async fn serve(listener: DnsListener, raft: RaftHandle) -> Result<Infallible, DnsError> {
    let mut server = hickory_server::Server::new(ServiceZone { raft });
    server.register_socket(listener.udp);
    server.register_listener(listener.tcp, TCP_IDLE, TCP_QUEUE);
    server.block_until_done().await.map_err(DnsError::Serve)?;
    Err(DnsError::Stopped)
}

/// What to answer to one question.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// NOERROR with these A records (none: the name exists, without records of the type asked).
    Addresses(Vec<Ipv4Addr>),
    /// NXDOMAIN: no such name in the zone.
    NoSuchName,
    /// REFUSED: not our zone (we do not recurse).
    Refused,
}

/// The answer to `name` of type `record_type` in class `class`, from `registry`.
///
/// The zone's apex `mirari.` and `service.mirari.` exist (without records): answering NXDOMAIN
/// for them would tell a resolver that nothing below them exists either (RFC 8020).
pub fn answer(registry: &Registry, name: &LowerName, record_type: RecordType, class: DNSClass) -> Answer {
    // From the root: the zone, then `service`, then the app.
    let mut labels = name.iter().rev();
    if class != DNSClass::IN || labels.next() != Some(ZONE) {
        return Answer::Refused;
    }
    match (labels.next(), labels.next(), labels.next()) {
        (None, _, _) | (Some(SERVICES), None, _) => Answer::Addresses(Vec::new()),
        (Some(SERVICES), Some(app), None) => {
            let Some(app) = std::str::from_utf8(app).ok().filter(|app| registry.deployment(app).is_some()) else {
                return Answer::NoSuchName;
            };
            if record_type != RecordType::A {
                return Answer::Addresses(Vec::new());
            }
            Answer::Addresses(discovery::service_addresses(registry, app, MAX_ANSWERS).unwrap_or_default())
        }
        _ => Answer::NoSuchName,
    }
}

/// Answers queries for the zone from the raft node's applied registry.
#[derive(Debug)]
struct ServiceZone {
    raft: RaftHandle,
}

impl ServiceZone {
    /// Whether this node's registry is one to answer from (see the module docs).
    fn is_current(&self) -> bool {
        let status = self.raft.status();
        status.leader.is_some() && status.commit_index.saturating_sub(status.applied_index) <= MAX_LAG_ENTRIES
    }
}

#[async_trait::async_trait]
impl RequestHandler for ServiceZone {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let mut builder = MessageResponseBuilder::from_message_request(request);
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns
        });
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let query_message = request.metadata.message_type == MessageType::Query;
        let records = match request.request_info() {
            Ok(_) if query_message && !self.is_current() => {
                metadata.response_code = ResponseCode::ServFail;
                Vec::new()
            }
            Ok(info) if query_message && request.metadata.op_code == OpCode::Query => {
                let query = info.query;
                let answer =
                    answer(&self.raft.machine().registry, query.name(), query.query_type(), query.query_class());
                metadata.authoritative = answer != Answer::Refused;
                match answer {
                    Answer::Addresses(addresses) => addresses
                        .into_iter()
                        .map(|address| {
                            Record::from_rdata(query.original().name().clone(), TTL_SECS, RData::A(A(address)))
                        })
                        .collect(),
                    Answer::NoSuchName => {
                        metadata.response_code = ResponseCode::NXDomain;
                        Vec::new()
                    }
                    Answer::Refused => {
                        metadata.response_code = ResponseCode::Refused;
                        Vec::new()
                    }
                }
            }
            Ok(_) if query_message => {
                metadata.response_code = ResponseCode::NotImp;
                Vec::new()
            }
            // Not exactly one question, or not a query.
            _ => {
                metadata.response_code = ResponseCode::FormErr;
                Vec::new()
            }
        };
        let message = builder.build(metadata, &records, [], [], []);
        match response.send_response(message).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, src = %request.src(), "cannot send a DNS answer");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                Header { metadata, counts: Default::default() }.into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirari_core::registry::{AppVersion, Command, DeploymentSpec, Request as RegistryRequest};
    use mirari_core::spec::RunPolicy;
    use mirari_core::target::Target;

    fn name(text: &str) -> LowerName {
        LowerName::from(hickory_server::proto::rr::Name::from_ascii(text).unwrap())
    }

    /// A registry where app `hello` is deployed (no instance placed).
    fn hello_deployed() -> Registry {
        let version = AppVersion {
            app: "hello".into(),
            version: "1".into(),
            artifacts: [(Target::Unix, mirari_core::digest::Digest::of(b"unix"))].into(),
            files: vec![],
            run: RunPolicy::default(),
            constraints: Default::default(),
        };
        let spec = DeploymentSpec::new("hello", "1", Target::Unix, 1);
        let mut registry = Registry::default();
        for (index, command) in [
            Command::RegisterApp { version },
            Command::Deploy { spec, at_ms: 1, by: "test".into(), cause: mirari_core::registry::RevisionCause::Deploy },
        ]
        .into_iter()
        .enumerate()
        {
            let index = index as u64 + 1;
            registry.apply(index, &RegistryRequest { request_id: format!("r{index}"), command }).unwrap();
        }
        registry
    }

    fn ask(registry: &Registry, text: &str, record_type: RecordType) -> Answer {
        answer(registry, &name(text), record_type, DNSClass::IN)
    }

    #[test]
    fn a_deployed_app_exists_and_an_unknown_one_does_not() {
        let registry = hello_deployed();
        assert_eq!(ask(&registry, "hello.service.mirari.", RecordType::A), Answer::Addresses(vec![]));
        assert_eq!(ask(&registry, "HELLO.Service.Mirari.", RecordType::A), Answer::Addresses(vec![]), "case-blind");
        assert_eq!(ask(&registry, "hello.service.mirari.", RecordType::AAAA), Answer::Addresses(vec![]));
        assert_eq!(ask(&registry, "nope.service.mirari.", RecordType::A), Answer::NoSuchName);
    }

    #[test]
    fn other_names_in_the_zone_do_not_exist_and_the_zone_and_service_label_do() {
        let registry = hello_deployed();
        assert_eq!(ask(&registry, "x.hello.service.mirari.", RecordType::A), Answer::NoSuchName);
        assert_eq!(ask(&registry, "hello.mirari.", RecordType::A), Answer::NoSuchName);
        assert_eq!(ask(&registry, "a.b.c.d.e.mirari.", RecordType::A), Answer::NoSuchName);
        assert_eq!(ask(&registry, "service.mirari.", RecordType::A), Answer::Addresses(vec![]));
        assert_eq!(ask(&registry, "mirari.", RecordType::SOA), Answer::Addresses(vec![]));
    }

    #[test]
    fn names_outside_the_zone_and_other_classes_are_refused() {
        let registry = hello_deployed();
        assert_eq!(ask(&registry, "example.com.", RecordType::A), Answer::Refused);
        assert_eq!(ask(&registry, "hello.service.mirari.example.", RecordType::A), Answer::Refused);
        assert_eq!(ask(&registry, ".", RecordType::NS), Answer::Refused);
        let chaos = answer(&registry, &name("hello.service.mirari."), RecordType::A, DNSClass::CH);
        assert_eq!(chaos, Answer::Refused);
    }
}
