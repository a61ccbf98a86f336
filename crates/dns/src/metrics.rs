//! Prometheus metrics of the DNS server: queries by rcode and type, their
//! latency, and the programming latency (watch event to index changed).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub rcode: String,
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

fn latency_histogram() -> Histogram {
    // 1 µs to ~0.5 s.
    Histogram::new(exponential_buckets(1e-6, 2.0, 20))
}

#[derive(Clone)]
pub struct DnsMetrics {
    pub requests: Family<QueryLabels, Counter>,
    pub duration: Family<QueryLabels, Histogram, fn() -> Histogram>,
    pub programming: Family<KindLabels, Histogram, fn() -> Histogram>,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            programming: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl DnsMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let dns = registry.sub_registry_with_prefix("wharf_dns");
        dns.register("requests", "DNS requests answered, by rcode and query type", self.requests.clone());
        dns.register("request_duration_seconds", "Time to answer a DNS request", self.duration.clone());
        dns.register("programming_duration_seconds", "Time from a watch event to the DNS index reflecting it", self.programming.clone());
    }
}

/// The rcode's mnemonic, as CoreDNS labels it (`NOERROR`, `NXDOMAIN`).
pub fn rcode_name(rcode: hickory_proto::op::ResponseCode) -> String {
    match rcode.low() {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        other => other.to_string(),
    }
}

/// The query type as a metric label: the types a cluster DNS sees by
/// name, every other type as `other`, so a client sending all 65,536 types
/// adds at most one series.
pub fn type_label(qtype: u16) -> &'static str {
    match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        41 => "OPT",
        43 => "DS",
        48 => "DNSKEY",
        64 => "SVCB",
        65 => "HTTPS",
        252 => "AXFR",
        255 => "ANY",
        _ => "other",
    }
}

/// A worker's handles to the counters it touches, so the hot path does
/// one atomic add instead of a labelled lookup (bounded: 16 rcodes × the
/// labels of `type_label`).
#[derive(Default)]
pub struct LocalMetrics {
    handles: rustc_hash::FxHashMap<(u8, &'static str), (Counter, Histogram)>,
}

impl LocalMetrics {
    pub fn observe(&mut self, metrics: &DnsMetrics, rcode: hickory_proto::op::ResponseCode, qtype: u16, seconds: f64) {
        let r#type = type_label(qtype);
        let (counter, histogram) = self.handles.entry((rcode.low(), r#type)).or_insert_with(|| {
            let labels = QueryLabels { rcode: rcode_name(rcode), r#type: r#type.to_string() };
            let counter = metrics.requests.get_or_create(&labels).clone();
            let histogram = metrics.duration.get_or_create(&labels).clone();
            (counter, histogram)
        });
        counter.inc();
        histogram.observe(seconds);
    }
}
