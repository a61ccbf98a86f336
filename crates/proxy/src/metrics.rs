//! Per-service Prometheus metrics of the proxy.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub service: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub service: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub service: String,
    pub reason: String,
}

#[derive(Clone, Default)]
pub struct ProxyMetrics {
    /// Connections (TCP) and flows (UDP) by the endpoint chosen.
    pub connections: Family<EndpointLabels, Counter>,
    pub active: Family<ServiceLabels, Gauge>,
    pub bytes: Family<DirectionLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
}

impl ProxyMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let proxy = registry.sub_registry_with_prefix("wharf_proxy");
        proxy.register("connections", "Connections and UDP flows, by service and chosen endpoint", self.connections.clone());
        proxy.register("active_connections", "Open proxied connections, by service", self.active.clone());
        proxy.register("bytes", "Bytes carried, by service and direction (to_endpoint, to_client)", self.bytes.clone());
        proxy.register("errors", "Failures, by service and reason", self.errors.clone());
    }
}

/// One service port's metric handles, looked up once so the data path
/// only does atomic adds.
#[derive(Clone)]
pub struct PortMetrics {
    family: ProxyMetrics,
    service: String,
    pub active: Gauge,
    pub to_endpoint: Counter,
    pub to_client: Counter,
    pub no_endpoint: Counter,
    pub connect_failed: Counter,
    pub drained: Counter,
    pub idle_timeout: Counter,
    pub half_closed_timeout: Counter,
}

impl PortMetrics {
    pub fn new(family: &ProxyMetrics, service: &str) -> Self {
        let bytes =
            |direction: &str| family.bytes.get_or_create(&DirectionLabels { service: service.into(), direction: direction.into() }).clone();
        let error = |reason: &str| family.errors.get_or_create(&ErrorLabels { service: service.into(), reason: reason.into() }).clone();
        PortMetrics {
            active: family.active.get_or_create(&ServiceLabels { service: service.into() }).clone(),
            to_endpoint: bytes("to_endpoint"),
            to_client: bytes("to_client"),
            no_endpoint: error("no_endpoint"),
            connect_failed: error("connect"),
            drained: error("drained"),
            idle_timeout: error("idle_timeout"),
            half_closed_timeout: error("half_closed_timeout"),
            family: family.clone(),
            service: service.to_string(),
        }
    }

    /// The counter of connections cut for `cut`.
    pub fn cut(&self, cut: crate::copy::Cut) -> &Counter {
        match cut {
            crate::copy::Cut::Idle => &self.idle_timeout,
            crate::copy::Cut::HalfClosed => &self.half_closed_timeout,
        }
    }

    /// The counter of connections sent to one endpoint.
    pub fn chosen(&self, endpoint: std::net::SocketAddr) -> Counter {
        self.family.connections.get_or_create(&EndpointLabels { service: self.service.clone(), endpoint: endpoint.to_string() }).clone()
    }
}
