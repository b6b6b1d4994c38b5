//! Who may call what. Every server wraps its services in [`Guarded`], which checks the role in
//! the caller's certificate against the RPC's policy, in this one place, before the call runs.
//!
//! The caller's certificate is read once per connection, when its TLS handshake completes
//! ([`crate::endpoint`] serves [`Caller`] as the connection's info), not once per request.
//! Connections without TLS are local: the agent's Unix socket (guarded by file permissions)
//! and `mirari dev`'s Unix socket (0600). Every TCP listener requires TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use tonic::server::NamedService;

use crate::tls::{CertificateIdentity, Role};

/// Who is on the other end of a TLS connection, as its certificate says.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: CertificateIdentity,
    pub remote: Option<SocketAddr>,
}

/// The connection info a TLS server attaches to every request.
pub type CallerInfo = Arc<Caller>;

/// The roles that may call an RPC, by its gRPC path (`/package.Service/Method`).
pub type Policy = fn(&str) -> &'static [Role];

const COORDINATORS: &[Role] = &[Role::Coordinator];
const AGENTS: &[Role] = &[Role::Agent, Role::Coordinator];
const OPERATORS: &[Role] = &[Role::Operator, Role::Coordinator];
const READERS: &[Role] = &[Role::Reader, Role::Operator, Role::Coordinator];

fn method(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The raft transport and blob replication: coordinators only.
pub fn peer_policy(_: &str) -> &'static [Role] {
    COORDINATORS
}

/// The agent API: instructions come from coordinators only (people reach an agent through its
/// local Unix socket, or through the coordinators).
pub fn agent_policy(_: &str) -> &'static [Role] {
    COORDINATORS
}

/// The coordinator API. Coordinators may call everything (they forward for each other).
pub fn coordinator_policy(path: &str) -> &'static [Role] {
    match method(path) {
        "GetClusterInfo" | "ListHosts" | "GetStatus" | "GetEvents" | "WatchEvents" => READERS,
        "RegisterHost" | "Heartbeat" | "ReportInstances" | "WatchAssignments" | "FetchBlob" => AGENTS,
        "AddMember" | "RemoveMember" | "Propose" | "PutBlob" | "MissingBlobs" | "Build" | "StreamConsole" => OPERATORS,
        _ => COORDINATORS,
    }
}

/// The caller of a request: `None` on a connection without TLS (a local one).
pub fn caller(extensions: &http::Extensions) -> Option<&Caller> {
    extensions.get::<CallerInfo>().map(Arc::as_ref)
}

/// The caller's role: `None` on a connection without TLS (a local one), `Some(None)` for a
/// certificate that names no role.
pub fn caller_role(extensions: &http::Extensions) -> Option<Option<Role>> {
    caller(extensions).map(|caller| caller.identity.role)
}

/// Whether the caller may act for cluster host `host`: an agent only for itself (its
/// certificate's name is its host name), a coordinator for any (it forwards for agents it has
/// checked), a local caller for any.
pub fn may_act_for_host(extensions: &http::Extensions, host: &str) -> Result<(), Status> {
    let Some(caller) = caller(extensions) else { return Ok(()) };
    match (&caller.identity.role, &caller.identity.name) {
        (Some(Role::Coordinator), _) => Ok(()),
        (Some(Role::Agent), Some(name)) if name == host => Ok(()),
        (Some(Role::Agent), name) => {
            let name = name.as_deref().unwrap_or("(no name)");
            tracing::warn!(peer = ?caller.remote, certificate = name, host, "refused an agent speaking for another host");
            Err(Status::permission_denied(format!(
                "the agent certificate of `{name}` may act only for host `{name}`, not `{host}`: issue each agent a \
                 certificate whose --name is its host name"
            )))
        }
        (role, _) => Err(Status::permission_denied(format!(
            "a {} certificate may not act for host `{host}`",
            role.map_or("role-less", Role::name)
        ))),
    }
}

fn check(extensions: &http::Extensions, path: &str, policy: Policy) -> Result<(), Status> {
    let Some(caller) = caller(extensions) else { return Ok(()) };
    let allowed = policy(path);
    let peer = caller.remote.map_or_else(|| "?".to_owned(), |a| a.to_string());
    match caller.identity.role {
        Some(role) if allowed.contains(&role) => Ok(()),
        Some(role) => {
            let needed: Vec<&str> = allowed.iter().map(|r| r.name()).collect();
            tracing::warn!(%peer, %role, rpc = path, "refused a call: the caller's role may not make it");
            Err(Status::permission_denied(format!(
                "a {role} certificate may not call {}; it needs one of: {}",
                method(path),
                needed.join(", ")
            )))
        }
        None => {
            tracing::warn!(%peer, rpc = path, "refused a call: the client certificate names no role");
            Err(Status::permission_denied(format!(
                "the client certificate names no role (a URI SAN {}<role>); issue one with `mirari tls cert create --role`",
                crate::tls::ROLE_URI_PREFIX
            )))
        }
    }
}

/// A gRPC service behind the role check.
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    policy: Policy,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, policy: Policy) -> Self {
        Self { inner, policy }
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for Guarded<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match check(request.extensions(), request.uri().path(), self.policy) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_matrix() {
        let coordinator = |m: &str| coordinator_policy(&format!("/mirari.coordinator.v1.Coordinator/{m}"));
        assert!(coordinator("GetStatus").contains(&Role::Reader));
        assert!(!coordinator("Propose").contains(&Role::Reader));
        assert!(!coordinator("Propose").contains(&Role::Agent));
        assert!(!coordinator("StreamConsole").contains(&Role::Reader));
        assert!(coordinator("Heartbeat").contains(&Role::Agent));
        assert!(!coordinator("Heartbeat").contains(&Role::Operator));
        assert!(!coordinator("SomethingNew").contains(&Role::Operator), "unknown RPCs are for coordinators only");
        assert_eq!(peer_policy("/mirari.coordinator.v1.Peer/Send"), [Role::Coordinator]);
        assert_eq!(agent_policy("/mirari.agent.v1.Agent/RunInstances"), [Role::Coordinator]);
    }

    #[test]
    fn local_connections_pass() {
        assert!(check(&http::Extensions::new(), "/x/Propose", coordinator_policy).is_ok());
        assert!(may_act_for_host(&http::Extensions::new(), "any").is_ok());
    }

    fn from(role: Role, name: &str) -> http::Extensions {
        let mut extensions = http::Extensions::new();
        let identity = CertificateIdentity { role: Some(role), name: Some(name.to_owned()) };
        extensions.insert::<CallerInfo>(Arc::new(Caller { identity, remote: None }));
        extensions
    }

    #[test]
    fn an_agent_acts_only_for_its_own_host() {
        assert!(may_act_for_host(&from(Role::Agent, "h1"), "h1").is_ok());
        let refused = may_act_for_host(&from(Role::Agent, "h1"), "h2").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("may act only for host `h1`, not `h2`"), "{}", refused.message());
        assert!(may_act_for_host(&from(Role::Coordinator, "c1"), "h2").is_ok(), "coordinators forward for agents");
        assert!(may_act_for_host(&from(Role::Operator, "alice"), "h2").is_err());
    }
}
