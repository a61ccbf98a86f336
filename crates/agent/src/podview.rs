//! What a process in a pod sees of the cluster, as a kubelet would give
//! it: the service environment variables of its namespace, and a
//! resolv.conf naming the cluster DNS with the pod's search list.

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};

/// The pod resolv.conf: the cluster DNS and the namespace's search list.
pub fn resolv_conf(dns_ip: &str, namespace: &str, domain: &str) -> String {
    format!("nameserver {dns_ip}\nsearch {namespace}.svc.{domain} svc.{domain} {domain}\noptions ndots:5\n")
}

/// The cluster DNS service's address.
pub async fn cluster_dns_ip(client: &kube::Client) -> Result<String, kube::Error> {
    let svc = Api::<Service>::namespaced(client.clone(), "kube-system").get("kube-dns").await?;
    Ok(svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default())
}

/// The service variables of a pod of `namespace`: its own namespace's
/// services, and the `kubernetes` service of `default`.
pub async fn service_env(client: &kube::Client, namespace: &str) -> Result<Vec<(String, String)>, kube::Error> {
    let mut services = Api::<Service>::namespaced(client.clone(), namespace).list(&ListParams::default()).await?.items;
    if namespace != "default" {
        if let Some(api) = Api::<Service>::namespaced(client.clone(), "default").get_opt("kubernetes").await? {
            services.push(api);
        }
    }
    Ok(wharf_api::service_env::namespace_vars(&services, namespace, true))
}

#[cfg(test)]
mod tests {
    #[test]
    fn resolv_conf_is_the_pod_one() {
        assert_eq!(
            super::resolv_conf("127.96.0.10", "default", "cluster.local"),
            "nameserver 127.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
    }
}
