//! A node's own credential: a client certificate for `system:node:<name>`
//! in `system:nodes`, kept in the agent's data dir (`node.pem`: the
//! certificate and its key in one file, replaced atomically, so no reader
//! ever pairs a new key with an old certificate; the cluster CA in
//! `ca.crt`). The agent obtains it once by
//! exchanging a bootstrap token (a `NodeCertificateRequest` carrying a
//! CSR for a key made here, which never leaves the node), reuses it on
//! every start, and renews it with itself at two thirds of its lifetime;
//! a renewal that fails is retried with backoff and logged at warn.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use wharf_kube::client::ClientIdentity;

pub const NODE_PREFIX: &str = "system:node:";
const CA: &str = "ca.crt";
const CERT_AND_KEY: &str = "node.pem";
const REQUESTS: &str = "/apis/wharf.dev/v1/nodecertificaterequests";
const RETRY_MIN: Duration = Duration::from_secs(1);
/// Renewals come at least this far apart, whatever the lifetime says.
const MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Certificate(String),
    #[error("requesting a node certificate: {0}")]
    Request(#[from] kube::Error),
    #[error(transparent)]
    Client(#[from] wharf_kube::client::ClientError),
}

/// The node's certificate, its key and the CA it trusts, as PEM.
#[derive(Clone)]
pub struct NodeCredential {
    pub ca_pem: String,
    /// The certificate, then its key.
    pub pem: String,
}

/// Validity of a PEM certificate as Unix seconds, and its subject's CN.
fn validity(cert_pem: &str) -> Result<(i64, i64, String), CredentialError> {
    let bad = |e: String| CredentialError::Certificate(e);
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    let cert = pem.parse_x509().map_err(|e| bad(format!("unreadable certificate: {e}")))?;
    let cn = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or_default().to_string();
    Ok((cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp(), cn))
}

fn read(path: &Path) -> Result<Option<String>, CredentialError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CredentialError::Io { path: path.into(), source }),
    }
}

/// Writes `contents` readable by the owner only, atomically.
fn write_private(path: &Path, contents: &str) -> Result<(), CredentialError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CredentialError::Io { path: path.into(), source };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl NodeCredential {
    /// The credential stored in `dir` for `node`, if there is one still valid.
    pub fn load(dir: &Path, node: &str) -> Result<Option<Self>, CredentialError> {
        let (Some(ca_pem), Some(pem)) = (read(&dir.join(CA))?, read(&dir.join(CERT_AND_KEY))?) else {
            return Ok(None);
        };
        let (_, not_after, cn) = validity(&pem)?;
        if cn != format!("{NODE_PREFIX}{node}") {
            return Err(CredentialError::Certificate(format!("{} is for {cn:?}, not node {node:?}", dir.join(CERT_AND_KEY).display())));
        }
        Ok((not_after > now()).then_some(Self { ca_pem, pem }))
    }

    fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Self {
        Self { ca_pem: ca_pem.to_string(), pem: format!("{}\n{key_pem}", cert_pem.trim_end()) }
    }

    pub fn save(&self, dir: &Path) -> Result<(), CredentialError> {
        write_private(&dir.join(CA), &self.ca_pem)?;
        write_private(&dir.join(CERT_AND_KEY), &self.pem)
    }

    pub fn identity(&self) -> Result<Arc<ClientIdentity>, CredentialError> {
        Ok(ClientIdentity::from_pem(&self.pem, &self.pem)?)
    }

    /// When to renew: two thirds into the certificate's lifetime.
    fn renew_at(&self) -> Result<i64, CredentialError> {
        let (not_before, not_after, _) = validity(&self.pem)?;
        Ok(not_before + (not_after - not_before) * 2 / 3)
    }
}

/// Asks `client`'s API server to sign a fresh key for `node`.
async fn request(client: &kube::Client, node: &str) -> Result<(String, String), CredentialError> {
    let rcgen_error = |e: rcgen::Error| CredentialError::Certificate(e.to_string());
    let key = KeyPair::generate().map_err(rcgen_error)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
    params.distinguished_name.push(DnType::CommonName, format!("{NODE_PREFIX}{node}"));
    let csr = params.serialize_request(&key).and_then(|r| r.pem()).map_err(rcgen_error)?;
    let body = json!({"apiVersion": "wharf.dev/v1", "kind": "NodeCertificateRequest", "spec": {"nodeName": node, "request": csr}});
    let http = http::Request::post(REQUESTS)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).unwrap_or_default())
        .map_err(|e| CredentialError::Certificate(e.to_string()))?;
    let answer: Value = client.request(http).await?;
    let cert =
        answer["status"]["certificate"].as_str().ok_or_else(|| CredentialError::Certificate("the answer has no certificate".into()))?;
    Ok((cert.to_string(), key.serialize_pem()))
}

/// Exchanges bootstrap `token` at `server` (trusting `ca_pem`) for `node`'s
/// credential.
pub async fn join(server: &str, ca_pem: &str, token: &str, node: &str) -> Result<NodeCredential, CredentialError> {
    let uri: http::Uri = server.parse().map_err(|e| CredentialError::Certificate(format!("server {server:?}: {e}")))?;
    let mut config = kube::Config::new(uri);
    config.root_cert = Some(vec![wharf_kube::client::pem_to_der(ca_pem)?]);
    config.auth_info.token = Some(token.to_string().into());
    let client = wharf_kube::client::build(config)?;
    let (cert_pem, key_pem) = request(&client, node).await?;
    Ok(NodeCredential::new(ca_pem, &cert_pem, &key_pem))
}

/// Renews `credential` through `client` (which presents `identity`) at two
/// thirds of each certificate's lifetime, saving each new one in `dir`
/// and presenting it from the next connection on, until `token` is
/// cancelled.
pub async fn renew(
    client: kube::Client,
    dir: PathBuf,
    node: String,
    mut credential: NodeCredential,
    identity: Arc<ClientIdentity>,
    token: CancellationToken,
) {
    let mut backoff = RETRY_MIN;
    let mut at_least = Duration::ZERO;
    loop {
        let wait = match credential.renew_at() {
            Ok(at) => Duration::from_secs(at.saturating_sub(now()).max(0) as u64).max(at_least),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the node certificate's lifetime; renewing now");
                Duration::ZERO
            }
        };
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let renewed = async {
            let (cert_pem, key_pem) = request(&client, &node).await?;
            let next = NodeCredential::new(&credential.ca_pem, &cert_pem, &key_pem);
            next.save(&dir)?;
            identity.replace(&next.pem, &next.pem)?;
            Ok::<_, CredentialError>(next)
        };
        match renewed.await {
            Ok(next) => {
                tracing::info!(node = %node, "renewed the node certificate");
                credential = next;
                backoff = RETRY_MIN;
                at_least = MIN_RENEWAL_INTERVAL;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "renewing the node certificate failed");
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(cn: &str, from: i64, to: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.not_before = time_at(from);
        params.not_after = time_at(to);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn time_at(unix: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    #[test]
    fn a_saved_credential_is_reused_until_it_expires_and_only_by_its_node() {
        let dir = tempfile::tempdir().unwrap();
        // One clock reading: making a key can take long enough to cross a second.
        let start = now();
        let (cert, key) = certificate("system:node:n1", start - 100, start + 200);
        let credential = NodeCredential::new("CA", &cert, &key);
        credential.save(dir.path()).unwrap();
        let loaded = NodeCredential::load(dir.path(), "n1").unwrap().expect("still valid");
        assert_eq!(loaded.pem, credential.pem);
        assert!(loaded.identity().is_ok(), "the one file holds the certificate and its key");
        assert_eq!(loaded.renew_at().unwrap(), start - 100 + 200, "two thirds of 300 s after the start");
        assert!(NodeCredential::load(dir.path(), "n2").is_err(), "another node's certificate");
        let (old, key) = certificate("system:node:n1", now() - 100, now() - 1);
        NodeCredential::new("CA", &old, &key).save(dir.path()).unwrap();
        assert!(NodeCredential::load(dir.path(), "n1").unwrap().is_none(), "expired");
        assert!(NodeCredential::load(tempfile::tempdir().unwrap().path(), "n1").unwrap().is_none(), "nothing saved");
    }
}
