//! The dashboard in a real browser (headless Chromium through Selenium,
//! `tests/clients/dashboard_browser.py`) on the seed story, and its data
//! endpoints refusing callers without a valid token. Screenshots of each
//! page are kept in `target/tmp/dashboard-screenshots`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::Wharf;

/// The browser test's whole run at most.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(240);

/// The HTTP status of `path` on the API port, with `token` if given.
fn status(w: &Wharf, path: &str, token: Option<&str>) -> String {
    request_status(w, "GET", path, token)
}

fn request_status(w: &Wharf, method: &str, path: &str, token: Option<&str>) -> String {
    let mut curl = Command::new("curl");
    curl.args(["-sk", "-X", method, "-o", "/dev/null", "-w", "%{http_code}", &format!("{}{path}", w.server)]);
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    String::from_utf8_lossy(&curl.output().expect("run curl").stdout).into_owned()
}

fn login_url(w: &Wharf) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["dashboard", "--kubeconfig", w.kubeconfig().to_str().unwrap()])
        .output()
        .expect("run wharf dashboard");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_dashboard_needs_a_login_and_its_pages_are_public() {
    let w = Wharf::start(&[]);
    assert_eq!(status(&w, "/ui/", None), "200", "the login page");
    assert_eq!(status(&w, "/ui/app.js", None), "200");
    assert_eq!(status(&w, "/ui/api/chain/default/kubernetes", None), "401", "data without a token");
    assert_eq!(status(&w, "/ui/api/chain/default/kubernetes", Some("wharf-session.guess")), "401", "a made-up session");
    assert_eq!(status(&w, "/ui/api/login-codes", None), "401");
    let url = login_url(&w);
    let code = url.split("#code=").nth(1).expect("a code in the fragment");
    let redeem = |code: &str| {
        let out = Command::new("curl")
            .args(["-sk", "-X", "POST", "-H", "Content-Type: application/json", "-d", &format!(r#"{{"code":"{code}"}}"#)])
            .arg(format!("{}/ui/api/sessions", w.server))
            .output()
            .expect("run curl");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")
    };
    let session = redeem(code)["token"].as_str().expect("a session token").to_string();
    assert_eq!(redeem(code)["code"], 401, "a code works once");
    assert_eq!(status(&w, "/ui/api/chain/default/kubernetes", Some(&session)), "200");
    assert_eq!(status(&w, "/api/v1/services", Some(&session)), "200", "the session is the user's, on the API too");
    assert_eq!(request_status(&w, "POST", "/ui/api/login-codes", Some(&session)), "403", "a session cannot mint another");
    assert_eq!(status(&w, "/ui/api/chain/default/Not_A_Name", Some(&session)), "400", "names are checked");
    assert_eq!(request_status(&w, "DELETE", "/ui/api/sessions", Some(&session)), "204", "logout");
    assert_eq!(status(&w, "/api/v1/services", Some(&session)), "401", "an ended session is refused");
}

#[test]
fn the_dashboard_shows_the_seed_live_in_a_browser() {
    let w = Wharf::start(&[]);
    // No backend for fleet-b: its readiness probe fails.
    let mut seed = w.seed(false);
    // Some traffic for the services table.
    let mysql_ip = w.kubectl_ok(&["get", "svc", "kolide-fleet-mysql", "-o", "jsonpath={.spec.clusterIP}"]);
    let connected = support::eventually(Duration::from_secs(30), || {
        (0..5).all(|_| std::net::TcpStream::connect(format!("{mysql_ip}:3306")).is_ok()).then_some(())
    });
    assert!(connected.is_some(), "mysql through its cluster IP");
    let metrics = w.metrics();
    for family in ["wharf_proxy_connections_total", "wharf_proxy_endpoint_active_connections", "wharf_proxy_endpoint_bytes_total"] {
        let series = format!("{family}{{service=\"default/kolide-fleet-mysql:");
        assert!(metrics.contains(&series), "per-endpoint {family} on /metrics: {metrics}");
    }
    assert!(
        !metrics.contains("wharf_proxy_connections_total{service=\"default/kolide-fleet-redis:"),
        "series only for endpoints with traffic"
    );
    // ... and more while the browser looks, for the rates and graphs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, target) = (stop.clone(), format!("{mysql_ip}:3306"));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::net::TcpStream::connect(&target);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/dashboard_browser.py");
    let mut browser = Command::new("/usr/bin/python3")
        .arg(script)
        .args([w.server.clone(), login_url(&w), out.display().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the browser test");
    // The browser test ends within BROWSER_TIMEOUT, or is killed; the
    // script's own `finally` stops Chromium and its driver.
    let finished_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let (finished, pid) = (finished_flag.clone(), browser.id());
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + BROWSER_TIMEOUT;
            while !finished.load(std::sync::atomic::Ordering::Relaxed) {
                if std::time::Instant::now() > deadline {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let mut stdin = browser.stdin.take().unwrap();
    let stdout = BufReader::new(browser.stdout.take().unwrap());
    for line in stdout.lines().map_while(Result::ok) {
        if line == "MAKE_UNREADY" {
            drop(seed.fleet_a.take());
            writeln!(stdin, "ok").unwrap();
        }
    }
    let finished = browser.wait_with_output().expect("the browser test");
    finished_flag.store(true, std::sync::atomic::Ordering::Relaxed);
    watchdog.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.join().unwrap();
    assert!(finished.status.success(), "browser test failed: {}", String::from_utf8_lossy(&finished.stderr));
    assert!(seed.fleet_a.is_none(), "the browser test reached the live change");
    for page in ["login.png", "services.png", "service.png", "service-unready.png", "nodes.png"] {
        let size = std::fs::metadata(out.join(page)).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "screenshot {page}: {size} bytes");
    }
}
