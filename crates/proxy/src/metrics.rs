//! Per-service Prometheus metrics of the proxy. A series' service label is
//! the port's one shared copy, and its direction or reason a constant. A
//! port's series appear when it first carries traffic (or fails to).

use std::sync::Arc;

use once_cell::race::OnceBox;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::model::ServicePortName;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub service: Arc<str>,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub service: Arc<str>,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub service: Arc<str>,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointDirectionLabels {
    pub service: Arc<str>,
    pub endpoint: String,
    pub direction: &'static str,
}

#[derive(Clone, Default)]
pub struct ProxyMetrics {
    /// Connections (TCP) and flows (UDP) by the endpoint chosen.
    pub connections: Family<EndpointLabels, Counter>,
    pub active: Family<ServiceLabels, Gauge>,
    pub bytes: Family<DirectionLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub endpoint_active: Family<EndpointLabels, Gauge>,
    pub endpoint_bytes: Family<EndpointDirectionLabels, Counter>,
    pub endpoint_connect_errors: Family<EndpointLabels, Counter>,
}

impl ProxyMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let proxy = registry.sub_registry_with_prefix("wharf_proxy");
        proxy.register("connections", "Connections and UDP flows, by service and chosen endpoint", self.connections.clone());
        proxy.register("active_connections", "Open proxied connections, by service", self.active.clone());
        proxy.register("bytes", "Bytes carried, by service and direction (to_endpoint, to_client)", self.bytes.clone());
        proxy.register("errors", "Failures, by service and reason", self.errors.clone());
        proxy.register("endpoint_active_connections", "Open proxied connections, by endpoint", self.endpoint_active.clone());
        proxy.register("endpoint_bytes", "Bytes carried, by endpoint and direction", self.endpoint_bytes.clone());
        proxy.register("endpoint_connect_errors", "Failed connects, by endpoint", self.endpoint_connect_errors.clone());
    }
}

/// One service port's metrics: its name, and its eight series, made when
/// the port first carries traffic or fails to (most ports of a large
/// cluster never do on a given node, and eight series cost about 650
/// bytes).
pub struct PortMetrics {
    /// Shared: the families are seven handles (112 bytes a copy).
    family: Arc<ProxyMetrics>,
    name: ServicePortName,
    series: OnceBox<PortSeries>,
}

/// A port's series, looked up once so the data path only does atomic adds.
pub struct PortSeries {
    /// The port's name as its series label it (`namespace/service:port`):
    /// made with them, as most ports never need it.
    service: Arc<str>,
    pub active: Gauge,
    pub to_endpoint: Counter,
    pub to_client: Counter,
    pub no_endpoint: Counter,
    pub connect_failed: Counter,
    pub drained: Counter,
    pub idle_timeout: Counter,
    pub half_closed_timeout: Counter,
}

impl PortSeries {
    fn new(family: &ProxyMetrics, service: Arc<str>) -> Self {
        let bytes = |direction| family.bytes.get_or_create(&DirectionLabels { service: service.clone(), direction }).clone();
        let error = |reason| family.errors.get_or_create(&ErrorLabels { service: service.clone(), reason }).clone();
        PortSeries {
            active: family.active.get_or_create(&ServiceLabels { service: service.clone() }).clone(),
            to_endpoint: bytes("to_endpoint"),
            to_client: bytes("to_client"),
            no_endpoint: error("no_endpoint"),
            connect_failed: error("connect"),
            drained: error("drained"),
            idle_timeout: error("idle_timeout"),
            half_closed_timeout: error("half_closed_timeout"),
            service,
        }
    }

    /// The counter of connections cut for `cut`.
    pub fn cut(&self, cut: crate::copy::Cut) -> &Counter {
        match cut {
            crate::copy::Cut::Idle => &self.idle_timeout,
            crate::copy::Cut::HalfClosed => &self.half_closed_timeout,
        }
    }
}

impl PortMetrics {
    pub fn new(family: &Arc<ProxyMetrics>, name: ServicePortName) -> Self {
        PortMetrics { family: family.clone(), name, series: OnceBox::new() }
    }

    pub fn name(&self) -> &ServicePortName {
        &self.name
    }

    /// The port's series, made on first use.
    pub fn series(&self) -> &PortSeries {
        self.series.get_or_init(|| Box::new(PortSeries::new(&self.family, self.name.to_string().into())))
    }

    fn endpoint_labels(service: &Arc<str>, endpoint: std::net::SocketAddr) -> EndpointLabels {
        EndpointLabels { service: service.clone(), endpoint: endpoint.to_string() }
    }

    fn direction_labels(service: &Arc<str>, endpoint: std::net::SocketAddr, direction: &'static str) -> EndpointDirectionLabels {
        EndpointDirectionLabels { service: service.clone(), endpoint: endpoint.to_string(), direction }
    }

    /// One endpoint's series, created when it first carries traffic (the
    /// port's are made then too: an endpoint's never outlive them).
    pub fn endpoint(&self, endpoint: std::net::SocketAddr) -> EndpointCounters {
        let service = &self.series().service;
        let labels = Self::endpoint_labels(service, endpoint);
        // One statement each: a family's guard lives to the end of its
        // statement, and a second insert into it would wait for it forever.
        let connections = self.family.connections.get_or_create(&labels).clone();
        let active = self.family.endpoint_active.get_or_create(&labels).clone();
        let to_endpoint = self.family.endpoint_bytes.get_or_create(&Self::direction_labels(service, endpoint, "to_endpoint")).clone();
        let to_client = self.family.endpoint_bytes.get_or_create(&Self::direction_labels(service, endpoint, "to_client")).clone();
        let connect_errors = self.family.endpoint_connect_errors.get_or_create(&labels).clone();
        EndpointCounters { connections, active, to_endpoint, to_client, connect_errors, last_error: std::sync::Mutex::default() }
    }

    /// Drops the series of an endpoint that left, so churn of pods does not
    /// grow the metrics without bound.
    pub fn forget_endpoint(&self, endpoint: std::net::SocketAddr) {
        let Some(series) = self.series.get() else { return };
        let labels = Self::endpoint_labels(&series.service, endpoint);
        self.family.connections.remove(&labels);
        self.family.endpoint_active.remove(&labels);
        self.family.endpoint_connect_errors.remove(&labels);
        for direction in ["to_endpoint", "to_client"] {
            self.family.endpoint_bytes.remove(&Self::direction_labels(&series.service, endpoint, direction));
        }
    }

    /// Drops every series of this service port (it is gone), with those of
    /// its `endpoints`.
    pub fn forget(&self, endpoints: impl IntoIterator<Item = std::net::SocketAddr>) {
        let Some(series) = self.series.get() else { return };
        for endpoint in endpoints {
            self.forget_endpoint(endpoint);
        }
        let service = || series.service.clone();
        self.family.active.remove(&ServiceLabels { service: service() });
        for direction in ["to_endpoint", "to_client"] {
            self.family.bytes.remove(&DirectionLabels { service: service(), direction });
        }
        for reason in ["no_endpoint", "connect", "drained", "idle_timeout", "half_closed_timeout"] {
            self.family.errors.remove(&ErrorLabels { service: service(), reason });
        }
    }
}

/// One endpoint's traffic, as `/metrics` and the published node status
/// show it.
#[derive(Debug)]
pub struct EndpointCounters {
    pub connections: Counter,
    pub active: Gauge,
    pub to_endpoint: Counter,
    pub to_client: Counter,
    pub connect_errors: Counter,
    /// The last connect error and when.
    last_error: std::sync::Mutex<Option<(String, jiff::Timestamp)>>,
}

impl EndpointCounters {
    pub fn connect_failed(&self, error: String) {
        self.connect_errors.inc();
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some((error, jiff::Timestamp::now()));
    }

    pub fn last_error(&self) -> Option<(String, jiff::Timestamp)> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
        let family = Arc::new(ProxyMetrics::default());
        let mut registry = Registry::default();
        family.register(&mut registry);
        let name = ServicePortName { namespace: "default".into(), service: "web".into(), port: "http".into() };
        let port = PortMetrics::new(&family, name);
        assert!(!exported(&registry).contains("default/web:http"), "no series before the port is used");
        port.forget_endpoint("10.0.0.1:80".parse().unwrap());
        assert!(port.series.get().is_none(), "forgetting what was never made makes nothing");
        port.series().no_endpoint.inc();
        assert_eq!(Arc::strong_count(&port.series().service), 9, "the port's eight series and the port share one service name");
        assert!(exported(&registry).contains(r#"wharf_proxy_errors_total{service="default/web:http",reason="no_endpoint"} 1"#));
        let (a, b): (std::net::SocketAddr, std::net::SocketAddr) = ("10.0.0.1:80".parse().unwrap(), "10.0.0.2:80".parse().unwrap());
        port.endpoint(a).connections.inc();
        let b_counters = port.endpoint(b);
        b_counters.connections.inc();
        b_counters.to_client.inc_by(5);
        port.forget_endpoint(a);
        let text = exported(&registry);
        assert!(!text.contains("10.0.0.1:80") && text.contains("10.0.0.2:80"), "{text}");
        assert!(
            text.contains(r#"wharf_proxy_endpoint_bytes_total{service="default/web:http",endpoint="10.0.0.2:80",direction="to_client"} 5"#),
            "{text}"
        );
        port.forget([b]);
        let text = exported(&registry);
        assert!(!text.contains("default/web:http"), "{text}");
    }
}
