//! What a node's proxy publishes about itself on its Node, as the
//! annotation `PROXY_STATUS`: whether it has caught up, the frontends it
//! cannot serve and why, and the traffic each endpoint has seen. Readers
//! (`wharf why`, the dashboard) learn a node's proxy state from the API,
//! never from the node's memory.

use serde::{Deserialize, Serialize};

/// The annotation on a Node holding its proxy's `ProxyStatus` as JSON.
pub const PROXY_STATUS: &str = "proxy.wharf.dev/status";

/// The annotation on a Node holding its cluster DNS's `DnsStatus` as JSON.
pub const DNS_STATUS: &str = "dns.wharf.dev/status";

/// What a node's cluster DNS publishes: whether it has its first complete
/// picture (before that it answers SERVFAIL for the cluster's names), and
/// how many services it answers for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsStatus {
    pub synced: bool,
    pub services: usize,
}

/// Endpoints published at most (the busiest, and every one with errors
/// first), so the annotation stays small at any number of services.
pub const MAX_ENDPOINTS: usize = 200;
/// Frontends not served published at most.
pub const MAX_FAILING: usize = 100;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// `userspace` (the only data plane today).
    pub mode: String,
    /// Whether the proxy has its first complete picture of services and
    /// slices (before that it serves nothing).
    pub synced: bool,
    /// Service ports served, and listening frontends.
    pub service_ports: usize,
    pub frontends: usize,
    /// Frontends this node does not serve, and why.
    #[serde(default)]
    pub failing: Vec<FailingFrontend>,
    /// Traffic per endpoint, for endpoints that have seen any.
    #[serde(default)]
    pub endpoints: Vec<EndpointTraffic>,
    /// Whether `failing` or `endpoints` was cut to its bound.
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailingFrontend {
    /// `namespace/name` of the service.
    pub service: String,
    /// `address:port/PROTOCOL`.
    pub frontend: String,
    pub reason: FailureReason,
    pub error: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureReason {
    /// An older service owns the frontend.
    Conflict,
    /// The node cannot listen there (another program holds it).
    BindFailed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointTraffic {
    /// `namespace/name:port` of the service port.
    pub service_port: String,
    /// `address:port`.
    pub endpoint: String,
    /// Connections (TCP) and flows (UDP) sent to it.
    pub connections: u64,
    pub active: i64,
    pub bytes_to_endpoint: u64,
    pub bytes_to_client: u64,
    pub connect_errors: u64,
    /// The last connect error and when (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
}

impl EndpointTraffic {
    /// `namespace/name` of the service.
    pub fn service(&self) -> &str {
        self.service_port.rsplit_once(':').map_or(&self.service_port, |(s, _)| s)
    }
}

impl ProxyStatus {
    /// Cuts the lists to their bounds: failures and errors first, then
    /// the busiest endpoints.
    pub fn bound(&mut self) {
        self.endpoints.sort_by(|a, b| {
            (b.connect_errors > 0, b.connections, &a.service_port, &a.endpoint).cmp(&(
                a.connect_errors > 0,
                a.connections,
                &b.service_port,
                &b.endpoint,
            ))
        });
        self.failing.sort_by(|a, b| (&a.service, &a.frontend).cmp(&(&b.service, &b.frontend)));
        self.truncated = self.endpoints.len() > MAX_ENDPOINTS || self.failing.len() > MAX_FAILING;
        self.endpoints.truncate(MAX_ENDPOINTS);
        self.failing.truncate(MAX_FAILING);
    }

    /// The status a Node's annotation holds, if it holds one.
    pub fn of_annotations(annotations: Option<&std::collections::BTreeMap<String, String>>) -> Option<ProxyStatus> {
        serde_json::from_str(annotations?.get(PROXY_STATUS)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(port: &str, connections: u64, errors: u64) -> EndpointTraffic {
        EndpointTraffic {
            service_port: port.into(),
            endpoint: "127.0.0.1:80".into(),
            connections,
            active: 0,
            bytes_to_endpoint: 0,
            bytes_to_client: 0,
            connect_errors: errors,
            last_error: None,
            last_error_at: None,
        }
    }

    #[test]
    fn bound_keeps_errors_then_the_busiest() {
        let endpoints = (0..MAX_ENDPOINTS as u64 + 10).map(|i| traffic(&format!("default/s{i}:http"), i, 0)).collect();
        let mut status = ProxyStatus { endpoints, ..Default::default() };
        status.endpoints.push(traffic("default/broken:http", 0, 3));
        status.bound();
        assert!(status.truncated);
        assert_eq!(status.endpoints.len(), MAX_ENDPOINTS);
        assert_eq!(status.endpoints[0].service_port, "default/broken:http", "errors first");
        assert_eq!(status.endpoints[1].connections, MAX_ENDPOINTS as u64 + 9, "then the busiest");
        assert_eq!(status.endpoints[0].service(), "default/broken");
    }
}
