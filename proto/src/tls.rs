//! Mutual TLS for every Mirari connection, and the roles certificates carry.
//!
//! One crypto provider for the whole workspace, ring, installed explicitly at start-up
//! ([`install_crypto_provider`]). Every certificate is issued by the cluster's CA
//! (`mirari tls`) and carries its holder's role as a URI subject alternative name,
//! `urn:mirari:role:<role>`, beside the DNS names and IP addresses it is valid for.
//!
//! A process has one identity: binaries load it at start-up with [`set_client_identity`], and
//! every outgoing TCP connection ([`crate::endpoint::Endpoint::connect`]) presents it. Servers
//! do the TLS handshake themselves ([`ServerTls`]), so a refused handshake (no certificate, an
//! expired one, one from another CA) is logged with the peer's address and the reason.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use mirari_core::config::ConfigError;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The URI SAN prefix that names a certificate's role.
pub const ROLE_URI_PREFIX: &str = "urn:mirari:role:";

/// What a certificate's holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A member of the raft group; also calls agents.
    Coordinator,
    /// A host: joins, heartbeats, watches its assignments, fetches blobs.
    Agent,
    /// A person who deploys, scales, stops, attaches consoles, changes membership.
    Operator,
    /// A person who reads status and logs.
    Reader,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Coordinator, Role::Agent, Role::Operator, Role::Reader];

    pub const fn name(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Reader => "reader",
        }
    }

    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.name())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Role::ALL.into_iter().find(|r| r.name() == text).ok_or_else(|| {
            let known: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
            format!("unknown role `{text}`; use one of {}", known.join(", "))
        })
    }
}

/// Who a certificate names: its role (the one URI SAN with [`ROLE_URI_PREFIX`], if exactly
/// one) and its holder's name (the subject's common name: a host's name for an agent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateIdentity {
    pub role: Option<Role>,
    pub name: Option<String>,
}

/// Reads the identity of a DER certificate (an unparsable one names nobody).
pub fn identity_of(certificate: &[u8]) -> CertificateIdentity {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate) else {
        return CertificateIdentity::default();
    };
    let name = parsed.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    let role = parsed.subject_alternative_name().ok().flatten().and_then(|names| {
        let mut roles = names.value.general_names.iter().filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(ROLE_URI_PREFIX)?.parse().ok(),
            _ => None,
        });
        let role = roles.next()?;
        roles.next().is_none().then_some(role)
    });
    CertificateIdentity { role, name }
}

/// Installs ring as rustls' crypto provider for the process (once; later calls do nothing).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no {what}", path.display())]
    Empty { path: PathBuf, what: &'static str },
    #[error("the TLS settings are unusable")]
    Config(#[from] rustls::Error),
    #[error("the client certificate verifier cannot be built")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error(transparent)]
    ConfigFile(Box<ConfigError>),
    #[error(
        "TLS needs all three of the CA certificate (--tls-ca), this process's certificate (--tls-cert) and its \
         key (--tls-key), or none of them; a config file's [tls] table names them ca, cert and key"
    )]
    Incomplete,
}

/// Where a process finds its CA certificate, its certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A config file's `[tls]` table, as the `mirari` CLI reads it (other tables are the file's
/// own business: it may be a daemon's).
#[derive(Debug, Deserialize)]
struct ConfigFile {
    tls: Option<TlsFiles>,
}

impl TlsFiles {
    /// All three paths, or none; anything in between is a mistake worth naming.
    pub fn from_parts(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<Self>, TlsError> {
        match (ca, cert, key) {
            (Some(ca), Some(cert), Some(key)) => Ok(Some(Self { ca, cert, key })),
            (None, None, None) => Ok(None),
            _ => Err(TlsError::Incomplete),
        }
    }

    /// The `[tls]` table of a TOML config file (`ca`, `cert`, `key`), if it has one.
    pub fn from_config_file(path: &Path) -> Result<Option<Self>, TlsError> {
        let text = std::fs::read_to_string(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })?;
        let file: ConfigFile = mirari_core::config::parse_toml(&path.display().to_string(), &text)
            .map_err(|e| TlsError::ConfigFile(Box::new(e)))?;
        Ok(file.tls)
    }

    fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
        std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
    }

    fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let pem = Self::read(path)?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|source| TlsError::Read { path: path.to_owned(), source })?;
        if certs.is_empty() {
            return Err(TlsError::Empty { path: path.to_owned(), what: "certificate" });
        }
        Ok(certs)
    }

    fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
        let pem = Self::read(path)?;
        rustls_pemfile::private_key(&mut pem.as_slice())
            .map_err(|source| TlsError::Read { path: path.to_owned(), source })?
            .ok_or_else(|| TlsError::Empty { path: path.to_owned(), what: "private key" })
    }
}

/// A server's TLS: its identity, and client certificates required from the cluster CA.
#[derive(Clone)]
pub struct ServerTls {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        for ca in TlsFiles::certificates(&files.ca)? {
            roots.add(ca)?;
        }
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(TlsFiles::certificates(&files.cert)?, TlsFiles::private_key(&files.key)?)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) })
    }
}

/// A client's TLS: the cluster CA to check servers against, and its own identity.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub(crate) config: ClientTlsConfig,
    /// The same settings for a bare rustls connection (see [`preflight`]).
    rustls: Arc<rustls::ClientConfig>,
}

impl ClientTls {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        install_crypto_provider();
        let ca = TlsFiles::read(&files.ca)?;
        let (cert, key) = (TlsFiles::read(&files.cert)?, TlsFiles::read(&files.key)?);
        let config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).identity(Identity::from_pem(cert, key));
        // Parsed here too, so a bad file is reported at start-up, not at the first connection.
        let mut roots = rustls::RootCertStore::empty();
        for ca in TlsFiles::certificates(&files.ca)? {
            roots.add(ca)?;
        }
        let mut rustls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(TlsFiles::certificates(&files.cert)?, TlsFiles::private_key(&files.key)?)?;
        rustls.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self { config, rustls: Arc::new(rustls) })
    }
}

/// Why a server would refuse this client's certificate, if it would.
///
/// Under TLS 1.3 a server checks the client's certificate after the client considers the
/// handshake done, so a refusal reaches the client as a closed connection, or as an alert it
/// may never read. This check does the handshake, starts HTTP/2 and reads the server's first
/// answer, where the server's alert, if any, is: "received fatal alert: UnknownCA". A server
/// that cannot be reached at all is reported as such at once, so the caller does not try
/// again.
pub(crate) async fn preflight(tls: &ClientTls, host_port: &str) -> Result<(), PreflightError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    const WAIT: std::time::Duration = std::time::Duration::from_secs(5);
    let host = host_port.rsplit_once(':').map_or(host_port, |(host, _)| host).trim_matches(['[', ']']);
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| PreflightError::Untrusted(format!("`{host}` is not a server name: {e}")))?;
    let tcp = match tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(host_port)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(error)) => return Err(PreflightError::Unreachable(error)),
        Err(_) => return Err(PreflightError::Unreachable(std::io::ErrorKind::TimedOut.into())),
    };
    let check = async {
        let mut stream = tokio_rustls::TlsConnector::from(tls.rustls.clone()).connect(name, tcp).await?;
        stream.write_all(PREFACE).await?;
        let mut first = [0u8; 9];
        match stream.read(&mut first).await? {
            0 => Err(std::io::Error::other("the server closed the connection after the TLS handshake")),
            _ => Ok(()),
        }
    };
    match tokio::time::timeout(WAIT, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => {
            let ours = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()).is_some_and(|e| {
                matches!(e, rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
            });
            Err(if ours {
                PreflightError::Untrusted(error.to_string())
            } else {
                PreflightError::Refused(error.to_string())
            })
        }
        Err(_) => Err(PreflightError::Refused(format!("no answer to the TLS handshake within {WAIT:?}"))),
    }
}

/// What the pre-flight TLS check found.
#[derive(Debug)]
pub(crate) enum PreflightError {
    /// No TCP connection could be made.
    Unreachable(std::io::Error),
    /// The server refused this client (its certificate, usually).
    Refused(String),
    /// This client does not trust the server's certificate.
    Untrusted(String),
}

/// The TLS flags every Mirari binary takes. In a daemon's config file they are its `[tls]`
/// table (`ca`, `cert`, `key`; see [`crate::daemon_config`]), each one overridden by its flag.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFlags {
    /// The cluster CA's certificate
    #[arg(long = "tls-ca", env = "MIRARI_CACERT", global = true)]
    pub ca: Option<PathBuf>,
    /// This process's certificate (its role is in it)
    #[arg(long = "tls-cert", env = "MIRARI_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// This process's private key
    #[arg(long = "tls-key", env = "MIRARI_KEY", global = true)]
    pub key: Option<PathBuf>,
}

impl TlsFlags {
    /// The three files, or `None` when none is given.
    pub fn files(&self) -> Result<Option<TlsFiles>, TlsError> {
        TlsFiles::from_parts(self.ca.clone(), self.cert.clone(), self.key.clone())
    }
}

/// The TLS options of the `mirari` CLI and `mirari-bench`: the flags, else the `[tls]` table
/// of a config file (the daemons read their whole file instead, [`crate::daemon_config`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    #[command(flatten)]
    pub flags: TlsFlags,
    /// A TOML config file whose [tls] table names ca, cert and key
    #[arg(long = "config", env = "MIRARI_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS files, from the flags (or their environment variables), else the config file.
    pub fn files(&self) -> Result<Option<TlsFiles>, TlsError> {
        if let Some(files) = self.flags.files()? {
            return Ok(Some(files));
        }
        match &self.config {
            Some(path) => TlsFiles::from_config_file(path),
            None => Ok(None),
        }
    }
}

static CLIENT_IDENTITY: OnceLock<ClientTls> = OnceLock::new();

/// Sets the identity this process presents on every outgoing TCP connection. Set it once, at
/// start-up; later calls are ignored.
pub fn set_client_identity(tls: ClientTls) {
    let _ = CLIENT_IDENTITY.set(tls);
}

pub(crate) fn client_identity() -> Option<&'static ClientTls> {
    CLIENT_IDENTITY.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_roles_and_lists_them_when_wrong() {
        assert_eq!("operator".parse(), Ok(Role::Operator));
        assert_eq!(Role::Agent.uri(), "urn:mirari:role:agent");
        assert_eq!(
            "admin".parse::<Role>(),
            Err("unknown role `admin`; use one of coordinator, agent, operator, reader".into())
        );
    }

    #[test]
    fn reads_the_tls_table_of_a_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "listen = \"10.0.0.1:7401\"\n[tls]\nca = \"/pki/ca.pem\"\ncert = \"/pki/h1.pem\"\nkey = \"/pki/h1-key.pem\"\n").unwrap();
        let files = TlsFiles::from_config_file(&path).unwrap().unwrap();
        assert_eq!(files.cert, PathBuf::from("/pki/h1.pem"));
        std::fs::write(&path, "[tls]\nca = \"/pki/ca.pem\"\n").unwrap();
        let error = TlsFiles::from_config_file(&path).unwrap_err().to_string();
        assert!(error.starts_with(&format!("{}:1:1: missing field `cert`", path.display())), "{error}");
    }

    #[test]
    fn all_or_no_paths() {
        assert_eq!(TlsFiles::from_parts(None, None, None).unwrap(), None);
        assert!(matches!(TlsFiles::from_parts(Some("ca".into()), None, None), Err(TlsError::Incomplete)));
    }
}
