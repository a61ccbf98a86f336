//! A part of a node publishing its state on its Node as one annotation
//! (the proxy's frontends and traffic), so other parts and users learn it
//! from the API. Writes are a merge patch of that annotation alone, at
//! most one per `every`, and only when the value changed (or every
//! `REFRESH_EVERY` intervals anyway, so a Node recreated without it gets
//! it back); a failed write is logged at warn and retried with backoff.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Backoff;

/// Intervals after which an unchanged value is written again.
const REFRESH_EVERY: u32 = 30;

/// Offers `value` for publishing: its JSON replaces the last offer, and
/// the publisher is woken only when it differs.
pub fn offer(values: &watch::Sender<Option<String>>, value: &impl serde::Serialize) {
    let value = serde_json::to_string(value).ok();
    values.send_if_modified(|offered| {
        let changed = *offered != value;
        *offered = value;
        changed
    });
}

/// Publishes each new value of `values` as annotation `key` of Node
/// `node`, until `token` is cancelled.
pub async fn publish(
    client: kube::Client,
    node: String,
    key: &'static str,
    mut values: watch::Receiver<Option<String>>,
    every: Duration,
    token: CancellationToken,
) {
    let nodes = Api::<Node>::all(client);
    let backoff = Backoff { base: Duration::from_millis(200), max: every.max(Duration::from_secs(1)) * 6 };
    let mut published: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let value = values.borrow_and_update().clone();
        if value.is_some() && value != published {
            let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
            match nodes.patch(&node, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    failures = 0;
                    published = value;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(%node, annotation = key, error = %e, failures, "publishing the node's status failed; retrying");
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(backoff.delay(failures)) => continue,
                    }
                }
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        tokio::select! {
            _ = token.cancelled() => return,
            changed = values.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(every * REFRESH_EVERY) => published = None,
        }
    }
}
