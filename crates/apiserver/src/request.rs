//! Parsing a resource URL into what it addresses, the way kube-apiserver's
//! RequestInfo resolver does.

use crate::kind::{self, Kind};

use crate::error::{ApiError, ApiResult};

#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub kind: &'static Kind,
    /// The namespace in the URL; None for cluster-wide requests.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parses `/api/v1/...` or `/apis/<group>/<version>/...`.
pub fn parse(path: &str) -> ApiResult<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::NoRoute),
    };
    let find = |resource: &str| kind::lookup(group, version, resource).ok_or(ApiError::NoRoute);
    let owned = |s: &&str| s.to_string();
    let target = match rest {
        // Namespaces themselves, and their subresources.
        ["namespaces", name] | ["namespaces", name, "status" | "finalize"] if group.is_empty() => {
            Target { kind: find("namespaces")?, namespace: None, name: Some(name.to_string()), subresource: rest.get(2).map(owned) }
        }
        ["namespaces", ns, resource, tail @ ..] => {
            let kind = find(resource)?;
            if !kind.info.namespaced || tail.len() > 2 {
                return Err(ApiError::NoRoute);
            }
            Target { kind, namespace: Some(ns.to_string()), name: tail.first().map(owned), subresource: tail.get(1).map(owned) }
        }
        [resource, tail @ ..] if tail.len() <= 2 => {
            let kind = find(resource)?;
            if kind.info.namespaced && !tail.is_empty() {
                return Err(ApiError::NoRoute);
            }
            Target { kind, namespace: None, name: tail.first().map(owned), subresource: tail.get(1).map(owned) }
        }
        _ => return Err(ApiError::NoRoute),
    };
    match target.subresource.as_deref() {
        None => {}
        Some("status") if target.kind.info.has_status => {}
        Some("finalize") if target.kind == &kind::NAMESPACE => {}
        Some("exec" | "portforward") if target.kind == &kind::POD => {}
        Some(_) => return Err(ApiError::NoRoute),
    }
    if target.name.as_deref() == Some("") {
        return Err(ApiError::NoRoute);
    }
    Ok(target)
}

/// A boolean query parameter as Go's `strconv.ParseBool` reads it (the
/// Python client sends `watch=True`): `None` when it is none of them.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_shapes() {
        let t = parse("/api/v1/namespaces/default/services/web/status").unwrap();
        assert_eq!(
            (t.kind.info.resource, t.namespace.as_deref(), t.name.as_deref(), t.subresource.as_deref()),
            ("services", Some("default"), Some("web"), Some("status"))
        );
        let t = parse("/api/v1/services").unwrap();
        assert_eq!((t.kind.info.resource, t.namespace, t.name), ("services", None, None));
        let t = parse("/api/v1/namespaces/kube-system").unwrap();
        assert_eq!((t.kind.info.resource, t.name.as_deref()), ("namespaces", Some("kube-system")));
        let t = parse("/api/v1/namespaces/x/status").unwrap();
        assert_eq!((t.kind.info.resource, t.subresource.as_deref()), ("namespaces", Some("status")));
        let t = parse("/apis/discovery.k8s.io/v1/namespaces/d/endpointslices").unwrap();
        assert_eq!(t.kind.info.resource, "endpointslices");
        let t = parse("/api/v1/nodes/n1").unwrap();
        assert_eq!((t.kind.info.resource, t.name.as_deref()), ("nodes", Some("n1")));
    }

    #[test]
    fn unknown_shapes_are_not_found() {
        for p in [
            "/api/v2/services",
            "/api/v1/widgets",
            "/api/v1/services/x",
            "/api/v1/namespaces/d/nodes",
            "/api/v1/namespaces/d/services/x/scale",
            "/api/v1/namespaces/d/endpoints/x/status",
            "/apis/x/v1/pods",
        ] {
            assert!(parse(p).is_err(), "{p}");
        }
    }

    #[test]
    fn booleans_parse_as_go_parses_them() {
        for yes in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(parse_bool(yes), Some(true), "{yes}");
        }
        for no in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(parse_bool(no), Some(false), "{no}");
        }
        assert_eq!(parse_bool("yes"), None);
        assert_eq!(parse_bool("tRUE"), None);
    }
}
