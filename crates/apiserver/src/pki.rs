//! The cluster's credentials: a CA, the API server's serving certificate
//! and the admin bearer token, created in the data dir at first start and
//! reused afterwards; and client certificates for users and wharf's parts.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// PEM-encoded material the server and its clients need.
#[derive(Clone)]
pub struct Credentials {
    pub ca_cert_pem: String,
    /// Signs node certificates (`NodeCertificateRequest`).
    pub ca_key_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_token: String,
}

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVING_CERT: &str = "apiserver.crt";
const SERVING_KEY: &str = "apiserver.key";
const SERVING_SANS: &str = "apiserver.sans";
const ADMIN_TOKEN: &str = "admin.token";

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io { path: path.into(), source }),
    }
}

/// Writes a file readable only by its owner, atomically (temp + rename).
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { path: path.into(), source };
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// Loads the credentials in `dir`, creating whatever is missing. The
/// serving certificate is reissued (by the same CA) when the wanted
/// subject alternative names change.
pub fn load_or_create(dir: &Path, serving_hosts: &[String]) -> Result<Credentials, PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.into(), source })?;
    let (ca_cert_pem, ca_key_pem) = match (read(&dir.join(CA_CERT))?, read(&dir.join(CA_KEY))?) {
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            let (cert, key) = new_ca()?;
            write_private(&dir.join(CA_KEY), &key)?;
            write_private(&dir.join(CA_CERT), &cert)?;
            // A new CA invalidates any serving certificate left behind.
            let _ = fs::remove_file(dir.join(SERVING_SANS));
            (cert, key)
        }
    };
    let sans = serving_hosts.join(",");
    let (serving_cert_pem, serving_key_pem) =
        match (read(&dir.join(SERVING_CERT))?, read(&dir.join(SERVING_KEY))?, read(&dir.join(SERVING_SANS))?) {
            (Some(cert), Some(key), Some(old)) if old == sans => (cert, key),
            _ => {
                let (cert, key) = new_serving_cert(&ca_cert_pem, &ca_key_pem, serving_hosts)?;
                write_private(&dir.join(SERVING_KEY), &key)?;
                write_private(&dir.join(SERVING_CERT), &cert)?;
                write_private(&dir.join(SERVING_SANS), &sans)?;
                (cert, key)
            }
        };
    let admin_token = match read(&dir.join(ADMIN_TOKEN))? {
        Some(token) if !token.trim().is_empty() => token.trim().to_string(),
        _ => {
            let token = random_token();
            write_private(&dir.join(ADMIN_TOKEN), &token)?;
            token
        }
    };
    Ok(Credentials { ca_cert_pem, ca_key_pem, serving_cert_pem, serving_key_pem, admin_token })
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_ca() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "wharf-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn new_serving_cert(ca_cert_pem: &str, ca_key_pem: &str, hosts: &[String]) -> Result<(String, String), PkiError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "wharf-apiserver");
    for host in hosts {
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.clone().try_into()?),
        };
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What kube-apiserver reads from a client certificate: CN is the user,
/// O the group. Valid from a little ago (for clocks a little behind: a
/// minute, or a tenth of a short lifetime, so that renewing at two thirds
/// of it still comes after the issue) for `valid_for`; for client
/// authentication only.
fn client_params(user: &str, group: Option<&str>, valid_for: std::time::Duration) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, user);
    if let Some(group) = group {
        params.distinguished_name.push(DnType::OrganizationName, group);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1).min(time::Duration::try_from(valid_for / 10).unwrap_or_default());
    params.not_after = now + valid_for;
    Ok(params)
}

/// A client certificate and its new key, signed by the CA in `dir`.
pub fn client_certificate(
    dir: &Path,
    user: &str,
    group: Option<&str>,
    valid_for: std::time::Duration,
) -> Result<(String, String), PkiError> {
    let missing = |path: PathBuf| PkiError::Io { path, source: std::io::ErrorKind::NotFound.into() };
    let ca_cert = read(&dir.join(CA_CERT))?.ok_or_else(|| missing(dir.join(CA_CERT)))?;
    let ca_key = read(&dir.join(CA_KEY))?.ok_or_else(|| missing(dir.join(CA_KEY)))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, KeyPair::from_pem(&ca_key)?)?;
    let key = KeyPair::generate()?;
    let cert = client_params(user, group, valid_for)?.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Signs the key of `request` (a PEM certificate signing request, its
/// signature checked) as `user` in `group`. Whatever else the request
/// asks for (subject, names, usages) is ignored: the signer decides.
pub fn sign_request(
    creds: &Credentials,
    request_pem: &str,
    user: &str,
    group: &str,
    valid_for: std::time::Duration,
) -> Result<String, PkiError> {
    let issuer = Issuer::from_ca_cert_pem(&creds.ca_cert_pem, KeyPair::from_pem(&creds.ca_key_pem)?)?;
    let mut request = rcgen::CertificateSigningRequestParams::from_pem(request_pem)?;
    request.params = client_params(user, Some(group), valid_for)?;
    Ok(request.signed_by(&issuer)?.pem())
}

fn kubeconfig_text(ca_cert_pem: &str, server_url: &str, user: &str, credential: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_cert_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: wharf
  cluster:
    server: {server_url}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
{credential}
contexts:
- name: wharf
  context:
    cluster: wharf
    user: {user}
    namespace: default
current-context: wharf
"
    )
}

/// The admin kubeconfig: the cluster's CA, the server URL and the token.
pub fn kubeconfig(creds: &Credentials, server_url: &str) -> String {
    kubeconfig_text(&creds.ca_cert_pem, server_url, "wharf-admin", &format!("    token: {}", creds.admin_token))
}

/// A kubeconfig that authenticates with a client certificate.
pub fn certificate_kubeconfig(ca_cert_pem: &str, server_url: &str, user: &str, cert_pem: &str, key_pem: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let credential = format!("    client-certificate-data: {}\n    client-key-data: {}", b64(cert_pem), b64(key_pem));
    kubeconfig_text(ca_cert_pem, server_url, user, &credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_reused_and_reissued_only_on_new_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let first = load_or_create(dir.path(), &hosts).unwrap();
        let again = load_or_create(dir.path(), &hosts).unwrap();
        assert_eq!(first.serving_cert_pem, again.serving_cert_pem);
        assert_eq!(first.admin_token, again.admin_token);
        assert_eq!(first.admin_token.len(), 64);
        let moved = load_or_create(dir.path(), &["127.0.0.2".to_string()]).unwrap();
        assert_ne!(first.serving_cert_pem, moved.serving_cert_pem);
        assert_eq!(first.ca_cert_pem, moved.ca_cert_pem);
    }
}
