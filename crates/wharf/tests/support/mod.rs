//! Test harness: runs the real `wharf` binary in a temporary data dir on a
//! free port and drives it with the real `kubectl` and a `kube` client.
#![allow(dead_code)]

pub mod net;
pub mod workload;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const KUBECTL: &str = "/usr/bin/kubectl";

/// Path of the shared examples (the seed story's manifests).
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name)
}

static NEXT_RANGE: AtomicU32 = AtomicU32::new(0);

/// A number distinct for each wharf a test process starts, so that their
/// addresses never collide.
fn next_slot() -> u32 {
    let n = NEXT_RANGE.fetch_add(1, Ordering::SeqCst);
    32 + (std::process::id().wrapping_mul(7).wrapping_add(n) % 200)
}

pub struct Wharf {
    pub dir: tempfile::TempDir,
    pub args: Vec<String>,
    child: Option<Child>,
    /// The API server's URL (`https://IP:PORT`), from the addresses file wharf writes.
    pub server: String,
    /// The cluster DNS address (UDP and TCP).
    pub dns: String,
    /// The metrics endpoint's URL.
    pub metrics_url: String,
    /// What `wharf up` printed when it came up.
    pub stdout: String,
    /// This wharf's node IP: backends of its pods listen here.
    pub node_ip: String,
}

impl Wharf {
    /// Starts `wharf up` with a private data dir, a free API port and a
    /// private service CIDR, plus `extra` flags.
    pub fn start(extra: &[&str]) -> Wharf {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<String> = vec![
            "up".into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--api-listen".into(),
            "127.0.0.1:0".into(),
            "--node-name".into(),
            "test-node".into(),
            "--addresses-file".into(),
            dir.path().join("addresses.json").display().to_string(),
        ];
        // A /16 of 127/8 for the service CIDR and a node IP outside it.
        let slot = next_slot();
        if !extra.contains(&"--service-cidr") {
            args.extend(["--service-cidr".into(), format!("127.{slot}.0.0/16")]);
        }
        let node_ip = match extra.iter().position(|a| *a == "--node-ip") {
            Some(i) => extra[i + 1].to_string(),
            None => {
                let ip = format!("127.254.{slot}.1");
                args.extend(["--node-ip".into(), ip.clone()]);
                ip
            }
        };
        // Tests never ask the host's resolvers; metrics on a free port;
        // load balancer addresses of their own.
        let lb_pool = format!("127.253.{slot}.0/24");
        for (flag, value) in [
            ("--dns-upstream", "none"),
            ("--metrics-listen", "127.0.0.1:0"),
            ("--lb-pool", lb_pool.as_str()),
            ("--node-status-interval", "1s"),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut w = Wharf {
            dir,
            args,
            child: None,
            server: String::new(),
            dns: String::new(),
            metrics_url: String::new(),
            stdout: String::new(),
            node_ip,
        };
        w.spawn();
        w
    }

    fn addresses_file(&self) -> PathBuf {
        self.dir.path().join("addresses.json")
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.addresses_file());
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start wharf");
        // The banner is printed once the addresses file is written; keep
        // draining stdout so the child never blocks on a full pipe.
        let stdout = child.stdout.take().expect("stdout");
        let banner = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = banner.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap_or_else(|p| p.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        let addresses: serde_json::Value = eventually(Duration::from_secs(60), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("wharf exited before it was up ({status}): {}", banner.lock().unwrap_or_else(|p| p.into_inner()));
            }
            let text = std::fs::read_to_string(self.addresses_file()).ok()?;
            serde_json::from_str(&text).ok()
        })
        .expect("wharf did not come up within 60 s");
        let field = |k: &str| addresses[k].as_str().unwrap_or_default().to_string();
        self.server = field("api");
        self.dns = field("dns");
        self.metrics_url = format!("http://{}/metrics", field("metrics"));
        // The banner follows the addresses file by a moment.
        let printed = eventually(Duration::from_secs(10), || {
            let text = banner.lock().unwrap_or_else(|p| p.into_inner());
            text.contains("kubectl get services").then(|| text.clone())
        });
        self.stdout = printed.unwrap_or_default();
        self.child = Some(child);
    }

    /// Sends SIGTERM (the process then shuts down on its own).
    pub fn sigterm(&self) {
        let child = self.child.as_ref().expect("running");
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
        assert!(sent.success());
    }

    /// Waits for the process to exit; its exit code (None: it did not
    /// exit in time and was killed, or died of a signal).
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let status = eventually(within, || child.try_wait().ok().flatten());
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        status.and_then(|s| s.code())
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Resident memory now and at its peak, in KiB, and open files.
    pub fn usage(&self) -> Usage {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
        };
        let files = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        Usage { rss_kib: field("VmRSS:"), peak_rss_kib: field("VmHWM:"), open_files: files }
    }

    /// The metrics endpoint's text.
    pub fn metrics(&self) -> String {
        let out = Command::new("curl").args(["-sf", &self.metrics_url]).output().expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data/admin.kubeconfig")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs kubectl against this server with its own discovery cache.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(KUBECTL)
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("KUBECACHEDIR", self.dir.path().join("kube-cache"))
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl and returns stdout, failing the test if it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// This wharf's DNS answer to `name` of type `qtype`, one record a line
    /// (`dig +short`).
    pub fn dig_short(&self, name: &str, qtype: &str) -> String {
        let (ip, port) = self.dns.rsplit_once(':').expect("host:port");
        let out = Command::new("dig")
            .args([&format!("@{}", ip.trim_matches(['[', ']'])), "-p", port, name, qtype, "+short", "+time=2", "+tries=1"])
            .output()
            .expect("dig (installed by the test command)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl expecting failure and returns stderr.
    pub fn kubectl_err(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(!out.status.success(), "kubectl {args:?} should have failed: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Applies a manifest given as text.
    pub fn apply_text(&self, yaml: &str) -> Output {
        let path = self.dir.path().join(format!("manifest-{}.yaml", rand::random::<u32>()));
        std::fs::write(&path, yaml).expect("write manifest");
        self.kubectl(&["apply", "-f", path.to_str().expect("path")])
    }

    /// A `kube` client with the admin credentials.
    pub async fn client(&self) -> kube::Client {
        let config = kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await.expect("client config");
        kube::Client::try_from(config).expect("client")
    }

    /// SIGKILLs the server: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

/// What a process uses (from /proc).
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    pub open_files: usize,
}

impl Drop for Wharf {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A backend process stand-in: accepts TCP connections on `addr` and,
/// when `http` is set, answers every request with 200 and its own port
/// (so tests can tell backends apart). Dropping it closes the listener at
/// once, as a killed process would; connections already accepted finish.
pub struct Backend {
    pub addr: std::net::SocketAddr,
    listener: std::net::TcpListener,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    pub fn start(addr: &str, http: bool) -> Backend {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().expect("addr");
        let acceptor = listener.try_clone().expect("clone");
        let thread = std::thread::spawn(move || {
            // Ends when the listener is shut down.
            while let Ok((mut conn, _)) = acceptor.accept() {
                if !http {
                    continue;
                }
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let body = addr.port().to_string();
                        let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if conn.write_all(reply.as_bytes()).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Backend { addr, listener, thread: Some(thread) }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = socket2::SockRef::from(&self.listener).shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The seed story's backends on a wharf's node IP, while they live.
pub struct Seed {
    pub mysql: Backend,
    pub redis: Backend,
    pub fleet_a: Option<Backend>,
    pub fleet_b: Option<Backend>,
}

impl Wharf {
    /// Starts the seed's backends (fleet-b's only if `fleet_b`: without
    /// it its readiness probe fails) and applies the seed's manifests.
    pub fn seed(&self, fleet_b: bool) -> Seed {
        let ip = &self.node_ip;
        let seed = Seed {
            mysql: Backend::start(&format!("{ip}:3306"), false),
            redis: Backend::start(&format!("{ip}:6379"), false),
            fleet_a: Some(Backend::start(&format!("{ip}:8080"), true)),
            fleet_b: fleet_b.then(|| Backend::start(&format!("{ip}:8081"), true)),
        };
        self.kubectl_ok(&["apply", "-f", example("kolide-fleet").to_str().unwrap()]);
        seed
    }
}

/// A UDP backend: answers every datagram with its own port.
pub struct UdpBackend {
    pub addr: std::net::SocketAddr,
    socket: std::net::UdpSocket,
}

impl UdpBackend {
    pub fn start(addr: &str) -> UdpBackend {
        let socket = std::net::UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = socket.local_addr().expect("addr");
        let worker = socket.try_clone().expect("clone");
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((_, peer)) = worker.recv_from(&mut buf) {
                let _ = worker.send_to(addr.port().to_string().as_bytes(), peer);
            }
        });
        UdpBackend { addr, socket }
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        // Unblock the worker: it answers this last datagram, then the
        // socket closes with the last handle.
        let _ = self.socket.send_to(b"stop", self.addr);
    }
}

/// One HTTP request to `addr`; the backend's answer body (its port).
pub fn http_get(addr: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: wharf\r\n\r\n")?;
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before the answer"));
        }
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
            if body.len() >= len {
                return Ok(body[..len].to_string());
            }
        }
    }
}

/// Polls `check` until it returns Some or the timeout passes.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
