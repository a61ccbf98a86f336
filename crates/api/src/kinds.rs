//! The resources wharf serves: names, scope and the facts discovery
//! publishes about each.

/// Static description of one served resource.
#[derive(Debug, PartialEq, Eq)]
pub struct KindInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub list_kind: &'static str,
    /// Plural resource name, the URL segment (`services`).
    pub resource: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub has_status: bool,
}

impl KindInfo {
    /// `v1` or `discovery.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `services` or `endpointslices.discovery.k8s.io`, as error messages
    /// name a resource.
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

const ALL_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// The verbs every served resource supports.
pub fn verbs() -> &'static [&'static str] {
    ALL_VERBS
}

pub const NAMESPACE: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "Namespace",
    list_kind: "NamespaceList",
    resource: "namespaces",
    singular: "namespace",
    namespaced: false,
    short_names: &["ns"],
    categories: &[],
    has_status: true,
};

pub const SERVICE: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "Service",
    list_kind: "ServiceList",
    resource: "services",
    singular: "service",
    namespaced: true,
    short_names: &["svc"],
    categories: &["all"],
    has_status: true,
};

pub const POD: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "Pod",
    list_kind: "PodList",
    resource: "pods",
    singular: "pod",
    namespaced: true,
    short_names: &["po"],
    categories: &["all"],
    has_status: true,
};

pub const ENDPOINTS: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "Endpoints",
    list_kind: "EndpointsList",
    resource: "endpoints",
    singular: "endpoints",
    namespaced: true,
    short_names: &["ep"],
    categories: &[],
    has_status: false,
};

pub const NODE: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "Node",
    list_kind: "NodeList",
    resource: "nodes",
    singular: "node",
    namespaced: false,
    short_names: &["no"],
    categories: &[],
    has_status: true,
};

pub const EVENT: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "Event",
    list_kind: "EventList",
    resource: "events",
    singular: "event",
    namespaced: true,
    short_names: &["ev"],
    categories: &[],
    has_status: false,
};

pub const ENDPOINT_SLICE: KindInfo = KindInfo {
    group: "discovery.k8s.io",
    version: "v1",
    kind: "EndpointSlice",
    list_kind: "EndpointSliceList",
    resource: "endpointslices",
    singular: "endpointslice",
    namespaced: true,
    short_names: &[],
    categories: &[],
    has_status: false,
};

pub const CONFIG_MAP: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    list_kind: "ConfigMapList",
    resource: "configmaps",
    singular: "configmap",
    namespaced: true,
    short_names: &["cm"],
    categories: &[],
    has_status: false,
};

pub const SECRET: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "Secret",
    list_kind: "SecretList",
    resource: "secrets",
    singular: "secret",
    namespaced: true,
    short_names: &[],
    categories: &[],
    has_status: false,
};

pub const SERVICE_ACCOUNT: KindInfo = KindInfo {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    list_kind: "ServiceAccountList",
    resource: "serviceaccounts",
    singular: "serviceaccount",
    namespaced: true,
    short_names: &["sa"],
    categories: &[],
    has_status: false,
};

pub const LEASE: KindInfo = KindInfo {
    group: "coordination.k8s.io",
    version: "v1",
    kind: "Lease",
    list_kind: "LeaseList",
    resource: "leases",
    singular: "lease",
    namespaced: true,
    short_names: &[],
    categories: &[],
    has_status: false,
};

/// Every served resource, core group first.
pub const ALL: &[&KindInfo] =
    &[&NAMESPACE, &SERVICE, &POD, &ENDPOINTS, &NODE, &EVENT, &CONFIG_MAP, &SECRET, &SERVICE_ACCOUNT, &ENDPOINT_SLICE, &LEASE];

/// The served group/version pairs, in discovery order.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for k in ALL {
        if !out.contains(&(k.group, k.version)) {
            out.push((k.group, k.version));
        }
    }
    out
}

/// Finds a resource by group, version and plural name.
pub fn lookup(group: &str, version: &str, resource: &str) -> Option<&'static KindInfo> {
    ALL.iter().copied().find(|k| k.group == group && k.version == version && k.resource == resource)
}
