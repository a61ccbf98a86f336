//! The etcd backend: every key in etcd (v3 API), revisions are etcd's,
//! transactions are etcd transactions and watches etcd watches. Several
//! API servers can share one etcd.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use etcd_client::{Compare as EtcdCompare, CompareOp, EventType, GetOptions, Txn as EtcdTxn, TxnOp, WatchOptions};
use futures::StreamExt;

use crate::model::{Compare, Event, EventKind, KeyValue, Op, Revision, Txn, TxnOutcome};
use crate::{Result, Store, StoreError, WatchStream};

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Detects a dead etcd connection (so watches fail over and restart).
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Clone)]
pub struct EtcdStore {
    client: etcd_client::Client,
    /// The newest revision any response has shown.
    seen: Arc<AtomicU64>,
}

fn backend(e: etcd_client::Error) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

fn revision(r: i64) -> Revision {
    u64::try_from(r).unwrap_or(0)
}

fn key_value(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: String::from_utf8(kv.key().to_vec()).map_err(|e| StoreError::Backend(e.to_string()))?,
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: revision(kv.create_revision()),
        mod_revision: revision(kv.mod_revision()),
    })
}

impl EtcdStore {
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        // Only connecting is bounded: a request timeout would also cut
        // long-lived watches.
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE, KEEP_ALIVE)
            .with_keep_alive_while_idle(true);
        let client = etcd_client::Client::connect(endpoints, Some(options)).await.map_err(backend)?;
        let store = Self { client, seen: Arc::new(AtomicU64::new(0)) };
        // Learn the current revision, and that etcd answers at all.
        tokio::time::timeout(CONNECT_TIMEOUT, store.get("/wharf/ping"))
            .await
            .map_err(|_| StoreError::Backend(format!("etcd at {endpoints:?} did not answer")))??;
        Ok(store)
    }

    fn observe(&self, header: Option<&etcd_client::ResponseHeader>) -> Revision {
        let rev = header.map_or(0, |h| revision(h.revision()));
        self.seen.fetch_max(rev, Ordering::Relaxed);
        rev
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    fn revision(&self) -> Revision {
        self.seen.load(Ordering::Relaxed)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self.client.kv_client().get(key, None).await.map_err(backend)?;
        self.observe(resp.header());
        resp.kvs().first().map(key_value).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let resp = self.client.kv_client().get(prefix, Some(GetOptions::new().with_prefix())).await.map_err(backend)?;
        let rev = self.observe(resp.header());
        let items = resp.kvs().iter().map(key_value).collect::<Result<_>>()?;
        Ok((items, rev))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|c| match c {
                Compare::ModRevision(key, rev) => EtcdCompare::mod_revision(key.as_str(), CompareOp::Equal, *rev as i64),
                // A missing key has create revision 0.
                Compare::Absent(key) => EtcdCompare::create_revision(key.as_str(), CompareOp::Equal, 0),
            })
            .collect();
        let ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(key.as_str(), value.to_vec(), None),
                Op::Delete { key } => TxnOp::delete(key.as_str(), None),
            })
            .collect();
        let resp = self.client.kv_client().txn(EtcdTxn::new().when(compares).and_then(ops)).await.map_err(backend)?;
        let rev = self.observe(resp.header());
        Ok(if resp.succeeded() { TxnOutcome::Committed(rev) } else { TxnOutcome::Failed })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let options = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(after as i64 + 1);
        let stream = self.client.watch_client().watch(prefix, Some(options)).await.map_err(backend)?;
        let seen = self.seen.clone();
        let events = futures::stream::unfold((stream, Vec::<Event>::new().into_iter(), false), move |(mut stream, mut pending, done)| {
            let seen = seen.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    if let Some(event) = pending.next() {
                        return Some((Ok(event), (stream, pending, false)));
                    }
                    let message = match stream.message().await {
                        Ok(Some(m)) => m,
                        Ok(None) => return None,
                        Err(e) => return Some((Err(backend(e)), (stream, pending, true))),
                    };
                    if message.compact_revision() > 0 {
                        let oldest = revision(message.compact_revision());
                        return Some((Err(StoreError::Compacted { requested: after, oldest }), (stream, pending, true)));
                    }
                    if message.canceled() {
                        return None;
                    }
                    let mut batch = Vec::new();
                    for e in message.events() {
                        let Some(kv) = e.kv() else { continue };
                        let kind = match e.event_type() {
                            EventType::Put => EventKind::Put,
                            EventType::Delete => EventKind::Delete,
                        };
                        let rev = revision(kv.mod_revision());
                        seen.fetch_max(rev, Ordering::Relaxed);
                        batch.push(Event {
                            kind,
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            value: Bytes::copy_from_slice(kv.value()),
                            revision: rev,
                            create_revision: e.prev_kv().map_or(revision(kv.create_revision()), |p| revision(p.create_revision())),
                            prev: e.prev_kv().map(|p| Bytes::copy_from_slice(p.value())),
                        });
                    }
                    pending = batch.into_iter();
                }
            }
        });
        Ok(events.boxed())
    }
}
