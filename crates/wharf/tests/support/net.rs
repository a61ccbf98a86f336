//! Network namespaces a test makes and removes: hosts on a bridge in a
//! namespace of its own (`switched`), or routed by the test's own
//! namespace (`routed_host`), and the processes started in them.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs `body` on a thread in a new network namespace with loopback up
/// (root): what it starts sees only that namespace's addresses, routes
/// and nftables.
pub fn in_own_netns(body: impl FnOnce() + Send + 'static) {
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a network namespace of its own (tests run as root)");
        let up = Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip");
        assert!(up.success());
        body();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// A network of namespaces joined by a bridge in a namespace of its own.
pub struct Net {
    prefix: String,
    pub subnet: u32,
    namespaces: Vec<String>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Net {
    /// Namespaces named after this test process, none made yet.
    pub fn new() -> Net {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        Net {
            prefix: format!("wh{}-{n}", std::process::id()),
            subnet: (std::process::id() * 3 + n) % 250 + 1,
            namespaces: Vec::new(),
            children: Vec::new(),
            dir: tempfile::Builder::new().disable_cleanup(std::env::var_os("WHARF_KEEP_TEST_DIR").is_some()).tempdir().unwrap(),
        }
    }

    /// With a bridge in a namespace of its own, for `host`.
    pub fn switched() -> Net {
        let mut net = Net::new();
        let switch = net.netns("sw");
        run("ip", &["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", &switch, "link", "set", "br0", "up"]);
        net
    }

    /// A host routed by the current namespace: `eth0` in a new namespace
    /// with `ip`/24 and a default route via `gateway`. Its peer here is on
    /// `bridge` (made with `gateway`/24 if missing), or with no bridge
    /// holds `gateway`/24 itself (a routed veth, as Calico wires pods:
    /// Linux does not route a packet back out of the bridge port it came
    /// in by, so a pod behind a bridge cannot reach itself through a
    /// service without bridge netfilter).
    pub fn routed_host(&mut self, name: &str, bridge: Option<&str>, ip: &str, gateway: &str) -> String {
        let ns = self.netns(name);
        if let Some(bridge) = bridge {
            if !Command::new("ip").args(["link", "show", bridge]).output().is_ok_and(|o| o.status.success()) {
                run("ip", &["link", "add", bridge, "type", "bridge"]);
                run("ip", &["addr", "add", &format!("{gateway}/24"), "dev", bridge]);
                run("ip", &["link", "set", bridge, "up"]);
            }
        }
        let near = format!("v-{name}");
        run("ip", &["link", "add", &near, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        match bridge {
            Some(bridge) => run("ip", &["link", "set", &near, "master", bridge]),
            None => run("ip", &["addr", "add", &format!("{gateway}/24"), "dev", &near]),
        };
        run("ip", &["link", "set", &near, "up"]);
        run("ip", &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        run("ip", &["-n", &ns, "route", "add", "default", "via", gateway]);
        ns
    }

    pub fn netns(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        run("ip", &["netns", "add", &ns]);
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        self.namespaces.push(ns.clone());
        ns
    }

    /// A host on the bridge: its namespace and address.
    pub fn host(&mut self, name: &str, octet: u32) -> (String, String) {
        let ns = self.netns(name);
        let switch = format!("{}-sw", self.prefix);
        let ip = format!("198.18.{}.{octet}", self.subnet);
        run("ip", &["link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &format!("p-{name}"), "netns", &switch]);
        run("ip", &["-n", &switch, "link", "set", &format!("p-{name}"), "master", "br0"]);
        run("ip", &["-n", &switch, "link", "set", &format!("p-{name}"), "up"]);
        run("ip", &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        (ns, ip)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a program in a namespace; returns its index for `kill`.
    pub fn spawn(&mut self, ns: &str, program: &str, args: &[&str], log: &str) -> usize {
        self.spawn_logging(ns, program, args, log, "warn")
    }

    pub fn spawn_logging(&mut self, ns: &str, program: &str, args: &[&str], log: &str, level: &str) -> usize {
        let log = std::fs::File::create(self.path(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .env("RUST_LOG", level)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    pub fn kill(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }

    pub fn output(&self, ns: &str, program: &str, args: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", ns, program]).args(args).stdin(Stdio::null()).output().unwrap()
    }

    pub fn stdout(&self, ns: &str, program: &str, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.output(ns, program, args).stdout).trim().to_string()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    eprintln!("--- {} ---\n{}", path.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
                }
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
