//! What a request asks to do, as authorization sees it (kube-apiserver's
//! `authorizer.Attributes`), and how a refusal is worded.

/// A request on a resource; empty strings for what it does not name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceAttributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attributes {
    Resource(ResourceAttributes),
    /// A path outside the resource tree (`/api`, `/version`, `/metrics`).
    NonResource {
        verb: String,
        path: String,
    },
}

impl ResourceAttributes {
    pub fn new(verb: &str, group: &str, resource: &str, namespace: &str, name: &str) -> Self {
        Self {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: String::new(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn with_subresource(mut self, subresource: &str) -> Self {
        self.subresource = subresource.into();
        self
    }

    /// `pods` or `pods/exec`.
    pub fn resource_path(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// `services` or `roles.rbac.authorization.k8s.io`, as errors name it.
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

impl Attributes {
    pub fn verb(&self) -> &str {
        match self {
            Attributes::Resource(r) => &r.verb,
            Attributes::NonResource { verb, .. } => verb,
        }
    }

    /// The namespace the request is in; empty at the cluster scope.
    pub fn namespace(&self) -> &str {
        match self {
            Attributes::Resource(r) => &r.namespace,
            Attributes::NonResource { .. } => "",
        }
    }

    /// The whole message of the 403 `Status`, as kube-apiserver words it:
    /// `services is forbidden: User "alice" cannot list resource "services"
    /// in API group "" in the namespace "default"`.
    pub fn forbidden_message(&self, user: &str) -> String {
        match self {
            Attributes::NonResource { verb, path } => format!("forbidden: User {user:?} cannot {verb} path {path:?}"),
            Attributes::Resource(r) => {
                let scope =
                    if r.namespace.is_empty() { "at the cluster scope".to_string() } else { format!("in the namespace {:?}", r.namespace) };
                let subject = if r.name.is_empty() { r.qualified_resource() } else { format!("{} {:?}", r.qualified_resource(), r.name) };
                format!(
                    "{subject} is forbidden: User {user:?} cannot {} resource {:?} in API group {:?} {scope}",
                    r.verb,
                    r.resource_path(),
                    r.group
                )
            }
        }
    }
}

/// Subresources of a namespace itself, not resources inside it.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];
/// Subresources that open a stream into a pod: each is a `create`, however
/// the client asks (kube-apiserver checks `create` for WebSocket upgrades).
const CONNECT_SUBRESOURCES: &[&str] = &["exec", "attach", "portforward", "proxy"];

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

fn is_true(value: Option<&str>) -> bool {
    matches!(value, Some("1" | "t" | "T" | "true" | "TRUE" | "True"))
}

/// The name a list or watch narrows itself to with `fieldSelector=metadata.name=X`.
fn selected_name(query: &str) -> Option<String> {
    let raw = query_value(query, "fieldSelector")?;
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let mut names = decoded.split(',').filter_map(|req| req.strip_prefix("metadata.name=").or_else(|| req.strip_prefix("metadata.name==")));
    let name = names.next()?;
    names.next().is_none().then(|| name.to_string())
}

/// What a request asks, read from its method, path and query as
/// kube-apiserver's RequestInfo resolver reads them: `/api/v1/...` and
/// `/apis/<group>/<version>/...` are resource requests (`namespaces/<ns>/`
/// scoping them), anything else is a non-resource path.
pub fn from_request(method: &str, path: &str, query: &str) -> Attributes {
    let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|p| !p.is_empty()).collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
        _ => return Attributes::NonResource { verb: method.to_ascii_lowercase(), path: path.to_string() },
    };
    let mut attrs = ResourceAttributes { group: group.into(), ..Default::default() };
    let mut rest = rest;
    if rest[0] == "namespaces" {
        if let Some(ns) = rest.get(1) {
            attrs.namespace = ns.to_string();
            if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
                rest = &rest[2..];
            }
        }
    }
    attrs.resource = rest[0].to_string();
    attrs.name = rest.get(1).map(|s| s.to_string()).unwrap_or_default();
    attrs.subresource = rest.get(2).map(|s| s.to_string()).unwrap_or_default();
    let watch = is_true(query_value(query, "watch"));
    if attrs.name.is_empty() && matches!(method, "GET" | "HEAD") {
        attrs.name = selected_name(query).unwrap_or_default();
    }
    let named = rest.len() > 1;
    attrs.verb = match method {
        _ if CONNECT_SUBRESOURCES.contains(&attrs.subresource.as_str()) => "create",
        "GET" | "HEAD" if watch => "watch",
        "GET" | "HEAD" if named => "get",
        "GET" | "HEAD" => "list",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" if named => "delete",
        "DELETE" => "deletecollection",
        other => return Attributes::NonResource { verb: other.to_ascii_lowercase(), path: path.to_string() },
    }
    .to_string();
    Attributes::Resource(attrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(method: &str, path: &str, query: &str) -> ResourceAttributes {
        match from_request(method, path, query) {
            Attributes::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn requests_resolve_as_kube_apiserver_resolves_them() {
        let r = resource("GET", "/api/v1/namespaces/default/services", "");
        assert_eq!((r.verb.as_str(), r.resource.as_str(), r.namespace.as_str(), r.name.as_str()), ("list", "services", "default", ""));
        let r = resource("GET", "/api/v1/namespaces/default/services", "watch=true&fieldSelector=metadata.name%3Dweb");
        assert_eq!((r.verb.as_str(), r.name.as_str()), ("watch", "web"));
        let r = resource("PUT", "/api/v1/namespaces/d/pods/p/status", "");
        assert_eq!((r.verb.as_str(), r.resource_path().as_str()), ("update", "pods/status"));
        let r = resource("GET", "/api/v1/namespaces/d/pods/p/exec", "command=sh");
        assert_eq!((r.verb.as_str(), r.subresource.as_str()), ("create", "exec"));
        let r = resource("GET", "/api/v1/namespaces/kube-system", "");
        assert_eq!(
            (r.verb.as_str(), r.resource.as_str(), r.name.as_str(), r.namespace.as_str()),
            ("get", "namespaces", "kube-system", "kube-system")
        );
        let r = resource("PUT", "/api/v1/namespaces/x/finalize", "");
        assert_eq!((r.resource.as_str(), r.subresource.as_str()), ("namespaces", "finalize"));
        let r = resource("DELETE", "/apis/rbac.authorization.k8s.io/v1/clusterroles", "");
        assert_eq!((r.verb.as_str(), r.group.as_str(), r.namespace.as_str()), ("deletecollection", "rbac.authorization.k8s.io", ""));
        let r = resource("GET", "/apis/wharf.dev/v1/nodes/n1/tunnel", "");
        assert_eq!((r.verb.as_str(), r.resource_path().as_str(), r.name.as_str()), ("get", "nodes/tunnel", "n1"));
        for path in ["/api", "/api/v1", "/apis", "/apis/discovery.k8s.io/v1", "/version", "/openapi/v3/api/v1"] {
            assert_eq!(from_request("GET", path, ""), Attributes::NonResource { verb: "get".into(), path: path.into() });
        }
    }

    #[test]
    fn refusals_are_worded_as_kube_apiserver_words_them() {
        let list = Attributes::Resource(ResourceAttributes::new("list", "", "services", "default", ""));
        assert_eq!(
            list.forbidden_message("alice"),
            r#"services is forbidden: User "alice" cannot list resource "services" in API group "" in the namespace "default""#
        );
        let exec = Attributes::Resource(ResourceAttributes::new("create", "", "pods", "d", "web").with_subresource("exec"));
        assert_eq!(
            exec.forbidden_message("bob"),
            r#"pods "web" is forbidden: User "bob" cannot create resource "pods/exec" in API group "" in the namespace "d""#
        );
        let crb = Attributes::Resource(ResourceAttributes::new("create", "rbac.authorization.k8s.io", "clusterrolebindings", "", ""));
        assert_eq!(
            crb.forbidden_message("bob"),
            r#"clusterrolebindings.rbac.authorization.k8s.io is forbidden: User "bob" cannot create resource "clusterrolebindings" in API group "rbac.authorization.k8s.io" at the cluster scope"#
        );
        let path = Attributes::NonResource { verb: "get".into(), path: "/metrics".into() };
        assert_eq!(path.forbidden_message("bob"), r#"forbidden: User "bob" cannot get path "/metrics""#);
    }
}
