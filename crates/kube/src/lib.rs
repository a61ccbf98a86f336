//! How wharf's parts use the Kubernetes API, in one place: the client
//! (`client`), watches of a kind (`watch`), in-memory copies that report
//! what changed (`reflector`), and the controller machinery: a work queue
//! (`queue`) drained by workers (`controller`) with metrics (`metrics`).
//! kube-runtime's watcher, reflector and Controller are the model; the
//! watcher is used as is.

pub mod client;
pub mod controller;
pub mod events;
pub mod few;
pub mod key;
pub mod keyed_table;
pub mod metrics;
pub mod node_status;
pub mod queue;
pub mod reflector;
pub mod shared_str;
pub mod watch;

pub use controller::run_workers;
pub use key::{Keyed, ObjectKey, Uid};
pub use keyed_table::KeyedTable;
pub use metrics::{ControllerMetrics, QueueHandles};
pub use queue::{Backoff, WorkQueue};
pub use reflector::{delete_missing, Change, Reflector, Relister, Table, Watched};
pub use tokio_util::sync::CancellationToken;

#[cfg(test)]
mod tests;
