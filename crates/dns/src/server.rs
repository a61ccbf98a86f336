//! Serving: UDP workers on dedicated threads (one socket each, spread by
//! SO_REUSEPORT), TCP on the async runtime, and the shared answering logic.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use ipnet::IpNet;
use rustc_hash::FxHashMap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, BATCH};
use crate::forward::Forwarder;
use crate::freshness::{Scope, Stamp};
use crate::index::Index;
use crate::metrics::{DnsMetrics, LocalMetrics};
use crate::resolve::{self, Resolution, ZoneConfig};
use crate::wire::{self, Prepared, Query, Rejected};
use wharf_limits as limits;

/// A worker's reusable state: answers with the stamps of the parts of the
/// index they were built from (an answer is used only while those parts
/// are unchanged), and scratch buffers, so the hot path does not allocate.
#[derive(Default)]
pub struct AnswerCache {
    answers: FxHashMap<Vec<u8>, (Arc<Prepared>, Stamp)>,
    query: Query,
    key: Vec<u8>,
    scopes: Vec<Scope>,
}

const CACHE_LIMIT: usize = 100_000;

/// What to do with a packet.
pub enum Handled {
    /// `out` holds the reply to a query of this type (0 if unparsed).
    Reply(u16),
    /// Ask the upstream resolvers.
    Forward(Query),
    Drop,
}

pub struct Handler {
    pub index: Arc<RwLock<Index>>,
    pub zone: ZoneConfig,
    pub forwarder: Option<Arc<Forwarder>>,
    pub metrics: DnsMetrics,
    /// Clients whose names outside the cluster are forwarded; others get
    /// REFUSED (no open resolver).
    pub recursion_from: Vec<IpNet>,
}

impl Handler {
    fn recursion_available(&self) -> bool {
        self.forwarder.is_some()
    }

    /// Whether a query from `peer` for another name may be forwarded.
    pub fn may_recurse(&self, peer: IpAddr) -> bool {
        self.recursion_from.iter().any(|net| net.contains(&peer))
    }

    /// Answers `packet` from the index into `out`, or says where it goes.
    pub fn handle(&self, packet: &[u8], limit: impl Fn(&Query) -> Option<usize>, cache: &mut AnswerCache, out: &mut Vec<u8>) -> Handled {
        let query = &mut cache.query;
        match wire::parse_into(packet, query) {
            Ok(()) => {}
            Err(rejected) => {
                return if wire::write_error(packet, &rejected, self.recursion_available(), out) {
                    Handled::Reply(0)
                } else {
                    Handled::Drop
                };
            }
        };
        let prepared = {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            cache.key.clear();
            cache.key.extend_from_slice(query.qname.as_bytes());
            cache.key.extend_from_slice(&query.qtype.to_be_bytes());
            cache.scopes.clear();
            match cache.answers.get(cache.key.as_slice()).filter(|(_, stamp)| index.freshness.is_fresh(stamp)) {
                Some((hit, _)) => hit.clone(),
                None => match resolve::resolve(&index, &self.zone, &query.qname, RecordType::from(query.qtype), &mut cache.scopes) {
                    Resolution::Forward => return self.forward_or_refuse(query.clone(), packet, out),
                    Resolution::Local(answer) => {
                        let Some(prepared) = wire::prepare(&query.qname, query.qtype, &answer) else {
                            let rejected = Rejected::answer(query, ResponseCode::ServFail);
                            wire::write_error(packet, &rejected, self.recursion_available(), out);
                            return Handled::Reply(query.qtype);
                        };
                        let prepared = Arc::new(prepared);
                        if cache.answers.len() >= CACHE_LIMIT {
                            cache.answers.clear();
                        }
                        let stamp = index.freshness.stamp(&cache.scopes);
                        cache.answers.insert(cache.key.clone(), (prepared.clone(), stamp));
                        prepared
                    }
                },
            }
        };
        let query = &cache.query;
        wire::write_response(query, packet, &prepared, true, self.recursion_available(), limit(query), out);
        Handled::Reply(query.qtype)
    }

    fn forward_or_refuse(&self, query: Query, packet: &[u8], out: &mut Vec<u8>) -> Handled {
        if self.forwarder.is_some() {
            return Handled::Forward(query);
        }
        self.refuse(&query, packet, out)
    }

    /// REFUSED for a name wharf does not answer for this client.
    pub fn refuse(&self, query: &Query, packet: &[u8], out: &mut Vec<u8>) -> Handled {
        let rejected = Rejected::answer(query, ResponseCode::Refused);
        wire::write_error(packet, &rejected, false, out);
        Handled::Reply(query.qtype)
    }

    /// What to do with a query for another name from `peer`.
    pub fn forward_for(&self, peer: IpAddr, query: Query, packet: &[u8], out: &mut Vec<u8>) -> Handled {
        if self.may_recurse(peer) {
            Handled::Forward(query)
        } else {
            limits::reached("dns_recursion_clients", "--dns-recursion-cidrs", &format!("refused recursion to {peer}"));
            self.refuse(&query, packet, out)
        }
    }

    /// The upstream's answer adapted to the client, or SERVFAIL.
    pub async fn forwarded(&self, query: &Query, packet: &[u8], limit: Option<usize>) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(forwarder) = &self.forwarder {
            if let Some(response) = forwarder.resolve(query, packet).await {
                if wire::adapt_upstream(&response, query, packet, limit, &mut out) {
                    return out;
                }
            }
        }
        let rejected = Rejected::answer(query, ResponseCode::ServFail);
        wire::write_error(packet, &rejected, self.recursion_available(), &mut out);
        out
    }
}

fn rcode_of(reply: &[u8]) -> ResponseCode {
    ResponseCode::from(0, reply.get(3).map_or(0, |b| b & 0x0F))
}

/// Binds one UDP socket of the worker group.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// How often an idle UDP worker looks at its stop token.
const UDP_STOP_CHECK: Duration = Duration::from_secs(1);

/// One UDP worker: receive a batch, answer it, send the replies in one
/// call, until the socket fails or `token` is cancelled.
pub fn udp_worker(handler: Arc<Handler>, socket: UdpSocket, runtime: tokio::runtime::Handle, token: CancellationToken) {
    if let Err(e) = socket.set_read_timeout(Some(UDP_STOP_CHECK)) {
        tracing::warn!(error = %e, "DNS UDP socket: no receive timeout; the worker stops only with the process");
    }
    let socket = Arc::new(socket);
    let mut cache = AnswerCache::default();
    let mut local = LocalMetrics::default();
    let mut batch = Batch::default();
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1024)).collect();
    let mut ready: Vec<usize> = Vec::with_capacity(BATCH);
    while !token.is_cancelled() {
        let n = match batch.receive(socket.as_ref()) {
            Ok(n) => n,
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                continue
            }
            Err(e) => {
                tracing::warn!(error = %e, "DNS UDP socket failed; worker stops");
                return;
            }
        };
        let started = Instant::now();
        ready.clear();
        for (i, out) in outs.iter_mut().enumerate().take(n) {
            let Some(packet) = batch.packet(i) else { continue };
            let Some(peer) = batch.peer(i) else { continue };
            let mut handled = handler.handle(packet, |q| Some(wire::udp_limit(q.edns)), &mut cache, out);
            if let Handled::Forward(query) = handled {
                handled = handler.forward_for(peer.ip(), query, packet, out);
            }
            match handled {
                Handled::Reply(qtype) => {
                    ready.push(i);
                    local.observe(&handler.metrics, rcode_of(out), qtype, started.elapsed().as_secs_f64());
                }
                Handled::Forward(query) => forward_udp(handler.clone(), socket.clone(), &runtime, query, packet.to_vec(), peer, started),
                Handled::Drop => {}
            }
        }
        let replies: Vec<(usize, &[u8])> = ready.iter().map(|&i| (i, outs[i].as_slice())).collect();
        if let Err(e) = batch.send(socket.as_ref(), &replies) {
            tracing::debug!(error = %e, "DNS UDP send failed");
        }
    }
}

/// Answers a forwarded query from the async runtime, off the hot loop.
fn forward_udp(
    handler: Arc<Handler>,
    socket: Arc<UdpSocket>,
    runtime: &tokio::runtime::Handle,
    query: Query,
    packet: Vec<u8>,
    peer: SocketAddr,
    started: Instant,
) {
    runtime.spawn(async move {
        let reply = handler.forwarded(&query, &packet, Some(wire::udp_limit(query.edns))).await;
        let _ = socket.send_to(&reply, peer);
        let labels = crate::metrics::QueryLabels {
            rcode: crate::metrics::rcode_name(rcode_of(&reply)),
            r#type: crate::metrics::type_label(query.qtype).to_string(),
        };
        handler.metrics.requests.get_or_create(&labels).inc();
        handler.metrics.duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    });
}

/// The bounds of DNS over TCP.
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    /// Connections open at once; more are closed at accept.
    pub connections: usize,
    /// A connection waiting this long for its next message is closed.
    pub idle: Duration,
    /// Reading one whole message, or writing its answer, may take this long.
    pub message: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        Self { connections: 1024, idle: Duration::from_secs(10), message: Duration::from_secs(5) }
    }
}

/// Serves DNS over TCP (length-prefixed messages) until `token` is
/// cancelled.
pub async fn tcp_server(handler: Arc<Handler>, listener: tokio::net::TcpListener, bounds: TcpLimits, token: CancellationToken) {
    let slots = limits::Slots::new("dns_tcp_connections", bounds.connections);
    loop {
        let (stream, peer) = tokio::select! {
            _ = token.cancelled() => return,
            accepted = limits::accept(&listener, "DNS over TCP") => accepted,
        };
        let Some(slot) = slots.take(format_args!("closed a TCP connection from {peer}")) else { continue };
        let (handler, token) = (handler.clone(), token.clone());
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = token.cancelled() => {}
                ended = tcp_connection(handler, stream, peer.ip(), bounds) => if let Err(e) = ended {
                    tracing::debug!(error = %e, "DNS TCP connection ended");
                },
            }
        });
    }
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_string())
}

async fn tcp_connection(handler: Arc<Handler>, mut stream: tokio::net::TcpStream, peer: IpAddr, limits: TcpLimits) -> std::io::Result<()> {
    let mut cache = AnswerCache::default();
    let mut out = Vec::new();
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(limits.idle, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tokio::time::timeout(limits.message, stream.read_exact(&mut packet)).await.map_err(|_| timed_out("message read"))??;
        let started = Instant::now();
        let mut handled = handler.handle(&packet, |_| None, &mut cache, &mut out);
        if let Handled::Forward(query) = handled {
            handled = handler.forward_for(peer, query, &packet, &mut out);
        }
        let (reply, qtype) = match handled {
            Handled::Reply(qtype) => (std::mem::take(&mut out), qtype),
            Handled::Forward(query) => (handler.forwarded(&query, &packet, None).await, query.qtype),
            Handled::Drop => continue,
        };
        let reply_len = u16::try_from(reply.len()).map_err(std::io::Error::other)?;
        let write = async {
            stream.write_all(&reply_len.to_be_bytes()).await?;
            stream.write_all(&reply).await
        };
        tokio::time::timeout(limits.message, write).await.map_err(|_| timed_out("answer write"))??;
        let labels = crate::metrics::QueryLabels {
            rcode: crate::metrics::rcode_name(rcode_of(&reply)),
            r#type: crate::metrics::type_label(qtype).to_string(),
        };
        handler.metrics.requests.get_or_create(&labels).inc();
        handler.metrics.duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::SOURCES;
    use hickory_proto::op::{Message, MessageType, OpCode, Query as Question};
    use hickory_proto::rr::Name;
    use k8s_openapi::api::core::v1::Service;

    fn service(name: &str, ip: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"}, "spec": {"clusterIP": ip}}))
        .unwrap()
    }

    fn handler() -> Handler {
        let mut index = Index::default();
        for s in SOURCES {
            index.mark_synced(s);
        }
        index.apply_service(&service("web", "127.96.0.20"));
        index.apply_service(&service("other", "127.96.0.21"));
        Handler {
            index: Arc::new(RwLock::new(index)),
            zone: ZoneConfig {
                domain: "cluster.local".into(),
                ttl: 5,
                dns_ip: "127.96.0.10".parse().unwrap(),
                service_cidrs: "127.96.0.0/12".parse().unwrap(),
            },
            forwarder: None,
            metrics: DnsMetrics::default(),
            recursion_from: Vec::new(),
        }
    }

    /// The A record of `name` as `handle` answers it, and the cached
    /// answer it came from.
    fn ask(handler: &Handler, cache: &mut AnswerCache, name: &str) -> (String, Arc<Prepared>) {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Question::query(Name::from_ascii(name).unwrap(), RecordType::A));
        let mut out = Vec::new();
        assert!(matches!(handler.handle(&m.to_vec().unwrap(), |_| None, cache, &mut out), Handled::Reply(_)));
        let reply = Message::from_vec(&out).unwrap();
        let key = [name.trim_end_matches('.').as_bytes(), &u16::from(RecordType::A).to_be_bytes()].concat();
        (reply.answers[0].data.to_string(), cache.answers[&key].0.clone())
    }

    #[test]
    fn a_cached_answer_lives_until_its_own_service_changes() {
        let handler = handler();
        let mut cache = AnswerCache::default();
        let (ip, first) = ask(&handler, &mut cache, "web.default.svc.cluster.local.");
        assert_eq!(ip, "127.96.0.20");
        handler.index.write().unwrap().apply_service(&service("other", "127.96.0.22"));
        let (_, again) = ask(&handler, &mut cache, "web.default.svc.cluster.local.");
        assert!(Arc::ptr_eq(&first, &again), "another service's change must not drop web's answer");
        handler.index.write().unwrap().apply_service(&service("web", "127.96.0.23"));
        let (ip, rebuilt) = ask(&handler, &mut cache, "web.default.svc.cluster.local.");
        assert_eq!(ip, "127.96.0.23");
        assert!(!Arc::ptr_eq(&first, &rebuilt));
        assert_eq!(ask(&handler, &mut cache, "other.default.svc.cluster.local.").0, "127.96.0.22");
    }
}
