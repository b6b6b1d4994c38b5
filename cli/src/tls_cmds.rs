//! `mirari tls`: a certificate authority for a cluster, and certificates that carry roles.
//!
//! Like `nomad tls`: `ca create` makes the CA; `cert create --role ROLE --name NAME` issues a
//! certificate for a coordinator, an agent, an operator or a reader, valid for the DNS names
//! and IP addresses given (servers are checked against them). Keys are written with mode 0600.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use mirari_proto::tls::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";

/// Writes `contents` to `path`, readable by its owner only.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    // An existing file keeps its old mode through open(); set it explicitly.
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(())
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
}

pub fn create_ca(dir: &Path, name: &str, days: i64) -> anyhow::Result<ExitCode> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    anyhow::ensure!(
        !key_path.exists(),
        "{} exists already; a CA is created once (move it away to start over)",
        key_path.display()
    );
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    let cert = params.self_signed(&key)?;
    write_private(&cert_path, &cert.pem())?;
    write_private(&key_path, &key.serialize_pem())?;
    println!("created the CA {name}: {} and {}", cert_path.display(), key_path.display());
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug)]
pub struct CertRequest {
    pub ca_dir: PathBuf,
    pub out_dir: PathBuf,
    pub role: Role,
    pub name: String,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub days: i64,
}

pub fn create_cert(request: &CertRequest) -> anyhow::Result<ExitCode> {
    let read = |path: PathBuf| {
        fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}; create the CA first with `mirari tls ca create`", path.display()))
    };
    let ca_key = KeyPair::from_pem(&read(request.ca_dir.join(CA_KEY))?)?;
    let issuer = Issuer::from_ca_cert_pem(&read(request.ca_dir.join(CA_CERT))?, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, request.name.as_str());
    params.subject_alt_names.push(SanType::URI(request.role.uri().try_into()?));
    for dns in &request.dns {
        params.subject_alt_names.push(SanType::DnsName(dns.clone().try_into()?));
    }
    params.subject_alt_names.extend(request.ips.iter().copied().map(SanType::IpAddress));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, request.days);
    let cert = params.signed_by(&key, &issuer)?;
    fs::create_dir_all(&request.out_dir).with_context(|| format!("cannot create {}", request.out_dir.display()))?;
    let cert_path = request.out_dir.join(format!("{}.pem", request.name));
    let key_path = request.out_dir.join(format!("{}-key.pem", request.name));
    write_private(&cert_path, &cert.pem())?;
    write_private(&key_path, &key.serialize_pem())?;
    println!(
        "issued {}'s certificate with role {}: {} and {} (valid {} days)",
        request.name,
        request.role,
        cert_path.display(),
        key_path.display(),
        request.days
    );
    Ok(ExitCode::SUCCESS)
}
