//! API server metrics under kube-apiserver's names: requests by verb,
//! resource and code, their latency, and the watches open. Label values
//! come from a fixed set (verbs, served resources, status codes), so the
//! number of series stays bounded whatever clients send.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing::Instrument;

use crate::App;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: &'static str,
    pub resource: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: &'static str,
    pub resource: &'static str,
}

fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

#[derive(Clone)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<VerbLabels, Histogram, fn() -> Histogram>,
    longrunning: Family<VerbLabels, Gauge>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self { requests: Family::default(), duration: Family::new_with_constructor(seconds), longrunning: Family::default() }
    }
}

/// Counts one open watch until dropped.
pub struct WatchGuard(Gauge);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ApiMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("apiserver_request", "API requests by verb, resource and HTTP code", self.requests.clone());
        registry.register(
            "apiserver_request_duration_seconds",
            "API request latency (to the response head) by verb and resource",
            self.duration.clone(),
        );
        registry.register("apiserver_longrunning_requests", "Open watches by resource", self.longrunning.clone());
    }

    pub fn watch_started(&self, resource: &'static str) -> WatchGuard {
        let gauge = self.longrunning.get_or_create(&VerbLabels { verb: "WATCH", resource }).clone();
        gauge.inc();
        WatchGuard(gauge)
    }
}

/// The verb kube-apiserver's metrics name a request by.
fn verb(method: &Method, has_name: bool, watch: bool) -> &'static str {
    match *method {
        Method::GET if watch => "WATCH",
        Method::GET if has_name => "GET",
        Method::GET => "LIST",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE if has_name => "DELETE",
        Method::DELETE => "DELETECOLLECTION",
        _ => "OTHER",
    }
}

/// Middleware: counts and times every request.
pub async fn observe(State(app): State<App>, request: Request, next: Next) -> Response {
    let target = crate::request::parse(request.uri().path()).ok();
    let watch = request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = verb(request.method(), target.as_ref().is_some_and(|t| t.name.is_some()), watch);
    let resource = target.map_or("", |t| t.kind.info.resource);
    let span = tracing::info_span!("request", verb, resource, path = %request.uri().path());
    let started = Instant::now();
    let response = next.run(request).instrument(span).await;
    let metrics = &app.metrics;
    metrics.requests.get_or_create(&RequestLabels { verb, resource, code: response.status().as_u16() }).inc();
    metrics.duration.get_or_create(&VerbLabels { verb, resource }).observe(started.elapsed().as_secs_f64());
    response
}
