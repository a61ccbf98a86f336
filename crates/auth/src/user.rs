//! An authenticated (or anonymous) caller.

use std::collections::BTreeMap;

/// Members bypass authorization, as in Kubernetes.
pub const MASTERS: &str = "system:masters";
pub const AUTHENTICATED: &str = "system:authenticated";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
pub const ANONYMOUS: &str = "system:anonymous";
pub const NODES: &str = "system:nodes";
/// A node's user name is this prefix and the node's name.
pub const NODE_PREFIX: &str = "system:node:";
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// An authenticated user: `system:authenticated` is added to its groups.
    pub fn authenticated(name: impl Into<String>, uid: impl Into<String>, groups: impl IntoIterator<Item = String>) -> Self {
        let mut groups: Vec<String> = groups.into_iter().filter(|g| g != AUTHENTICATED && g != UNAUTHENTICATED).collect();
        groups.push(AUTHENTICATED.to_string());
        Self { name: name.into(), uid: uid.into(), groups, extra: BTreeMap::new() }
    }

    pub fn anonymous() -> Self {
        Self { name: ANONYMOUS.into(), groups: vec![UNAUTHENTICATED.into()], ..Self::default() }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    pub fn is_master(&self) -> bool {
        self.in_group(MASTERS)
    }

    /// The node this user is, when it is a node (`system:node:<name>` in
    /// `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        self.name.strip_prefix(NODE_PREFIX).filter(|n| !n.is_empty() && self.in_group(NODES))
    }

    /// `(namespace, name)` when this user is a service account.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        self.name.strip_prefix(SERVICE_ACCOUNT_PREFIX)?.split_once(':')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticated_users_carry_the_authenticated_group_once() {
        let u = User::authenticated("alice", "", ["dev".to_string(), AUTHENTICATED.to_string(), UNAUTHENTICATED.to_string()]);
        assert_eq!(u.groups, ["dev", AUTHENTICATED]);
        assert!(!u.is_master());
        assert!(User::authenticated("a", "", [MASTERS.to_string()]).is_master());
    }

    #[test]
    fn nodes_and_service_accounts_are_recognised_by_name_and_group() {
        let node = User::authenticated("system:node:n1", "", [NODES.to_string()]);
        assert_eq!(node.node_name(), Some("n1"));
        assert_eq!(User::authenticated("system:node:n1", "", []).node_name(), None, "not in system:nodes");
        let sa = User::authenticated("system:serviceaccount:ns:build", "", []);
        assert_eq!(sa.service_account(), Some(("ns", "build")));
        assert_eq!(User::anonymous().service_account(), None);
    }
}
