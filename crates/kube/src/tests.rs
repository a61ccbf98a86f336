//! Tests of the runtime: reflector diffs across relists, and the queue's
//! promises under concurrent workers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::runtime::watcher::Event;

use super::*;
use crate::reflector::Watched;

fn svc(name: &str, rv: u64) -> Service {
    let mut s = Service::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some("d".into());
    s.metadata.resource_version = Some(rv.to_string());
    s
}

fn names(changes: &[Change<Service>]) -> Vec<String> {
    let mut out: Vec<String> = changes
        .iter()
        .map(|c| match c {
            Change::Applied { new, .. } => format!(
                "+{}@{}",
                new.metadata.name.as_deref().unwrap_or_default(),
                new.metadata.resource_version.as_deref().unwrap_or_default()
            ),
            Change::Deleted(old) => format!("-{}", old.metadata.name.as_deref().unwrap_or_default()),
        })
        .collect();
    out.sort();
    out
}

fn relist(r: &mut Watched<Service>, objects: Vec<Service>) -> Vec<Change<Service>> {
    assert!(r.handle(Event::Init).is_empty());
    for o in objects {
        assert!(r.handle(Event::InitApply(o)).is_empty(), "a relist is applied only when it ends");
    }
    r.handle(Event::InitDone)
}

#[test]
fn a_relist_reports_what_changed_during_the_gap() {
    let mut r = Watched::default();
    assert_eq!(names(&relist(&mut r, vec![svc("a", 1), svc("b", 2), svc("c", 3)])), ["+a@1", "+b@2", "+c@3"]);
    assert!(r.reflector.is_synced());
    // During a gap: b changed, c was deleted, d was created.
    assert_eq!(names(&relist(&mut r, vec![svc("a", 1), svc("b", 7), svc("d", 8)])), ["+b@7", "+d@8", "-c"]);
    assert_eq!(r.reflector.len(), 3);
}

#[test]
fn echoes_of_own_writes_change_nothing() {
    let mut r = Watched::default();
    relist(&mut r, vec![]);
    assert!(r.reflector.record(svc("a", 5)).is_some());
    assert!(r.handle(Event::Apply(svc("a", 5))).is_empty(), "the echo");
    assert!(r.handle(Event::Apply(svc("a", 4))).is_empty(), "an older event");
    assert_eq!(names(&r.handle(Event::Apply(svc("a", 6)))), ["+a@6"]);
    r.reflector.forget(&ObjectKey::new("d", "a"), Some(6));
    assert!(r.handle(Event::Apply(svc("a", 6))).is_empty(), "a deleted object is not brought back by an old event");
    assert!(r.reflector.get(&ObjectKey::new("d", "a")).is_none());
    assert_eq!(names(&r.handle(Event::Apply(svc("a", 9)))), ["+a@9"]);
    assert_eq!(names(&r.handle(Event::Delete(svc("a", 10)))), ["-a"]);
}

/// A compact view, as controllers keep, carrying its own key.
struct View {
    key: ObjectKey,
    version: Option<u64>,
}
crate::keyed_view!(View);

#[test]
fn a_reflector_finds_views_by_their_own_key_and_keeps_no_copy() {
    let mut r = reflector::Reflector::default();
    let key = |i: u32| ObjectKey::new("d", format!("pod-{i}"));
    let names: Vec<ObjectKey> = (0..1000).map(key).collect();
    for (i, k) in names.iter().enumerate() {
        r.apply(View { key: k.clone(), version: Some(i as u64 + 1) });
    }
    assert_eq!(Arc::strong_count(&names[7].name), 2, "the test's copy and the view's, none in the table");
    assert!(names.iter().all(|k| r.get(k).is_some_and(|v| v.key == *k)), "found after the table grew");
    r.apply(View { key: key(7), version: Some(5000) });
    r.apply(View { key: key(7), version: Some(4000) });
    assert_eq!((r.len(), r.get(&key(7)).and_then(|v| v.version)), (1000, Some(5000)), "replaced in place, never by an older one");
    assert!(
        r.get(&key(7)).is_some_and(|v| Arc::ptr_eq(&v.key.name, &names[7].name)),
        "an update keeps the strings of the key it replaced (indexes hold those), not a second copy"
    );
    r.delete(&key(7));
    assert!(r.get(&key(7)).is_none() && r.len() == 999);
    r.delete_unlisted(&names[..500].iter().cloned().collect());
    assert_eq!(r.len(), 499, "a relist of the first 500 leaves them, less the one deleted");
    assert!(r.get(&key(499)).is_some() && r.get(&key(500)).is_none());
}

#[test]
fn a_write_during_a_relist_is_not_taken_for_a_deletion() {
    let mut r = Watched::default();
    relist(&mut r, vec![svc("a", 1)]);
    r.handle(Event::Init);
    r.reflector.record(svc("new", 20));
    r.handle(Event::InitApply(svc("a", 1)));
    assert!(r.handle(Event::InitDone).is_empty(), "the list predates the write");
    assert!(r.reflector.get(&ObjectKey::new("d", "new")).is_some());
    // A relist older than an own write keeps the newer state.
    r.reflector.record(svc("a", 30));
    assert!(relist(&mut r, vec![svc("a", 25), svc("new", 20)]).is_empty());
    assert_eq!(r.reflector.get(&ObjectKey::new("d", "a")).unwrap().metadata.resource_version.as_deref(), Some("30"));
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let b = Backoff { base: Duration::from_millis(10), max: Duration::from_millis(70) };
    let delays: Vec<u128> = (1..=6).map(|n| b.delay(n).as_millis()).collect();
    assert_eq!(delays, [10, 20, 40, 70, 70, 70]);
    assert_eq!(b.delay(u32::MAX), Duration::from_millis(70));
}

fn queue(backoff: Backoff) -> Arc<WorkQueue<u32>> {
    Arc::new(WorkQueue::new(backoff, QueueHandles::default()))
}

#[tokio::test]
async fn a_drained_queue_gives_back_the_room_of_its_burst() {
    let q = queue(Backoff::default());
    let token = CancellationToken::new();
    for key in 0..10_000 {
        q.add(key);
    }
    assert!(q.room() >= 20_000, "the burst is held: {}", q.room());
    for _ in 0..10_000 {
        let key = q.next(&token).await.unwrap();
        q.done(key, true);
    }
    assert_eq!(q.depth(), 0);
    assert!(q.room() <= 4 * 64, "an idle queue keeps room for a few keys, not the burst: {}", q.room());
    // And still takes the next burst whole.
    for key in 0..1_000 {
        q.add(key);
    }
    assert_eq!(q.depth(), 1_000);
}

#[tokio::test]
async fn a_key_is_queued_once_and_never_runs_twice_at_once() {
    let q = queue(Backoff::default());
    let token = CancellationToken::new();
    let running: Arc<Mutex<HashMap<u32, usize>>> = Default::default();
    let overlaps = Arc::new(AtomicUsize::new(0));
    let runs = Arc::new(AtomicUsize::new(0));
    let reconcile = {
        let (running, overlaps, runs) = (running.clone(), overlaps.clone(), runs.clone());
        move |key: u32| {
            let (running, overlaps, runs) = (running.clone(), overlaps.clone(), runs.clone());
            async move {
                let before = {
                    let mut r = running.lock().unwrap();
                    let n = r.entry(key).or_default();
                    *n += 1;
                    *n
                };
                if before > 1 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                *running.lock().unwrap().get_mut(&key).unwrap() -= 1;
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<(), String>(())
            }
        }
    };
    let workers = tokio::spawn(run_workers("test", q.clone(), QueueHandles::default(), 8, token.clone(), reconcile));
    for round in 0..50 {
        for key in 0..4 {
            q.add(key);
        }
        if round % 10 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Everything added is eventually worked off.
    tokio::time::timeout(Duration::from_secs(10), async {
        while (0..4).any(|k| q.is_pending(&k)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("queue drained");
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "a key's reconcile overlapped itself");
    let n = runs.load(Ordering::SeqCst);
    assert!((4..=200).contains(&n), "{n} runs");
    token.cancel();
    workers.await.unwrap();
}

#[tokio::test]
async fn a_failing_reconcile_backs_off_and_recovers() {
    let q = queue(Backoff { base: Duration::from_millis(20), max: Duration::from_secs(1) });
    let token = CancellationToken::new();
    let attempts: Arc<Mutex<Vec<tokio::time::Instant>>> = Default::default();
    let reconcile = {
        let attempts = attempts.clone();
        move |_key: u32| {
            let attempts = attempts.clone();
            async move {
                let n = {
                    let mut a = attempts.lock().unwrap();
                    a.push(tokio::time::Instant::now());
                    a.len()
                };
                if n <= 3 {
                    Err(format!("attempt {n} fails"))
                } else {
                    Ok(())
                }
            }
        }
    };
    let workers = tokio::spawn(run_workers("test", q.clone(), QueueHandles::default(), 2, token.clone(), reconcile));
    q.add(7);
    tokio::time::timeout(Duration::from_secs(10), async {
        while attempts.lock().unwrap().len() < 4 || q.is_pending(&7) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("recovered");
    let at = attempts.lock().unwrap().clone();
    assert_eq!(at.len(), 4, "no retry after the success");
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, want) in gaps.iter().zip([20u64, 40, 80]) {
        assert!(*gap >= Duration::from_millis(want), "retry after {gap:?}, backoff {want} ms");
    }
    token.cancel();
    workers.await.unwrap();
}

#[tokio::test]
async fn cancelling_the_token_stops_every_worker_even_mid_reconcile() {
    let q = queue(Backoff::default());
    let token = CancellationToken::new();
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let reconcile = {
        let started = started.clone();
        move |_key: u32| {
            let started = started.clone();
            async move {
                started.add_permits(1);
                std::future::pending::<()>().await;
                Ok::<(), String>(())
            }
        }
    };
    let workers = tokio::spawn(run_workers("test", q.clone(), QueueHandles::default(), 4, token.clone(), reconcile));
    for key in 0..3 {
        q.add(key);
    }
    let _ = started.acquire_many(3).await.unwrap();
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), workers).await.expect("workers stopped").unwrap();
}

#[tokio::test]
async fn a_key_added_while_running_runs_again_after() {
    let q = queue(Backoff::default());
    let token = CancellationToken::new();
    q.add(1);
    assert_eq!(q.next(&token).await, Some(1));
    q.add(1);
    assert_eq!(q.depth(), 0, "not handed out while running");
    q.done(1, true);
    assert_eq!(q.depth(), 1);
    assert_eq!(q.next(&token).await, Some(1));
    q.done(1, true);
    assert!(!q.is_pending(&1));
    token.cancel();
    assert_eq!(q.next(&token).await, None);
}

#[test]
fn a_consumer_holds_only_the_objects_it_wants() {
    // Wanted: services with a label; the others are held as missing.
    let wanted = |s: &Service| s.metadata.labels.is_some();
    let labelled = |name: &str, rv: u64| {
        let mut s = svc(name, rv);
        s.metadata.labels = Some([("mirror".to_string(), "yes".to_string())].into());
        s
    };
    let mut r = Watched::default();
    let handle = |r: &mut Watched<Service>, e: Event<Service>| watch::only_wanted(e, wanted).map(|e| r.handle(e)).unwrap_or_default();
    assert!(handle(&mut r, Event::Init).is_empty());
    handle(&mut r, Event::InitApply(labelled("a", 1)));
    handle(&mut r, Event::InitApply(svc("b", 2)));
    assert_eq!(names(&handle(&mut r, Event::InitDone)), ["+a@1"], "a relist leaves out what is not wanted");
    assert!(handle(&mut r, Event::Apply(svc("c", 3))).is_empty(), "an unwanted object is not held");
    assert_eq!(names(&handle(&mut r, Event::Apply(svc("a", 4)))), ["-a"], "an update that makes it unwanted is its deletion");
    assert_eq!(names(&handle(&mut r, Event::Apply(labelled("c", 5)))), ["+c@5"], "one that makes it wanted applies it");
    assert_eq!(r.reflector.len(), 1);
}
