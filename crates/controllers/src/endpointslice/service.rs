//! What planning reads of a Service, and nothing more: the controller keeps
//! one per service. A decoded Service keeps its labels and selector in
//! `BTreeMap`s (a 540-byte node each, even for one entry) and much that
//! planning never reads: 2 KB a service in all, against a few hundred bytes.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use wharf_api::ipfamily::{IpFamily, ListedFamilies};
use wharf_kube::key::{version_of, ObjectKey, Uid};
use wharf_kube::shared_str;

use super::labels::Labels;

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceInfo {
    pub key: ObjectKey,
    pub version: Option<u64>,
    uid: Option<Uid>,
    labels: Labels,
    /// Empty: none, and the user owns the service's endpoints.
    selector: Labels,
    pub ports: Box<[PortInfo]>,
    pub publish_not_ready_addresses: bool,
    ip_families: ListedFamilies,
}

wharf_kube::keyed_view!(ServiceInfo);

/// A service port as a slice's ports are made from it. Its texts are the
/// process's one copy of each (`shared_str`): nearly every service names
/// the same few ports, protocols and targets.
#[derive(Clone, Debug, PartialEq)]
pub struct PortInfo {
    /// "" when unnamed.
    pub name: Arc<str>,
    pub target: Target,
    /// "TCP" when unset, as the API defaults it.
    pub protocol: Arc<str>,
    pub app_protocol: Option<Arc<str>>,
}

/// The container port to reach: a number, or a name each pod resolves.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Number(i32),
    Name(Arc<str>),
}

impl From<IntOrString> for Target {
    fn from(target: IntOrString) -> Self {
        match target {
            IntOrString::Int(n) => Target::Number(n),
            IntOrString::String(name) => Target::Name(shared_str::shared(&name)),
        }
    }
}

impl From<Service> for ServiceInfo {
    fn from(svc: Service) -> Self {
        let meta = &svc.metadata;
        let spec = svc.spec.as_ref();
        ServiceInfo {
            key: ObjectKey::of_meta(meta),
            version: version_of(&svc),
            uid: meta.uid.as_deref().map(Uid::new),
            labels: Labels::of(meta.labels.as_ref()),
            selector: Labels::of(spec.and_then(|s| s.selector.as_ref())),
            ports: spec
                .and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .map(|p| PortInfo {
                    name: shared_str::shared(p.name.as_deref().unwrap_or_default()),
                    target: p.target_port.clone().unwrap_or(IntOrString::Int(p.port)).into(),
                    protocol: shared_str::shared(p.protocol.as_deref().unwrap_or("TCP")),
                    app_protocol: p.app_protocol.as_deref().map(shared_str::shared),
                })
                .collect(),
            publish_not_ready_addresses: spec.and_then(|s| s.publish_not_ready_addresses).unwrap_or(false),
            ip_families: spec.map(ListedFamilies::of).unwrap_or_default(),
        }
    }
}

impl ServiceInfo {
    pub fn name(&self) -> &str {
        &self.key.name
    }

    pub fn namespace(&self) -> &str {
        &self.key.namespace
    }

    pub fn uid(&self) -> String {
        self.uid.as_ref().map(Uid::to_string).unwrap_or_default()
    }

    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// Its selector, if it has a non-empty one.
    pub fn selector(&self) -> Option<&Labels> {
        (!self.selector.is_empty()).then_some(&self.selector)
    }

    /// The families its endpoints are published for: its `ipFamilies`,
    /// the primary first (IPv4 where none is set).
    pub fn families(&self) -> Vec<IpFamily> {
        self.ip_families.or(IpFamily::V4).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_service_view_keeps_what_planning_reads() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "d", "uid": "u1", "resourceVersion": "7", "labels": {"tier": "front", "app": "web"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"kind\":\"Service\"}"}},
            "spec": {"selector": {"app": "web"}, "clusterIP": "None", "publishNotReadyAddresses": true, "ipFamilies": ["IPv6", "IPv4"],
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"port": 53, "protocol": "UDP", "appProtocol": "dns"}]},
            "status": {"loadBalancer": {}}
        }))
        .unwrap();
        let view = ServiceInfo::from(svc);
        assert_eq!((view.namespace(), view.name(), view.version, view.uid()), ("d", "web", Some(7), "u1".to_string()));
        assert_eq!(view.labels().iter().collect::<Vec<_>>(), [("app", "web"), ("tier", "front")]);
        assert_eq!(view.selector().map(|s| s.iter().collect::<Vec<_>>()), Some(vec![("app", "web")]));
        assert!(view.publish_not_ready_addresses);
        assert_eq!(view.families(), [IpFamily::V6, IpFamily::V4]);
        assert_eq!(
            view.ports[..],
            [
                PortInfo { name: "http".into(), target: Target::Name("http".into()), protocol: "TCP".into(), app_protocol: None },
                PortInfo { name: "".into(), target: Target::Number(53), protocol: "UDP".into(), app_protocol: Some("dns".into()) },
            ]
        );
        let again = ServiceInfo::from(
            serde_json::from_value::<Service>(json!({"metadata": {"name": "api", "namespace": "e"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}))
            .unwrap(),
        );
        let (one, other) = (&view.ports[0], &again.ports[0]);
        let Target::Name(target) = &other.target else { panic!("a named target") };
        assert!(Arc::ptr_eq(&one.name, &other.name) && Arc::ptr_eq(&one.protocol, &other.protocol), "one copy of a port's texts");
        assert!(matches!(&one.target, Target::Name(t) if Arc::ptr_eq(t, target)));
        // One per service: 121 bytes (144 with its counts: the 160-byte
        // class) with its families in a list apart.
        assert!(std::mem::size_of::<ServiceInfo>() <= 112, "{} bytes", std::mem::size_of::<ServiceInfo>());
    }

    #[test]
    fn an_empty_selector_is_none() {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "x", "namespace": "d"}, "spec": {"selector": {}}})).unwrap();
        let view = ServiceInfo::from(svc);
        assert!(view.selector().is_none());
        assert_eq!(view.families(), [IpFamily::V4]);
    }
}
