//! Readiness probes as the kubelet runs them: a TCP connect, an HTTP GET
//! (success is a status from 200 to 399), or a command (success is exit
//! status 0), each bounded by the probe's timeout.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::DigitallySignedStruct;
use rustls::client::danger::HandshakeSignatureValid;

use bytes::Bytes;
use http_body_util::Empty;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::TcpStream;

/// What a probe checks, with named ports resolved and the host chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Tcp { host: String, port: u16 },
    /// `tls`: HTTPS, with the certificate not verified, as the kubelet does.
    Http { host: String, port: u16, path: String, headers: Vec<(String, String)>, tls: bool },
    Exec { command: Vec<String> },
    /// A probe the agent cannot run (named port missing, gRPC, HTTPS).
    Unsupported(String),
}

/// The kubelet does not verify a probed pod's certificate; neither does
/// the agent (a probe asks "does it answer", not "is it who it claims").
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn probe_tls() -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

fn resolve_port(container: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

fn http_check(container: &Container, http: &HTTPGetAction, pod_ip: IpAddr) -> Check {
    let Some(port) = resolve_port(container, &http.port) else {
        return Check::Unsupported(format!("port {:?} not found in container {}", http.port, container.name));
    };
    Check::Http {
        tls: http.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")),
        host: http.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| pod_ip.to_string()),
        port,
        path: http.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into()),
        headers: http.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect(),
    }
}

/// Turns a container's probe into the check to run against `pod_ip`.
pub fn check_for(container: &Container, probe: &Probe, pod_ip: IpAddr) -> Check {
    if let Some(tcp) = &probe.tcp_socket {
        return match resolve_port(container, &tcp.port) {
            Some(port) => Check::Tcp { host: tcp.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| pod_ip.to_string()), port },
            None => Check::Unsupported(format!("port {:?} not found in container {}", tcp.port, container.name)),
        };
    }
    if let Some(http) = &probe.http_get {
        return http_check(container, http, pod_ip);
    }
    if let Some(exec) = &probe.exec {
        return Check::Exec { command: exec.command.clone().unwrap_or_default() };
    }
    Check::Unsupported("only tcpSocket, httpGet and exec probes are supported".into())
}

/// Runs one check; true if it passed within `timeout`.
pub async fn run(check: &Check, timeout: Duration) -> bool {
    match tokio::time::timeout(timeout, attempt(check)).await {
        Ok(passed) => passed,
        Err(_) => false,
    }
}

async fn attempt(check: &Check) -> bool {
    match check {
        Check::Tcp { host, port } => TcpStream::connect((host.as_str(), *port)).await.is_ok(),
        Check::Http { host, port, path, headers, tls } => http_get(host, *port, path, headers, *tls).await.unwrap_or(false),
        Check::Exec { command } => {
            let Some((program, args)) = command.split_first() else { return false };
            let child = tokio::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await;
            child.is_ok_and(|s| s.success())
        }
        Check::Unsupported(_) => false,
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn http_get(host: &str, port: u16, path: &str, headers: &[(String, String)], tls: bool) -> Result<bool, BoxError> {
    let stream = TcpStream::connect((host, port)).await?;
    if tls {
        let name = ServerName::try_from(host.to_string())?;
        let stream = probe_tls()?.connect(name, stream).await?;
        return request(stream, host, port, path, headers).await;
    }
    request(stream, host, port, path, headers).await
}

async fn request<S>(stream: S, host: &str, port: u16, path: &str, headers: &[(String, String)]) -> Result<bool, BoxError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let mut request = hyper::Request::get(path).header(hyper::header::HOST, authority).header(hyper::header::USER_AGENT, "kube-probe/1.32");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = sender.send_request(request.body(Empty::<Bytes>::new())?).await?;
    driver.abort();
    Ok((200..400).contains(&response.status().as_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn container() -> Container {
        serde_json::from_value(serde_json::json!({"name": "c", "ports": [{"name": "http", "containerPort": 8080}]})).unwrap()
    }

    #[test]
    fn named_ports_resolve() {
        let probe: Probe = serde_json::from_value(serde_json::json!({"tcpSocket": {"port": "http"}})).unwrap();
        assert_eq!(check_for(&container(), &probe, "127.0.0.9".parse().unwrap()), Check::Tcp { host: "127.0.0.9".into(), port: 8080 });
        let probe: Probe = serde_json::from_value(serde_json::json!({"httpGet": {"port": "nope"}})).unwrap();
        assert!(matches!(check_for(&container(), &probe, "127.0.0.9".parse().unwrap()), Check::Unsupported(_)));
    }

    async fn http_server(status: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_status_decides() {
        let ok = http_server("200 OK").await;
        let bad = http_server("503 Service Unavailable").await;
        let check = |port| Check::Http { host: "127.0.0.1".into(), port, path: "/healthz".into(), headers: vec![], tls: false };
        assert!(run(&check(ok), Duration::from_secs(2)).await);
        assert!(!run(&check(bad), Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn https_probes_do_not_verify_the_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["somewhere-else".to_string()]).unwrap().self_signed(&key).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(s).await else { continue };
                let mut buf = [0u8; 1024];
                let _ = tls.read(&mut buf).await;
                let _ = tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                let _ = tls.shutdown().await;
            }
        });
        let check = Check::Http { host: "127.0.0.1".into(), port, path: "/".into(), headers: vec![], tls: true };
        assert!(run(&check, Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn tcp_and_exec() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(run(&Check::Tcp { host: "127.0.0.1".into(), port }, Duration::from_secs(1)).await);
        drop(listener);
        assert!(!run(&Check::Tcp { host: "127.0.0.1".into(), port }, Duration::from_secs(1)).await);
        assert!(run(&Check::Exec { command: vec!["true".into()] }, Duration::from_secs(2)).await);
        assert!(!run(&Check::Exec { command: vec!["false".into()] }, Duration::from_secs(2)).await);
        assert!(!run(&Check::Exec { command: vec!["sleep".into(), "5".into()] }, Duration::from_millis(100)).await);
    }
}
