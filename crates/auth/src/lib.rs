//! Who a caller is and what it may do, as kube-apiserver decides it: the
//! user and its groups, the attributes a request is authorized on, RBAC
//! rules evaluated as Kubernetes' RBAC authorizer evaluates them, the
//! privilege-escalation check, the default roles, and the static token
//! file. Pure logic: the API server feeds it objects and requests.

pub mod attributes;
pub mod defaults;
pub mod rbac;
pub mod tokens;
pub mod user;

pub use attributes::{Attributes, ResourceAttributes};
pub use rbac::Policy;
pub use user::User;
