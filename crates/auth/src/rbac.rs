//! RBAC as Kubernetes' RBAC authorizer evaluates it: the rules of the
//! roles bound to a user, cluster-wide and in the request's namespace;
//! deny unless a rule allows. And the escalation check kube's RBAC
//! storage makes: a role or binding may grant only what its writer holds.

use std::collections::HashMap;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};

use crate::attributes::{Attributes, ResourceAttributes};
use crate::user::{User, SERVICE_ACCOUNT_PREFIX};

pub const GROUP: &str = "rbac.authorization.k8s.io";
const ALL: &str = "*";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RbacKind {
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
}

#[derive(Clone, Debug)]
struct Binding {
    role_ref: RoleRef,
    subjects: Vec<Subject>,
}

/// Every role and binding, indexed for evaluation.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    roles: HashMap<String, HashMap<String, Vec<PolicyRule>>>,
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    role_bindings: HashMap<String, HashMap<String, Binding>>,
    cluster_role_bindings: HashMap<String, Binding>,
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

impl Policy {
    pub fn put_role(&mut self, role: &Role) {
        let (ns, name) = name_of(&role.metadata);
        self.roles.entry(ns).or_default().insert(name, role.rules.clone().unwrap_or_default());
    }

    pub fn put_cluster_role(&mut self, role: &ClusterRole) {
        self.cluster_roles.insert(name_of(&role.metadata).1, role.rules.clone().unwrap_or_default());
    }

    pub fn put_role_binding(&mut self, b: &RoleBinding) {
        let (ns, name) = name_of(&b.metadata);
        let binding = Binding { role_ref: b.role_ref.clone(), subjects: b.subjects.clone().unwrap_or_default() };
        self.role_bindings.entry(ns).or_default().insert(name, binding);
    }

    pub fn put_cluster_role_binding(&mut self, b: &ClusterRoleBinding) {
        let binding = Binding { role_ref: b.role_ref.clone(), subjects: b.subjects.clone().unwrap_or_default() };
        self.cluster_role_bindings.insert(name_of(&b.metadata).1, binding);
    }

    pub fn remove(&mut self, kind: RbacKind, namespace: &str, name: &str) {
        fn inner<T>(map: &mut HashMap<String, HashMap<String, T>>, ns: &str, name: &str) {
            if let Some(m) = map.get_mut(ns) {
                m.remove(name);
                if m.is_empty() {
                    map.remove(ns);
                }
            }
        }
        match kind {
            RbacKind::Role => inner(&mut self.roles, namespace, name),
            RbacKind::RoleBinding => inner(&mut self.role_bindings, namespace, name),
            RbacKind::ClusterRole => drop(self.cluster_roles.remove(name)),
            RbacKind::ClusterRoleBinding => drop(self.cluster_role_bindings.remove(name)),
        }
    }

    /// The rules a role reference grants in `namespace`; None when the
    /// role does not exist.
    pub fn role_rules(&self, role_ref: &RoleRef, namespace: &str) -> Option<&[PolicyRule]> {
        match role_ref.kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&role_ref.name).map(Vec::as_slice),
            "Role" => self.roles.get(namespace)?.get(&role_ref.name).map(Vec::as_slice),
            _ => None,
        }
    }

    /// Whether any rule granted to `user` in `namespace` (cluster-wide
    /// bindings first, then the namespace's) satisfies `accept`.
    fn any_rule(&self, user: &User, namespace: &str, mut accept: impl FnMut(&PolicyRule) -> bool) -> bool {
        let cluster = self.cluster_role_bindings.values().filter(|b| b.role_ref.kind == "ClusterRole").map(|b| (b, ""));
        let local = self.role_bindings.get(namespace).into_iter().flat_map(|m| m.values()).map(|b| (b, namespace));
        for (binding, ns) in cluster.chain(local) {
            if !binding.subjects.iter().any(|s| applies_to(s, user, ns)) {
                continue;
            }
            if self.role_rules(&binding.role_ref, ns).into_iter().flatten().any(&mut accept) {
                return true;
            }
        }
        false
    }

    /// Whether `user` may do what `attrs` asks. Members of `system:masters`
    /// may do anything, as in Kubernetes.
    pub fn allows(&self, user: &User, attrs: &Attributes) -> bool {
        user.is_master() || self.any_rule(user, attrs.namespace(), |rule| rule_allows(rule, attrs))
    }

    /// Every rule `user` holds in `namespace` (or at the cluster scope).
    pub fn rules_for(&self, user: &User, namespace: &str) -> Vec<PolicyRule> {
        let mut rules = Vec::new();
        self.any_rule(user, namespace, |rule| {
            rules.push(rule.clone());
            false
        });
        rules
    }

    /// The rules in `wanted` that `user` does not hold in `namespace`:
    /// empty when writing them is no escalation.
    pub fn not_held(&self, user: &User, namespace: &str, wanted: &[PolicyRule]) -> Vec<PolicyRule> {
        if user.is_master() {
            return Vec::new();
        }
        let held = self.rules_for(user, namespace);
        wanted.iter().flat_map(breakdown).filter(|sub| !held.iter().any(|owner| covers(owner, sub))).collect()
    }
}

fn applies_to(subject: &Subject, user: &User, binding_namespace: &str) -> bool {
    match subject.kind.as_str() {
        "User" => user.name == subject.name,
        "Group" => user.in_group(&subject.name),
        "ServiceAccount" => {
            let ns = subject.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(binding_namespace);
            !ns.is_empty() && user.name == format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{}", subject.name)
        }
        _ => false,
    }
}

fn list(v: &Option<Vec<String>>) -> &[String] {
    v.as_deref().unwrap_or_default()
}

fn has(set: &[String], item: &str) -> bool {
    set.iter().any(|s| s == item)
}

fn verb_matches(rule: &PolicyRule, verb: &str) -> bool {
    has(&rule.verbs, ALL) || has(&rule.verbs, verb)
}

fn resource_matches(rule: &PolicyRule, r: &ResourceAttributes) -> bool {
    let combined = r.resource_path();
    list(&rule.resources)
        .iter()
        .any(|res| res == ALL || *res == combined || (!r.subresource.is_empty() && res.strip_prefix("*/") == Some(r.subresource.as_str())))
}

fn path_matches(pattern: &str, path: &str) -> bool {
    pattern == ALL || pattern == path || pattern.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix))
}

/// Whether one rule allows a request.
pub fn rule_allows(rule: &PolicyRule, attrs: &Attributes) -> bool {
    match attrs {
        Attributes::Resource(r) => {
            let groups = list(&rule.api_groups);
            let names = list(&rule.resource_names);
            verb_matches(rule, &r.verb)
                && (has(groups, ALL) || has(groups, &r.group))
                && resource_matches(rule, r)
                && (names.is_empty() || has(names, &r.name))
        }
        Attributes::NonResource { verb, path } => {
            verb_matches(rule, verb) && list(&rule.non_resource_urls).iter().any(|p| path_matches(p, path))
        }
    }
}

/// A rule split into rules of one verb, group, resource and name each.
fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let one = |s: &String| Some(vec![s.clone()]);
    let mut out = Vec::new();
    for group in list(&rule.api_groups) {
        for resource in list(&rule.resources) {
            for verb in &rule.verbs {
                let base = PolicyRule { api_groups: one(group), resources: one(resource), verbs: vec![verb.clone()], ..Default::default() };
                match list(&rule.resource_names) {
                    [] => out.push(base),
                    names => out.extend(names.iter().map(|n| PolicyRule { resource_names: one(n), ..base.clone() })),
                }
            }
        }
    }
    for url in list(&rule.non_resource_urls) {
        out.extend(rule.verbs.iter().map(|verb| PolicyRule {
            non_resource_urls: one(url),
            verbs: vec![verb.clone()],
            ..Default::default()
        }));
    }
    out
}

fn resource_covers(owner: &[String], wanted: &str) -> bool {
    has(owner, ALL) || has(owner, wanted) || wanted.split_once('/').is_some_and(|(_, sub)| has(owner, &format!("*/{sub}")))
}

/// Whether `owner` grants everything the single-item rule `sub` grants.
fn covers(owner: &PolicyRule, sub: &PolicyRule) -> bool {
    let all_in = |set: &[String], items: &[String]| has(set, ALL) || items.iter().all(|i| has(set, i));
    let owner_names = list(&owner.resource_names);
    all_in(&owner.verbs, &sub.verbs)
        && all_in(list(&owner.api_groups), list(&sub.api_groups))
        && list(&sub.resources).iter().all(|r| resource_covers(list(&owner.resources), r))
        && list(&sub.non_resource_urls).iter().all(|u| list(&owner.non_resource_urls).iter().any(|p| path_matches(p, u)))
        && (owner_names.is_empty()
            || (!list(&sub.resource_names).is_empty() && list(&sub.resource_names).iter().all(|n| has(owner_names, n))))
}

/// A rule as kube's errors print it: `{APIGroups:[""], Resources:["pods"], Verbs:["get"]}`.
pub fn describe(rule: &PolicyRule) -> String {
    let field = |name: &str, v: &[String]| (!v.is_empty()).then(|| format!("{name}:{v:?}"));
    let parts: Vec<String> = [
        field("APIGroups", list(&rule.api_groups)),
        field("Resources", list(&rule.resources)),
        field("ResourceNames", list(&rule.resource_names)),
        field("NonResourceURLs", list(&rule.non_resource_urls)),
        field("Verbs", &rule.verbs),
    ]
    .into_iter()
    .flatten()
    .collect();
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
        let v = |s: &[&str]| Some(s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        PolicyRule { api_groups: v(groups), resources: v(resources), verbs: v(verbs).unwrap_or_default(), ..Default::default() }
    }

    fn meta(ns: &str, name: &str) -> ObjectMeta {
        ObjectMeta { namespace: (!ns.is_empty()).then(|| ns.into()), name: Some(name.into()), ..Default::default() }
    }

    fn subject(kind: &str, name: &str) -> Subject {
        Subject { kind: kind.into(), name: name.into(), ..Default::default() }
    }

    fn role_ref(kind: &str, name: &str) -> RoleRef {
        RoleRef { api_group: GROUP.into(), kind: kind.into(), name: name.into() }
    }

    fn req(verb: &str, resource: &str, ns: &str) -> Attributes {
        Attributes::Resource(ResourceAttributes::new(verb, "", resource, ns, ""))
    }

    fn policy() -> Policy {
        let mut p = Policy::default();
        p.put_cluster_role(&ClusterRole {
            metadata: meta("", "edit"),
            rules: Some(vec![rule(&[""], &["services", "pods/exec"], &["create", "get", "list"])]),
            ..Default::default()
        });
        p.put_role(&Role { metadata: meta("team", "reader"), rules: Some(vec![rule(&[""], &["configmaps"], &["get"])]) });
        p.put_role_binding(&RoleBinding {
            metadata: meta("default", "alice-edit"),
            role_ref: role_ref("ClusterRole", "edit"),
            subjects: Some(vec![subject("User", "alice")]),
        });
        p.put_role_binding(&RoleBinding {
            metadata: meta("team", "devs-read"),
            role_ref: role_ref("Role", "reader"),
            subjects: Some(vec![subject("Group", "devs")]),
        });
        p
    }

    #[test]
    fn bindings_grant_in_their_namespace_only() {
        let p = policy();
        let alice = User::authenticated("alice", "", []);
        assert!(p.allows(&alice, &req("create", "services", "default")));
        assert!(!p.allows(&alice, &req("create", "services", "kube-system")));
        assert!(!p.allows(&alice, &req("delete", "services", "default")), "verb not granted");
        assert!(!p.allows(&alice, &req("create", "pods", "default")), "pods/exec is not pods");
        let exec = Attributes::Resource(ResourceAttributes::new("create", "", "pods", "default", "web").with_subresource("exec"));
        assert!(p.allows(&alice, &exec));
        let dev = User::authenticated("bob", "", ["devs".to_string()]);
        assert!(p.allows(&dev, &req("get", "configmaps", "team")));
        assert!(!p.allows(&dev, &req("get", "configmaps", "default")));
        assert!(!p.allows(&User::anonymous(), &req("get", "services", "default")), "deny by default");
        assert!(p.allows(&User::authenticated("root", "", ["system:masters".to_string()]), &req("delete", "nodes", "")));
    }

    #[test]
    fn removed_objects_grant_nothing_and_a_missing_role_grants_nothing() {
        let mut p = policy();
        let alice = User::authenticated("alice", "", []);
        p.remove(RbacKind::ClusterRole, "", "edit");
        assert!(!p.allows(&alice, &req("create", "services", "default")));
        p = policy();
        p.remove(RbacKind::RoleBinding, "default", "alice-edit");
        assert!(!p.allows(&alice, &req("create", "services", "default")));
    }

    #[test]
    fn resource_names_subresource_wildcards_and_paths() {
        let mut named = rule(&[""], &["configmaps"], &["get"]);
        named.resource_names = Some(vec!["one".into()]);
        let get = |name: &str| Attributes::Resource(ResourceAttributes::new("get", "", "configmaps", "d", name));
        assert!(rule_allows(&named, &get("one")));
        assert!(!rule_allows(&named, &get("two")));
        assert!(!rule_allows(&named, &get("")), "a list is not a named get");
        let status = rule(&["*"], &["*/status"], &["*"]);
        let pod_status = Attributes::Resource(ResourceAttributes::new("update", "", "pods", "d", "p").with_subresource("status"));
        assert!(rule_allows(&status, &pod_status));
        assert!(!rule_allows(&status, &req("update", "pods", "d")));
        let paths = PolicyRule {
            non_resource_urls: Some(vec!["/apis/*".into(), "/version".into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        };
        let path = |p: &str| Attributes::NonResource { verb: "get".into(), path: p.into() };
        assert!(rule_allows(&paths, &path("/apis/discovery.k8s.io/v1")));
        assert!(rule_allows(&paths, &path("/version")));
        assert!(!rule_allows(&paths, &path("/metrics")));
        assert!(!rule_allows(&paths, &req("get", "pods", "d")), "non-resource rules grant no resources");
    }

    #[test]
    fn service_account_subjects_default_to_the_binding_namespace() {
        let mut p = policy();
        p.put_role_binding(&RoleBinding {
            metadata: meta("team", "sa"),
            role_ref: role_ref("Role", "reader"),
            subjects: Some(vec![subject("ServiceAccount", "build")]),
        });
        assert!(p.allows(&User::authenticated("system:serviceaccount:team:build", "", []), &req("get", "configmaps", "team")));
        assert!(!p.allows(&User::authenticated("system:serviceaccount:other:build", "", []), &req("get", "configmaps", "team")));
    }

    #[test]
    fn escalation_is_what_the_writer_does_not_hold() {
        let p = policy();
        let alice = User::authenticated("alice", "", []);
        assert!(p.not_held(&alice, "default", &[rule(&[""], &["services"], &["get", "list"])]).is_empty());
        let missing = p.not_held(&alice, "default", &[rule(&["*"], &["*"], &["*"])]);
        assert_eq!(missing.len(), 1);
        assert_eq!(describe(&missing[0]), r#"{APIGroups:["*"], Resources:["*"], Verbs:["*"]}"#);
        assert_eq!(p.not_held(&alice, "kube-system", &[rule(&[""], &["services"], &["get"])]).len(), 1, "held in default only");
        let mut named = rule(&[""], &["services"], &["get"]);
        named.resource_names = Some(vec!["web".into()]);
        assert!(p.not_held(&alice, "default", &[named]).is_empty(), "a named rule is covered by an unnamed one");
        let owner = rule(&["*"], &["*/status"], &["update"]);
        assert!(covers(&owner, &rule(&[""], &["pods/status"], &["update"])));
        assert!(!covers(&owner, &rule(&[""], &["pods"], &["update"])));
    }
}
