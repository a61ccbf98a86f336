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

    pub fn error(&self, service: &str, reason: &str) {
        self.errors.get_or_create(&ErrorLabels { service: service.into(), reason: reason.into() }).inc();
    }
}
