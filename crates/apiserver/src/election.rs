//! Leader election on the store, for controllers that must run once per
//! cluster when several API servers share one etcd. As client-go's leader
//! election does, the leader holds a `coordination.k8s.io` Lease
//! (`kubectl get lease -n kube-system` shows the holder), renewed with
//! compare-and-swap on its store key; a leader that stops renewing loses
//! it `ttl` after its last renewal. Expiry compares wall clocks, so the
//! servers' clocks must agree to well within `ttl`.
//!
//! No two leaders act at once: every attempt has a deadline of a third of
//! the lease, and a leader that has not renewed within two thirds of it
//! (counted from before the last successful attempt was sent) steps down,
//! a third of the lease before anyone else may take it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wharf_store::{Compare, Store, Txn, TxnOutcome};

/// The store key of the Lease `kube-system/<name>`.
pub fn lease_key(name: &str) -> String {
    crate::registry::object_key(&wharf_api::kinds::LEASE, "kube-system", name)
}

/// Microseconds, as a Lease's `renewTime` carries them.
fn micro_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// A holder identity unique to this process: the host name and a random
/// part, as client-go's leader election forms it.
pub fn holder_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    format!("{host}_{}", uuid::Uuid::new_v4())
}

/// Campaigns for `key` as `id` until `token` is cancelled; the receiver
/// says whether this process leads right now.
pub fn campaign(store: Arc<dyn Store>, key: String, id: String, ttl: Duration, token: CancellationToken) -> watch::Receiver<bool> {
    let (leading, rx) = watch::channel(false);
    let attempt_deadline = ttl / 3;
    let renew_deadline = ttl * 2 / 3;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ttl / 3);
        let mut renewed_at: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {}
            }
            let started = Instant::now();
            let outcome = tokio::time::timeout(attempt_deadline, try_lead(store.as_ref(), &key, &id, ttl)).await;
            let lead = match outcome {
                Ok(Ok(true)) => {
                    renewed_at = Some(started);
                    true
                }
                Ok(Ok(false)) => {
                    renewed_at = None;
                    false
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {attempt_deadline:?}"),
                    };
                    let still = renewed_at.is_some_and(|at| at.elapsed() < renew_deadline);
                    tracing::warn!(error = %why, leading = still, "leader election: cannot reach the store");
                    still
                }
            };
            leading.send_if_modified(|l| std::mem::replace(l, lead) != lead);
        }
        leading.send_replace(false);
    });
    rx
}

/// The Lease `id` writes: renewed now, acquired now unless it held it
/// already, carrying over the metadata and counting transitions.
fn lease(key: &str, current: Option<&Value>, id: &str, ttl: Duration, now: jiff::Timestamp) -> Value {
    let held = current.is_some_and(|l| l["spec"]["holderIdentity"] == id);
    let name = key.rsplit('/').next().unwrap_or_default();
    let metadata = current.map(|l| l["metadata"].clone()).unwrap_or_else(|| {
        json!({"name": name, "namespace": "kube-system", "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()})
    });
    let transitions = current.and_then(|l| l["spec"]["leaseTransitions"].as_i64()).unwrap_or(0) + i64::from(current.is_some() && !held);
    let acquired = current.filter(|_| held).map_or_else(|| json!(micro_time(now)), |l| l["spec"]["acquireTime"].clone());
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": id,
            "leaseDurationSeconds": ttl.as_secs_f64().ceil() as i64,
            "acquireTime": acquired,
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        },
    })
}

/// Whether `lease` is held by someone else and not expired at `now`.
fn held_by_other(lease: &Value, id: &str, ttl: Duration, now: jiff::Timestamp) -> bool {
    let renewed = lease["spec"]["renewTime"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let live = renewed.is_some_and(|r| jiff::SignedDuration::try_from(ttl).is_ok_and(|ttl| r + ttl > now));
    lease["spec"]["holderIdentity"] != id && live
}

async fn try_lead(store: &dyn Store, key: &str, id: &str, ttl: Duration) -> wharf_store::Result<bool> {
    let current = store.get(key).await?;
    let now = jiff::Timestamp::now();
    let (guard, stored) = match &current {
        None => (Compare::Absent(key.to_string()), None),
        Some(kv) => {
            // Unreadable (written by hand?): taken over as if expired.
            let stored: Option<Value> = serde_json::from_slice(&kv.value.bytes()).ok();
            if stored.as_ref().is_some_and(|l| held_by_other(l, id, ttl, now)) {
                return Ok(false);
            }
            (Compare::ModRevision(key.to_string(), kv.mod_revision), stored)
        }
    };
    let record = serde_json::to_vec(&lease(key, stored.as_ref(), id, ttl, now)).unwrap_or_default();
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
        let lease: Value = serde_json::from_slice(&store.get("/lead").await.unwrap().unwrap().value.bytes()).unwrap();
        assert_eq!((lease["kind"].as_str(), lease["spec"]["holderIdentity"].as_str()), (Some("Lease"), Some("b")));
        assert_eq!(lease["spec"]["leaseTransitions"], 1, "a to b");
    }

    /// An in-memory store that can be cut off: every call then waits
    /// forever, as a store behind a dropped network does.
    #[derive(Default)]
    struct Cuttable {
        keys: std::sync::Mutex<std::collections::HashMap<String, (bytes::Bytes, u64)>>,
        revision: std::sync::atomic::AtomicU64,
        cut: std::sync::atomic::AtomicBool,
    }

    impl Cuttable {
        async fn reachable(&self) {
            if self.cut.load(std::sync::atomic::Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
        }
    }

    #[async_trait::async_trait]
    impl Store for Cuttable {
        fn revision(&self) -> wharf_store::Revision {
            self.revision.load(std::sync::atomic::Ordering::SeqCst)
        }
        async fn get(&self, key: &str) -> wharf_store::Result<Option<wharf_store::KeyValue>> {
            self.reachable().await;
            let keys = self.keys.lock().unwrap();
            Ok(keys.get(key).map(|(value, rev)| wharf_store::KeyValue {
                key: key.into(),
                value: value.clone().into(),
                create_revision: *rev,
                mod_revision: *rev,
            }))
        }
        async fn list(&self, _: &str) -> wharf_store::Result<(Vec<wharf_store::KeyValue>, wharf_store::Revision)> {
            Err(wharf_store::StoreError::Closed)
        }
        async fn snapshot(&self) -> wharf_store::Result<wharf_store::SharedSnapshot> {
            Err(wharf_store::StoreError::Closed)
        }
        async fn txn(&self, txn: Txn) -> wharf_store::Result<TxnOutcome> {
            self.reachable().await;
            let mut keys = self.keys.lock().unwrap();
            if !txn.compares.iter().all(|c| c.holds(keys.get(c.key()).map(|(_, r)| *r))) {
                return Ok(TxnOutcome::Failed);
            }
            let rev = self.revision.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            for op in txn.ops {
                if let wharf_store::Op::Put { key, value } = op {
                    keys.insert(key, (value, rev));
                }
            }
            Ok(TxnOutcome::Committed(rev))
        }
        async fn watch(&self, _: &str, _: wharf_store::Revision) -> wharf_store::Result<wharf_store::WatchStream> {
            Err(wharf_store::StoreError::Closed)
        }
    }

    /// On virtual time: the leader renews every third of the lease, each
    /// attempt bounded by a third; cut off, it steps down once two thirds
    /// have passed since its last good renewal began, before the lease
    /// (which runs from that moment) can expire.
    #[tokio::test(start_paused = true)]
    async fn a_leader_cut_off_from_the_store_steps_down_before_its_lease_ends() {
        let store = Arc::new(Cuttable::default());
        let ttl = Duration::from_millis(900);
        let token = CancellationToken::new();
        let mut leading = campaign(store.clone(), "/lead".into(), "a".into(), ttl, token.clone());
        leading.wait_for(|l| *l).await.unwrap();
        tokio::time::sleep(ttl).await;
        assert!(*leading.borrow(), "a reachable leader keeps leading");
        store.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        let cut = Instant::now();
        leading.wait_for(|l| !*l).await.unwrap();
        let stepped_down = cut.elapsed();
        // Step-down comes two thirds of the lease after the last good
        // renewal began (at or before the cut), a third before the lease
        // that renewal wrote can expire.
        assert!(stepped_down <= ttl * 2 / 3, "stepped down {stepped_down:?} after the cut: the lease may have expired");
        assert!(stepped_down >= ttl / 3, "stepped down {stepped_down:?} after the cut: too eager, a blip would flap");
        token.cancel();
    }
}
