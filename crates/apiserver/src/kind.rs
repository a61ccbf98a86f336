//! Everything the API server knows about each served kind, in one place:
//! its identity and discovery facts (`wharf_api::kinds`), its codec
//! (decoding, defaulting, validation), its `kubectl get` columns, the
//! fields a field selector may name, how its lists merge in patches and
//! server-side apply (from the Kubernetes schema's patch merge keys and
//! list-map keys), what a create does with its status, and the lifecycle
//! the registry gives it. A resource that is not here is not served: there
//! is no default kind.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event, Namespace, Node, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use wharf_api::kinds::{self, KindInfo};

use crate::object::{Codec, Typed};
use crate::table::{self, Printer};

/// How a list field merges.
#[derive(Debug, PartialEq, Eq)]
pub enum ListMerge {
    /// Elements are matched by keys. A strategic merge patch matches on
    /// `patch_key` alone (Kubernetes' `patchMergeKey`); server-side apply
    /// identifies an element by all of `map_keys` (`listMapKey`), each with
    /// the default a missing key field takes.
    Map { patch_key: &'static str, map_keys: &'static [(&'static str, Option<&'static str>)] },
    /// A set of primitives.
    Set,
}

/// A list field at a path (without indices), and how it merges. Lists not
/// named for a kind are atomic: replaced whole.
#[derive(Debug)]
pub struct ListRule {
    pub path: &'static str,
    pub merge: ListMerge,
}

const fn by(path: &'static str, key: &'static str) -> ListRule {
    ListRule { path, merge: ListMerge::Map { patch_key: key, map_keys: &[] } }
}

/// A list a patch merges by `patch_key` and apply identifies by `map_keys`.
const fn keyed(path: &'static str, patch_key: &'static str, map_keys: &'static [(&'static str, Option<&'static str>)]) -> ListRule {
    ListRule { path, merge: ListMerge::Map { patch_key, map_keys } }
}

/// Ports are identified by number and protocol (TCP when unset).
const SERVICE_PORT_KEYS: &[(&str, Option<&str>)] = &[("port", None), ("protocol", Some("TCP"))];
const CONTAINER_PORT_KEYS: &[(&str, Option<&str>)] = &[("containerPort", None), ("protocol", Some("TCP"))];

/// What the registry does beyond storing the object.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Lifecycle {
    Plain,
    /// Cluster IPs and node ports are taken and released with the object.
    Service,
    /// Bound to the default node when unbound; deleted gracefully.
    Pod,
    /// Deleted by finalizing its contents; system namespaces stay.
    Namespace,
}

pub struct Kind {
    pub info: &'static KindInfo,
    pub codec: &'static dyn Codec,
    pub printer: &'static Printer,
    /// Fields a field selector may name besides `metadata.name` and
    /// `metadata.namespace`.
    pub selectable_fields: &'static [&'static str],
    pub lists: &'static [ListRule],
    /// A create may not set the status: the system fills it.
    pub status_reset_on_create: bool,
    pub lifecycle: Lifecycle,
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.info.kind)
    }
}

impl PartialEq for Kind {
    fn eq(&self, other: &Self) -> bool {
        self.info == other.info
    }
}

impl Eq for Kind {}

impl Kind {
    /// How the list at `path` merges, if it is not atomic.
    pub fn list_rule(&self, path: &str) -> Option<&'static ListMerge> {
        self.list_rules().find(|r| r.path == path).map(|r| &r.merge)
    }

    /// Every list of the kind that is not atomic, its metadata's included.
    pub fn list_rules(&self) -> impl Iterator<Item = &'static ListRule> {
        self.lists.iter().chain(METADATA_LISTS)
    }
}

/// Lists of every kind's metadata.
const METADATA_LISTS: &[ListRule] =
    &[by("metadata.ownerReferences", "uid"), ListRule { path: "metadata.finalizers", merge: ListMerge::Set }];

const POD_LISTS: &[ListRule] = &[
    by("spec.containers", "name"),
    by("spec.initContainers", "name"),
    by("spec.ephemeralContainers", "name"),
    keyed("spec.containers.ports", "containerPort", CONTAINER_PORT_KEYS),
    keyed("spec.initContainers.ports", "containerPort", CONTAINER_PORT_KEYS),
    by("spec.containers.env", "name"),
    by("spec.initContainers.env", "name"),
    by("spec.containers.volumeMounts", "mountPath"),
    by("spec.initContainers.volumeMounts", "mountPath"),
    by("spec.volumes", "name"),
    by("spec.imagePullSecrets", "name"),
    by("spec.hostAliases", "ip"),
    by("status.conditions", "type"),
    by("status.podIPs", "ip"),
];

const NODE_LISTS: &[ListRule] = &[by("spec.taints", "key"), by("status.conditions", "type"), by("status.addresses", "type")];

pub static NAMESPACE: Kind = Kind {
    info: &kinds::NAMESPACE,
    codec: &Typed::<Namespace>::new(),
    printer: &table::NAMESPACE,
    selectable_fields: &["status.phase"],
    lists: &[by("status.conditions", "type")],
    status_reset_on_create: true,
    lifecycle: Lifecycle::Namespace,
};

pub static SERVICE: Kind = Kind {
    info: &kinds::SERVICE,
    codec: &Typed::<Service>::new(),
    printer: &table::SERVICE,
    selectable_fields: &[],
    lists: &[keyed("spec.ports", "port", SERVICE_PORT_KEYS), by("status.conditions", "type")],
    status_reset_on_create: true,
    lifecycle: Lifecycle::Service,
};

pub static POD: Kind = Kind {
    info: &kinds::POD,
    codec: &Typed::<Pod>::new(),
    printer: &table::POD,
    selectable_fields: &[
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ],
    lists: POD_LISTS,
    status_reset_on_create: true,
    lifecycle: Lifecycle::Pod,
};

pub static ENDPOINTS: Kind = plain(&kinds::ENDPOINTS, &Typed::<Endpoints>::new(), &table::ENDPOINTS);

pub static NODE: Kind = Kind {
    info: &kinds::NODE,
    codec: &Typed::<Node>::new(),
    printer: &table::NODE,
    selectable_fields: &["spec.unschedulable"],
    lists: NODE_LISTS,
    status_reset_on_create: false,
    lifecycle: Lifecycle::Plain,
};

pub static EVENT: Kind = Kind {
    info: &kinds::EVENT,
    codec: &Typed::<Event>::new(),
    printer: &table::EVENT,
    selectable_fields: &[
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ],
    lists: &[],
    status_reset_on_create: false,
    lifecycle: Lifecycle::Plain,
};

pub static ENDPOINT_SLICE: Kind = plain(&kinds::ENDPOINT_SLICE, &Typed::<EndpointSlice>::new(), &table::ENDPOINT_SLICE);

/// A kind with nothing beyond storage, validation and its printer.
const fn plain(info: &'static KindInfo, codec: &'static dyn Codec, printer: &'static Printer) -> Kind {
    Kind { info, codec, printer, selectable_fields: &[], lists: &[], status_reset_on_create: false, lifecycle: Lifecycle::Plain }
}

pub static CONFIG_MAP: Kind = plain(&kinds::CONFIG_MAP, &Typed::<ConfigMap>::new(), &table::CONFIG_MAP);
pub static SECRET: Kind = Kind { selectable_fields: &["type"], ..plain(&kinds::SECRET, &Typed::<Secret>::new(), &table::SECRET) };
pub static SERVICE_ACCOUNT: Kind = Kind {
    lists: &[by("secrets", "name"), by("imagePullSecrets", "name")],
    ..plain(&kinds::SERVICE_ACCOUNT, &Typed::<ServiceAccount>::new(), &table::SERVICE_ACCOUNT)
};
pub static LEASE: Kind = plain(&kinds::LEASE, &Typed::<Lease>::new(), &table::LEASE);

pub static ROLE: Kind = plain(&kinds::ROLE, &Typed::<Role>::new(), &table::ROLE);
pub static CLUSTER_ROLE: Kind = plain(&kinds::CLUSTER_ROLE, &Typed::<ClusterRole>::new(), &table::ROLE);
// Rules and subjects are atomic lists in the Kubernetes schema.
pub static ROLE_BINDING: Kind = plain(&kinds::ROLE_BINDING, &Typed::<RoleBinding>::new(), &table::BINDING);
pub static CLUSTER_ROLE_BINDING: Kind = plain(&kinds::CLUSTER_ROLE_BINDING, &Typed::<ClusterRoleBinding>::new(), &table::BINDING);

/// Every served kind, in discovery order.
pub static ALL: [&Kind; 15] = [
    &NAMESPACE,
    &SERVICE,
    &POD,
    &ENDPOINTS,
    &NODE,
    &EVENT,
    &CONFIG_MAP,
    &SECRET,
    &SERVICE_ACCOUNT,
    &ENDPOINT_SLICE,
    &LEASE,
    &ROLE,
    &CLUSTER_ROLE,
    &ROLE_BINDING,
    &CLUSTER_ROLE_BINDING,
];

/// The kind served at a group, version and plural resource name.
pub fn lookup(group: &str, version: &str, resource: &str) -> Option<&'static Kind> {
    ALL.iter().copied().find(|k| k.info.group == group && k.info.version == version && k.info.resource == resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_kind_has_one_definition() {
        assert_eq!(ALL.len(), kinds::ALL.len());
        for info in kinds::ALL {
            let defs: Vec<&&Kind> = ALL.iter().filter(|k| k.info == *info).collect();
            assert_eq!(defs.len(), 1, "{}", info.kind);
            assert_eq!(defs[0].codec.info(), *info, "{}: codec of another kind", info.kind);
        }
        assert!(lookup("", "v1", "widgets").is_none(), "an unknown resource is not served");
    }

    #[test]
    fn service_ports_are_keyed_by_port_and_protocol() {
        let Some(ListMerge::Map { patch_key, map_keys }) = SERVICE.list_rule("spec.ports") else { panic!("not a map") };
        assert_eq!(*patch_key, "port");
        assert_eq!(map_keys.iter().map(|(k, _)| *k).collect::<Vec<_>>(), ["port", "protocol"]);
        assert_eq!(POD.list_rule("metadata.finalizers"), Some(&ListMerge::Set));
        assert!(ENDPOINTS.list_rule("subsets").is_none(), "atomic");
    }
}
