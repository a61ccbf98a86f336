//! Leader election on the store, for controllers that must run once per
//! cluster when several API servers share one etcd. The leader holds a
//! key naming it and an expiry time, renewed with compare-and-swap; a
//! leader that stops renewing loses the key after `ttl`. Expiry compares
//! wall clocks, so the servers' clocks must agree to well within `ttl`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use wharf_store::{Compare, Store, Txn, TxnOutcome};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Campaigns for `key` as `id` forever; the receiver says whether this
/// process leads right now.
pub fn campaign(store: Arc<dyn Store>, key: String, id: String, ttl: Duration) -> watch::Receiver<bool> {
    let (leading, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ttl / 3);
        loop {
            tick.tick().await;
            let lead = try_lead(store.as_ref(), &key, &id, ttl).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "leader election: store unavailable");
                false
            });
            leading.send_if_modified(|l| std::mem::replace(l, lead) != lead);
        }
    });
    rx
}

async fn try_lead(store: &dyn Store, key: &str, id: &str, ttl: Duration) -> wharf_store::Result<bool> {
    let current = store.get(key).await?;
    let record = format!("{id} {}", now_ms() + ttl.as_millis() as u64);
    let guard = match &current {
        None => Compare::Absent(key.to_string()),
        Some(kv) => {
            let text = String::from_utf8_lossy(&kv.value);
            let (holder, expiry) = text.split_once(' ').unwrap_or(("", "0"));
            let expired = expiry.parse::<u64>().map_or(true, |e| e < now_ms());
            if holder != id && !expired {
                return Ok(false);
            }
            Compare::ModRevision(key.to_string(), kv.mod_revision)
        }
    };
    let outcome = store.txn(Txn::new().when(guard).put(key, record)).await?;
    Ok(matches!(outcome, TxnOutcome::Committed(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_and_takeover_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(wharf_store::EmbeddedStore::open(&dir.path().join("s")).unwrap());
        let ttl = Duration::from_millis(300);
        assert!(try_lead(store.as_ref(), "/lead", "a", ttl).await.unwrap());
        assert!(!try_lead(store.as_ref(), "/lead", "b", ttl).await.unwrap());
        assert!(try_lead(store.as_ref(), "/lead", "a", ttl).await.unwrap(), "the leader renews");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(try_lead(store.as_ref(), "/lead", "b", ttl).await.unwrap(), "b takes over an expired lease");
        assert!(!try_lead(store.as_ref(), "/lead", "a", ttl).await.unwrap());
    }
}
