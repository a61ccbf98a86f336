//! Metrics of the controllers and their queues, under the names client-go's
//! workqueue and controller-runtime give them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub controller: String,
    pub result: &'static str,
}

fn seconds_histogram() -> Histogram {
    // 100 µs to ~100 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every controller's metrics; cheap to clone (the families are shared).
#[derive(Clone)]
pub struct ControllerMetrics {
    depth: Family<NameLabel, Gauge>,
    adds: Family<NameLabel, Counter>,
    retries: Family<NameLabel, Counter>,
    queue_seconds: HistogramFamily<NameLabel>,
    work_seconds: HistogramFamily<NameLabel>,
    reconciles: Family<ResultLabel, Counter>,
    errors: Family<ControllerLabel, Counter>,
    drift: Family<ControllerLabel, Counter>,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self {
            depth: Family::default(),
            adds: Family::default(),
            retries: Family::default(),
            queue_seconds: Family::new_with_constructor(seconds_histogram),
            work_seconds: Family::new_with_constructor(seconds_histogram),
            reconciles: Family::default(),
            errors: Family::default(),
            drift: Family::default(),
        }
    }
}

impl ControllerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("workqueue_depth", "Keys waiting in a controller's work queue", self.depth.clone());
        registry.register("workqueue_adds", "Keys added to a controller's work queue", self.adds.clone());
        registry.register("workqueue_retries", "Retries of failed keys", self.retries.clone());
        registry.register("workqueue_queue_duration_seconds", "Time a key waits before a worker takes it", self.queue_seconds.clone());
        registry.register("workqueue_work_duration_seconds", "Time one reconcile takes", self.work_seconds.clone());
        registry.register("controller_runtime_reconcile", "Reconciles by result", self.reconciles.clone());
        registry.register("controller_runtime_reconcile_errors", "Failed reconciles", self.errors.clone());
        registry.register(
            "wharf_controller_drift_repaired",
            "Objects the periodic verification found different from what the controller would write, and repaired",
            self.drift.clone(),
        );
    }

    /// The handles one queue and its controller use.
    pub fn handles(&self, name: &str) -> QueueHandles {
        // One statement per family: a family's read guard lives until the
        // end of its statement, and a second lookup that creates a label
        // set would wait for it forever.
        let n = NameLabel { name: name.to_string() };
        let c = ControllerLabel { controller: name.to_string() };
        let depth = self.depth.get_or_create(&n).clone();
        let adds = self.adds.get_or_create(&n).clone();
        let retries = self.retries.get_or_create(&n).clone();
        let queue_seconds = self.queue_seconds.get_or_create(&n).clone();
        let work_seconds = self.work_seconds.get_or_create(&n).clone();
        let succeeded = self.reconciles.get_or_create(&ResultLabel { controller: name.to_string(), result: "success" }).clone();
        let failed = self.reconciles.get_or_create(&ResultLabel { controller: name.to_string(), result: "error" }).clone();
        let errors = self.errors.get_or_create(&c).clone();
        let drift = self.drift.get_or_create(&c).clone();
        QueueHandles { depth, adds, retries, queue_seconds, work_seconds, succeeded, failed, errors, drift }
    }
}

/// One controller's metric handles, looked up once.
#[derive(Clone)]
pub struct QueueHandles {
    pub depth: Gauge,
    pub adds: Counter,
    pub retries: Counter,
    pub queue_seconds: Histogram,
    pub work_seconds: Histogram,
    pub succeeded: Counter,
    pub failed: Counter,
    pub errors: Counter,
    pub drift: Counter,
}

impl Default for QueueHandles {
    /// Handles that count into nothing, for tests and callers without a
    /// registry.
    fn default() -> Self {
        ControllerMetrics::default().handles("unregistered")
    }
}
