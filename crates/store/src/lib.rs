//! The store: a key-value space shaped after etcd's v3 model.
//!
//! Keys are strings, every committed transaction gets the next global
//! revision, writes are compare-and-swap transactions over the keys'
//! modification revisions, and a watch delivers every event after a given
//! revision, in order. The API server relies only on this interface, so
//! the embedded backend (default, one machine) and an etcd backend (several
//! machines) are interchangeable.

mod embedded;
mod encrypted;
mod etcd;
mod metrics;
mod model;

pub use embedded::{EmbeddedStore, WatchHistory, DEFAULT_WATCH_HISTORY};
pub use encrypted::{Encrypted, Encryption, EncryptionKey};
pub use etcd::{EtcdCredentials, EtcdStore, EtcdTls};
pub use metrics::{Measured, StoreMetrics};
pub use model::{Compare, Event, EventKind, KeyValue, Op, Revision, Txn, TxnOutcome, Value};

use futures::stream::BoxStream;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The requested start revision is older than the retained history.
    #[error("required revision {requested} has been compacted (oldest available is {oldest})")]
    Compacted { requested: Revision, oldest: Revision },
    /// A watcher fell too far behind the event stream and was dropped.
    #[error("watch fell behind and was closed")]
    WatcherLagged,
    #[error("storage backend error: {0}")]
    Backend(String),
    #[error("store is shut down")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of events for one watch; ends with an error if the watcher lags.
pub type WatchStream = BoxStream<'static, Result<Event>>;

/// The key space as it stood at one revision: a long list is read from one
/// in pages, and the pages together are one consistent listing (as
/// kube-apiserver reads every page from etcd at the first page's revision).
#[async_trait::async_trait]
pub trait Snapshot: Send + Sync {
    fn revision(&self) -> Revision;
    /// Up to `limit` keys under `prefix`, from `start` on (inclusive), sorted.
    async fn list_from(&self, prefix: &str, start: &str, limit: usize) -> Result<Vec<KeyValue>>;
}

/// A snapshot as a store hands it out; pages of one list share it.
pub type SharedSnapshot = std::sync::Arc<dyn Snapshot>;

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The revision of the last committed transaction.
    fn revision(&self) -> Revision;
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Every key under `prefix`, sorted, and the revision the listing reflects.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)>;
    /// The key space as it stands now, to read in pages.
    async fn snapshot(&self) -> Result<SharedSnapshot>;
    /// Applies `txn.ops` atomically if all `txn.compares` hold.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome>;
    /// Every event on keys under `prefix` with a revision above `after`.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;
}
