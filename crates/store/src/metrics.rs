//! Store metrics: the latency of every store call by operation (under the
//! name kube-apiserver gives its storage calls, for either backend), and the
//! embedded backend's group commits (batch size and fsync'ed commit time).

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::model::{Revision, Txn, TxnOutcome};
use crate::{Result, Store, WatchStream};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: &'static str,
}

fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 4.0, 10))
}

#[derive(Clone)]
pub struct StoreMetrics {
    requests: Family<OperationLabel, Histogram, fn() -> Histogram>,
    pub(crate) batch_size: Histogram,
    pub(crate) commit_seconds: Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            requests: Family::new_with_constructor(seconds),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            commit_seconds: seconds(),
        }
    }
}

impl StoreMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("etcd_request_duration_seconds", "Store call latency by operation", self.requests.clone());
        registry.register("wharf_store_commit_batch_size", "Transactions committed together with one fsync", self.batch_size.clone());
        registry.register("wharf_store_commit_duration_seconds", "Time to commit one batch durably", self.commit_seconds.clone());
    }

    fn observe(&self, operation: &'static str, started: Instant) {
        self.requests.get_or_create(&OperationLabel { operation }).observe(started.elapsed().as_secs_f64());
    }
}

/// Any store, with each call's latency recorded.
pub struct Measured<S> {
    inner: S,
    metrics: StoreMetrics,
}

impl<S> Measured<S> {
    pub fn new(inner: S, metrics: StoreMetrics) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait::async_trait]
impl<S: Store> Store for Measured<S> {
    fn revision(&self) -> Revision {
        self.inner.revision()
    }

    async fn get(&self, key: &str) -> Result<Option<crate::KeyValue>> {
        let started = Instant::now();
        let out = self.inner.get(key).await;
        self.metrics.observe("get", started);
        out
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<crate::KeyValue>, Revision)> {
        let started = Instant::now();
        let out = self.inner.list(prefix).await;
        self.metrics.observe("list", started);
        out
    }

    async fn snapshot(&self) -> Result<crate::SharedSnapshot> {
        let started = Instant::now();
        let out = self.inner.snapshot().await;
        self.metrics.observe("snapshot", started);
        out
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        let started = Instant::now();
        let out = self.inner.txn(txn).await;
        self.metrics.observe("txn", started);
        out
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let started = Instant::now();
        let out = self.inner.watch(prefix, after).await;
        self.metrics.observe("watch", started);
        out
    }
}
