//! Gathers a Service's chain from the API, and asks the cluster DNS.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::{Event, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};

use crate::chain::{DnsAnswer, Inputs};

/// How long the DNS may take to answer.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Api(#[from] kube::Error),
}

/// The A and AAAA records the cluster DNS at `server` gives for `name`.
async fn ask_dns(server: SocketAddr, name: &str) -> DnsAnswer {
    let exchange = async {
        let mut ips = Vec::new();
        let mut code = None;
        for qtype in [RecordType::A, RecordType::AAAA] {
            let answer = ask_dns_once(server, name, qtype).await?;
            code.get_or_insert(answer.metadata.response_code);
            ips.extend(answer.answers.iter().filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            }));
        }
        if ips.is_empty() {
            return Err(format!("no address ({})", code.map(|c| c.to_string()).unwrap_or_default()));
        }
        Ok(ips)
    };
    match tokio::time::timeout(DNS_TIMEOUT, exchange).await {
        Ok(Ok(ips)) => DnsAnswer::Addresses(ips),
        Ok(Err(why)) => DnsAnswer::Failed(why),
        Err(_) => DnsAnswer::Failed(format!("no answer from {server} within {DNS_TIMEOUT:?}")),
    }
}

/// One query of `qtype` for `name` and its answer.
async fn ask_dns_once(server: SocketAddr, name: &str, qtype: RecordType) -> Result<Message, String> {
    let mut message = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(format!("{name}.")).map_err(|e| e.to_string())?, qtype));
    let bytes = message.to_vec().map_err(|e| e.to_string())?;
    let bind: SocketAddr = if server.is_ipv4() { ([127, 0, 0, 1], 0).into() } else { (std::net::Ipv6Addr::LOCALHOST, 0).into() };
    let socket = tokio::net::UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    socket.send_to(&bytes, server).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf).await.map_err(|e| e.to_string())?;
    Message::from_vec(&buf[..n]).map_err(|e| e.to_string())
}

fn rand_id() -> u16 {
    (jiff::Timestamp::now().as_nanosecond() % 65_536) as u16
}

/// Everything `explain` needs about service `name` in `namespace`; the DNS
/// asked is `dns`, else the `kube-dns` service's cluster IP.
pub async fn gather(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    domain: &str,
    dns: Option<SocketAddr>,
) -> Result<Inputs, FetchError> {
    let service = Api::<Service>::namespaced(client.clone(), namespace).get(name).await?;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace).list(&ListParams::default()).await?.items;
    let by_service = ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), namespace).list(&by_service).await?.items;
    let events = Api::<Event>::namespaced(client.clone(), namespace).list(&ListParams::default()).await?.items;
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items;
    let server = match dns {
        Some(server) => Some(server),
        None => {
            let kube_dns = Api::<Service>::namespaced(client.clone(), "kube-system").get_opt("kube-dns").await?;
            let ip = kube_dns.and_then(|s| s.spec?.cluster_ip?.parse::<IpAddr>().ok());
            ip.map(|ip| SocketAddr::new(ip, 53))
        }
    };
    let fqdn = format!("{name}.{namespace}.svc.{domain}");
    let answer = match server {
        Some(server) => ask_dns(server, &fqdn).await,
        None => DnsAnswer::Failed("the cluster has no kube-dns service".into()),
    };
    Ok(Inputs { service, pods, slices, events, dns: (fqdn, answer), nodes })
}
