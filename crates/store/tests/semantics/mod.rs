//! What every store backend must do, as generic checks that each backend's
//! test file runs against a live instance.

use futures::StreamExt;
use wharf_store::{Compare, EventKind, Store, Txn, TxnOutcome};

fn committed(outcome: TxnOutcome) -> u64 {
    match outcome {
        TxnOutcome::Committed(rev) => rev,
        TxnOutcome::Failed => panic!("the transaction failed"),
    }
}

pub async fn compare_and_swap_guards_writes(store: &dyn Store, p: &str) {
    let key = format!("{p}/a");
    let first = committed(store.txn(Txn::new().when(Compare::Absent(key.clone())).put(key.clone(), "1")).await.unwrap());
    let again = store.txn(Txn::new().when(Compare::Absent(key.clone())).put(key.clone(), "2")).await.unwrap();
    assert_eq!(again, TxnOutcome::Failed);
    let stale = store.txn(Txn::new().when(Compare::ModRevision(key.clone(), first - 1)).put(key.clone(), "3")).await.unwrap();
    assert_eq!(stale, TxnOutcome::Failed);
    let second = committed(store.txn(Txn::new().when(Compare::ModRevision(key.clone(), first)).put(key.clone(), "3")).await.unwrap());
    assert!(second > first);
    let kv = store.get(&key).await.unwrap().unwrap();
    assert_eq!((&kv.value.bytes()[..], kv.create_revision, kv.mod_revision), (&b"3"[..], first, second));
}

pub async fn failed_compare_writes_none_of_the_ops(store: &dyn Store, p: &str) {
    let (obj, taken) = (format!("{p}/obj"), format!("{p}/taken"));
    store.txn(Txn::new().put(taken.clone(), "x")).await.unwrap();
    let outcome = store
        .txn(
            Txn::new()
                .when(Compare::Absent(obj.clone()))
                .when(Compare::Absent(taken.clone()))
                .put(obj.clone(), "o")
                .put(taken.clone(), "o"),
        )
        .await
        .unwrap();
    assert_eq!(outcome, TxnOutcome::Failed);
    assert!(store.get(&obj).await.unwrap().is_none());
    assert_eq!(&store.get(&taken).await.unwrap().unwrap().value.bytes()[..], b"x");
}

pub async fn list_is_limited_to_the_prefix(store: &dyn Store, p: &str) {
    let rev = committed(
        store.txn(Txn::new().put(format!("{p}/a/1"), "").put(format!("{p}/ab/1"), "").put(format!("{p}/a/2"), "")).await.unwrap(),
    );
    let (items, at) = store.list(&format!("{p}/a/")).await.unwrap();
    let keys: Vec<String> = items.iter().map(|kv| kv.key.to_string()).collect();
    assert_eq!(keys, [format!("{p}/a/1"), format!("{p}/a/2")]);
    assert!(at >= rev);
}

/// A snapshot reads the store as it stood when taken, in pages, whatever
/// is written meanwhile; the pages together are one listing.
pub async fn a_snapshot_reads_pages_as_the_store_stood(store: &dyn Store, p: &str) {
    let dir = format!("{p}/d/");
    for i in 0..5 {
        store.txn(Txn::new().put(format!("{dir}{i}"), format!("v{i}"))).await.unwrap();
    }
    store.txn(Txn::new().put(format!("{p}/d0"), "beside the prefix")).await.unwrap();
    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.revision(), store.revision());
    store.txn(Txn::new().put(format!("{dir}2"), "changed").delete(format!("{dir}3")).put(format!("{dir}9"), "new")).await.unwrap();

    let first = snapshot.list_from(&dir, &dir, 2).await.unwrap();
    let next = format!("{}\0", first[1].key);
    let rest = snapshot.list_from(&dir, &next, 10).await.unwrap();
    let read: Vec<(String, String)> =
        first.iter().chain(&rest).map(|kv| (kv.key.to_string(), String::from_utf8(kv.value.bytes().to_vec()).unwrap())).collect();
    let want: Vec<(String, String)> = (0..5).map(|i| (format!("{dir}{i}"), format!("v{i}"))).collect();
    assert_eq!(read, want, "every page as the store stood at the snapshot");
    assert!(rest.iter().all(|kv| kv.mod_revision <= snapshot.revision()));
    assert_eq!(snapshot.list_from(&dir, p, 1).await.unwrap()[0].key.as_ref(), format!("{dir}0"), "a start before the prefix starts at it");

    let (now, _) = store.list(&dir).await.unwrap();
    let keys: Vec<&str> = now.iter().map(|kv| kv.key.as_ref()).collect();
    assert_eq!(
        keys,
        [format!("{dir}0"), format!("{dir}1"), format!("{dir}2"), format!("{dir}4"), format!("{dir}9")],
        "a list now reads the writes"
    );
}

pub async fn watch_replays_then_follows_in_order(store: &dyn Store, p: &str) {
    let w = |k: &str| format!("{p}/w/{k}");
    let start = committed(store.txn(Txn::new().put(w("a"), "1")).await.unwrap());
    let r2 = committed(store.txn(Txn::new().put(w("b"), "1").put(format!("{p}/other"), "1")).await.unwrap());
    let mut watch = store.watch(&format!("{p}/w/"), start).await.unwrap();
    let r3 = committed(store.txn(Txn::new().put(w("a"), "2").put(w("c"), "1")).await.unwrap());
    let r4 = committed(store.txn(Txn::new().delete(w("a"))).await.unwrap());
    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = watch.next().await.unwrap().unwrap();
        seen.push((e.kind, e.key.to_string(), e.revision, e.prev.clone()));
    }
    assert_eq!(
        seen,
        vec![
            (EventKind::Put, w("b"), r2, None),
            (EventKind::Put, w("a"), r3, Some("1".into())),
            (EventKind::Put, w("c"), r3, None),
            (EventKind::Delete, w("a"), r4, Some("2".into())),
        ]
    );
}

pub async fn concurrent_writers_lose_no_update(store: std::sync::Arc<dyn Store>, p: &str) {
    let key = format!("{p}/counter");
    store.txn(Txn::new().put(key.clone(), "0")).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (store, key) = (store.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < 20 {
                let kv = store.get(&key).await.unwrap().unwrap();
                let n: u64 = std::str::from_utf8(&kv.value.bytes()).unwrap().parse().unwrap();
                let txn = Txn::new().when(Compare::ModRevision(key.clone(), kv.mod_revision)).put(key.clone(), (n + 1).to_string());
                if let TxnOutcome::Committed(_) = store.txn(txn).await.unwrap() {
                    done += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(&store.get(&key).await.unwrap().unwrap().value.bytes()[..], b"80");
}
