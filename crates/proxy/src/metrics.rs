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

    fn endpoint_labels(&self, endpoint: std::net::SocketAddr) -> EndpointLabels {
        EndpointLabels { service: self.service.clone(), endpoint: endpoint.to_string() }
    }

    /// The counter of connections sent to one endpoint.
    pub fn chosen(&self, endpoint: std::net::SocketAddr) -> Counter {
        self.family.connections.get_or_create(&self.endpoint_labels(endpoint)).clone()
    }

    /// Drops the series of an endpoint that left, so churn of pods does not
    /// grow the metrics without bound.
    pub fn forget_endpoint(&self, endpoint: std::net::SocketAddr) {
        self.family.connections.remove(&self.endpoint_labels(endpoint));
    }

    /// Drops every series of this service port (it is gone), with those of
    /// its `endpoints`.
    pub fn forget(&self, endpoints: impl IntoIterator<Item = std::net::SocketAddr>) {
        for endpoint in endpoints {
            self.forget_endpoint(endpoint);
        }
        let service = || self.service.clone();
        self.family.active.remove(&ServiceLabels { service: service() });
        for direction in ["to_endpoint", "to_client"] {
            self.family.bytes.remove(&DirectionLabels { service: service(), direction: direction.into() });
        }
        for reason in ["no_endpoint", "connect", "drained", "idle_timeout", "half_closed_timeout"] {
            self.family.errors.remove(&ErrorLabels { service: service(), reason: reason.into() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exported(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn endpoints_and_ports_that_leave_leave_the_metrics() {
        let family = ProxyMetrics::default();
        let mut registry = Registry::default();
        family.register(&mut registry);
        let port = PortMetrics::new(&family, "default/web:http");
        let (a, b): (std::net::SocketAddr, std::net::SocketAddr) = ("10.0.0.1:80".parse().unwrap(), "10.0.0.2:80".parse().unwrap());
        port.chosen(a).inc();
        port.chosen(b).inc();
        port.forget_endpoint(a);
        let text = exported(&registry);
        assert!(!text.contains("10.0.0.1:80") && text.contains("10.0.0.2:80"), "{text}");
        port.forget([b]);
        let text = exported(&registry);
        assert!(!text.contains("default/web:http"), "{text}");
    }
}
