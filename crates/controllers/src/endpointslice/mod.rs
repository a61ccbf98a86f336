//! The EndpointSlice controller (and the legacy Endpoints it keeps in
//! step): for every Service with a selector, the ready, not-ready and
//! terminating pods it selects, in slices of at most 100 endpoints.
//!
//! Event-driven: a watch event updates the index (`index`), which names the
//! services it concerns; they go on the work queue, and a worker plans one
//! service from its members alone (`plan`, pure) and writes only the slices
//! whose content changed. Workers start once every watch has listed, so no
//! service is planned from half a picture. Every `VERIFY_PERIOD` the whole
//! index is planned again off the hot path: a service with work that no
//! event queued is drift, counted and repaired.

pub mod digest;
pub mod index;
pub mod labels;
pub mod plan;
pub mod service;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;
use wharf_kube::{watch, Backoff, Keyed, ObjectKey, QueueHandles, WorkQueue};

pub use index::Index;
use index::{EndpointsWrite, Update, Work};
pub use plan::{PodInfo, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL};

/// Reconciles running at once.
const WORKERS: usize = 8;
/// How often the whole index is checked against what the controller
/// would write.
const VERIFY_PERIOD: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct EndpointSliceController {
    client: kube::Client,
    index: Arc<Mutex<Index>>,
    queue: Arc<WorkQueue<ObjectKey>>,
    metrics: QueueHandles,
}

/// A write that failed, for the retry's warning.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct WriteError {
    what: &'static str,
    source: kube::Error,
}

/// A delete's result, where "already gone" counts as done.
fn gone<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => other.map(|_| ()),
    }
}

impl EndpointSliceController {
    pub fn new(client: kube::Client, metrics: QueueHandles) -> Self {
        let queue = Arc::new(WorkQueue::new(Backoff::default(), metrics.clone()));
        Self { client, index: Default::default(), queue, metrics }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until `token` is cancelled; the workers stop with it.
    pub async fn run(self, token: CancellationToken) {
        let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let updates = stream::select_all([
            watch::watch_all::<Service>(&self.client).map(|e| Update::Service(watch::kept(e))).boxed(),
            watch::watch_all::<Pod>(&self.client).map(|e| Update::Pod(watch::kept(e))).boxed(),
            watch::watch(Api::<EndpointSlice>::all(self.client.clone()), managed).map(|e| Update::Slice(watch::kept(e))).boxed(),
            watch::watch_all::<Endpoints>(&self.client).map(|e| Update::Endpoints(watch::kept(e))).boxed(),
        ]);
        futures::pin_mut!(updates);
        let mut workers = None;
        let mut verify = tokio::time::interval_at(tokio::time::Instant::now() + VERIFY_PERIOD, VERIFY_PERIOD);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                Some(update) = updates.next() => {
                    let synced = {
                        let mut index = self.lock();
                        for key in index.update(update) {
                            self.queue.add(key);
                        }
                        index.is_synced()
                    };
                    if synced && workers.is_none() {
                        tracing::info!("endpointslice controller synced; starting workers");
                        let this = self.clone();
                        let reconcile = move |key| {
                            let this = this.clone();
                            async move { this.reconcile(key).await }
                        };
                        workers = Some(tokio::spawn(wharf_kube::run_workers(
                            "endpointslice", self.queue.clone(), self.metrics.clone(), WORKERS, token.clone(), reconcile,
                        )));
                    }
                }
                _ = verify.tick(), if workers.is_some() => self.verify(),
            }
        }
        if let Some(workers) = workers {
            let _ = workers.await;
        }
    }

    /// Plans every service again; queues, counts and logs those with work
    /// that nothing queued.
    fn verify(&self) {
        let index = self.lock();
        for key in index.all_keys() {
            if !self.queue.is_pending(&key) && !index.plan(&key).is_empty() {
                self.metrics.drift.inc();
                tracing::warn!(service = %key, "endpoints differ from the service's pods without a pending change; repairing");
                self.queue.add(key);
            }
        }
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<(), WriteError> {
        let work = self.lock().plan(&key);
        self.execute(work).await
    }

    /// Carries out a plan; the first failure ends it (the retry plans anew).
    async fn execute(&self, work: Work) -> Result<(), WriteError> {
        let ns = work.key.namespace.clone();
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &ns);
        let failed = |what| move |source| WriteError { what, source };
        for slice in work.slices.create {
            let created = slices.create(&PostParams::default(), &slice).await.map_err(failed("creating a slice"))?;
            self.lock().record_slice(created.into());
        }
        for slice in work.slices.update {
            let name = slice.metadata.name.clone().unwrap_or_default();
            let updated = slices.replace(&name, &PostParams::default(), &slice).await.map_err(failed("updating a slice"))?;
            self.lock().record_slice(updated.into());
        }
        for slice in work.slices.delete {
            let key = slice.key();
            gone(slices.delete(&key.name, &DeleteParams::default()).await).map_err(failed("deleting a slice"))?;
            self.lock().forget_slice(&key, slice.version());
        }
        let endpoints: Api<Endpoints> = Api::namespaced(self.client.clone(), &ns);
        match work.endpoints {
            Some(EndpointsWrite::Put(mut ep, version)) => {
                let written = match version {
                    Some(rv) => {
                        ep.metadata.resource_version = Some(rv);
                        endpoints.replace(&work.key.name, &PostParams::default(), &ep).await
                    }
                    None => endpoints.create(&PostParams::default(), &ep).await,
                }
                .map_err(failed("writing Endpoints"))?;
                self.lock().endpoints.reflector.record(written.into());
            }
            Some(EndpointsWrite::Delete(version)) => {
                gone(endpoints.delete(&work.key.name, &DeleteParams::default()).await).map_err(failed("deleting Endpoints"))?;
                self.lock().endpoints.reflector.forget(&work.key, version);
            }
            None => {}
        }
        Ok(())
    }
}
