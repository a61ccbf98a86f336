use futures::StreamExt;
use wharf_store::{Compare, EmbeddedStore, EventKind, Store, StoreError, Txn, TxnOutcome};

fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(&dir.path().join("state.redb")).expect("open store")
}

#[tokio::test]
async fn compare_and_swap_guards_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let created = store.txn(Txn::new().when(Compare::Absent("/a".into())).put("/a", "1")).await.unwrap();
    let TxnOutcome::Committed(rev) = created else { panic!("create failed") };
    assert_eq!(rev, 1);
    // A second create of the same key fails and changes nothing.
    let again = store.txn(Txn::new().when(Compare::Absent("/a".into())).put("/a", "2")).await.unwrap();
    assert_eq!(again, TxnOutcome::Failed);
    assert_eq!(store.revision(), 1);
    // An update with a stale revision fails; with the current one it succeeds.
    let stale = store.txn(Txn::new().when(Compare::ModRevision("/a".into(), 0)).put("/a", "3")).await.unwrap();
    assert_eq!(stale, TxnOutcome::Failed);
    let fresh = store.txn(Txn::new().when(Compare::ModRevision("/a".into(), 1)).put("/a", "3")).await.unwrap();
    assert_eq!(fresh, TxnOutcome::Committed(2));
    let kv = store.get("/a").await.unwrap().unwrap();
    assert_eq!((&kv.value[..], kv.create_revision, kv.mod_revision), (&b"3"[..], 1, 2));
}

#[tokio::test]
async fn failed_compare_writes_none_of_the_ops() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.txn(Txn::new().put("/taken", "x")).await.unwrap();
    let outcome = store
        .txn(
            Txn::new()
                .when(Compare::Absent("/obj".into()))
                .when(Compare::Absent("/taken".into()))
                .put("/obj", "o")
                .put("/taken", "o"),
        )
        .await
        .unwrap();
    assert_eq!(outcome, TxnOutcome::Failed);
    assert!(store.get("/obj").await.unwrap().is_none());
    assert_eq!(&store.get("/taken").await.unwrap().unwrap().value[..], b"x");
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
async fn list_is_limited_to_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.txn(Txn::new().put("/a/1", "").put("/ab/1", "").put("/a/2", "")).await.unwrap();
    let (items, _) = store.list("/a/").await.unwrap();
    let keys: Vec<_> = items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/a/1", "/a/2"]);
}

#[tokio::test]
async fn watch_replays_history_then_follows_live_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.txn(Txn::new().put("/w/a", "1")).await.unwrap(); // rev 1
    store.txn(Txn::new().put("/w/b", "1").put("/other", "1")).await.unwrap(); // rev 2
    let mut watch = store.watch("/w/", 1).await.unwrap();
    store.txn(Txn::new().put("/w/a", "2").put("/w/c", "1")).await.unwrap(); // rev 3
    store.txn(Txn::new().delete("/w/a")).await.unwrap(); // rev 4
    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = watch.next().await.unwrap().unwrap();
        seen.push((e.kind, e.key.clone(), e.revision, e.prev.clone()));
    }
    assert_eq!(
        seen,
        vec![
            (EventKind::Put, "/w/b".to_string(), 2, None),
            (EventKind::Put, "/w/a".to_string(), 3, Some("1".into())),
            (EventKind::Put, "/w/c".to_string(), 3, None),
            (EventKind::Delete, "/w/a".to_string(), 4, Some("2".into())),
        ]
    );
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

#[tokio::test]
async fn concurrent_writers_get_distinct_revisions_and_no_lost_update() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.txn(Txn::new().put("/counter", "0")).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < 25 {
                let kv = store.get("/counter").await.unwrap().unwrap();
                let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                let txn = Txn::new()
                    .when(Compare::ModRevision("/counter".into(), kv.mod_revision))
                    .put("/counter", (n + 1).to_string());
                if let TxnOutcome::Committed(_) = store.txn(txn).await.unwrap() {
                    done += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let kv = store.get("/counter").await.unwrap().unwrap();
    assert_eq!(&kv.value[..], b"200");
    assert_eq!(store.revision(), 201);
}
