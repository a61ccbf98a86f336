//! The RBAC objects every request is authorized against, kept in memory
//! from the store: each of the four kinds is listed and then watched (so
//! a role written through another API server on the same store counts
//! here too); a watch that fails is retried with backoff and the whole
//! policy relisted, swapped in only once complete.

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use wharf_auth::rbac::RbacKind;
use wharf_auth::Policy;

use crate::error::{ApiError, ApiResult};
use crate::kind::{self, Kind};
use crate::object;
use crate::registry::{Filter, Registry, WatchEvent, WatchStart, PROGRESS};

const KINDS: [(RbacKind, &Kind); 4] = [
    (RbacKind::Role, &kind::ROLE),
    (RbacKind::ClusterRole, &kind::CLUSTER_ROLE),
    (RbacKind::RoleBinding, &kind::ROLE_BINDING),
    (RbacKind::ClusterRoleBinding, &kind::CLUSTER_ROLE_BINDING),
];

const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct PolicyCache {
    policy: RwLock<Policy>,
    synced: tokio::sync::watch::Sender<bool>,
}

impl PolicyCache {
    /// Starts following the store; stops with `token`.
    pub fn start(registry: Registry, token: CancellationToken) -> Arc<Self> {
        let cache = Arc::new(Self { policy: RwLock::default(), synced: tokio::sync::watch::Sender::new(false) });
        tokio::spawn(run(cache.clone(), registry, token));
        cache
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Policy> {
        self.policy.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the first complete policy is in.
    pub async fn synced(&self) {
        let _ = self.synced.subscribe().wait_for(|s| *s).await;
    }

    fn replace(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
        self.synced.send_replace(true);
    }
}

async fn run(cache: Arc<PolicyCache>, registry: Registry, token: CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let error = tokio::select! {
            _ = token.cancelled() => return,
            result = follow(&cache, &registry, &mut backoff) => result,
        };
        tracing::warn!(error = %error, retry_in = ?backoff, "RBAC policy watch failed; relisting");
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Lists and follows the four kinds until a watch fails.
async fn follow(cache: &PolicyCache, registry: &Registry, backoff: &mut Duration) -> ApiError {
    let mut streams = Vec::new();
    for (rbac, kind) in KINDS {
        match registry.watch(kind, None, Filter::default(), WatchStart::Current { end_bookmark: true }).await {
            Ok(events) => streams.push(events.map(move |e| (rbac, e)).boxed()),
            Err(e) => return e,
        }
    }
    let mut events = futures::stream::select_all(streams);
    let mut fresh = Some(Policy::default());
    let mut listing = KINDS.len();
    while let Some((rbac, event)) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => return e,
        };
        if event.kind == PROGRESS {
            continue;
        }
        if fresh.is_some() && event.kind == "BOOKMARK" {
            listing -= 1;
            if listing == 0 {
                cache.replace(fresh.take().unwrap_or_default());
                *backoff = Duration::from_millis(500);
            }
            continue;
        }
        match fresh.as_mut() {
            Some(policy) => apply(policy, rbac, &event),
            None => apply(&mut cache.policy.write().unwrap_or_else(|p| p.into_inner()), rbac, &event),
        }
    }
    ApiError::Internal("the store ended the watch".into())
}

fn decode<T: serde::de::DeserializeOwned>(object: &Value) -> ApiResult<T> {
    serde_json::from_value(object.clone()).map_err(|e| ApiError::Internal(e.to_string()))
}

fn apply(policy: &mut Policy, rbac: RbacKind, event: &WatchEvent) {
    let obj = &event.object;
    if event.kind == "DELETED" {
        return policy.remove(rbac, object::namespace(obj), object::name(obj));
    }
    if !matches!(event.kind, "ADDED" | "MODIFIED") {
        return;
    }
    let put = match rbac {
        RbacKind::Role => decode::<Role>(obj).map(|r| policy.put_role(&r)),
        RbacKind::ClusterRole => decode::<ClusterRole>(obj).map(|r| policy.put_cluster_role(&r)),
        RbacKind::RoleBinding => decode::<RoleBinding>(obj).map(|b| policy.put_role_binding(&b)),
        RbacKind::ClusterRoleBinding => decode::<ClusterRoleBinding>(obj).map(|b| policy.put_cluster_role_binding(&b)),
    };
    if let Err(e) = put {
        tracing::warn!(kind = ?rbac, name = object::name(obj), error = %e, "an unreadable RBAC object grants nothing");
    }
}
