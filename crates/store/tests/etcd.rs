//! The etcd backend against a real etcd on loopback.

mod semantics;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf_store::{EtcdStore, Store, Txn, TxnOutcome};

struct Etcd {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Etcd {
    fn start() -> Etcd {
        Self::start_with(&[])
    }

    /// Starts etcd on free ports. A port picked free can be taken before
    /// etcd binds it (by another test's etcd), so a start whose etcd exits
    /// is tried again on new ports, and readiness is etcd's own /health
    /// answer, not merely an open port.
    fn start_with(extra: &[&str]) -> Etcd {
        for _ in 0..5 {
            if let Some(etcd) = Self::try_start(extra) {
                return etcd;
            }
        }
        panic!("etcd did not start");
    }

    fn try_start(extra: &[&str]) -> Option<Etcd> {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut child = Command::new("etcd")
            .args([
                "--name",
                "t",
                "--data-dir",
                dir.path().to_str().unwrap(),
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("t={peer_url}"),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian package etcd-server) must be installed");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !healthy(client) {
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Etcd { child, url, _dir: dir })
    }
}

/// Whether the etcd client port answers its health check.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = String::new();
    conn.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_ok()
        && conn.read_to_string(&mut answer).is_ok()
        && answer.contains("\"health\":\"true\"")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// More than gRPC's 4 MiB reply bound and more than one page: 1,200
/// values of 5 KB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_larger_than_one_reply_comes_whole() {
    let etcd = Etcd::start();
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.url), None, None).await.unwrap();
    let value = vec![b'x'; 5_000];
    for i in 0..1200 {
        let txn =
            Txn { compares: Vec::new(), ops: vec![wharf_store::Op::Put { key: format!("/big/{i:04}"), value: value.clone().into() }] };
        store.txn(txn).await.unwrap();
    }
    let (items, rev) = store.list("/big/").await.unwrap();
    assert_eq!(items.len(), 1200, "every key, across pages");
    assert!(items.windows(2).all(|w| w[0].key < w[1].key), "in key order, none twice");
    assert!(rev >= items.iter().map(|kv| kv.mod_revision).max().unwrap(), "the list's revision covers every item");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_semantics_on_etcd() {
    let etcd = Etcd::start();
    let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(std::slice::from_ref(&etcd.url), None, None).await.unwrap());
    semantics::compare_and_swap_guards_writes(store.as_ref(), "/t1").await;
    semantics::failed_compare_writes_none_of_the_ops(store.as_ref(), "/t2").await;
    semantics::list_is_limited_to_the_prefix(store.as_ref(), "/t3").await;
    semantics::a_snapshot_reads_pages_as_the_store_stood(store.as_ref(), "/t6").await;
    semantics::watch_replays_then_follows_in_order(store.as_ref(), "/t4").await;
    semantics::concurrent_writers_lose_no_update(store.clone(), "/t5").await;
}

/// A list's later pages read etcd at the first page's revision; once etcd
/// has compacted it, the next page is refused as compacted (the API's 410
/// Expired), never read at another revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_etcd_has_compacted_is_refused() {
    let etcd = Etcd::start();
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.url), None, None).await.unwrap();
    store.txn(Txn::new().put("/c/a", "1").put("/c/b", "1")).await.unwrap();
    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.list_from("/c/", "/c/", 1).await.unwrap().len(), 1);
    let TxnOutcome::Committed(now) = store.txn(Txn::new().put("/c/a", "2")).await.unwrap() else { panic!() };
    etcdctl(&etcd, &["compact", &now.to_string()]);
    match snapshot.list_from("/c/", "/c/b", 1).await {
        Err(wharf_store::StoreError::Compacted { requested, .. }) => assert_eq!(requested, snapshot.revision()),
        other => panic!("read a compacted revision: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_share_one_keyspace_and_revision() {
    let etcd = Etcd::start();
    let a = EtcdStore::connect(std::slice::from_ref(&etcd.url), None, None).await.unwrap();
    let b = EtcdStore::connect(std::slice::from_ref(&etcd.url), None, None).await.unwrap();
    let TxnOutcome::Committed(rev) = a.txn(Txn::new().put("/shared", "from a")).await.unwrap() else { panic!() };
    let kv = b.get("/shared").await.unwrap().unwrap();
    assert_eq!((&kv.value.bytes()[..], kv.mod_revision), (&b"from a"[..], rev));
    // A key taken through one client is taken for the other.
    let taken = b.txn(Txn::new().when(wharf_store::Compare::Absent("/shared".into())).put("/shared", "b")).await.unwrap();
    assert_eq!(taken, TxnOutcome::Failed);
}

fn etcdctl(etcd: &Etcd, args: &[&str]) {
    let out = Command::new("etcdctl").arg("--endpoints").arg(&etcd.url).args(args).output().expect("etcdctl (Debian etcd-client)");
    assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_and_password_on_an_etcd_with_auth_even_after_the_token_expires() {
    // Tokens expire after a second here; the store logs in again.
    let etcd = Etcd::start_with(&["--auth-token-ttl", "1"]);
    etcdctl(&etcd, &["user", "add", "root:s3cret"]);
    etcdctl(&etcd, &["user", "grant-role", "root", "root"]);
    etcdctl(&etcd, &["auth", "enable"]);
    let url = std::slice::from_ref(&etcd.url);
    assert!(EtcdStore::connect(url, None, None).await.is_err(), "no credentials");
    let wrong = wharf_store::EtcdCredentials { user: "root".into(), password: "guess".into() };
    assert!(EtcdStore::connect(url, None, Some(wrong)).await.is_err(), "a wrong password");
    let right = wharf_store::EtcdCredentials { user: "root".into(), password: "s3cret".into() };
    let store = EtcdStore::connect(url, None, Some(right)).await.expect("the right password");
    let put = |v: &'static str| Txn { compares: vec![], ops: vec![wharf_store::Op::Put { key: "/a".into(), value: v.into() }] };
    assert!(matches!(store.txn(put("1")).await.unwrap(), TxnOutcome::Committed(_)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(store.get("/a").await.unwrap().unwrap().value, "1", "a read after the token expired");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut events = store.watch("/a", store.revision()).await.expect("a watch after the token expired");
    assert!(matches!(store.txn(put("2")).await.unwrap(), TxnOutcome::Committed(_)));
    let event = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut events)).await.unwrap().unwrap().unwrap();
    assert_eq!(event.value, "2");
}
