//! Shutdown as an operator sees it: SIGTERM stops new work, lets a long
//! proxied transfer finish within the grace, exits 0, and the store
//! reopens with everything in it.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::Wharf;

const CHUNK: usize = 64 << 10;
const CHUNKS: usize = 320; // 20 MiB, sent over about three seconds

/// A backend that answers each connection with `CHUNKS` chunks, slowly.
fn slow_backend(ip: &str) -> u16 {
    let listener = TcpListener::bind(format!("{ip}:0")).expect("bind");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        while let Ok((mut conn, _)) = listener.accept() {
            std::thread::spawn(move || {
                let chunk = vec![7u8; CHUNK];
                for _ in 0..CHUNKS {
                    if conn.write_all(&chunk).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }
    });
    port
}

#[test]
fn sigterm_lets_a_long_transfer_finish_and_the_store_reopens() {
    let mut w = Wharf::start(&["--shutdown-grace", "30s"]);
    let port = slow_backend(&w.node_ip);
    let out = w.apply_text(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: slow-0\n  labels: {{app: slow}}\nspec:\n  containers:\n  - name: c\n    image: x\n    ports:\n    - {{name: data, containerPort: {port}}}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: slow\nspec:\n  selector: {{app: slow}}\n  ports:\n  - {{port: 80, targetPort: data}}\n"
    ));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ip = w.kubectl_ok(&["get", "svc", "slow", "-o", "jsonpath={.spec.clusterIP}"]);
    let vip = format!("{ip}:80");
    let mut conn = support::eventually(Duration::from_secs(30), || {
        let mut conn = TcpStream::connect(&vip).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut first = [0u8; 1];
        (conn.read(&mut first).ok()? == 1).then_some(conn)
    })
    .expect("a transfer through the cluster IP");
    let started = Instant::now();
    w.sigterm();
    // The transfer in flight goes on to its end...
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).expect("the transfer was cut");
    assert_eq!(rest.len() + 1, CHUNK * CHUNKS, "bytes lost in the shutdown");
    // The client closes its side too: the connection is over.
    drop(conn);
    // ...new connections are no longer taken...
    assert!(TcpStream::connect(&vip).is_err(), "the proxy still accepts after SIGTERM");
    // ...and the process exits 0, well within the grace.
    assert_eq!(w.wait_exit(Duration::from_secs(30)), Some(0), "wharf did not exit cleanly");
    assert!(started.elapsed() < Duration::from_secs(30));

    w.restart();
    assert_eq!(w.kubectl_ok(&["get", "svc", "slow", "-o", "jsonpath={.spec.clusterIP}"]), ip, "the store lost the service");
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut w = Wharf::start(&["--shutdown-grace", "60s"]);
    let port = slow_backend(&w.node_ip);
    let out = w.apply_text(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: slow-0\n  labels: {{app: slow}}\nspec:\n  containers:\n  - name: c\n    image: x\n    ports:\n    - {{name: data, containerPort: {port}}}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: slow\nspec:\n  selector: {{app: slow}}\n  ports:\n  - {{port: 80, targetPort: data}}\n"
    ));
    assert!(out.status.success());
    let ip = w.kubectl_ok(&["get", "svc", "slow", "-o", "jsonpath={.spec.clusterIP}"]);
    // A transfer that holds the shutdown open.
    let mut conn = support::eventually(Duration::from_secs(30), || {
        let mut conn = TcpStream::connect(format!("{ip}:80")).ok()?;
        let mut first = [0u8; 1];
        (conn.read(&mut first).ok()? == 1).then_some(conn)
    })
    .expect("a transfer");
    w.sigterm();
    let mut buf = [0u8; CHUNK];
    assert!(conn.read(&mut buf).unwrap() > 0, "the first signal must not cut the transfer");
    // Two signals that arrive before the process took the first are one
    // (the kernel keeps one pending signal of a kind): send the second
    // once shutdown has visibly begun.
    let refused = support::eventually(Duration::from_secs(10), || TcpStream::connect(format!("{ip}:80")).is_err().then_some(()));
    assert!(refused.is_some(), "the first signal did not stop the proxy accepting");
    w.sigterm();
    assert_eq!(w.wait_exit(Duration::from_secs(5)), Some(130), "the second signal did not end wharf at once");
}

/// The allocator is jemalloc, run with its options (`MALLOC_CONF` in
/// main.rs): its background threads return freed memory while the server
/// is idle. Without the options, or with another allocator, there are none.
#[test]
fn the_allocator_gives_memory_back_from_its_own_threads() {
    let w = Wharf::start(&[]);
    let allocator_threads = || {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", w.pid())).ok()?;
        let names = tasks.filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok());
        let count = names.filter(|name| name.trim() == "jemalloc_bg_thd").count();
        (count > 0).then_some(count)
    };
    assert!(support::eventually(Duration::from_secs(10), allocator_threads).is_some(), "no jemalloc background thread in wharf up");
    // jemalloc reads its options at the first allocation and tells of one
    // it does not take (a slab size it rejects) on stderr, then goes on without it.
    let version = std::process::Command::new(env!("CARGO_BIN_EXE_wharf")).arg("--version").output().expect("wharf --version");
    let stderr = String::from_utf8_lossy(&version.stderr);
    assert!(version.status.success() && !stderr.contains("<jemalloc>"), "jemalloc refused an option: {stderr}");
}
