//! Gives every `LoadBalancer` service an address from a pool and writes
//! it to `status.loadBalancer.ingress`, so it is reachable and
//! `kubectl get svc` shows an EXTERNAL-IP instead of `<pending>`.
//! Services with a `loadBalancerClass` belong to another implementation.
//!
//! An address belongs to the service that held it first: on start (and
//! after every relist) the addresses services already show are taken
//! oldest service first, so a status another client wrote can never
//! displace the owner; the newcomer is given a free address instead.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use tokio_util::sync::CancellationToken;
use wharf_kube::key::version_of;
use wharf_kube::{watch, Backoff, ObjectKey, QueueHandles, Watched, WorkQueue};

/// Addresses of the pool in order, without network and broadcast.
fn pool_addresses(pool: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    pool.hosts()
}

fn is_ours(svc: &Service) -> bool {
    let spec = svc.spec.as_ref();
    spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer") && spec.and_then(|s| s.load_balancer_class.as_ref()).is_none()
}

fn ingress_ip(svc: &Service) -> Option<Ipv4Addr> {
    svc.status.as_ref()?.load_balancer.as_ref()?.ingress.as_ref()?.first()?.ip.as_deref()?.parse().ok()
}

/// What the controller keeps of a service: the whole object only when it
/// is of type LoadBalancer; of any other, whether it still shows an address
/// to clear, and only while it does (`concerns_us`): most services, at
/// scale, are neither, and a decoded Service is 1.4 KB. Boxed: inline, the
/// `None` of every other service would be as large as a Service (about
/// 900 bytes).
#[derive(Debug)]
pub struct ServiceView {
    key: ObjectKey,
    version: Option<u64>,
    has_ingress: bool,
    load_balancer: Option<Box<Service>>,
}

impl From<Service> for ServiceView {
    fn from(svc: Service) -> Self {
        let is_load_balancer = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
        ServiceView {
            key: ObjectKey::of(&svc),
            version: version_of(&svc),
            has_ingress: ingress_ip(&svc).is_some(),
            load_balancer: is_load_balancer.then(|| Box::new(svc)),
        }
    }
}

wharf_kube::keyed_view!(ServiceView);

impl ServiceView {
    /// The service, when it is a LoadBalancer this controller serves.
    fn ours(&self) -> Option<&Service> {
        self.load_balancer.as_deref().filter(|s| is_ours(s))
    }

    /// Whether it shows an address though it is no LoadBalancer (any more):
    /// one of another class keeps what its implementation wrote.
    fn has_stale_address(&self) -> bool {
        self.has_ingress && self.load_balancer.is_none()
    }

    /// Whether the controller may have work for it: the others are held as
    /// missing, which asks for nothing but releasing an address.
    fn concerns_us(&self) -> bool {
        self.load_balancer.is_some() || self.has_ingress
    }
}

/// Who holds which address, rebuilt from what the services say.
#[derive(Default)]
pub struct Assignments {
    by_ip: BTreeMap<Ipv4Addr, ObjectKey>,
    by_service: HashMap<ObjectKey, Ipv4Addr>,
}

impl Assignments {
    pub fn release(&mut self, key: &ObjectKey) {
        if let Some(ip) = self.by_service.remove(key) {
            self.by_ip.remove(&ip);
        }
    }

    fn owner(&self, ip: Ipv4Addr) -> Option<&ObjectKey> {
        self.by_ip.get(&ip)
    }

    fn take(&mut self, key: &ObjectKey, ip: Ipv4Addr) {
        self.release(key);
        self.by_ip.insert(ip, key.clone());
        self.by_service.insert(key.clone(), ip);
    }

    /// The address `svc` should have: the one it has if valid, else the
    /// one it asks for (`spec.loadBalancerIP`) if free, else the first free.
    pub fn assign(&mut self, pool: Ipv4Net, svc: &Service) -> Option<Ipv4Addr> {
        let key = ObjectKey::of(svc);
        let free = |a: &Self, ip: &Ipv4Addr| pool.contains(ip) && a.by_ip.get(ip).is_none_or(|owner| owner == &key);
        let requested = svc.spec.as_ref().and_then(|s| s.load_balancer_ip.as_deref()).and_then(|ip| ip.parse().ok());
        let choice = ingress_ip(svc)
            .filter(|ip| free(self, ip) && requested.is_none_or(|r| r == *ip))
            .or_else(|| requested.filter(|ip| free(self, ip)))
            .or_else(|| self.by_service.get(&key).copied())
            .or_else(|| pool_addresses(pool).find(|ip| free(self, ip)))?;
        self.take(&key, choice);
        Some(choice)
    }
}

struct State {
    services: Watched<ServiceView>,
    assignments: Assignments,
    /// Whether the addresses services already hold have been taken.
    claimed: bool,
}

pub struct LoadBalancerController {
    client: kube::Client,
    pool: Ipv4Net,
    state: Arc<Mutex<State>>,
    queue: Arc<WorkQueue<ObjectKey>>,
    metrics: QueueHandles,
    events: wharf_kube::events::Recorder,
}

/// The status write a reconcile decided on.
enum Write {
    Ingress(Ipv4Addr),
    Clear,
}

impl LoadBalancerController {
    pub fn new(client: kube::Client, pool: Ipv4Net, metrics: QueueHandles) -> Self {
        let queue = Arc::new(WorkQueue::new(Backoff::default(), metrics.clone()));
        let state = State { services: Watched::default(), assignments: Assignments::default(), claimed: false };
        let events = wharf_kube::events::Recorder::new(client.clone(), "service-controller", "wharf");
        Self { client, pool, state: Arc::new(Mutex::new(state)), queue, metrics, events }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until `token` is cancelled.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        let events = watch::watch_all::<Service>(&self.client)
            .map(watch::kept::<Service, ServiceView>)
            .filter_map(|e| std::future::ready(watch::only_wanted(e, ServiceView::concerns_us)));
        futures::pin_mut!(events);
        let mut workers = None;
        loop {
            let event = tokio::select! {
                _ = token.cancelled() => break,
                Some(event) = events.next() => event,
            };
            let synced = {
                let mut state = self.lock();
                for change in state.services.handle(event) {
                    self.queue.add(change.key());
                }
                if state.services.reflector.is_synced() && !state.claimed {
                    claim_held(&mut state, self.pool);
                }
                state.claimed
            };
            if synced && workers.is_none() {
                let this = self.clone();
                let reconcile = move |key| {
                    let this = this.clone();
                    async move { this.reconcile(key).await }
                };
                // One worker: addresses are handed out one at a time.
                workers = Some(tokio::spawn(wharf_kube::run_workers(
                    "loadbalancer",
                    self.queue.clone(),
                    self.metrics.clone(),
                    1,
                    token.clone(),
                    reconcile,
                )));
            }
        }
        if let Some(workers) = workers {
            let _ = workers.await;
        }
    }

    fn decide(&self, key: &ObjectKey) -> Option<Write> {
        let mut state = self.lock();
        let view = state.services.reflector.get(key).cloned();
        let Some(svc) = view.as_ref().and_then(|v| v.ours()) else {
            state.assignments.release(key);
            return view.is_some_and(|v| v.has_stale_address()).then_some(Write::Clear);
        };
        let ip = state.assignments.assign(self.pool, svc);
        match ip {
            None => {
                tracing::warn!(service = %key, pool = %self.pool, "load balancer pool is exhausted");
                ingress_ip(svc).is_some().then_some(Write::Clear)
            }
            Some(ip) if Some(ip) == ingress_ip(svc) => None,
            Some(ip) => {
                if let Some(claimed) = ingress_ip(svc).filter(|c| state.assignments.owner(*c).is_some_and(|o| o != key)) {
                    let message = format!("{claimed} belongs to another service; assigned {ip} instead");
                    tracing::warn!(service = %key, "load balancer address taken: {message}");
                    self.events.warn(wharf_kube::events::reference(svc), "LoadBalancerAddressTaken", message);
                }
                Some(Write::Ingress(ip))
            }
        }
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<(), kube::Error> {
        let Some(write) = self.decide(&key) else { return Ok(()) };
        let status = match write {
            Write::Ingress(ip) => serde_json::json!({"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}}),
            // A merge patch removes a field only by naming it null.
            Write::Clear => serde_json::json!({"loadBalancer": {"ingress": null}}),
        };
        let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
        let written = api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": status}))).await?;
        if let Write::Ingress(ip) = write {
            // MetalLB's words, which bare-metal users know.
            self.events.normal(wharf_kube::events::reference(&written), "IPAllocated", format!("Assigned IP [\"{ip}\"]"));
        }
        self.lock().services.reflector.record(written.into());
        Ok(())
    }
}

/// Takes the addresses services already show, oldest service first.
fn claim_held(state: &mut State, pool: Ipv4Net) {
    let mut holders: Vec<&Service> =
        state.services.reflector.values().filter_map(|v| v.ours()).filter(|s| ingress_ip(s).is_some()).collect();
    holders.sort_by_cached_key(|s| (s.metadata.creation_timestamp.as_ref().map(|t| t.0), ObjectKey::of(*s)));
    for svc in holders {
        if let Some(ip) = ingress_ip(svc).filter(|ip| pool.contains(ip) && state.assignments.owner(*ip).is_none()) {
            state.assignments.take(&ObjectKey::of(svc), ip);
        }
    }
    state.claimed = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(name: &str, status_ip: Option<&str>, requested: Option<&str>) -> Service {
        let mut v = serde_json::json!({"metadata": {"name": name, "namespace": "d"}, "spec": {"type": "LoadBalancer"}});
        if let Some(ip) = status_ip {
            v["status"] = serde_json::json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
        }
        if let Some(ip) = requested {
            v["spec"]["loadBalancerIP"] = ip.into();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_load_balancers_are_kept_whole() {
        let mut cluster_ip = lb("a", Some("127.240.0.1"), None);
        cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        let view = ServiceView::from(cluster_ip);
        assert!(view.load_balancer.is_none() && view.has_stale_address(), "an address left after a type change is cleared");
        assert!(!ServiceView::from(lb("b", None, None)).has_stale_address());
        let mut plain = lb("p", None, None);
        plain.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert!(!ServiceView::from(plain).concerns_us(), "a service of no concern is not held");
        assert!(ServiceView::from(lb("b", None, None)).concerns_us() && view.concerns_us(), "a load balancer, and an address to clear");
        let mut other_class = lb("c", Some("127.240.0.2"), None);
        other_class.spec.as_mut().unwrap().load_balancer_class = Some("example.com/lb".into());
        let view = ServiceView::from(other_class);
        assert!(view.ours().is_none() && !view.has_stale_address(), "another implementation's address is left alone");
        let view = ServiceView::from(lb("d", Some("127.240.0.3"), None));
        assert_eq!(view.ours().and_then(ingress_ip), Some("127.240.0.3".parse().unwrap()));
        // One per service it concerns: a Service inline would make each ~1 KB.
        assert!(std::mem::size_of::<ServiceView>() <= 64, "{} bytes", std::mem::size_of::<ServiceView>());
    }

    #[test]
    fn addresses_are_unique_and_stable() {
        let pool: Ipv4Net = "127.240.0.0/29".parse().unwrap();
        let mut a = Assignments::default();
        assert_eq!(a.assign(pool, &lb("a", None, None)), Some("127.240.0.1".parse().unwrap()));
        assert_eq!(a.assign(pool, &lb("b", None, None)), Some("127.240.0.2".parse().unwrap()));
        // A service keeps what it has; a clash is resolved for the newcomer.
        assert_eq!(a.assign(pool, &lb("a", Some("127.240.0.1"), None)), Some("127.240.0.1".parse().unwrap()));
        assert_eq!(a.assign(pool, &lb("c", Some("127.240.0.1"), None)), Some("127.240.0.3".parse().unwrap()));
        assert_eq!(a.assign(pool, &lb("d", None, Some("127.240.0.6"))), Some("127.240.0.6".parse().unwrap()));
        a.release(&ObjectKey::new("d", "b"));
        assert_eq!(a.assign(pool, &lb("e", None, None)), Some("127.240.0.2".parse().unwrap()));
        assert_eq!(a.assign(pool, &lb("f", None, None)), Some("127.240.0.4".parse().unwrap()));
        assert_eq!(a.assign(pool, &lb("g", None, None)), Some("127.240.0.5".parse().unwrap()));
        assert_eq!(a.assign(pool, &lb("h", None, None)), None, "the pool is exhausted");
    }
}
