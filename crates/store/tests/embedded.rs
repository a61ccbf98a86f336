mod semantics;

use futures::StreamExt;
use wharf_store::{EmbeddedStore, Store, StoreError, Txn, TxnOutcome};

fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(&dir.path().join("state.redb")).expect("open store")
}

#[tokio::test]
async fn shared_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(open(&dir));
    semantics::compare_and_swap_guards_writes(store.as_ref(), "/t1").await;
    semantics::failed_compare_writes_none_of_the_ops(store.as_ref(), "/t2").await;
    semantics::list_is_limited_to_the_prefix(store.as_ref(), "/t3").await;
    semantics::watch_replays_then_follows_in_order(store.as_ref(), "/t4").await;
    semantics::concurrent_writers_lose_no_update(store.clone(), "/t5").await;
}

#[tokio::test]
async fn state_and_revision_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        for i in 0..10 {
            store.txn(Txn::new().put(format!("/k/{i}"), format!("v{i}"))).await.unwrap();
        }
        store.txn(Txn::new().delete("/k/3")).await.unwrap();
    }
    let store = open(&dir);
    assert_eq!(store.revision(), 11);
    let (items, rev) = store.list("/k/").await.unwrap();
    assert_eq!(rev, 11);
    assert_eq!(items.len(), 9);
    assert!(items.iter().all(|kv| kv.key != "/k/3"));
    let next = store.txn(Txn::new().put("/k/x", "y")).await.unwrap();
    assert_eq!(next, TxnOutcome::Committed(12));
}

#[tokio::test]
async fn watch_from_before_restart_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        store.txn(Txn::new().put("/a", "1")).await.unwrap();
        store.txn(Txn::new().put("/a", "2")).await.unwrap();
    }
    let store = open(&dir);
    let err = store.watch("/", 0).await.err().expect("old revision must be refused");
    assert!(matches!(err, StoreError::Compacted { requested: 0, .. }));
    // From the current revision it works.
    let mut watch = store.watch("/", 2).await.unwrap();
    store.txn(Txn::new().put("/a", "3")).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().revision, 3);
}
