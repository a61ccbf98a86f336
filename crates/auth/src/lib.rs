//! Who a caller is and what it may do, as kube-apiserver decides it: the
//! user and its groups, the attributes a request is authorized on, RBAC
//! rules evaluated as Kubernetes' RBAC authorizer evaluates them, the
//! privilege-escalation check, the default roles, and the static token
//! file. Pure logic: the API server feeds it objects and requests.

pub mod attributes;
pub mod bootstrap;
pub mod defaults;
pub mod node;
pub mod rbac;
pub mod sessions;
pub mod tokens;
pub mod user;

pub use attributes::{Attributes, ResourceAttributes};
pub use rbac::Policy;
pub use user::User;

/// The decision kube-apiserver's `Node,RBAC` chain makes on a request:
/// RBAC must allow it, and a node must stay within its own objects. The
/// refusal is the message of a 403.
pub fn authorize(policy: &Policy, user: &User, attributes: &Attributes) -> Result<(), String> {
    if !policy.allows(user, attributes) {
        return Err(attributes.forbidden_message(&user.name));
    }
    if let (Some(node), Attributes::Resource(request)) = (user.node_name(), attributes) {
        if let Some(why) = node::refuses(node, request) {
            return Err(format!("{}: {why}", attributes.forbidden_message(&user.name)));
        }
    }
    Ok(())
}
