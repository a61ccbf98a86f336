//! The cluster DNS, queried with the real `dig` and through glibc
//! (`getent` under `wharf exec`).

mod support;

use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use support::{example, Wharf};

/// One dig answer, by section.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: String,
    answer: Vec<String>,
    authority: Vec<String>,
    additional: Vec<String>,
}

impl Dig {
    /// Record data of the answer section (last column group).
    fn data(&self) -> Vec<String> {
        self.answer.iter().map(|l| l.split_whitespace().skip(4).collect::<Vec<_>>().join(" ")).collect()
    }
}

fn dns_ip(w: &Wharf) -> String {
    w.kubectl_ok(&["get", "svc", "kube-dns", "-n", "kube-system", "-o", "jsonpath={.spec.clusterIP}"])
}

fn dig(w: &Wharf, args: &[&str]) -> Dig {
    let server = format!("@{}", dns_ip(w));
    let out = Command::new("dig")
        .arg(&server)
        .args(["+noall", "+comments", "+answer", "+authority", "+additional", "+tries=1", "+time=2"])
        .args(args)
        .output()
        .expect("run dig");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut d = Dig::default();
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or_default().to_string();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest.split(';').next().unwrap_or_default().to_string();
        } else if line.starts_with(";; ANSWER") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY") {
            section = "authority";
        } else if line.starts_with(";; ADDITIONAL") {
            section = "additional";
        } else if line.is_empty() || line.starts_with(';') {
            if line.is_empty() {
                section = "";
            }
        } else {
            match section {
                "answer" => d.answer.push(line.to_string()),
                "authority" => d.authority.push(line.to_string()),
                "additional" => d.additional.push(line.to_string()),
                _ => {}
            }
        }
    }
    d
}

fn ip_of(w: &Wharf, svc: &str) -> String {
    w.kubectl_ok(&["get", "svc", svc, "-o", "jsonpath={.spec.clusterIP}"])
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    assert!(support::eventually(Duration::from_secs(20), || check().then_some(())).is_some(), "timed out waiting for {what}");
}

/// A fake upstream resolver on loopback: answers every A query with
/// 198.18.0.1 and counts what it received.
fn fake_upstream() -> (String, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut reply = buf[..n].to_vec();
            reply[2] |= 0x80; // QR
            reply[3] = 0x80; // RA, NOERROR
            reply[6..8].copy_from_slice(&1u16.to_be_bytes()); // one answer
            reply[10..12].copy_from_slice(&0u16.to_be_bytes()); // drop EDNS
            let question_end = 12 + buf[12..n].iter().position(|b| *b == 0).unwrap() + 1 + 4;
            reply.truncate(question_end);
            reply.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 0, 1]);
            let _ = socket.send_to(&reply, peer);
        }
    });
    (addr, count)
}

#[test]
fn every_record_kind() {
    let (upstream, upstream_queries) = fake_upstream();
    let w = Wharf::start(&["--dns-upstream", &upstream]);
    w.kubectl_ok(&["apply", "-f", example("kolide-fleet/services.yaml").to_str().unwrap()]);
    let mysql = ip_of(&w, "kolide-fleet-mysql");
    wait_for("the mysql service in DNS", || dig(&w, &["kolide-fleet-mysql.default.svc.cluster.local"]).data() == [mysql.clone()]);

    // A, with the query's case echoed, authoritative.
    let a = dig(&w, &["KoLiDe-FlEeT-MySQL.Default.SVC.cluster.LOCAL"]);
    assert_eq!(a.status, "NOERROR");
    assert!(a.flags.contains("aa"), "{a:?}");
    let fields: Vec<&str> = a.answer[0].split_whitespace().collect();
    assert_eq!(fields, ["KoLiDe-FlEeT-MySQL.Default.SVC.cluster.LOCAL.", "5", "IN", "A", mysql.as_str()]);
    // AAAA of an IPv4 service: NODATA with the SOA.
    let aaaa = dig(&w, &["kolide-fleet-mysql.default.svc.cluster.local", "AAAA"]);
    assert_eq!((aaaa.status.as_str(), aaaa.answer.len()), ("NOERROR", 0));
    assert!(
        aaaa.authority[0].split_whitespace().collect::<Vec<_>>()[3..6] == ["SOA", "ns.dns.cluster.local.", "hostmaster.cluster.local."],
        "{aaaa:?}"
    );
    // SRV for a named port, target address in the additional section.
    let srv = dig(&w, &["_mysql._tcp.kolide-fleet-mysql.default.svc.cluster.local", "SRV"]);
    assert_eq!(srv.data(), ["0 100 3306 kolide-fleet-mysql.default.svc.cluster.local."]);
    assert!(srv.additional.iter().any(|l| l.ends_with(&mysql)), "{srv:?}");
    assert_eq!(dig(&w, &["_mysql._udp.kolide-fleet-mysql.default.svc.cluster.local", "SRV"]).status, "NXDOMAIN");
    // PTR of a cluster IP.
    let octets: Vec<&str> = mysql.split('.').rev().collect();
    let ptr = dig(&w, &[&format!("{}.in-addr.arpa", octets.join(".")), "PTR"]);
    assert_eq!(ptr.data(), ["kolide-fleet-mysql.default.svc.cluster.local."]);
    // Apex SOA and NS, the schema version.
    assert_eq!(dig(&w, &["cluster.local", "SOA"]).answer.len(), 1);
    let ns = dig(&w, &["cluster.local", "NS"]);
    assert_eq!(ns.data(), ["ns.dns.cluster.local."]);
    assert!(ns.additional[0].ends_with(&dns_ip(&w)), "{ns:?}");
    assert_eq!(dig(&w, &["dns-version.cluster.local", "TXT"]).data(), ["\"1.1.0\""]);

    // Negative answers where the spec and CoreDNS put them.
    for (name, status) in [
        ("nope.default.svc.cluster.local", "NXDOMAIN"),
        ("kolide-fleet-mysql.nons.svc.cluster.local", "NXDOMAIN"),
        ("default.svc.cluster.local", "NOERROR"),
        ("svc.cluster.local", "NOERROR"),
        ("*.default.svc.cluster.local", "NXDOMAIN"),
    ] {
        let d = dig(&w, &[name]);
        assert_eq!(d.status, status, "{name}: {d:?}");
        assert!(d.answer.is_empty() && d.authority.len() == 1, "{name} needs the SOA: {d:?}");
    }
    // Search-list expansions never reach the upstream; real external names do, once (cached).
    let before = upstream_queries.load(Ordering::SeqCst);
    for name in ["api.example.com.default.svc.cluster.local", "api.example.com.svc.cluster.local", "api.example.com.cluster.local"] {
        assert_eq!(dig(&w, &[name]).status, "NXDOMAIN", "{name}");
    }
    assert_eq!(upstream_queries.load(Ordering::SeqCst), before);
    assert_eq!(dig(&w, &["api.example.com"]).data(), ["198.18.0.1"]);
    assert_eq!(dig(&w, &["api.example.com"]).data(), ["198.18.0.1"]);
    assert_eq!(upstream_queries.load(Ordering::SeqCst), before + 1, "the second answer should come from the cache");

    // ExternalName: a CNAME, followed inside the cluster.
    let ext = "apiVersion: v1\nkind: Service\nmetadata:\n  name: db-alias\nspec:\n  type: ExternalName\n  externalName: kolide-fleet-mysql.default.svc.cluster.local\n";
    assert!(w.apply_text(ext).status.success());
    wait_for("the alias", || !dig(&w, &["db-alias.default.svc.cluster.local"]).answer.is_empty());
    let alias = dig(&w, &["db-alias.default.svc.cluster.local"]);
    assert_eq!(alias.data(), ["kolide-fleet-mysql.default.svc.cluster.local.".to_string(), mysql.clone()]);

    // Pod records: a-b-c-d.<ns>.pod.<zone> for a pod that has that IP.
    w.kubectl_ok(&["apply", "-f", example("kolide-fleet/pods.yaml").to_str().unwrap()]);
    let pod_name = format!("{}.default.pod.cluster.local", w.node_ip.replace('.', "-"));
    wait_for("the pod record", || dig(&w, &[&pod_name]).data() == [w.node_ip.clone()]);
    assert_eq!(dig(&w, &["1-2-3-4.default.pod.cluster.local"]).status, "NXDOMAIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_with_a_thousand_endpoints_truncates_over_udp() {
    let w = Wharf::start(&[]);
    let client = w.client().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "big"},
        "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]},
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    // Hand-written slices for a service without a selector.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    for s in 0..10 {
        let endpoints: Vec<serde_json::Value> = (0..100)
            .map(|i| serde_json::json!({"addresses": [format!("198.18.{s}.{}", i + 1)], "hostname": format!("web-{}", s * 100 + i), "conditions": {"ready": true}}))
            .collect();
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("big-{s}"), "labels": {"kubernetes.io/service-name": "big"}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }))
        .unwrap();
        slices.create(&PostParams::default(), &slice).await.unwrap();
    }
    let w = Arc::new(w);
    let probe = w.clone();
    let tcp = tokio::task::spawn_blocking(move || {
        wait_for("1000 records over TCP", || dig(&probe, &["big.default.svc.cluster.local", "+tcp"]).answer.len() == 1000);
        let udp = dig(&probe, &["big.default.svc.cluster.local", "+ignore", "+bufsize=1232"]);
        let srv = dig(&probe, &["_http._tcp.big.default.svc.cluster.local", "SRV", "+tcp"]);
        let host = dig(&probe, &["web-205.big.default.svc.cluster.local"]);
        let ptr = dig(&probe, &["6.2.18.198.in-addr.arpa", "PTR"]);
        (udp, srv, host, ptr)
    });
    let (udp, srv, host, ptr) = tcp.await.unwrap();
    assert!(udp.flags.contains("tc") && udp.answer.len() < 100, "{:?} {}", udp.flags, udp.answer.len());
    assert_eq!(srv.answer.len(), 1000, "{:?} {:?}", srv.status, srv.flags);
    let first: Vec<&str> = srv.answer[0].split_whitespace().collect();
    assert_eq!(first[3..7], ["SRV", "0", "0", "8080"], "{first:?}");
    assert!(first[7].starts_with("web-"), "{first:?}");
    assert_eq!(host.data(), ["198.18.2.6"]);
    assert_eq!(ptr.data(), ["web-205.big.default.svc.cluster.local."]);

    // An endpoint turning unready leaves the very next answers.
    let mut slice = slices.get("big-2").await.unwrap();
    slice.endpoints[5].conditions.as_mut().unwrap().ready = Some(false);
    slices.replace("big-2", &PostParams::default(), &slice).await.unwrap();
    let probe = w.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("web-205 to leave", || dig(&probe, &["web-205.big.default.svc.cluster.local"]).status == "NXDOMAIN");
        assert_eq!(dig(&probe, &["big.default.svc.cluster.local", "+tcp"]).answer.len(), 999);
    })
    .await
    .unwrap();

    // A new service answers at once.
    let svc: Service =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "fresh"}, "spec": {"ports": [{"port": 80}]}})).unwrap();
    let created = services.create(&PostParams::default(), &svc).await.unwrap();
    let ip = created.spec.unwrap().cluster_ip.unwrap();
    let probe = w.clone();
    tokio::task::spawn_blocking(move || wait_for("fresh", || dig(&probe, &["fresh.default.svc.cluster.local"]).data() == [ip.clone()]))
        .await
        .unwrap();
    let _ = services.patch("fresh", &PatchParams::default(), &Patch::Merge(serde_json::json!({}))).await;
}

#[test]
fn upstream_none_refuses_and_garbage_gets_formerr() {
    let w = Wharf::start(&[]);
    assert_eq!(dig(&w, &["example.com"]).status, "REFUSED");
    let server = format!("{}:53", dns_ip(&w));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // A header claiming two questions, then junk.
    let mut junk = vec![0xAB, 0xCD, 0x01, 0x00, 0x00, 0x02, 0, 0, 0, 0, 0, 0];
    junk.extend_from_slice(&[0xFF; 20]);
    socket.send_to(&junk, &server).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = socket.recv_from(&mut buf).expect("a FORMERR reply");
    assert!(n >= 12 && buf[0..2] == [0xAB, 0xCD] && buf[2] & 0x80 != 0 && buf[3] & 0x0F == 1, "{:?}", &buf[..n]);
    // Too short to answer: dropped, and the server still works.
    socket.send_to(&[1, 2, 3], &server).unwrap();
    assert!(socket.recv_from(&mut buf).is_err());
    assert_eq!(dig(&w, &["kubernetes.default.svc.cluster.local"]).status, "NOERROR");
    // The metrics endpoint counts them.
    let metrics_url = w.metrics_url.clone();
    let metrics = Command::new("curl").args(["-s", &metrics_url]).output().unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(metrics.contains("wharf_dns_requests_total{rcode=\"REFUSED\",type=\"A\"} 1"), "{metrics}");
    assert!(metrics.contains("wharf_dns_requests_total{rcode=\"FORMERR\""), "{metrics}");
    assert!(metrics.contains("wharf_dns_programming_duration_seconds_bucket"), "{metrics}");
}

#[test]
fn getent_through_the_pod_search_list() {
    let w = Wharf::start(&[]);
    w.kubectl_ok(&["apply", "-f", example("kolide-fleet/services.yaml").to_str().unwrap()]);
    w.kubectl_ok(&["create", "namespace", "other"]);
    w.kubectl_ok(&["create", "service", "clusterip", "elsewhere", "--tcp=80:80", "-n", "other"]);
    let redis = ip_of(&w, "kolide-fleet-redis");
    let getent = |ns: &str, name: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["exec", "-n", ns, "--kubeconfig", w.kubeconfig().to_str().unwrap(), "--", "getent", "hosts", name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
    };
    wait_for("redis in DNS", || dig(&w, &["kolide-fleet-redis.default.svc.cluster.local"]).data() == [redis.clone()]);
    assert_eq!(getent("default", "kolide-fleet-redis"), redis);
    assert_eq!(getent("default", "kolide-fleet-redis.default"), redis);
    assert_eq!(getent("other", "kolide-fleet-redis.default"), redis);
    assert_eq!(getent("default", "kolide-fleet-redis.default.svc.cluster.local"), redis);
    // A short name of another namespace does not resolve.
    assert_eq!(getent("default", "elsewhere"), "");
    assert_eq!(getent("other", "elsewhere"), ip_of_ns(&w, "other", "elsewhere"));
    // The pod sees the service variables too.
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args([
            "exec",
            "-n",
            "default",
            "--kubeconfig",
            w.kubeconfig().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo $KOLIDE_FLEET_REDIS_SERVICE_HOST",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), redis);
    let resolv = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["resolv-conf", "-n", "other", "--kubeconfig", w.kubeconfig().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&resolv.stdout),
        format!("nameserver {}\nsearch other.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n", dns_ip(&w))
    );
}

fn ip_of_ns(w: &Wharf, ns: &str, svc: &str) -> String {
    w.kubectl_ok(&["get", "svc", svc, "-n", ns, "-o", "jsonpath={.spec.clusterIP}"])
}

/// DNS keeps no endpoints for a service with a cluster IP; when one comes
/// back headless, with a slice of its own that nothing rewrites, DNS reads
/// the slices again and answers with its endpoints.
#[test]
fn a_service_that_comes_back_headless_answers_with_its_endpoints() {
    let w = Wharf::start(&[]);
    let service = |cluster_ip: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: flip\nspec:\n  clusterIP: {cluster_ip}\n  ports:\n  - port: 80\n")
    };
    let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: flip-own\n  labels:\n    kubernetes.io/service-name: flip\naddressType: IPv4\nendpoints:\n- addresses: [\"198.18.0.7\"]\n  hostname: h\n  conditions:\n    ready: true\nports:\n- port: 80\n";
    assert!(w.apply_text(&service("\"\"")).status.success());
    assert!(w.apply_text(slice).status.success());
    let cluster_ip = ip_of(&w, "flip");
    wait_for("the service's cluster IP", || dig(&w, &["flip.default.svc.cluster.local"]).data() == [cluster_ip.clone()]);

    w.kubectl_ok(&["delete", "service", "flip"]);
    assert!(w.apply_text(&service("None")).status.success());
    wait_for("the headless service's endpoint", || dig(&w, &["flip.default.svc.cluster.local"]).data() == ["198.18.0.7"]);
    assert_eq!(dig(&w, &["h.flip.default.svc.cluster.local"]).data(), ["198.18.0.7"]);
    assert_eq!(dig(&w, &["7.0.18.198.in-addr.arpa", "PTR"]).data(), ["h.flip.default.svc.cluster.local."]);
}
