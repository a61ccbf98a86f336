//! API types and rules: which kinds wharf serves, their defaulting and
//! validation (as Kubernetes does them, on the `k8s-openapi` types), and
//! label and field selectors.

pub mod cluster;
pub mod config;
pub mod endpoints;
pub mod field;
pub mod ipfamily;
pub mod kinds;
pub mod meta;
pub mod names;
pub mod node_status;
pub mod object;
pub mod pod;
pub mod rbac;
pub mod remote;
pub mod selector;
pub mod service;
pub mod service_env;

pub use k8s_openapi;
pub use object::ApiObject;
