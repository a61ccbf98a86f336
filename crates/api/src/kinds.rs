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

/// The verbs a served resource supports: reviews are only created.
pub fn verbs(k: &KindInfo) -> &'static [&'static str] {
    if REVIEWS.contains(&k) {
        &["create"]
    } else {
        ALL_VERBS
    }
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

pub const ROLE: KindInfo = KindInfo {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "Role",
    list_kind: "RoleList",
    resource: "roles",
    singular: "role",
    namespaced: true,
    short_names: &[],
    categories: &[],
    has_status: false,
};

pub const CLUSTER_ROLE: KindInfo = KindInfo {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "ClusterRole",
    list_kind: "ClusterRoleList",
    resource: "clusterroles",
    singular: "clusterrole",
    namespaced: false,
    short_names: &[],
    categories: &[],
    has_status: false,
};

pub const ROLE_BINDING: KindInfo = KindInfo {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "RoleBinding",
    list_kind: "RoleBindingList",
    resource: "rolebindings",
    singular: "rolebinding",
    namespaced: true,
    short_names: &[],
    categories: &[],
    has_status: false,
};

pub const CLUSTER_ROLE_BINDING: KindInfo = KindInfo {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "ClusterRoleBinding",
    list_kind: "ClusterRoleBindingList",
    resource: "clusterrolebindings",
    singular: "clusterrolebinding",
    namespaced: false,
    short_names: &[],
    categories: &[],
    has_status: false,
};

/// Every served resource, core group first.
pub const ALL: &[&KindInfo] = &[
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

const fn review(
    group: &'static str,
    kind: &'static str,
    list_kind: &'static str,
    resource: &'static str,
    singular: &'static str,
    namespaced: bool,
) -> KindInfo {
    KindInfo { group, version: "v1", kind, list_kind, resource, singular, namespaced, short_names: &[], categories: &[], has_status: false }
}

pub const SELF_SUBJECT_ACCESS_REVIEW: KindInfo =
    review("authorization.k8s.io", "SelfSubjectAccessReview", "", "selfsubjectaccessreviews", "selfsubjectaccessreview", false);
pub const SUBJECT_ACCESS_REVIEW: KindInfo =
    review("authorization.k8s.io", "SubjectAccessReview", "", "subjectaccessreviews", "subjectaccessreview", false);
pub const LOCAL_SUBJECT_ACCESS_REVIEW: KindInfo =
    review("authorization.k8s.io", "LocalSubjectAccessReview", "", "localsubjectaccessreviews", "localsubjectaccessreview", true);
pub const SELF_SUBJECT_RULES_REVIEW: KindInfo =
    review("authorization.k8s.io", "SelfSubjectRulesReview", "", "selfsubjectrulesreviews", "selfsubjectrulesreview", false);
pub const SELF_SUBJECT_REVIEW: KindInfo =
    review("authentication.k8s.io", "SelfSubjectReview", "", "selfsubjectreviews", "selfsubjectreview", false);

/// Resources that are only created, answered and never stored.
pub const REVIEWS: &[&KindInfo] =
    &[&SELF_SUBJECT_ACCESS_REVIEW, &SUBJECT_ACCESS_REVIEW, &LOCAL_SUBJECT_ACCESS_REVIEW, &SELF_SUBJECT_RULES_REVIEW, &SELF_SUBJECT_REVIEW];

/// Everything discovery lists: the stored kinds, then the reviews.
pub fn discoverable() -> impl Iterator<Item = &'static KindInfo> {
    ALL.iter().chain(REVIEWS).copied()
}

/// The served group/version pairs, in discovery order.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for k in discoverable() {
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
