//! Load generators for the benchmark scripts in `bench/`, talking to
//! wharf through the Kubernetes API like any client (`$KUBECONFIG`).

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures::{stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};

#[derive(Parser)]
struct Cli {
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create N ClusterIP services named svc-0 .. svc-N-1.
    Services { count: usize },
    /// Create SERVICES services with PODS_PER_SERVICE ready pods each
    /// (bound to a node without an agent; status set as a kubelet would),
    /// then flip single pods' readiness and time each flip until the
    /// EndpointSlice shows it.
    /// Keep-alive HTTP GETs at a fixed total rate over CONNECTIONS
    /// connections; latency is measured from each request's scheduled
    /// time (no coordinated omission). Prints p50/p99/p999 in µs.
    HttpLatency {
        target: std::net::SocketAddr,
        #[arg(long)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 16)]
        connections: u64,
    },
    /// Creates one ClusterIP service and prints the wall-clock time (unix
    /// ns) just before the request went out.
    CreateService { name: String },
    /// Waits until a DNS server answers NAME with an A record, then until
    /// that address accepts TCP on PORT; prints the wall-clock times (unix
    /// ns) of both.
    WaitService {
        #[arg(long)]
        dns: std::net::SocketAddr,
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 80)]
        port: u16,
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
    EndpointLatency {
        #[arg(long, default_value_t = 1000)]
        services: usize,
        #[arg(long, default_value_t = 10)]
        pods_per_service: usize,
        #[arg(long, default_value_t = 300)]
        flips: usize,
    },
    /// Creates the headless service `churn` with PODS ready pods, then
    /// flips one pod's readiness RATE times a second for SECONDS: endpoint
    /// changes streaming in, as a rolling update would make them.
    /// Creates SERVICES selectorless services with one endpoint each, then
    /// the service `sync-probe` whose one endpoint moves CHANGES times
    /// between two local backends; times each move from the slice write
    /// until a new connection to the cluster IP reaches the new backend.
    ProxySync {
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        #[arg(long, default_value_t = 100)]
        changes: usize,
    },
    Churn {
        #[arg(long, default_value_t = 100)]
        pods: usize,
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

fn service(i: usize) -> anyhow::Result<Service> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("svc-{i}"), "labels": {"app": format!("app-{i}")}},
        "spec": {"selector": {"app": format!("app-{i}")}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))?)
}

async fn create_services(api: &Api<Service>, count: usize, concurrency: usize) -> anyhow::Result<()> {
    stream::iter(0..count)
        .map(|i| async move {
            api.create(&PostParams::default(), &service(i)?).await?;
            anyhow::Ok(())
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await
}

/// A distinct loopback address per pod, for up to 250 × 250 × 250 pods.
fn pod_ip(n: usize) -> String {
    format!("127.{}.{}.{}", n / 62_500 % 250 + 1, n / 250 % 250, n % 250 + 1)
}

fn ready_status(n: usize, ready: bool) -> serde_json::Value {
    let flag = if ready { "True" } else { "False" };
    serde_json::json!({"status": {"phase": "Running", "podIP": pod_ip(n), "hostIP": "127.0.0.1",
        "conditions": [{"type": "Ready", "status": flag}, {"type": "ContainersReady", "status": flag}]}})
}

async fn create_pods(api: &Api<Pod>, services: usize, per: usize, concurrency: usize) -> anyhow::Result<()> {
    create_labelled_pods(api, "pod", 0..services * per, |n| format!("app-{}", n / per), concurrency).await
}

/// Creates a ready pod PREFIX-n for each n in NUMBERS, labelled app=APP(n),
/// with the address `pod_ip(n)`.
async fn create_labelled_pods(
    api: &Api<Pod>,
    prefix: &str,
    numbers: std::ops::Range<usize>,
    app: impl Fn(usize) -> String,
    concurrency: usize,
) -> anyhow::Result<()> {
    let app = &app;
    stream::iter(numbers)
        .map(|n| async move {
            let name = format!("{prefix}-{n}");
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": {"app": app(n)}},
                "spec": {"nodeName": "bench-node", "containers": [{"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]},
            }))?;
            api.create(&PostParams::default(), &pod).await?;
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&ready_status(n, true))).await?;
            anyhow::Ok(())
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await
}

/// Readiness of every endpoint in a slice event: (pod name, ready).
fn slice_readiness(slice: &EndpointSlice) -> Vec<(String, bool)> {
    slice
        .endpoints
        .iter()
        .filter_map(|e| {
            let name = e.target_ref.as_ref()?.name.clone()?;
            Some((name, e.conditions.as_ref()?.ready == Some(true)))
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn endpoint_latency(client: kube::Client, services: usize, per: usize, flips: usize, concurrency: usize) -> anyhow::Result<()> {
    let svc_api: Api<Service> = Api::namespaced(client.clone(), "default");
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    create_services(&svc_api, services, concurrency).await?;
    create_pods(&pod_api, services, per, concurrency).await?;
    println!("created {services} services and {} pods in {:.1}s", services * per, started.elapsed().as_secs_f64());

    // Follow every managed slice; forward each endpoint state with its arrival time.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<(String, bool)>)>();
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    tokio::spawn(async move {
        let cfg = watcher::Config::default().labels("endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io");
        let events = watcher::watcher(slices, cfg);
        futures::pin_mut!(events);
        while let Some(Ok(event)) = events.next().await {
            if let Event::Apply(s) | Event::InitApply(s) = event {
                let _ = tx.send((Instant::now(), slice_readiness(&s)));
            }
        }
    });
    // Wait until the controller has caught up with every pod.
    let mut ready = std::collections::HashMap::new();
    let settle = Instant::now();
    while ready.values().filter(|r| **r).count() < services * per {
        let (_, states) = rx.recv().await.ok_or_else(|| anyhow::anyhow!("slice watch ended"))?;
        ready.extend(states);
    }
    println!("all {} endpoints ready in slices {:.1}s after the last pod write", services * per, settle.elapsed().as_secs_f64());

    let mut latencies = Vec::with_capacity(flips);
    for k in 0..flips {
        let n = (k * 7919) % (services * per);
        let name = format!("pod-{n}");
        let want = !ready[&name];
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        pod_api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&ready_status(n, want))).await?;
        loop {
            let (at, states) = rx.recv().await.ok_or_else(|| anyhow::anyhow!("slice watch ended"))?;
            if states.iter().any(|(p, r)| p == &name && *r == want) {
                latencies.push(at - t0);
                ready.insert(name.clone(), want);
                break;
            }
        }
    }
    latencies.sort();
    println!(
        "readiness change -> EndpointSlice, {flips} flips: median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    );
    Ok(())
}

/// Pod addresses of the churn pods: above every `pod-n` the other
/// generators make.
const CHURN_IP_BASE: usize = 10_000_000;

async fn churn(client: kube::Client, pods: usize, rate: u64, seconds: u64, concurrency: usize) -> anyhow::Result<()> {
    let svc_api: Api<Service> = Api::namespaced(client.clone(), "default");
    let pod_api: Api<Pod> = Api::namespaced(client, "default");
    let svc: Service = serde_json::from_value(serde_json::json!({"metadata": {"name": "churn"},
        "spec": {"clusterIP": "None", "selector": {"app": "churn"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}))?;
    svc_api.create(&PostParams::default(), &svc).await?;
    let numbers = CHURN_IP_BASE..CHURN_IP_BASE + pods;
    create_labelled_pods(&pod_api, "churn", numbers, |_| "churn".to_string(), concurrency).await?;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut ready = vec![true; pods];
    let mut changes = 0u64;
    println!("churn: started");
    while Instant::now() < end {
        tick.tick().await;
        let n = (changes as usize * 7919) % pods;
        ready[n] = !ready[n];
        let status = ready_status(CHURN_IP_BASE + n, ready[n]);
        pod_api.patch_status(&format!("churn-{}", CHURN_IP_BASE + n), &PatchParams::default(), &Patch::Merge(&status)).await?;
        if changes.is_multiple_of(rate) {
            println!("churn: {changes} changes in {:.0}s", started.elapsed().as_secs_f64());
        }
        changes += 1;
    }
    println!("churn: {changes} readiness changes in {seconds}s");
    Ok(())
}

fn unix_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// The first A record of `name` from `dns`, if any.
fn lookup_a(socket: &std::net::UdpSocket, dns: std::net::SocketAddr, name: &str) -> Option<std::net::Ipv4Addr> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut query = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    query.add_query(Query::query(Name::from_ascii(format!("{name}.")).ok()?, RecordType::A));
    socket.send_to(&query.to_vec().ok()?, dns).ok()?;
    let mut buf = [0u8; 1500];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    Message::from_vec(&buf[..n]).ok()?.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

fn rand_id() -> u16 {
    (unix_ns() % 65_536) as u16
}

fn wait_service(dns: std::net::SocketAddr, name: &str, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let ip = loop {
        if let Some(ip) = lookup_a(&socket, dns, name) {
            break ip;
        }
        anyhow::ensure!(Instant::now() < deadline, "{name} never resolved");
        std::thread::sleep(Duration::from_millis(1));
    };
    let dns_at = unix_ns();
    let target = std::net::SocketAddr::from((ip, port));
    while std::net::TcpStream::connect_timeout(&target, Duration::from_millis(50)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{target} never listened");
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("{dns_at} {}", unix_ns());
    Ok(())
}

/// One connection's share of a fixed-rate load, on its own thread with
/// blocking I/O: requests at `start + offset + k * interval`, each timed
/// from its scheduled moment (no coordinated omission). Threads sleep
/// with nanosleep and a 1 ns timer slack, so pacing is accurate to a few
/// microseconds (tokio's timer wheel rounds to milliseconds).
fn paced_connection(
    target: std::net::SocketAddr,
    start: Instant,
    offset: Duration,
    interval: Duration,
    end: Instant,
) -> anyhow::Result<Vec<Duration>> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(target)?;
    conn.set_nodelay(true)?;
    let mut buf = vec![0u8; 4096];
    let mut latencies = Vec::new();
    let mut due = start + offset;
    while due < end {
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        conn.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut got = Vec::new();
        loop {
            let n = conn.read(&mut buf)?;
            anyhow::ensure!(n > 0, "connection closed");
            got.extend_from_slice(&buf[..n]);
            if let Some(head_end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
                let len: usize =
                    head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
                if got.len() >= head_end + 4 + len {
                    break;
                }
            }
        }
        latencies.push(due.elapsed());
        due += interval;
    }
    Ok(latencies)
}

async fn http_latency(target: std::net::SocketAddr, rate: u64, seconds: u64, connections: u64) -> anyhow::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's (and its
    // children's) timer slack; the arguments are plain integers.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    let interval = Duration::from_secs_f64(connections as f64 / rate as f64);
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let offset = interval.mul_f64(c as f64 / connections as f64);
            std::thread::spawn(move || paced_connection(target, start, offset, interval, end))
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
    }
    all.sort();
    let us = |p: f64| percentile(&all, p).as_secs_f64() * 1e6;
    println!("requests {} rate {rate}/s p50_us {:.0} p99_us {:.0} p999_us {:.0}", all.len(), us(0.5), us(0.99), us(0.999));
    Ok(())
}

/// A selectorless service NAME and its slice: one endpoint 127.0.0.1:PORT.
fn service_with_endpoint(name: &str, port: u16) -> anyhow::Result<(Service, EndpointSlice)> {
    let svc = serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": {"ports": [{"name": "p", "port": 80}]}}))?;
    let slice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
        "ports": [{"name": "p", "port": port, "protocol": "TCP"}],
    }))?;
    Ok((svc, slice))
}

/// A TCP backend on 127.0.0.1 that answers each connection with its port.
async fn port_backend() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut conn, port.to_string().as_bytes()).await;
        }
    });
    Ok(port)
}

/// The port of the backend a new connection to `addr` reaches.
async fn reached(addr: std::net::SocketAddr) -> Option<u16> {
    let mut conn = tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await.ok()?.ok()?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_millis(200), tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut text)).await.ok()?.ok()?;
    text.trim().parse().ok()
}

async fn proxy_sync(client: kube::Client, services: usize, changes: usize, concurrency: usize) -> anyhow::Result<()> {
    let svc_api: Api<Service> = Api::namespaced(client.clone(), "default");
    let slice_api: Api<EndpointSlice> = Api::namespaced(client, "default");
    let started = Instant::now();
    stream::iter(0..services)
        .map(|i| {
            let (svc_api, slice_api) = (&svc_api, &slice_api);
            async move {
                let (svc, slice) = service_with_endpoint(&format!("svc-{i}"), 20_000 + (i % 20_000) as u16)?;
                svc_api.create(&PostParams::default(), &svc).await?;
                slice_api.create(&PostParams::default(), &slice).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    println!("created {services} services with an endpoint each in {:.1}s", started.elapsed().as_secs_f64());
    let ports = [port_backend().await?, port_backend().await?];
    let (svc, slice) = service_with_endpoint("sync-probe", ports[0])?;
    let created = svc_api.create(&PostParams::default(), &svc).await?;
    slice_api.create(&PostParams::default(), &slice).await?;
    let ip = created.spec.and_then(|s| s.cluster_ip).ok_or_else(|| anyhow::anyhow!("no cluster IP"))?;
    let addr = std::net::SocketAddr::new(ip.parse()?, 80);
    let settle = Instant::now();
    while reached(addr).await != Some(ports[0]) {
        anyhow::ensure!(settle.elapsed() < Duration::from_secs(600), "{addr} never reached its endpoint");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("sync-probe served {:.1}s after it was created", settle.elapsed().as_secs_f64());
    let mut latencies = Vec::with_capacity(changes);
    for k in 0..changes {
        let target = ports[(k + 1) % 2];
        let patch = serde_json::json!({"ports": [{"name": "p", "port": target, "protocol": "TCP"}]});
        let t0 = Instant::now();
        slice_api.patch("sync-probe", &PatchParams::default(), &Patch::Merge(&patch)).await?;
        while reached(addr).await != Some(target) {
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(30), "change {k} never reached the data plane");
        }
        latencies.push(t0.elapsed());
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "endpoint change -> new connections reach it: median {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({changes} changes)",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies[latencies.len() - 1])
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::HttpLatency { target, rate, seconds, connections } = cli.command {
        return http_latency(target, rate, seconds, connections).await;
    }
    if let Command::WaitService { dns, name, port, timeout_s } = &cli.command {
        return wait_service(*dns, name, *port, Duration::from_secs(*timeout_s));
    }
    let client = wharf_kube::client::build(kube::Config::infer().await?)?;
    match cli.command {
        Command::Services { count } => {
            let api: Api<Service> = Api::namespaced(client, "default");
            let started = Instant::now();
            create_services(&api, count, cli.concurrency).await?;
            let secs = started.elapsed().as_secs_f64();
            println!("created {count} services in {secs:.2}s ({:.0}/s)", count as f64 / secs);
        }
        Command::HttpLatency { .. } | Command::WaitService { .. } => unreachable!("handled above"),
        Command::CreateService { name } => {
            let api: Api<Service> = Api::namespaced(client, "default");
            let svc: Service = serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}}))?;
            // A warm connection: the first request of a new client pays
            // for its TLS setup, which is not what is measured.
            api.list(&kube::api::ListParams::default().limit(1)).await?;
            let sent = unix_ns();
            api.create(&PostParams::default(), &svc).await?;
            println!("{sent}");
        }
        Command::EndpointLatency { services, pods_per_service, flips } => {
            endpoint_latency(client, services, pods_per_service, flips, cli.concurrency).await?;
        }
        Command::Churn { pods, rate, seconds } => churn(client, pods, rate, seconds, cli.concurrency).await?,
        Command::ProxySync { services, changes } => proxy_sync(client, services, changes, cli.concurrency).await?,
    }
    Ok(())
}
