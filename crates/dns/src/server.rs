//! Serving: UDP workers on dedicated threads (one socket each, spread by
//! SO_REUSEPORT), TCP on the async runtime, and the shared answering logic.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::forward::Forwarder;
use crate::index::Index;
use crate::metrics::{DnsMetrics, LocalMetrics};
use crate::resolve::{self, Resolution, ZoneConfig};
use crate::wire::{self, Prepared, Query, Rejected};

/// Answers built at one index generation; cleared when it moves on.
#[derive(Default)]
pub struct AnswerCache {
    generation: u64,
    answers: HashMap<(String, u16), Arc<Prepared>>,
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
}

impl Handler {
    fn recursion_available(&self) -> bool {
        self.forwarder.is_some()
    }

    /// Answers `packet` from the index into `out`, or says where it goes.
    pub fn handle(&self, packet: &[u8], limit: impl Fn(&Query) -> Option<usize>, cache: &mut AnswerCache, out: &mut Vec<u8>) -> Handled {
        let query = match wire::parse(packet) {
            Ok(q) => q,
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
            if cache.generation != index.generation {
                cache.answers.clear();
                cache.generation = index.generation;
            }
            match cache.answers.get(&(query.qname.clone(), query.qtype)) {
                Some(hit) => hit.clone(),
                None => match resolve::resolve(&index, &self.zone, &query.qname, RecordType::from(query.qtype)) {
                    Resolution::Forward => return self.forward_or_refuse(query, packet, out),
                    Resolution::Local(answer) => {
                        let Some(prepared) = wire::prepare(&query.qname, query.qtype, &answer) else {
                            let rejected = Rejected::Error {
                                id: query.id,
                                flags: query.flags,
                                question_end: Some(query.question_end),
                                rcode: ResponseCode::ServFail,
                                edns: query.edns,
                            };
                            wire::write_error(packet, &rejected, self.recursion_available(), out);
                            return Handled::Reply(query.qtype);
                        };
                        let prepared = Arc::new(prepared);
                        if cache.answers.len() >= CACHE_LIMIT {
                            cache.answers.clear();
                        }
                        cache.answers.insert((query.qname.clone(), query.qtype), prepared.clone());
                        prepared
                    }
                },
            }
        };
        wire::write_response(&query, packet, &prepared, true, self.recursion_available(), limit(&query), out);
        Handled::Reply(query.qtype)
    }

    fn forward_or_refuse(&self, query: Query, packet: &[u8], out: &mut Vec<u8>) -> Handled {
        if self.forwarder.is_some() {
            return Handled::Forward(query);
        }
        let rejected = Rejected::Error {
            id: query.id,
            flags: query.flags,
            question_end: Some(query.question_end),
            rcode: ResponseCode::Refused,
            edns: query.edns,
        };
        wire::write_error(packet, &rejected, false, out);
        Handled::Reply(query.qtype)
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
        let rejected = Rejected::Error {
            id: query.id,
            flags: query.flags,
            question_end: Some(query.question_end),
            rcode: ResponseCode::ServFail,
            edns: query.edns,
        };
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

/// One UDP worker: receive, answer, send, until the socket fails.
pub fn udp_worker(handler: Arc<Handler>, socket: UdpSocket, runtime: tokio::runtime::Handle) {
    let socket = Arc::new(socket);
    let mut cache = AnswerCache::default();
    let mut local = LocalMetrics::default();
    let mut buf = vec![0u8; 65535];
    let mut out = Vec::with_capacity(4096);
    loop {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "DNS UDP socket failed; worker stops");
                return;
            }
        };
        let started = Instant::now();
        let packet = &buf[..n];
        match handler.handle(packet, |q| Some(wire::udp_limit(q.edns)), &mut cache, &mut out) {
            Handled::Reply(qtype) => {
                let _ = socket.send_to(&out, peer);
                local.observe(&handler.metrics, rcode_of(&out), qtype, started.elapsed().as_secs_f64());
            }
            Handled::Forward(query) => {
                let handler = handler.clone();
                let socket = socket.clone();
                let packet = packet.to_vec();
                runtime.spawn(async move {
                    let reply = handler.forwarded(&query, &packet, Some(wire::udp_limit(query.edns))).await;
                    let _ = socket.send_to(&reply, peer);
                    let labels = crate::metrics::QueryLabels {
                        rcode: crate::metrics::rcode_name(rcode_of(&reply)),
                        r#type: RecordType::from(query.qtype).to_string(),
                    };
                    handler.metrics.requests.get_or_create(&labels).inc();
                    handler.metrics.duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
                });
            }
            Handled::Drop => {}
        }
    }
}

/// Serves DNS over TCP (length-prefixed messages) until the listener fails.
pub async fn tcp_server(handler: Arc<Handler>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = tcp_connection(handler, stream).await {
                tracing::debug!(error = %e, "DNS TCP connection ended");
            }
        });
    }
}

const TCP_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

async fn tcp_connection(handler: Arc<Handler>, mut stream: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut cache = AnswerCache::default();
    let mut out = Vec::new();
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut packet).await?;
        let started = Instant::now();
        let (reply, qtype) = match handler.handle(&packet, |_| None, &mut cache, &mut out) {
            Handled::Reply(qtype) => (std::mem::take(&mut out), qtype),
            Handled::Forward(query) => (handler.forwarded(&query, &packet, None).await, query.qtype),
            Handled::Drop => continue,
        };
        let reply_len = u16::try_from(reply.len()).map_err(std::io::Error::other)?;
        stream.write_all(&reply_len.to_be_bytes()).await?;
        stream.write_all(&reply).await?;
        let labels = crate::metrics::QueryLabels {
            rcode: crate::metrics::rcode_name(rcode_of(&reply)),
            r#type: RecordType::from(qtype).to_string(),
        };
        handler.metrics.requests.get_or_create(&labels).inc();
        handler.metrics.duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    }
}
