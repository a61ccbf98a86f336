mod semantics;

use futures::StreamExt;
use std::time::Duration;

use wharf_store::{EmbeddedStore, EventKind, Store, StoreError, Txn, TxnOutcome, WatchHistory};

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
    semantics::a_snapshot_reads_pages_as_the_store_stood(store.as_ref(), "/t6").await;
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
    assert!(items.iter().all(|kv| &*kv.key != "/k/3"));
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

/// A watcher of a quiet prefix, left unread while another prefix churns
/// far past the watch history, still gets its next event: skipping the
/// other prefix's events moves its position, so catching up after lagging
/// starts inside the history instead of failing as compacted.
#[tokio::test]
async fn a_quiet_watcher_behind_a_busy_prefix_is_not_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(&dir.path().join("state.redb"), Default::default(), WatchHistory::events(64)).unwrap();
    let put = |key: String, value: &'static str| Txn::new().put(key, value);
    let mut quiet = store.watch("/quiet/", store.revision()).await.unwrap();
    // Both in one transaction: the quiet event follows a busy one of its revision.
    store.txn(Txn::new().put("/busy/first", "b").put("/quiet/a", "1")).await.unwrap();
    assert_eq!(quiet.next().await.unwrap().unwrap().key.as_ref(), "/quiet/a");
    for _ in 0..20 {
        // More than the live channel holds (a quarter of the history) between
        // two reads of a slow consumer; far more than the history in all.
        for i in 0..50 {
            store.txn(put(format!("/busy/{i}"), "x")).await.unwrap();
        }
        let _ = tokio::time::timeout(std::time::Duration::from_millis(5), quiet.next()).await;
    }
    store.txn(Txn::new().put("/busy/last", "b").put("/quiet/b", "2")).await.unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), quiet.next()).await.expect("an event").expect("open");
    assert_eq!(next.expect("not compacted").key.as_ref(), "/quiet/b");
}

/// Retained events older than `fresh_for` are dropped beyond the floor,
/// even while no write comes: the writer wakes when they age out.
#[tokio::test]
async fn an_idle_store_drops_old_events_down_to_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let retention = WatchHistory { events: 10_000, fresh_for: Duration::from_secs(2), floor: 8 };
    let store = EmbeddedStore::open_with(&dir.path().join("state.redb"), Default::default(), retention).unwrap();
    let start = store.revision();
    for i in 0..100 {
        store.txn(Txn::new().put(format!("/k/{i}"), "v")).await.unwrap();
    }
    assert!(store.watch("/k/", start).await.is_ok(), "fresh events are kept past the floor");
    // Aged out after 2 s, dropped within the writer's 1 s granularity.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let err = store.watch("/k/", start).await.err().expect("aged out");
    assert!(matches!(err, StoreError::Compacted { .. }), "{err:?}");
    let mut watch = store.watch("/k/", store.revision() - 8).await.expect("the floor is kept");
    assert_eq!(watch.next().await.unwrap().unwrap().key.as_ref(), "/k/92");
}

/// A watcher of a quiet prefix is told its position as other prefixes
/// churn, often enough that resuming from the latest one stays inside the
/// history, and never ahead of an event it has not been given.
#[tokio::test]
async fn a_quiet_watcher_is_told_its_progress_inside_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(&dir.path().join("state.redb"), Default::default(), WatchHistory::events(64)).unwrap();
    let mut quiet = store.watch("/quiet/", store.revision()).await.unwrap();
    let busy = tokio::spawn({
        let store = store.clone();
        async move {
            for i in 0..500 {
                store.txn(Txn::new().put(format!("/busy/{i}"), "x")).await.unwrap();
            }
            // The quiet prefix's only event shares a revision with a busy one.
            store.txn(Txn::new().put("/busy/last", "x").put("/quiet/a", "1")).await.unwrap()
        }
    });
    let mut progress = Vec::new();
    let quiet_event = loop {
        let event =
            tokio::time::timeout(Duration::from_secs(10), quiet.next()).await.expect("an item").expect("open").expect("not compacted");
        match event.kind {
            EventKind::Progress => progress.push(event.revision),
            _ => break event,
        }
    };
    let TxnOutcome::Committed(last) = busy.await.unwrap() else { panic!("committed") };
    assert_eq!((quiet_event.key.as_ref(), quiet_event.revision), ("/quiet/a", last));
    // Every 16 events (a quarter of 64); a re-feed after lagging may restart the count.
    assert!(progress.len() >= 500 / 16 - 3, "told its position often: {progress:?}");
    assert!(progress.windows(2).all(|w| w[0] < w[1]) && progress.iter().all(|p| *p < last), "{progress:?}");
    let latest = *progress.last().expect("progress");
    assert!(last - latest <= 17, "the latest progress {latest} is within 16 events of {last}");
    let mut resumed = store.watch("/quiet/", latest).await.expect("a resume from the progress is inside the history");
    assert_eq!(resumed.next().await.unwrap().unwrap().key.as_ref(), "/quiet/a");
}

/// A watcher that took its first event from the backlog and then lagged
/// gets the next event too (none is skipped as if delivered twice).
#[tokio::test]
async fn a_lagging_watcher_loses_nothing_after_a_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(&dir.path().join("state.redb"), Default::default(), WatchHistory::events(64)).unwrap();
    let start = store.revision();
    store.txn(Txn::new().put("/p/a", "1")).await.unwrap();
    let mut watch = store.watch("/p/", start).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().key.as_ref(), "/p/a", "from the backlog");
    for i in 0..30 {
        store.txn(Txn::new().put(format!("/busy/{i}"), "x")).await.unwrap();
    }
    store.txn(Txn::new().put("/p/b", "2")).await.unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next()).await.expect("an event").expect("open");
    assert_eq!(next.expect("not compacted").key.as_ref(), "/p/b");
}

/// Events are held packed in memory, for watchers; reads come from the
/// file, which holds JSON as written (so a later build with another
/// dictionary reads it), before and after a reopen.
#[tokio::test]
async fn events_are_packed_in_memory_and_values_plain_on_disk() {
    let pod = |phase: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"api-7f9c","namespace":"prod","uid":"0e0c9a4e-1d1b-4c55-9d4e-6b8f3f1f2a11","labels":{{"app":"api"}}}},"spec":{{"containers":[{{"image":"registry.example/api:2.4.1","name":"api","ports":[{{"containerPort":8443,"name":"https","protocol":"TCP"}}]}}],"nodeName":"worker-3"}},"status":{{"phase":"{phase}","podIP":"127.1.2.3"}}}}"#
        )
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        store.txn(Txn::new().put("/registry/pods/prod/api", pod("Pending"))).await.unwrap();
        store.txn(Txn::new().put("/registry/pods/prod/api", pod("Running"))).await.unwrap();
        let kv = store.get("/registry/pods/prod/api").await.unwrap().unwrap();
        assert_eq!(kv.value.bytes(), pod("Running"));
        let mut events = store.watch("/registry/pods/", 0).await.unwrap();
        let _created = events.next().await.unwrap().unwrap();
        let updated = events.next().await.unwrap().unwrap();
        assert_eq!(updated.value.bytes(), pod("Running"));
        assert!(updated.value.held() * 2 < pod("Running").len(), "held {} of {} bytes", updated.value.held(), pod("Running").len());
        let prev = updated.prev.expect("the value replaced");
        assert_eq!(prev.bytes(), pod("Pending"));
        assert!(prev.held() * 2 < pod("Pending").len(), "the replaced value is held packed too");
    }
    let file = std::fs::read(dir.path().join("state.redb")).unwrap();
    assert!(file.windows(26).any(|w| w == br#""image":"registry.example/"#), "the file holds the JSON as written");
    let store = open(&dir);
    let (items, _) = store.list("/registry/pods/").await.unwrap();
    assert_eq!(items[0].value.bytes(), pod("Running"));
}
