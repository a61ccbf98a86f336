//! Keeps the index current from watches on Services, EndpointSlices, Pods
//! and Namespaces (the same list/watch any Kubernetes client uses). The
//! index is each watch's table: relists are applied whole by
//! `wharf_kube`'s relister, and pods are cut down to what DNS reads before
//! they are buffered.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;
use tokio_util::sync::CancellationToken;
use wharf_kube::{watch, Relister, Table};

use crate::index::{Index, Key};
use crate::metrics::{DnsMetrics, KindLabels};

/// The index as the table of each watched kind.
/// (The index keeps pods by a hash of their name: it deletes those a
/// relist did not list by their hashes.)
macro_rules! index_table {
    ($kind:ty, $source:literal, $apply:ident, $delete:expr, $delete_unlisted:expr) => {
        impl Table<$kind> for Index {
            fn apply(&mut self, obj: $kind) {
                self.$apply(&obj);
            }
            fn delete(&mut self, key: &Key) {
                let delete: fn(&mut Index, &Key) = $delete;
                delete(self, key);
            }
            fn delete_unlisted(&mut self, listed: &HashSet<Key>) {
                let delete_unlisted: fn(&mut Index, &HashSet<Key>) = $delete_unlisted;
                delete_unlisted(self, listed);
            }
            fn relist_done(&mut self) {
                self.mark_synced($source);
            }
        }
    };
    ($kind:ty, $source:literal, $apply:ident, $delete:expr) => {
        index_table!($kind, $source, $apply, $delete, |i, listed| {
            let held = i.keys($source);
            wharf_kube::delete_missing::<$kind, _>(i, held, listed)
        });
    };
}

index_table!(Service, "services", apply_service, |i, k| i.delete_service(k));
index_table!(EndpointSlice, "endpointslices", apply_slice, |i, k| i.delete_slice(k));
index_table!(Pod, "pods", apply_pod, |i, k| i.delete_pod(k), |i, listed| i.delete_unlisted_pods(listed));
index_table!(Namespace, "namespaces", apply_namespace, |i, k| i.delete_namespace(&k.name));

/// A pod as the index reads it: its name and IP.
fn strip_pod(pod: &mut Pod) {
    let meta = std::mem::take(&mut pod.metadata);
    pod.metadata = ObjectMeta { name: meta.name, namespace: meta.namespace, resource_version: meta.resource_version, ..Default::default() };
    pod.spec = None;
    let ip = pod.status.take().and_then(|s| s.pod_ip);
    pod.status = Some(PodStatus { pod_ip: ip, ..Default::default() });
}

// Transient: each value moves once from its watch to its table.
#[allow(clippy::large_enum_variant)]
enum Update {
    Service(Event<Service>),
    Slice(Event<EndpointSlice>),
    Pod(Event<Pod>),
    Namespace(Event<Namespace>),
}

#[derive(Default)]
struct Relisters {
    services: Relister<Service>,
    slices: Relister<EndpointSlice>,
    pods: Relister<Pod>,
    namespaces: Relister<Namespace>,
}

impl Relisters {
    fn handle(&mut self, index: &mut Index, update: Update) -> &'static str {
        match update {
            Update::Service(e) => {
                self.services.handle(index, e);
                "service"
            }
            Update::Slice(e) => {
                self.slices.handle(index, e);
                "endpointslice"
            }
            Update::Pod(e) => {
                self.pods.handle(index, e);
                "pod"
            }
            Update::Namespace(e) => {
                self.namespaces.handle(index, e);
                "namespace"
            }
        }
    }
}

/// Where and how often the DNS's state goes out to be published.
pub struct StatusOut {
    pub every: std::time::Duration,
    pub to: tokio::sync::watch::Sender<Option<String>>,
}

impl StatusOut {
    fn send(&self, index: &Index) {
        let status = wharf_api::node_status::DnsStatus { synced: index.is_synced(), services: index.service_count() };
        wharf_kube::node_status::offer(&self.to, &status);
    }
}

/// The least time between two relists of the slices that the index asks
/// for (`Index::take_slice_relist`): each reads every slice, and a user
/// who flips a service between headless and not must not make DNS do that
/// without pause.
const SLICE_RELIST_GAP: Duration = Duration::from_secs(10);

/// Follows the cluster until `token` is cancelled, applying every change
/// to `index`, and sends its state to `status` now and then.
pub async fn follow(client: kube::Client, index: Arc<RwLock<Index>>, metrics: DnsMetrics, status: StatusOut, token: CancellationToken) {
    let mut tick = tokio::time::interval(status.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let others = stream::select_all([
        watch::watch_all::<Service>(&client).map(Update::Service).boxed(),
        watch::watch_all::<Pod>(&client).map(|e| Update::Pod(e.modify(strip_pod))).boxed(),
        watch::watch_all::<Namespace>(&client).map(Update::Namespace).boxed(),
    ]);
    futures::pin_mut!(others);
    // Apart, so that it can start over with a new list.
    let mut slices = watch::watch_all::<EndpointSlice>(&client).boxed();
    let (mut relist_wanted, mut relist_after) = (false, tokio::time::Instant::now());
    let mut relisters = Relisters::default();
    loop {
        let update = tokio::select! {
            _ = token.cancelled() => return,
            Some(event) = slices.next() => Update::Slice(event),
            Some(update) = others.next() => update,
            _ = tokio::time::sleep_until(relist_after), if relist_wanted => {
                tracing::info!("reading every EndpointSlice again: a service turned headless after its slices' endpoints were dropped");
                slices = watch::watch_all::<EndpointSlice>(&client).boxed();
                (relist_wanted, relist_after) = (false, tokio::time::Instant::now() + SLICE_RELIST_GAP);
                continue;
            }
            _ = tick.tick() => {
                status.send(&index.read().unwrap_or_else(|p| p.into_inner()));
                continue;
            }
        };
        let received = Instant::now();
        let kind = {
            let mut guard = index.write().unwrap_or_else(|p| p.into_inner());
            let kind = relisters.handle(&mut guard, update);
            relist_wanted |= guard.take_slice_relist();
            kind
        };
        metrics.programming.get_or_create(&KindLabels { kind: kind.into() }).observe(received.elapsed().as_secs_f64());
    }
}
