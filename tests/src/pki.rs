//! Certificates for test clusters, made with `mirari tls` as an operator would.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bin;

/// A test cluster's CA.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

/// One identity's files.
#[derive(Debug, Clone)]
pub struct Identity {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// The CA under `dir` (created the first time).
    pub fn new(dir: &Path) -> Self {
        let dir = dir.join("pki");
        if dir.join("ca.pem").is_file() {
            return Self { dir };
        }
        let status =
            Command::new(bin("mirari")).args(["tls", "ca", "create", "--dir"]).arg(&dir).output().expect("mirari tls");
        assert!(status.status.success(), "mirari tls ca create failed: {}", String::from_utf8_lossy(&status.stderr));
        Self { dir }
    }

    /// Issues a certificate for `name` with `role`, valid at `ips` (or returns the one issued
    /// to `name` before).
    pub fn issue(&self, role: &str, name: &str, ips: &[&str]) -> Identity {
        self.issue_with(role, name, ips, 365)
    }

    /// Issues a certificate valid for `days` (0: it expires at once).
    pub fn issue_for_days(&self, role: &str, name: &str, days: u32) -> Identity {
        self.issue_with(role, name, &[], days)
    }

    fn issue_with(&self, role: &str, name: &str, ips: &[&str], days: u32) -> Identity {
        let identity = Identity {
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
        };
        if identity.cert.is_file() {
            return identity;
        }
        let mut command = Command::new(bin("mirari"));
        command
            .args(["tls", "cert", "create", "--role", role, "--name", name, "--days", &days.to_string(), "--ca-dir"])
            .arg(&self.dir);
        for ip in ips {
            command.args(["--ip", ip]);
        }
        let out = command.output().expect("mirari tls");
        assert!(out.status.success(), "mirari tls cert create failed: {}", String::from_utf8_lossy(&out.stderr));
        identity
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Identity {
    /// A gRPC channel to `address` presenting this identity, trusting its CA.
    pub async fn channel(&self, address: &str) -> Result<tonic::transport::Channel, String> {
        connect(address, &self.ca, Some(self)).await
    }

    /// Presents this identity in `command` (`mirari`'s environment variables, which every
    /// Mirari binary reads).
    pub fn apply(&self, command: &mut Command) {
        command.env("MIRARI_CACERT", &self.ca).env("MIRARI_CERT", &self.cert).env("MIRARI_KEY", &self.key);
    }
}

/// A channel to `address`, presenting `identity` (or no certificate), trusting `ca`.
pub async fn connect(
    address: &str,
    ca: &Path,
    identity: Option<&Identity>,
) -> Result<tonic::transport::Channel, String> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    mirari_proto::tls::install_crypto_provider();
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).map_err(|e| e.to_string())?));
    if let Some(identity) = identity {
        let (cert, key) = (std::fs::read(&identity.cert).unwrap(), std::fs::read(&identity.key).unwrap());
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    let endpoint = Channel::from_shared(format!("https://{address}")).map_err(|e| e.to_string())?;
    endpoint.tls_config(tls).map_err(|e| e.to_string())?.connect().await.map_err(|e| mirari_core::errors::chain(&e))
}
