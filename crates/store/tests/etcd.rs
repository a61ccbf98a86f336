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
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian package etcd-server) must be installed");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Etcd { child, url, _dir: dir }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_semantics_on_etcd() {
    let etcd = Etcd::start();
    let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(std::slice::from_ref(&etcd.url), None).await.unwrap());
    semantics::compare_and_swap_guards_writes(store.as_ref(), "/t1").await;
    semantics::failed_compare_writes_none_of_the_ops(store.as_ref(), "/t2").await;
    semantics::list_is_limited_to_the_prefix(store.as_ref(), "/t3").await;
    semantics::watch_replays_then_follows_in_order(store.as_ref(), "/t4").await;
    semantics::concurrent_writers_lose_no_update(store.clone(), "/t5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_share_one_keyspace_and_revision() {
    let etcd = Etcd::start();
    let a = EtcdStore::connect(std::slice::from_ref(&etcd.url), None).await.unwrap();
    let b = EtcdStore::connect(std::slice::from_ref(&etcd.url), None).await.unwrap();
    let TxnOutcome::Committed(rev) = a.txn(Txn::new().put("/shared", "from a")).await.unwrap() else { panic!() };
    let kv = b.get("/shared").await.unwrap().unwrap();
    assert_eq!((&kv.value[..], kv.mod_revision), (&b"from a"[..], rev));
    // A key taken through one client is taken for the other.
    let taken = b.txn(Txn::new().when(wharf_store::Compare::Absent("/shared".into())).put("/shared", "b")).await.unwrap();
    assert_eq!(taken, TxnOutcome::Failed);
}
