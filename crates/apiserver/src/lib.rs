//! The API server: the Kubernetes REST API over HTTPS, backed by a
//! [`wharf_store::Store`]. Stock kubectl and any Kubernetes client talk to
//! it unchanged.

pub mod admission;
pub mod alloc;
pub mod audit;
pub mod authn;
pub mod authz;
mod bootstrap;
pub mod consistency;
mod discovery;
pub mod election;
pub mod encryption;
pub mod error;
pub mod event_ttl;
mod handlers;
mod http;
pub mod kind;
pub mod limits;
pub mod metrics;
pub mod nodecert;
pub mod object;
mod openapi;
mod pager;
pub mod patch;
pub mod pki;
pub mod policy;
mod portforward;
mod protobuf;
pub mod registry;
pub mod remote;
mod request;
mod review;
mod server;
mod spdy;
pub mod ssa;
pub mod table;

#[cfg(test)]
mod fuzz;

pub use bootstrap::bootstrap;
pub use metrics::ApiMetrics;
pub use registry::Registry;
pub use server::{serve, ApiServerConfig, RunningApiServer};

/// What every request handler shares.
#[derive(Clone)]
pub struct App {
    pub registry: Registry,
    /// Who callers are, what they may do, and the audit trail.
    pub auth: std::sync::Arc<authz::Auth>,
    /// Cancelled when the server shuts down: watches end, the listener closes.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub metrics: ApiMetrics,
    /// Agents' tunnels, for exec and port-forward sessions.
    pub tunnels: std::sync::Arc<remote::Tunnels>,
    /// How often a watch with `allowWatchBookmarks` gets a BOOKMARK.
    pub bookmark_interval: std::time::Duration,
}
