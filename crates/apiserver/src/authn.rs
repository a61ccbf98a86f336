//! Authentication, as kube-apiserver does it: an X.509 client certificate
//! signed by the cluster CA (CN = user, O = groups), else a bearer token
//! (the admin token, a member of `system:masters`, or one from
//! `--token-auth-file`), or a bootstrap token. No credential is anonymous, allowed only the
//! public paths; a credential that is wrong is 401.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use wharf_auth::bootstrap;
use wharf_auth::sessions::{Sessions, SESSION_PREFIX};
use wharf_auth::tokens::TokenFile;
use wharf_auth::User;

use crate::error::ApiError;
use crate::http::header_str;
use crate::App;

/// The admin credential's user.
pub const ADMIN_USER: &str = "wharf-admin";

/// What the TLS handshake learned about the client, per connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: std::net::SocketAddr,
    /// The user of a valid client certificate; `Err` for one that is not
    /// valid (expired, another CA): those requests are 401.
    pub certificate: Option<Result<User, String>>,
}

pub struct Authenticator {
    admin_token: String,
    tokens: TokenFile,
    /// Dashboard sessions (`wharf-session.` tokens).
    pub sessions: Arc<Sessions>,
    /// Checks a client's chain against the cluster CA after the handshake.
    chain: Arc<dyn ClientCertVerifier>,
}

/// The user a certificate names: CN is the user, each O a group.
fn certificate_user(der: &CertificateDer<'_>) -> Result<User, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next().and_then(|cn| cn.as_str().ok()).filter(|n| !n.is_empty());
    let name = name.ok_or("the certificate has no common name")?;
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok()).map(String::from);
    Ok(User::authenticated(name, "", groups))
}

impl Authenticator {
    pub fn new(ca_cert_pem: &str, admin_token: String, tokens: TokenFile) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_cert_pem.as_bytes()) {
            roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        }
        let chain = WebPkiClientVerifier::builder(Arc::new(roots)).allow_unauthenticated().build().map_err(|e| e.to_string())?;
        Ok(Self { admin_token, tokens, chain, sessions: Arc::default() })
    }

    /// The TLS side: asks for a client certificate, proves the client holds
    /// its key, and leaves judging the chain to [`Authenticator::peer`] so
    /// that a bad certificate is a 401 as in Kubernetes, not a TLS alert.
    pub fn tls_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(DeferredVerifier(self.chain.clone()))
    }

    /// Judges the certificate chain a connection presented.
    pub fn peer(&self, addr: std::net::SocketAddr, chain: Option<&[CertificateDer<'static>]>) -> Peer {
        let certificate = chain.and_then(|c| c.split_first()).map(|(leaf, intermediates)| {
            self.chain.verify_client_cert(leaf, intermediates, UnixTime::now()).map_err(|e| e.to_string())?;
            certificate_user(leaf)
        });
        Peer { addr, certificate }
    }

    /// The caller of one request: `Ok(None)` when it brought no credential.
    pub fn authenticate(&self, peer: Option<&Peer>, authorization: &str) -> Result<Option<User>, String> {
        let cert_error = match peer.and_then(|p| p.certificate.as_ref()) {
            Some(Ok(user)) => return Ok(Some(user.clone())),
            Some(Err(e)) => Some(e.clone()),
            None => None,
        };
        let token = authorization.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty());
        match (token, cert_error) {
            (Some(t), _) if wharf_auth::tokens::secret_matches(t, &self.admin_token) => {
                Ok(Some(User::authenticated(ADMIN_USER, "", [wharf_auth::user::MASTERS.to_string()])))
            }
            (Some(t), _) if t.starts_with(SESSION_PREFIX) => {
                self.sessions.user(t, std::time::Instant::now()).map(Some).ok_or_else(|| "invalid or expired session".to_string())
            }
            (Some(t), _) => self.tokens.user(t).cloned().map(Some).ok_or_else(|| "invalid bearer token".to_string()),
            (None, Some(e)) => Err(e),
            (None, None) => Ok(None),
        }
    }
}

/// Asks for a certificate and verifies the handshake signature; the chain
/// is judged per request.
#[derive(Debug)]
struct DeferredVerifier(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for DeferredVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Paths anyone may read, as kube-apiserver's `system:public-info-viewer`.
fn is_public(path: &str) -> bool {
    let dashboard_page = (path == "/ui" || path.starts_with("/ui/")) && !path.starts_with("/ui/api/");
    matches!(path, "/version" | "/healthz" | "/livez" | "/readyz" | "/ui/api/sessions") || dashboard_page
}

const UNAUTHENTICATED_BODY_LIMIT: usize = 1 << 20;

/// The user a bootstrap token `(id, secret)` authenticates, from its
/// Secret in the store.
async fn bootstrap_user(app: &App, id: &str, secret: &str) -> Result<User, String> {
    let name = bootstrap::secret_name(id);
    let stored = app.registry.get(&crate::kind::SECRET, bootstrap::NAMESPACE, &name).await.map_err(|e| e.to_string())?;
    let stored: k8s_openapi::api::core::v1::Secret = serde_json::from_value(stored).map_err(|e| format!("{name}: {e}"))?;
    bootstrap::authenticate(&stored, id, secret, jiff::Timestamp::now())
}

/// The caller: a client certificate, the admin token or a token-file
/// token, else a bootstrap token (looked up in the store only then).
async fn authenticate_request(app: &App, peer: Option<&Peer>, authorization: &str) -> Result<Option<User>, String> {
    let outcome = app.auth.authenticator.authenticate(peer, authorization);
    let bootstrap_token = authorization.strip_prefix("Bearer ").map(str::trim).and_then(bootstrap::parse);
    match (outcome, bootstrap_token) {
        (Err(_), Some((id, secret))) => {
            let user = bootstrap_user(app, id, secret).await;
            if let Err(why) = &user {
                tracing::info!(token_id = id, why = %why, "refused a bootstrap token");
            }
            user.map(Some)
        }
        (outcome, _) => outcome,
    }
}

/// Middleware: puts the caller's [`User`] into the request, or answers 401.
pub async fn authenticate(State(app): State<App>, mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<Peer>().cloned();
    let authorization = header_str(request.headers(), header::AUTHORIZATION).to_string();
    let outcome = authenticate_request(&app, peer.as_ref(), &authorization).await;
    let user = match outcome {
        Ok(Some(user)) => user,
        Ok(None) if is_public(request.uri().path()) => User::anonymous(),
        Ok(None) | Err(_) => {
            crate::authz::audit_unauthenticated(&app.auth.audit, &request);
            // Read (a bounded amount of) the body first: an HTTP/2 stream reset
            // while the client is still sending makes some clients lose the 401.
            let _ = axum::body::to_bytes(request.into_body(), UNAUTHENTICATED_BODY_LIMIT).await;
            return ApiError::Unauthorized.into_response();
        }
    };
    request.extensions_mut().insert(user);
    next.run(request).await
}
