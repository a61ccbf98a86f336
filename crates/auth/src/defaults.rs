//! The ClusterRoles and ClusterRoleBindings every cluster starts with:
//! kube-apiserver's user-facing roles (`cluster-admin`, `admin`, `edit`,
//! `view`), the discovery and self-review roles every authenticated user
//! holds, and the roles of wharf's own parts. The API server creates them
//! at start and puts back any whose `autoupdate` annotation is not "false".
//! Kubernetes builds `admin`/`edit`/`view` by aggregation; here their rules
//! are written out (wharf serves no custom resources to aggregate).

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::rbac::GROUP;
use crate::user::{AUTHENTICATED, MASTERS, UNAUTHENTICATED};

pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
/// The group of wharf's controllers.
pub const CONTROLLERS: &str = "system:wharf:controllers";
pub const NODE_ROLE: &str = "system:node";
/// What a bootstrap token may do: ask for a node certificate.
pub const NODE_BOOTSTRAPPER: &str = "system:node-bootstrapper";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule { api_groups: Some(vec![group.into()]), resources: Some(strings(resources)), verbs: strings(verbs), ..Default::default() }
}

fn paths(urls: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule { non_resource_urls: Some(strings(urls)), verbs: strings(verbs), ..Default::default() }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(BTreeMap::from([("kubernetes.io/bootstrapping".to_string(), "rbac-defaults".to_string())])),
        annotations: Some(BTreeMap::from([(AUTOUPDATE.to_string(), "true".to_string())])),
        ..Default::default()
    }
}

fn view_rules() -> Vec<PolicyRule> {
    vec![
        rule("", &["configmaps", "endpoints", "pods", "pods/status", "serviceaccounts", "services", "services/status"], READ),
        rule("", &["events", "namespaces", "namespaces/status"], READ),
        rule("discovery.k8s.io", &["endpointslices"], READ),
        rule("coordination.k8s.io", &["leases"], READ),
    ]
}

fn edit_rules() -> Vec<PolicyRule> {
    let mut rules = vec![
        rule("", &["pods", "pods/exec", "pods/portforward"], WRITE),
        rule("", &["pods/exec", "pods/portforward"], &["get"]),
        rule("", &["configmaps", "endpoints", "secrets", "serviceaccounts", "services"], WRITE),
        rule("", &["secrets"], READ),
        // wharf's selectorless services are fed by hand-written slices.
        rule("discovery.k8s.io", &["endpointslices"], WRITE),
        rule("coordination.k8s.io", &["leases"], WRITE),
        rule("", &["events"], &["create", "patch", "update"]),
    ];
    rules.extend(view_rules());
    rules
}

fn admin_rules() -> Vec<PolicyRule> {
    let mut rules = edit_rules();
    rules.push(rule(GROUP, &["roles", "rolebindings"], ALL_VERBS));
    rules.push(rule("authorization.k8s.io", &["localsubjectaccessreviews"], &["create"]));
    rules
}

fn controller_rules() -> Vec<PolicyRule> {
    vec![
        rule("", &["services", "pods", "endpoints", "nodes", "namespaces"], READ),
        rule("", &["endpoints"], &["create", "update", "patch", "delete"]),
        rule("discovery.k8s.io", &["endpointslices"], ALL_VERBS),
        rule("", &["services/status", "pods/status", "nodes/status"], &["update", "patch"]),
        rule("", &["events"], &["create", "update", "patch"]),
        rule("coordination.k8s.io", &["leases"], READ),
    ]
}

/// What a node may ask for at all; the node authorizer narrows it to the
/// node's own objects.
pub fn node_rules() -> Vec<PolicyRule> {
    vec![
        rule("", &["services", "endpoints", "nodes", "nodes/status", "pods", "pods/status", "namespaces"], READ),
        // Pods bound to the node only, once they have terminated.
        rule("", &["pods"], &["delete"]),
        rule("discovery.k8s.io", &["endpointslices"], READ),
        rule("", &["nodes", "nodes/status"], &["create", "get", "update", "patch"]),
        rule("", &["pods/status"], &["update", "patch"]),
        rule("", &["events"], &["create", "update", "patch"]),
        rule("coordination.k8s.io", &["leases"], &["create", "get", "update", "patch"]),
        rule("wharf.dev", &["nodes/tunnel", "nodes/sessions"], &["get"]),
        // Renewing its own certificate.
        rule("wharf.dev", &["nodecertificaterequests"], &["create"]),
    ]
}

/// The role that lets anyone reach the dashboard's paths.
pub const DASHBOARD: &str = "system:wharf:dashboard";

pub fn cluster_roles() -> Vec<ClusterRole> {
    let role = |name: &str, rules: Vec<PolicyRule>| ClusterRole { metadata: meta(name), rules: Some(rules), ..Default::default() };
    let discovery =
        &["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"];
    vec![
        role("cluster-admin", vec![rule("*", &["*"], &["*"]), paths(&["*"], &["*"])]),
        role("admin", admin_rules()),
        role("edit", edit_rules()),
        role("view", view_rules()),
        role("system:discovery", vec![paths(discovery, &["get"])]),
        role("system:public-info-viewer", vec![paths(&["/healthz", "/livez", "/readyz", "/version", "/version/"], &["get"])]),
        // The dashboard's pages are public; its data endpoints need a
        // login (authentication), and every object it shows is read with
        // the user's own rights.
        role(DASHBOARD, vec![paths(&["/ui", "/ui/*"], &["get", "post", "delete"])]),
        role(
            "system:basic-user",
            vec![
                rule("authorization.k8s.io", &["selfsubjectaccessreviews", "selfsubjectrulesreviews"], &["create"]),
                rule("authentication.k8s.io", &["selfsubjectreviews"], &["create"]),
            ],
        ),
        role(CONTROLLERS, controller_rules()),
        role(NODE_ROLE, node_rules()),
        role(NODE_BOOTSTRAPPER, vec![rule("wharf.dev", &["nodecertificaterequests"], &["create"])]),
    ]
}

pub fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    let group = |name: &str| Subject { api_group: Some(GROUP.into()), kind: "Group".into(), name: name.into(), namespace: None };
    let bind = |role: &str, subjects: Vec<Subject>| ClusterRoleBinding {
        metadata: meta(role),
        role_ref: RoleRef { api_group: GROUP.into(), kind: "ClusterRole".into(), name: role.into() },
        subjects: Some(subjects),
    };
    vec![
        bind("cluster-admin", vec![group(MASTERS)]),
        bind("system:discovery", vec![group(AUTHENTICATED)]),
        bind("system:public-info-viewer", vec![group(AUTHENTICATED), group(UNAUTHENTICATED)]),
        bind("system:basic-user", vec![group(AUTHENTICATED)]),
        bind(DASHBOARD, vec![group(AUTHENTICATED), group(UNAUTHENTICATED)]),
        bind(CONTROLLERS, vec![group(CONTROLLERS)]),
        bind(NODE_ROLE, vec![group(crate::user::NODES)]),
        bind(NODE_BOOTSTRAPPER, vec![group(crate::bootstrap::GROUP)]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes::{Attributes, ResourceAttributes};
    use crate::rbac::Policy;
    use crate::user::User;

    fn defaults() -> Policy {
        let mut p = Policy::default();
        cluster_roles().iter().for_each(|r| p.put_cluster_role(r));
        cluster_role_bindings().iter().for_each(|b| p.put_cluster_role_binding(b));
        p
    }

    #[test]
    fn every_user_may_discover_and_review_itself_but_nothing_more() {
        let p = defaults();
        let alice = User::authenticated("alice", "", []);
        assert!(p.allows(&alice, &Attributes::NonResource { verb: "get".into(), path: "/apis/discovery.k8s.io/v1".into() }));
        let review = ResourceAttributes::new("create", "authorization.k8s.io", "selfsubjectaccessreviews", "", "");
        assert!(p.allows(&alice, &Attributes::Resource(review)));
        assert!(!p.allows(&alice, &Attributes::Resource(ResourceAttributes::new("list", "", "services", "default", ""))));
        assert!(!p.allows(&User::anonymous(), &Attributes::NonResource { verb: "get".into(), path: "/api".into() }));
        assert!(p.allows(&User::anonymous(), &Attributes::NonResource { verb: "get".into(), path: "/version".into() }));
    }

    #[test]
    fn edit_is_within_admin_and_view_within_edit() {
        let p = defaults();
        let admin = User::authenticated("a", "", []);
        let mut with_admin = p.clone();
        with_admin.put_cluster_role_binding(&ClusterRoleBinding {
            metadata: ObjectMeta { name: Some("a".into()), ..Default::default() },
            role_ref: RoleRef { api_group: GROUP.into(), kind: "ClusterRole".into(), name: "admin".into() },
            subjects: Some(vec![Subject { kind: "User".into(), name: "a".into(), ..Default::default() }]),
        });
        assert!(with_admin.not_held(&admin, "default", &edit_rules()).is_empty());
        assert!(!with_admin.not_held(&admin, "default", &controller_rules()).is_empty(), "admin is not cluster-wide");
    }
}
