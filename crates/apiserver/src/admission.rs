//! Checks on what a caller writes, after RBAC allowed the request: a
//! node's writes held to its own objects (NodeRestriction), and
//! privilege-escalation prevention for roles and bindings, as kube's RBAC
//! storage does it — a role may hold, and a binding may grant, only rules
//! its writer already holds, unless the writer may `escalate` (roles) or
//! `bind` (the referenced role).

use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
use serde_json::Value;
use wharf_auth::rbac::{describe, GROUP};
use wharf_auth::{Attributes, Policy, ResourceAttributes, User};

use crate::authz::Caller;
use crate::error::{ApiError, ApiResult};
use crate::kind::{self, Kind};
use crate::object;
use crate::policy::PolicyCache;

/// Whether `caller` may store `obj` of `kind` in `namespace`, replacing
/// `current` (`None` on create). Only RBAC writes read the policy.
pub fn admit(policy: &PolicyCache, caller: &Caller, kind: &Kind, namespace: &str, obj: &Value, current: Option<&Value>) -> ApiResult<()> {
    let user = &caller.user;
    if let Some(node) = user.node_name() {
        if let Some(why) = wharf_auth::node::admits(node, kind.info.resource, namespace, obj, current) {
            return Err(forbidden(kind, object::name(obj), why));
        }
    }
    let rbac = [&kind::ROLE, &kind::CLUSTER_ROLE, &kind::ROLE_BINDING, &kind::CLUSTER_ROLE_BINDING];
    if user.is_master() || !rbac.contains(&kind) {
        return Ok(());
    }
    let policy = &*policy.read();
    let name = object::name(obj);
    let decode = |e: serde_json::Error| ApiError::BadRequest(format!("error decoding {}: {e}", kind.info.kind));
    if kind == &kind::ROLE || kind == &kind::CLUSTER_ROLE {
        let escalate = ResourceAttributes::new("escalate", GROUP, kind.info.resource, namespace, name);
        if policy.allows(user, &Attributes::Resource(escalate)) {
            return Ok(());
        }
        let rules: Vec<PolicyRule> =
            if obj["rules"].is_null() { Vec::new() } else { serde_json::from_value(obj["rules"].clone()).map_err(decode)? };
        return no_escalation(policy, user, kind, namespace, name, &rules);
    }
    if kind == &kind::ROLE_BINDING || kind == &kind::CLUSTER_ROLE_BINDING {
        let role_ref: RoleRef = serde_json::from_value(obj["roleRef"].clone()).map_err(decode)?;
        let role_resource = if role_ref.kind == "Role" { "roles" } else { "clusterroles" };
        let bind = ResourceAttributes::new("bind", GROUP, role_resource, namespace, &role_ref.name);
        if policy.allows(user, &Attributes::Resource(bind)) {
            return Ok(());
        }
        let Some(rules) = policy.role_rules(&role_ref, namespace) else {
            return Err(forbidden(kind, name, format!("{} {:?} not found", role_resource, role_ref.name)));
        };
        return no_escalation(policy, user, kind, namespace, name, rules);
    }
    Ok(())
}

fn forbidden(kind: &Kind, name: &str, why: String) -> ApiError {
    ApiError::Forbidden(format!("{} {name:?} is forbidden: {why}", kind.info.qualified_resource()))
}

fn no_escalation(policy: &Policy, user: &User, kind: &Kind, namespace: &str, name: &str, rules: &[PolicyRule]) -> ApiResult<()> {
    let missing = policy.not_held(user, namespace, rules);
    if missing.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = missing.iter().map(describe).collect();
    Err(forbidden(
        kind,
        name,
        format!(
            "user {:?} (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            user.groups,
            listed.join("\n")
        ),
    ))
}
