//! Who serves each frontend on this node. Two services may ask for the
//! same address and port (a load-balancer IP, an external IP); the oldest
//! keeps it, whatever order the proxy learns of them, and the younger
//! waits until it is released. Both data planes (userspace listeners and
//! nftables rules) decide with this one table.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use wharf_kube::ObjectKey;

use crate::model::{Frontend, Protocol, Scope, ServicePortName};

/// A frontend: address, port and protocol.
pub type FrontendKey = (SocketAddr, Protocol);

/// The service that serves a frontend, and since when it exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub service: ObjectKey,
    pub created: Option<Time>,
}

impl Owner {
    fn precedes(&self, other: &Owner) -> bool {
        (self.created.as_ref(), &self.service) < (other.created.as_ref(), &other.service)
    }
}

/// A frontend another service already serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub frontend: FrontendKey,
    pub owner: ObjectKey,
    pub refused: ObjectKey,
}

/// What one service's `apply` changed beyond its own service.
#[derive(Debug, Default)]
pub struct Applied {
    /// Frontends the service wanted but another owns.
    pub conflicts: Vec<Conflict>,
    /// Frontends this node could not serve, and why.
    pub bind_failures: Vec<(FrontendKey, String)>,
    /// Services waiting for a frontend this one released: sync them again.
    pub retry: Vec<ObjectKey>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Holder {
    owner: Owner,
    /// The port's name: its namespace and service are the owner's.
    port: Arc<str>,
    scope: Scope,
}

/// The answer to one claim.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The service already serves it for this port and scope.
    Held,
    /// The service now serves it; `taken_from` lost it (and waits).
    Granted {
        taken_from: Option<ObjectKey>,
    },
    Refused(Conflict),
}

#[derive(Default)]
pub struct Claims {
    holders: HashMap<FrontendKey, Holder>,
    /// Services refused a frontend, to retry when it is released.
    waiting: HashMap<FrontendKey, HashSet<ObjectKey>>,
    /// Frontends of each service, to release them when it changes (at
    /// their exact length: nearly every service keeps one or two).
    by_service: HashMap<ObjectKey, Box<[FrontendKey]>>,
}

impl Claims {
    /// Asks for `frontend` for `owner`'s port `port`.
    pub fn claim(&mut self, owner: &Owner, port: &ServicePortName, frontend: &Frontend) -> Claim {
        let key = (frontend.addr, frontend.protocol);
        let wanted = Holder { owner: owner.clone(), port: port.port.clone(), scope: frontend.scope };
        let mut taken_from = None;
        if let Some(existing) = self.holders.get(&key) {
            if existing.owner.service != owner.service && !owner.precedes(&existing.owner) {
                return Claim::Refused(Conflict { frontend: key, owner: existing.owner.service.clone(), refused: owner.service.clone() });
            }
            if existing.owner.service == owner.service && existing.port == port.port && existing.scope == frontend.scope {
                return Claim::Held;
            }
            if existing.owner.service != owner.service {
                // The older service takes its frontend back; the younger waits.
                let younger = existing.owner.service.clone();
                self.waiting.entry(key).or_default().insert(younger.clone());
                if let Some(frontends) = self.by_service.get_mut(&younger) {
                    *frontends = frontends.iter().filter(|f| **f != key).copied().collect();
                }
                taken_from = Some(younger);
            }
        }
        self.holders.insert(key, wanted);
        Claim::Granted { taken_from }
    }

    /// Ends one service's round of claims: `wanted` is what it serves now.
    /// Returns the frontends it released; `applied` gets the services to
    /// retry and its conflicts are remembered for when they clear.
    pub fn settle(&mut self, service: &ObjectKey, wanted: Vec<FrontendKey>, applied: &mut Applied) -> Vec<FrontendKey> {
        let previous = self.by_service.remove(service).unwrap_or_default();
        let released: Vec<FrontendKey> = previous.iter().filter(|k| !wanted.contains(k)).copied().collect();
        for key in &released {
            self.holders.remove(key);
            applied.retry.extend(self.waiting.remove(key).into_iter().flatten());
        }
        for waiting in self.waiting.values_mut() {
            waiting.remove(service);
        }
        for conflict in &applied.conflicts {
            self.waiting.entry(conflict.frontend).or_default().insert(service.clone());
        }
        self.waiting.retain(|_, w| !w.is_empty());
        if !wanted.is_empty() {
            self.by_service.insert(service.clone(), wanted.into_boxed_slice());
        }
        released
    }

    /// Forgets every claim (the data plane stopped serving).
    pub fn clear(&mut self) {
        self.holders.clear();
        self.by_service.clear();
    }

    /// Frontends served.
    pub fn len(&self) -> usize {
        self.holders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(name: &str, created: i64) -> Owner {
        let at = time_at(created);
        Owner { service: ObjectKey::new("default", name), created: Some(at) }
    }

    fn time_at(secs: i64) -> Time {
        serde_json::from_value(serde_json::json!(format!("2026-01-01T00:00:{secs:02}Z"))).unwrap()
    }

    fn port(service: &str) -> ServicePortName {
        ServicePortName { namespace: "default".into(), service: service.into(), port: "".into() }
    }

    #[test]
    fn the_older_service_keeps_a_contested_frontend_and_the_younger_waits() {
        let mut claims = Claims::default();
        let frontend = Frontend { addr: "127.253.0.1:80".parse().unwrap(), protocol: Protocol::Tcp, scope: Scope::External };
        let key = (frontend.addr, frontend.protocol);
        let (old, young) = (owner("old", 1), owner("young", 2));
        // The younger arrives first and gets it.
        assert_eq!(claims.claim(&young, &port("young"), &frontend), Claim::Granted { taken_from: None });
        claims.settle(&young.service, vec![key], &mut Applied::default());
        assert_eq!(claims.claim(&young, &port("young"), &frontend), Claim::Held);
        claims.settle(&young.service, vec![key], &mut Applied::default());
        // The older takes it back.
        assert_eq!(claims.claim(&old, &port("old"), &frontend), Claim::Granted { taken_from: Some(young.service.clone()) });
        claims.settle(&old.service, vec![key], &mut Applied::default());
        let Claim::Refused(conflict) = claims.claim(&young, &port("young"), &frontend) else { panic!("the younger must be refused") };
        let mut applied = Applied { conflicts: vec![conflict], ..Default::default() };
        assert!(claims.settle(&young.service, vec![], &mut applied).is_empty());
        // The older lets go: the younger is told to try again.
        let mut applied = Applied::default();
        assert_eq!(claims.settle(&old.service, vec![], &mut applied), [key]);
        assert_eq!(applied.retry, std::slice::from_ref(&young.service));
        assert!(claims.is_empty());
    }
}
