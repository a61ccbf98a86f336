//! Arbitrary bytes through the request path: never a panic; every reply
//! is a well-formed DNS message that echoes the ID; malformed queries get
//! FORMERR or no answer at all.

use std::sync::{Arc, RwLock};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use rand::{Rng, SeedableRng};
use wharf_dns::index::{Index, SOURCES};
use wharf_dns::server::{AnswerCache, Handled, Handler};
use wharf_dns::{DnsMetrics, ZoneConfig};

fn handler() -> Handler {
    let mut index = Index::default();
    for s in SOURCES {
        index.mark_synced(s);
    }
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "127.96.0.20", "ports": [{"name": "http", "port": 80}]}}))
    .unwrap();
    index.apply_service(&svc);
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
        recursion_from: vec!["127.0.0.0/8".parse().unwrap()],
    }
}

fn valid_queries() -> Vec<Vec<u8>> {
    [
        "web.default.svc.cluster.local.",
        "_http._tcp.web.default.svc.cluster.local.",
        "nope.cluster.local.",
        "example.com.",
        "20.0.96.127.in-addr.arpa.",
    ]
    .iter()
    .zip([RecordType::A, RecordType::SRV, RecordType::AAAA, RecordType::A, RecordType::PTR])
    .map(|(name, t)| {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(1232);
        m.set_edns(edns);
        m.to_vec().unwrap()
    })
    .collect()
}

fn check(handler: &Handler, packet: &[u8], cache: &mut AnswerCache) {
    let mut out = Vec::new();
    match handler.handle(packet, |_| Some(512), cache, &mut out) {
        Handled::Reply(_) => {
            let reply = Message::from_vec(&out).unwrap_or_else(|e| panic!("unparseable reply {e} to {packet:?}"));
            assert_eq!(reply.metadata.id.to_be_bytes(), [packet[0], packet[1]]);
            assert_eq!(reply.metadata.message_type, MessageType::Response);
            assert!(out.len() <= 512 || reply.metadata.truncation);
            if wharf_dns::wire::parse(packet).is_err() {
                assert!(
                    matches!(reply.metadata.response_code, ResponseCode::FormErr | ResponseCode::NotImp | ResponseCode::Refused),
                    "malformed query answered with {:?}",
                    reply.metadata.response_code
                );
            }
        }
        Handled::Forward(_) | Handled::Drop => {}
    }
}

#[test]
fn random_bytes_never_panic() {
    let handler = handler();
    let mut cache = AnswerCache::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for _ in 0..200_000 {
        let len = rng.random_range(0..300);
        let packet: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        check(&handler, &packet, &mut cache);
    }
}

#[test]
fn mutated_queries_never_panic() {
    let handler = handler();
    let mut cache = AnswerCache::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xd15);
    let seeds = valid_queries();
    for seed in &seeds {
        check(&handler, seed, &mut cache);
    }
    for _ in 0..200_000 {
        let mut packet = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..6) {
            match rng.random_range(0..4) {
                0 if !packet.is_empty() => {
                    let i = rng.random_range(0..packet.len());
                    packet[i] = rng.random();
                }
                1 if !packet.is_empty() => packet.truncate(rng.random_range(0..packet.len())),
                2 => packet.push(rng.random()),
                _ => {
                    let i = rng.random_range(0..=packet.len());
                    packet.insert(i, rng.random());
                }
            }
        }
        check(&handler, &packet, &mut cache);
    }
}
