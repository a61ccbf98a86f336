//! EndpointSlice mirroring, as Kubernetes' endpointslicemirroring
//! controller does it: a Service without a selector whose Endpoints were
//! written by hand (the classic way to name an outside database) gets
//! EndpointSlices mirroring those Endpoints, so the proxy and the DNS,
//! which read slices only, serve it. Endpoints labelled
//! `endpointslice.kubernetes.io/skip-mirror: "true"` are left alone.
//!
//! Bounds: at most `MAX_MIRRORED` addresses of one Endpoints are mirrored
//! (Kubernetes' limit); the rest are left out and a warning is logged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{EndpointAddress, EndpointSubset, Endpoints, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;
use wharf_kube::key::version_of;
use wharf_kube::{watch, Backoff, ObjectKey, QueueHandles, Watched, WorkQueue};

use crate::endpointslice::{MANAGED_BY_LABEL, SERVICE_NAME_LABEL};

pub const MIRRORED_BY: &str = "endpointslicemirroring-controller.k8s.io";
const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Addresses of one Endpoints that are mirrored.
const MAX_MIRRORED: usize = 1000;
const WORKERS: usize = 2;

/// What mirroring reads of a Service: whether it selects pods. The
/// controller keeps one per service without a selector (those it may
/// mirror), not the decoded Service (1.4 KB).
#[derive(Debug, Clone, PartialEq)]
pub struct MirroredService {
    key: ObjectKey,
    version: Option<u64>,
    selects: bool,
}

impl From<Service> for MirroredService {
    fn from(svc: Service) -> Self {
        let selects = svc.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|s| !s.is_empty());
        MirroredService { key: ObjectKey::of(&svc), version: version_of(&svc), selects }
    }
}

wharf_kube::keyed_view!(MirroredService);

/// The slices that mirror `endpoints` of `service`; none when the service
/// is missing, has a selector, or the Endpoints opt out.
pub fn mirrored_slices(service: Option<&MirroredService>, endpoints: Option<&Endpoints>) -> Vec<EndpointSlice> {
    let (Some(service), Some(endpoints)) = (service, endpoints) else { return Vec::new() };
    let selects = service.selects;
    let labels = endpoints.metadata.labels.clone().unwrap_or_default();
    if selects || labels.get(SKIP_MIRROR_LABEL).map(String::as_str) == Some("true") {
        return Vec::new();
    }
    let name = endpoints.metadata.name.clone().unwrap_or_default();
    let mut budget = MAX_MIRRORED;
    let mut slices = Vec::new();
    for (i, subset) in endpoints.subsets.iter().flatten().enumerate() {
        for (family, suffix) in [("IPv4", "v4"), ("IPv6", "v6")] {
            let members = members(subset, family, &mut budget);
            if members.is_empty() {
                continue;
            }
            let mut slice_labels: BTreeMap<String, String> = labels.clone();
            slice_labels.insert(SERVICE_NAME_LABEL.into(), name.clone());
            slice_labels.insert(MANAGED_BY_LABEL.into(), MIRRORED_BY.into());
            slices.push(EndpointSlice {
                metadata: kube::api::ObjectMeta {
                    name: Some(format!("{name}-mirror-{i}-{suffix}")),
                    namespace: endpoints.metadata.namespace.clone(),
                    labels: Some(slice_labels),
                    ..Default::default()
                },
                address_type: family.into(),
                endpoints: members,
                ports: Some(ports(subset)),
            });
        }
    }
    if budget == 0 {
        tracing::warn!(endpoints = %name, limit = MAX_MIRRORED, "Endpoints over the mirroring limit; the rest are not mirrored");
    }
    slices
}

/// Ready and not-ready addresses of one family, within the budget.
fn members(subset: &EndpointSubset, family: &str, budget: &mut usize) -> Vec<Endpoint> {
    let of_family = |a: &&EndpointAddress| a.ip.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_ipv4() == (family == "IPv4"));
    let ready = subset.addresses.iter().flatten().filter(of_family).map(|a| (a, true));
    let not_ready = subset.not_ready_addresses.iter().flatten().filter(of_family).map(|a| (a, false));
    let mut out = Vec::new();
    for (address, ready) in ready.chain(not_ready) {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        out.push(Endpoint {
            addresses: vec![address.ip.clone()],
            conditions: Some(EndpointConditions { ready: Some(ready), serving: Some(ready), terminating: Some(false) }),
            hostname: address.hostname.clone(),
            node_name: address.node_name.clone(),
            target_ref: address.target_ref.clone(),
            ..Default::default()
        });
    }
    out
}

fn ports(subset: &EndpointSubset) -> Vec<EndpointPort> {
    let ports = subset.ports.iter().flatten();
    ports
        .map(|p| EndpointPort {
            name: p.name.clone(),
            port: Some(p.port),
            protocol: p.protocol.clone(),
            app_protocol: p.app_protocol.clone(),
        })
        .collect()
}

#[derive(Default)]
struct State {
    services: Watched<MirroredService>,
    endpoints: Watched<Endpoints>,
    slices: Watched<EndpointSlice>,
}

pub struct MirroringController {
    client: kube::Client,
    state: Arc<Mutex<State>>,
    queue: Arc<WorkQueue<ObjectKey>>,
    metrics: QueueHandles,
}

/// The service a mirrored slice belongs to.
fn owner_of(slice: &EndpointSlice) -> Option<ObjectKey> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ObjectKey::new(slice.metadata.namespace.clone().unwrap_or_default(), service.as_str()))
}

impl MirroringController {
    pub fn new(client: kube::Client, metrics: QueueHandles) -> Self {
        let queue = Arc::new(WorkQueue::new(Backoff::default(), metrics.clone()));
        Self { client, state: Arc::default(), queue, metrics }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until `token` is cancelled; workers start once all three
    /// watches have listed.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        // A service that selects pods is never mirrored: as good as missing.
        let services = watch::watch_all::<Service>(&self.client)
            .map(watch::kept::<Service, MirroredService>)
            .filter_map(|e| std::future::ready(watch::only_wanted(e, |s: &MirroredService| !s.selects)));
        // Endpoints that opt out (every one the EndpointSlice controller
        // writes) are never sent: at 100,000 endpoints that is most of them.
        // One that opts out later arrives as a deletion.
        let candidates = watcher::Config::default().labels(&format!("{SKIP_MIRROR_LABEL}!=true"));
        let endpoints = watch::watch(Api::<Endpoints>::all(self.client.clone()), candidates);
        let mirrored = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MIRRORED_BY}"));
        let slices = watch::watch(Api::<EndpointSlice>::all(self.client.clone()), mirrored);
        futures::pin_mut!(services, endpoints, slices);
        let mut workers = None;
        loop {
            let keys: Vec<ObjectKey> = tokio::select! {
                _ = token.cancelled() => break,
                Some(event) = services.next() => self.lock().services.handle(event).iter().map(|c| c.key()).collect(),
                Some(event) = endpoints.next() => self.lock().endpoints.handle(event).iter().map(|c| c.key()).collect(),
                Some(event) = slices.next() => self.lock().slices.handle(event).iter().filter_map(|c| owner_of(c.object())).collect(),
            };
            keys.into_iter().for_each(|k| self.queue.add(k));
            let synced = {
                let state = self.lock();
                state.services.reflector.is_synced() && state.endpoints.reflector.is_synced() && state.slices.reflector.is_synced()
            };
            if synced && workers.is_none() {
                let this = self.clone();
                let reconcile = move |key| {
                    let this = this.clone();
                    async move { this.reconcile(key).await }
                };
                workers = Some(tokio::spawn(wharf_kube::run_workers(
                    "mirroring",
                    self.queue.clone(),
                    self.metrics.clone(),
                    WORKERS,
                    token.clone(),
                    reconcile,
                )));
            }
        }
        if let Some(workers) = workers {
            let _ = workers.await;
        }
    }

    /// Writes the slices `key`'s Endpoints call for and removes the rest.
    async fn reconcile(&self, key: ObjectKey) -> Result<(), kube::Error> {
        let (desired, existing) = {
            let state = self.lock();
            let desired = mirrored_slices(
                state.services.reflector.get(&key).map(AsRef::as_ref),
                state.endpoints.reflector.get(&key).map(AsRef::as_ref),
            );
            let existing: Vec<Arc<EndpointSlice>> =
                state.slices.reflector.values().filter(|s| owner_of(s).as_ref() == Some(&key)).cloned().collect();
            (desired, existing)
        };
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &key.namespace);
        let apply = PatchParams::apply(MIRRORED_BY).force();
        for slice in &desired {
            let name = slice.metadata.name.clone().unwrap_or_default();
            let current = existing.iter().find(|s| s.metadata.name.as_deref() == Some(name.as_str()));
            let same = current
                .is_some_and(|c| c.endpoints == slice.endpoints && c.ports == slice.ports && c.metadata.labels == slice.metadata.labels);
            if !same {
                let mut body = serde_json::to_value(slice).map_err(kube::Error::SerdeError)?;
                body["apiVersion"] = "discovery.k8s.io/v1".into();
                body["kind"] = "EndpointSlice".into();
                let written = api.patch(&name, &apply, &Patch::Apply(body)).await?;
                self.lock().slices.reflector.record(written);
            }
        }
        for stale in existing.iter().filter(|s| !desired.iter().any(|d| d.metadata.name == s.metadata.name)) {
            let name = stale.metadata.name.clone().unwrap_or_default();
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(selector: Option<&str>) -> MirroredService {
        let svc: Service = serde_json::from_value(serde_json::json!({"metadata": {"name": "db", "namespace": "default"}, "spec": {"selector": selector.map(|s| serde_json::json!({"app": s}))}})).unwrap();
        svc.into()
    }

    fn endpoints(labels: serde_json::Value) -> Endpoints {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "namespace": "default", "labels": labels},
            "subsets": [{
                "addresses": [{"ip": "198.18.0.5"}, {"ip": "fd00::5"}],
                "notReadyAddresses": [{"ip": "198.18.0.6"}],
                "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}],
            }],
        }))
        .unwrap()
    }

    #[test]
    fn a_selectorless_service_gets_its_endpoints_mirrored_by_family() {
        let slices = mirrored_slices(Some(&service(None)), Some(&endpoints(serde_json::json!({"team": "data"}))));
        assert_eq!(slices.len(), 2);
        let v4 = &slices[0];
        assert_eq!((v4.metadata.name.as_deref(), v4.address_type.as_str()), (Some("db-mirror-0-v4"), "IPv4"));
        let ready: Vec<(String, Option<bool>)> =
            v4.endpoints.iter().map(|e| (e.addresses[0].clone(), e.conditions.as_ref().and_then(|c| c.ready))).collect();
        assert_eq!(ready, [("198.18.0.5".to_string(), Some(true)), ("198.18.0.6".to_string(), Some(false))]);
        let labels = v4.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "db");
        assert_eq!(labels[MANAGED_BY_LABEL], MIRRORED_BY);
        assert_eq!(labels["team"], "data", "the Endpoints' labels are carried");
        assert_eq!(v4.ports.as_ref().unwrap()[0].port, Some(5432));
        assert_eq!(slices[1].address_type, "IPv6");
    }

    #[test]
    fn selectors_missing_services_and_opt_outs_are_not_mirrored() {
        let ep = endpoints(serde_json::json!({}));
        assert!(mirrored_slices(Some(&service(Some("db"))), Some(&ep)).is_empty());
        assert!(mirrored_slices(None, Some(&ep)).is_empty());
        assert!(mirrored_slices(Some(&service(None)), None).is_empty());
        let skip = endpoints(serde_json::json!({SKIP_MIRROR_LABEL: "true"}));
        assert!(mirrored_slices(Some(&service(None)), Some(&skip)).is_empty());
    }
}
