//! The agent's metrics: probe results under the kubelet's name. Labels are
//! the probe type and result only (not the pod), so the series stay few
//! however many pods a node runs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub probe_type: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct AgentMetrics {
    probes: Family<ProbeLabels, Counter>,
}

impl AgentMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("prober_probe", "Readiness probe results", self.probes.clone());
    }

    pub fn probed(&self, passed: bool) {
        let result = if passed { "successful" } else { "failed" };
        self.probes.get_or_create(&ProbeLabels { probe_type: "Readiness", result }).inc();
    }
}
