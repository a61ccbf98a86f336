//! Readiness probes as the kubelet runs them: a TCP connect, an HTTP GET
//! (success is a status from 200 to 399), a gRPC health check (success is
//! SERVING), or a command (success is exit status 0), each bounded by the
//! probe's timeout.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::DigitallySignedStruct;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::TcpStream;

/// What a probe checks, with named ports resolved and the host chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Tcp {
        host: String,
        port: u16,
    },
    /// `tls`: HTTPS, with the certificate not verified, as the kubelet does.
    Http {
        host: String,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
        tls: bool,
    },
    /// `grpc.health.v1.Health/Check` over plaintext HTTP/2, as the kubelet
    /// sends it; `service` is the probe's service name ("" = the server).
    Grpc {
        host: String,
        port: u16,
        service: String,
    },
    /// A host command (there are no containers): run as `user`, with a
    /// clean environment, killed at the probe's timeout.
    Exec {
        command: Vec<String>,
        user: Option<ProbeUser>,
    },
    /// A probe the agent cannot run (a named port the container lacks).
    Unsupported(String),
}

/// The account exec probes run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeUser {
    pub uid: u32,
    pub gid: u32,
}

/// What a node lets probes do. wharf has no containers, so an exec probe
/// is a command on the host and a probe `host` is any address: both are
/// refused unless the node's operator allows them.
#[derive(Clone, Debug, Default)]
pub struct ProbePolicy {
    /// `--allow-exec-probes`.
    pub allow_exec: bool,
    /// `--probe-user`: exec probes run as this account (None: as wharf,
    /// when wharf is not root).
    pub exec_user: Option<ProbeUser>,
    /// `--probe-host-cidrs`: addresses a probe's `host` may name.
    pub host_cidrs: Vec<ipnet::IpNet>,
}

impl ProbePolicy {
    /// The address a probe goes to: the pod's own, or a `host` the policy
    /// allows.
    fn host(&self, requested: Option<&String>, pod_ip: IpAddr) -> Result<String, String> {
        let Some(host) = requested.filter(|h| !h.is_empty()) else { return Ok(pod_ip.to_string()) };
        match host.parse::<IpAddr>() {
            Ok(ip) if ip == pod_ip || self.host_cidrs.iter().any(|n| n.contains(&ip)) => Ok(host.clone()),
            _ => Err(format!("probe host {host:?} is not the pod's address and not inside --probe-host-cidrs")),
        }
    }
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

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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

fn http_check(container: &Container, http: &HTTPGetAction, pod_ip: IpAddr, policy: &ProbePolicy) -> Check {
    let Some(port) = resolve_port(container, &http.port) else {
        return Check::Unsupported(format!("port {:?} not found in container {}", http.port, container.name));
    };
    let host = match policy.host(http.host.as_ref(), pod_ip) {
        Ok(host) => host,
        Err(why) => return Check::Unsupported(why),
    };
    Check::Http {
        tls: http.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")),
        host,
        port,
        path: http.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into()),
        headers: http.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect(),
    }
}

/// Turns a container's probe into the check to run against `pod_ip`, as
/// far as `policy` allows.
pub fn check_for(container: &Container, probe: &Probe, pod_ip: IpAddr, policy: &ProbePolicy) -> Check {
    if let Some(tcp) = &probe.tcp_socket {
        let host = match policy.host(tcp.host.as_ref(), pod_ip) {
            Ok(host) => host,
            Err(why) => return Check::Unsupported(why),
        };
        return match resolve_port(container, &tcp.port) {
            Some(port) => Check::Tcp { host, port },
            None => Check::Unsupported(format!("port {:?} not found in container {}", tcp.port, container.name)),
        };
    }
    if let Some(http) = &probe.http_get {
        return http_check(container, http, pod_ip, policy);
    }
    if let Some(exec) = &probe.exec {
        if !policy.allow_exec {
            return Check::Unsupported(
                "exec probes run commands on the host; this node refuses them (start its agent with --allow-exec-probes)".into(),
            );
        }
        return Check::Exec { command: exec.command.clone().unwrap_or_default(), user: policy.exec_user };
    }
    if let Some(grpc) = &probe.grpc {
        return match u16::try_from(grpc.port) {
            Ok(port) => Check::Grpc { host: pod_ip.to_string(), port, service: grpc.service.clone().unwrap_or_default() },
            Err(_) => Check::Unsupported(format!("gRPC port {} out of range in container {}", grpc.port, container.name)),
        };
    }
    Check::Unsupported(format!("no probe handler in container {}", container.name))
}

/// The only environment an exec probe gets.
const EXEC_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What an exec probe's output may add to its failure message.
const MAX_EXEC_OUTPUT: usize = 10 << 10;

/// Runs one check within `timeout`; the error says why it failed, in the
/// kubelet's words where it has them (they end up in Events).
pub async fn run(check: &Check, timeout: Duration) -> Result<(), String> {
    tokio::time::timeout(timeout, attempt(check)).await.unwrap_or_else(|_| Err(format!("probe timed out after {timeout:?}")))
}

fn dial_error(host: &str, port: u16, e: &std::io::Error) -> String {
    let why = match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".to_string(),
        _ => e.to_string(),
    };
    format!("dial tcp {}: {why}", authority(host, port))
}

async fn attempt(check: &Check) -> Result<(), String> {
    match check {
        Check::Tcp { host, port } => TcpStream::connect((host.as_str(), *port)).await.map(drop).map_err(|e| dial_error(host, *port, &e)),
        Check::Http { host, port, path, headers, tls } => {
            let url = format!("{}://{}{path}", if *tls { "https" } else { "http" }, authority(host, *port));
            match http_get(host, *port, path, headers, *tls).await {
                Ok(status) if (200..400).contains(&status) => Ok(()),
                Ok(status) => Err(format!("HTTP probe failed with statuscode: {status}")),
                Err(e) => Err(format!("Get {url:?}: {e}")),
            }
        }
        Check::Grpc { host, port, service } => match grpc_health(host, *port, service).await {
            Ok(true) => Ok(()),
            Ok(false) => Err("service unhealthy (responded with \"NOT_SERVING\")".into()),
            Err(e) => Err(format!("failed to connect service {:?}: {e}", authority(host, *port))),
        },
        Check::Exec { command, user } => {
            let Some((program, args)) = command.split_first() else { return Err("no command".into()) };
            let mut child = tokio::process::Command::new(program);
            child
                .args(args)
                .env_clear()
                .env("PATH", EXEC_PATH)
                .current_dir("/")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            if let Some(user) = user {
                // std drops the supplementary groups when it sets the uid as root.
                child.uid(user.uid).gid(user.gid);
            }
            let out = child.output().await.map_err(|e| format!("{program}: {e}"))?;
            if out.status.success() {
                return Ok(());
            }
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let mut text = text.trim().to_string();
            if text.len() > MAX_EXEC_OUTPUT {
                let cut = (0..=MAX_EXEC_OUTPUT).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
                text.truncate(cut);
            }
            Err(if text.is_empty() { format!("command {command:?} exited with {}", out.status) } else { text })
        }
        Check::Unsupported(why) => Err(why.clone()),
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The status code of `GET path`.
async fn http_get(host: &str, port: u16, path: &str, headers: &[(String, String)], tls: bool) -> Result<u16, BoxError> {
    let stream = TcpStream::connect((host, port)).await.map_err(|e| dial_error(host, port, &e))?;
    if tls {
        let name = ServerName::try_from(host.to_string())?;
        let stream = probe_tls()?.connect(name, stream).await?;
        return request(stream, host, port, path, headers).await;
    }
    request(stream, host, port, path, headers).await
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const GRPC_SERVING: i32 = 1;

/// One gRPC message in its length-prefixed frame (uncompressed).
fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let payload = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.into()
}

/// The first message of a gRPC response body, if it is whole and uncompressed.
fn grpc_message<M: prost::Message + Default>(body: &[u8]) -> Option<M> {
    let (&[0, a, b, c, d], rest) = body.split_first_chunk::<5>()? else { return None };
    let payload = rest.get(..usize::try_from(u32::from_be_bytes([a, b, c, d])).ok()?)?;
    M::decode(payload).ok()
}

async fn grpc_health(host: &str, port: u16, service: &str) -> Result<bool, BoxError> {
    let stream = TcpStream::connect((host, port)).await.map_err(|e| dial_error(host, port, &e))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::post(format!("http://{}/grpc.health.v1.Health/Check", authority(host, port)))
        .header(hyper::header::CONTENT_TYPE, "application/grpc")
        .header(hyper::header::TE, "trailers")
        .header(hyper::header::USER_AGENT, "kube-probe/1.32")
        .body(Full::new(grpc_frame(&HealthCheckRequest { service: service.to_string() })))?;
    let response = sender.send_request(request).await?;
    // A failed call may come as headers only, with grpc-status among them.
    let failed_early = response.headers().get("grpc-status").is_some_and(|s| s != "0");
    let passed = response.status() == hyper::StatusCode::OK && !failed_early && {
        let body = response.into_body().collect().await?;
        let status_ok = body.trailers().and_then(|t| t.get("grpc-status")).is_some_and(|s| s == "0");
        status_ok && grpc_message::<HealthCheckResponse>(&body.to_bytes()).is_some_and(|r| r.status == GRPC_SERVING)
    };
    driver.abort();
    Ok(passed)
}

async fn request<S>(stream: S, host: &str, port: u16, path: &str, headers: &[(String, String)]) -> Result<u16, BoxError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let mut request =
        hyper::Request::get(path).header(hyper::header::HOST, authority(host, port)).header(hyper::header::USER_AGENT, "kube-probe/1.32");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = sender.send_request(request.body(Empty::<Bytes>::new())?).await?;
    driver.abort();
    Ok(response.status().as_u16())
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
        assert_eq!(
            check_for(&container(), &probe, "127.0.0.9".parse().unwrap(), &ProbePolicy::default()),
            Check::Tcp { host: "127.0.0.9".into(), port: 8080 }
        );
        let probe: Probe = serde_json::from_value(serde_json::json!({"httpGet": {"port": "nope"}})).unwrap();
        assert!(matches!(check_for(&container(), &probe, "127.0.0.9".parse().unwrap(), &ProbePolicy::default()), Check::Unsupported(_)));
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
        assert!(run(&check(ok), Duration::from_secs(2)).await.is_ok());
        assert!(run(&check(bad), Duration::from_secs(2)).await.is_err());
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
        assert!(run(&check, Duration::from_secs(2)).await.is_ok());
    }

    /// A gRPC health server over h2c: SERVING for "", NOT_SERVING for
    /// "db", and the NOT_FOUND call status for any other service.
    async fn grpc_health_server() -> u16 {
        use hyper::body::Frame;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let answer = |request: hyper::Request<hyper::body::Incoming>| async move {
            assert_eq!(request.uri().path(), "/grpc.health.v1.Health/Check");
            let body = request.into_body().collect().await?.to_bytes();
            let asked: HealthCheckRequest = grpc_message(&body).unwrap();
            let (status, code) = match asked.service.as_str() {
                "" => (GRPC_SERVING, "0"),
                "db" => (2, "0"),
                _ => (0, "5"),
            };
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("grpc-status", code.parse().unwrap());
            let frames = [Frame::data(grpc_frame(&HealthCheckResponse { status })), Frame::trailers(trailers)];
            let body = http_body_util::StreamBody::new(futures::stream::iter(frames.map(Ok::<_, hyper::Error>)));
            Ok::<_, hyper::Error>(hyper::Response::builder().header("content-type", "application/grpc").body(body).unwrap())
        };
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let connection = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(s), hyper::service::service_fn(answer));
                tokio::spawn(connection);
            }
        });
        port
    }

    #[tokio::test]
    async fn grpc_health_status_decides() {
        let port = grpc_health_server().await;
        let check = |service: &str| Check::Grpc { host: "127.0.0.1".into(), port, service: service.into() };
        assert!(run(&check(""), Duration::from_secs(2)).await.is_ok());
        assert!(run(&check("db"), Duration::from_secs(2)).await.is_err(), "NOT_SERVING must fail");
        assert!(run(&check("unknown"), Duration::from_secs(2)).await.is_err(), "a failed call must fail");
        let http1 = http_server("200 OK").await;
        assert!(run(&Check::Grpc { host: "127.0.0.1".into(), port: http1, service: String::new() }, Duration::from_secs(2)).await.is_err());
        let probe: Probe = serde_json::from_value(serde_json::json!({"grpc": {"port": 9090, "service": "db"}})).unwrap();
        assert_eq!(
            check_for(&container(), &probe, "127.0.0.9".parse().unwrap(), &ProbePolicy::default()),
            Check::Grpc { host: "127.0.0.9".into(), port: 9090, service: "db".into() }
        );
    }

    #[test]
    fn grpc_frames_round_trip_and_truncation_is_refused() {
        let frame = grpc_frame(&HealthCheckResponse { status: GRPC_SERVING });
        assert_eq!(grpc_message::<HealthCheckResponse>(&frame), Some(HealthCheckResponse { status: GRPC_SERVING }));
        assert_eq!(grpc_message::<HealthCheckResponse>(&frame[..frame.len() - 1]), None);
        assert_eq!(grpc_message::<HealthCheckResponse>(&[1, 0, 0, 0, 0]), None, "compressed frames are not read");
    }

    #[tokio::test]
    async fn tcp_and_exec() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(run(&Check::Tcp { host: "127.0.0.1".into(), port }, Duration::from_secs(1)).await.is_ok());
        drop(listener);
        assert!(run(&Check::Tcp { host: "127.0.0.1".into(), port }, Duration::from_secs(1)).await.is_err());
        assert!(run(&Check::Exec { command: vec!["true".into()], user: None }, Duration::from_secs(2)).await.is_ok());
        assert!(run(&Check::Exec { command: vec!["false".into()], user: None }, Duration::from_secs(2)).await.is_err());
        assert!(run(&Check::Exec { command: vec!["sleep".into(), "5".into()], user: None }, Duration::from_millis(100)).await.is_err());
        // Failures say why, as the kubelet words them.
        let refused = run(&Check::Tcp { host: "127.0.0.1".into(), port }, Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(refused, format!("dial tcp 127.0.0.1:{port}: connect: connection refused"));
        let said = Check::Exec { command: vec!["sh".into(), "-c".into(), "echo not ready yet; exit 1".into()], user: None };
        assert_eq!(run(&said, Duration::from_secs(2)).await.unwrap_err(), "not ready yet");
    }

    #[test]
    fn exec_and_foreign_hosts_are_refused_unless_allowed() {
        let exec: Probe = serde_json::from_value(serde_json::json!({"exec": {"command": ["id"]}})).unwrap();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert!(
            matches!(check_for(&container(), &exec, ip, &ProbePolicy::default()), Check::Unsupported(why) if why.contains("--allow-exec-probes"))
        );
        let nobody = ProbeUser { uid: 65534, gid: 65534 };
        let allowed = ProbePolicy { allow_exec: true, exec_user: Some(nobody), ..Default::default() };
        assert_eq!(check_for(&container(), &exec, ip, &allowed), Check::Exec { command: vec!["id".into()], user: Some(nobody) });
        let elsewhere: Probe = serde_json::from_value(serde_json::json!({"tcpSocket": {"port": 8080, "host": "127.0.0.53"}})).unwrap();
        assert!(
            matches!(check_for(&container(), &elsewhere, ip, &ProbePolicy::default()), Check::Unsupported(why) if why.contains("--probe-host-cidrs"))
        );
        let inside = ProbePolicy { host_cidrs: vec!["127.0.0.0/24".parse().unwrap()], ..Default::default() };
        assert_eq!(check_for(&container(), &elsewhere, ip, &inside), Check::Tcp { host: "127.0.0.53".into(), port: 8080 });
    }

    #[tokio::test]
    async fn an_exec_probe_gets_a_clean_environment() {
        // The agent's own environment (HOME, tokens a user exported) stays out.
        let home = std::env::var("HOME").unwrap_or_default();
        let check = format!("test \"$HOME\" != {home:?} && test -z \"$RUST_TEST_THREADS$CARGO\"");
        let leaks = Check::Exec { command: vec!["sh".into(), "-c".into(), check], user: None };
        assert!(run(&leaks, Duration::from_secs(5)).await.is_ok(), "the agent's environment reached the probe");
    }
}
