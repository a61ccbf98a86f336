//! Gives every `LoadBalancer` service an address from a pool and writes
//! it to `status.loadBalancer.ingress`, so it is reachable and
//! `kubectl get svc` shows an EXTERNAL-IP instead of `<pending>`.
//! Services with a `loadBalancerClass` belong to another implementation.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;

use crate::cache::{key_of, ObjectKey};

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

    fn take(&mut self, key: &ObjectKey, ip: Ipv4Addr) {
        self.release(key);
        self.by_ip.insert(ip, key.clone());
        self.by_service.insert(key.clone(), ip);
    }

    /// The address `svc` should have: the one it has if valid, else the
    /// one it asks for (`spec.loadBalancerIP`) if free, else the first free.
    pub fn assign(&mut self, pool: Ipv4Net, svc: &Service) -> Option<Ipv4Addr> {
        let key = key_of(svc);
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

pub struct LoadBalancerController {
    client: kube::Client,
    pool: Ipv4Net,
}

impl LoadBalancerController {
    pub fn new(client: kube::Client, pool: Ipv4Net) -> Self {
        Self { client, pool }
    }

    async fn write(&self, svc: &Service, ip: Option<Ipv4Addr>) {
        let (ns, name) = key_of(svc);
        let status = match ip {
            Some(ip) => serde_json::json!({"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}}),
            None => serde_json::json!({"loadBalancer": {}}),
        };
        let api: Api<Service> = Api::namespaced(self.client.clone(), &ns);
        if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": status}))).await {
            tracing::warn!(namespace = %ns, service = %name, error = %e, "writing the load balancer status failed");
        }
    }

    pub async fn run(self) {
        let api: Api<Service> = Api::all(self.client.clone());
        let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(events);
        let mut assignments = Assignments::default();
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Apply(svc) | Event::InitApply(svc)) => {
                    let key = key_of(&svc);
                    if is_ours(&svc) {
                        let ip = assignments.assign(self.pool, &svc);
                        if ip.is_none() {
                            tracing::warn!(namespace = %key.0, service = %key.1, pool = %self.pool, "load balancer pool is exhausted");
                        }
                        if ip != ingress_ip(&svc) {
                            self.write(&svc, ip).await;
                        }
                    } else {
                        assignments.release(&key);
                        let has_ingress = ingress_ip(&svc).is_some();
                        let not_lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("LoadBalancer");
                        if has_ingress && not_lb {
                            self.write(&svc, None).await;
                        }
                    }
                }
                Ok(Event::Delete(svc)) => assignments.release(&key_of(&svc)),
                Ok(Event::Init | Event::InitDone) => {}
                Err(e) => tracing::warn!(error = %e, "load balancer controller watch error; retrying"),
            }
        }
    }
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
    fn addresses_are_unique_and_stable() {
        let pool: Ipv4Net = "127.240.0.0/29".parse().unwrap();
        let mut a = Assignments::default();
        assert_eq!(a.assign(pool, &lb("a", None, None)), Some("127.240.0.1".parse().unwrap()));
        assert_eq!(a.assign(pool, &lb("b", None, None)), Some("127.240.0.2".parse().unwrap()));
        // A service keeps what it has; a clash is resolved for the newcomer.
        assert_eq!(a.assign(pool, &lb("a", Some("127.240.0.1"), None)), Some("127.240.0.1".parse().unwrap()));
        assert_eq!(a.assign(pool, &lb("c", Some("127.240.0.1"), None)), Some("127.240.0.3".parse().unwrap()));
        assert_eq!(a.assign(pool, &lb("d", None, Some("127.240.0.6"))), Some("127.240.0.6".parse().unwrap()));
        a.release(&("d".into(), "b".into()));
        assert_eq!(a.assign(pool, &lb("e", None, None)), Some("127.240.0.2".parse().unwrap()));
        assert_eq!(a.assign(pool, &lb("f", None, None)), Some("127.240.0.4".parse().unwrap()));
        assert_eq!(a.assign(pool, &lb("g", None, None)), Some("127.240.0.5".parse().unwrap()));
        assert_eq!(a.assign(pool, &lb("h", None, None)), None, "the pool is exhausted");
    }
}
