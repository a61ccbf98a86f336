//! A controller's workers: each takes a key from the queue, reconciles it
//! in a tracing span, records the outcome and its latency, and hands the
//! key back (a failure is retried with backoff and logged at warn). All
//! workers stop when the controller's token is cancelled, in the middle of
//! a reconcile too: a controller that lost its leadership must not write.

use std::fmt::{Debug, Display};
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::QueueHandles;
use crate::queue::WorkQueue;

/// Runs `workers` workers on `queue` until `token` is cancelled; returns
/// when all have stopped.
pub async fn run_workers<K, F, Fut, E>(
    name: &'static str,
    queue: Arc<WorkQueue<K>>,
    metrics: QueueHandles,
    workers: usize,
    token: CancellationToken,
    reconcile: F,
) where
    K: Clone + Eq + Hash + Display + Debug + Send + Sync + 'static,
    F: Fn(K) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let mut set = JoinSet::new();
    for _ in 0..workers.max(1) {
        let (queue, metrics, token, reconcile) = (queue.clone(), metrics.clone(), token.clone(), reconcile.clone());
        set.spawn(async move {
            while let Some(key) = queue.next(&token).await {
                let span = tracing::info_span!("reconcile", controller = name, key = %key);
                let started = Instant::now();
                let outcome = tokio::select! {
                    _ = token.cancelled() => break,
                    outcome = reconcile(key.clone()).instrument(span) => outcome,
                };
                metrics.work_seconds.observe(started.elapsed().as_secs_f64());
                let succeeded = outcome.is_ok();
                let retry = queue.done(key.clone(), succeeded);
                match outcome {
                    Ok(()) => {
                        metrics.succeeded.inc();
                    }
                    Err(e) => {
                        metrics.failed.inc();
                        metrics.errors.inc();
                        tracing::warn!(controller = name, key = %key, error = %e, retry_in = ?retry, "reconcile failed; will retry");
                    }
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}
