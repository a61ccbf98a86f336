//! Keeps the index current from watches on Services, EndpointSlices, Pods
//! and Namespaces (the same list/watch any Kubernetes client uses).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Resource;

use crate::index::{Index, Key};
use crate::metrics::{DnsMetrics, KindLabels};

enum Change {
    Service(Event<Service>),
    Slice(Event<EndpointSlice>),
    Pod(Event<Pod>),
    Namespace(Event<Namespace>),
}

fn key_of<K: Resource>(obj: &K) -> Key {
    let meta = obj.meta();
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// One source's events applied to the index, relists included.
struct Source<K> {
    name: &'static str,
    apply: fn(&mut Index, &K),
    delete: fn(&mut Index, &Key),
    relisted: Option<HashSet<Key>>,
}

impl<K: Resource> Source<K> {
    fn handle(&mut self, index: &mut Index, event: Event<K>) {
        match event {
            Event::Apply(obj) => (self.apply)(index, &obj),
            Event::Delete(obj) => (self.delete)(index, &key_of(&obj)),
            Event::Init => self.relisted = Some(HashSet::new()),
            Event::InitApply(obj) => {
                self.relisted.get_or_insert_with(HashSet::new).insert(key_of(&obj));
                (self.apply)(index, &obj);
            }
            Event::InitDone => {
                let seen = self.relisted.take().unwrap_or_default();
                for key in index.keys(self.name).into_iter().filter(|k| !seen.contains(k)) {
                    (self.delete)(index, &key);
                }
                index.mark_synced(self.name);
            }
        }
    }
}

/// Follows the cluster forever, applying every change to `index`.
pub async fn follow(client: kube::Client, index: Arc<RwLock<Index>>, metrics: DnsMetrics) {
    let cfg = watcher::Config::default();
    let changes = stream::select_all([
        watcher::watcher(Api::<Service>::all(client.clone()), cfg.clone()).default_backoff().map(|e| e.map(Change::Service)).boxed(),
        watcher::watcher(Api::<EndpointSlice>::all(client.clone()), cfg.clone()).default_backoff().map(|e| e.map(Change::Slice)).boxed(),
        watcher::watcher(Api::<Pod>::all(client.clone()), cfg.clone()).default_backoff().map(|e| e.map(Change::Pod)).boxed(),
        watcher::watcher(Api::<Namespace>::all(client), cfg).default_backoff().map(|e| e.map(Change::Namespace)).boxed(),
    ]);
    let mut services = Source::<Service> { name: "services", apply: Index::apply_service, delete: Index::delete_service, relisted: None };
    let mut slices = Source::<EndpointSlice> { name: "endpointslices", apply: Index::apply_slice, delete: Index::delete_slice, relisted: None };
    let mut pods = Source::<Pod> { name: "pods", apply: Index::apply_pod, delete: Index::delete_pod, relisted: None };
    let mut namespaces = Source::<Namespace> {
        name: "namespaces",
        apply: Index::apply_namespace,
        delete: |index, key| index.delete_namespace(&key.1),
        relisted: None,
    };
    futures::pin_mut!(changes);
    while let Some(change) = changes.next().await {
        let change = match change {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "DNS watch error; retrying");
                continue;
            }
        };
        let received = Instant::now();
        let mut guard = index.write().unwrap_or_else(|p| p.into_inner());
        let kind = match change {
            Change::Service(e) => {
                services.handle(&mut guard, e);
                "service"
            }
            Change::Slice(e) => {
                slices.handle(&mut guard, e);
                "endpointslice"
            }
            Change::Pod(e) => {
                pods.handle(&mut guard, e);
                "pod"
            }
            Change::Namespace(e) => {
                namespaces.handle(&mut guard, e);
                "namespace"
            }
        };
        drop(guard);
        metrics.programming.get_or_create(&KindLabels { kind: kind.into() }).observe(received.elapsed().as_secs_f64());
    }
}
