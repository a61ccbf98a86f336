//! Events expire, as kube-apiserver's `--event-ttl` makes them: an Event
//! not updated for the TTL (one hour by default) is deleted. A sweep runs
//! every `SWEEP` and removes at most `PER_SWEEP`, so a flood of events is
//! cleared over a few sweeps without one long burst of writes. Several
//! servers may sweep the same store: a delete that finds nothing is fine.

use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::kind;
use crate::object;
use crate::registry::{DeleteOptions, Filter, Registry};

const SWEEP: Duration = Duration::from_secs(60);
const PER_SWEEP: usize = 10_000;

/// When `event` last happened: `lastTimestamp`, else `eventTime`, else its
/// creation.
fn last_seen(event: &Value) -> Option<jiff::Timestamp> {
    [&event["lastTimestamp"], &event["eventTime"], &event["metadata"]["creationTimestamp"]]
        .into_iter()
        .find_map(|t| t.as_str().and_then(|s| s.parse().ok()))
}

/// Whether `event` is older than `ttl` at `now`.
fn expired(event: &Value, ttl: Duration, now: jiff::Timestamp) -> bool {
    let Ok(ttl) = jiff::SignedDuration::try_from(ttl) else { return false };
    last_seen(event).is_some_and(|at| at + ttl < now)
}

async fn sweep(registry: &Registry, ttl: Duration) -> Result<usize, ApiError> {
    let (events, _) = registry.list(&kind::EVENT, None, &Filter::default()).await?;
    let now = jiff::Timestamp::now();
    let mut removed = 0;
    for event in events.iter().filter(|e| expired(e, ttl, now)).take(PER_SWEEP) {
        match registry.delete(&kind::EVENT, object::namespace(event), object::name(event), &DeleteOptions::default()).await {
            Ok(_) => removed += 1,
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Deletes expired Events every `SWEEP` until `token` is cancelled.
pub async fn run(registry: Registry, ttl: Duration, token: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sweep(&registry, ttl).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired events removed"),
            Err(e) => tracing::warn!(error = %e, "removing expired events failed; trying again next sweep"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_expires_an_hour_after_it_last_happened() {
        let hour = Duration::from_secs(3600);
        let now: jiff::Timestamp = "2026-01-01T02:00:00Z".parse().unwrap();
        let event = |last: &str| json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "lastTimestamp": last});
        assert!(expired(&event("2026-01-01T00:59:59Z"), hour, now));
        assert!(!expired(&event("2026-01-01T01:30:00Z"), hour, now), "repeated recently");
        assert!(expired(&json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}}), hour, now), "by creation");
        assert!(!expired(&json!({"metadata": {}}), hour, now), "no time at all: kept");
    }
}
