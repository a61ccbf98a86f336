//! Dual-stack Services: `ipFamilyPolicy`, `ipFamilies` and `clusterIPs`
//! settled against a cluster with an IPv4 and an IPv6 service range, as
//! kube-apiserver settles them, and answered by the cluster DNS as A and
//! AAAA records and `ip6.arpa` names.

mod support;

use support::workload::{applied, pods, service, svc_field, wait_for};
use support::{http_get, Wharf};

/// A wharf whose service ranges are an IPv4 and an IPv6 one, in a
/// network namespace of the test's own (the IPv6 range's local route is
/// added there, and goes with the namespace however wharf ends).
fn dual_stack(test: impl FnOnce(Wharf, String) + Send + 'static) {
    support::net::in_own_netns(|| {
        let v6 = "fd77:6861:7266:7::/112".to_string();
        // Outside the service CIDRs `Wharf::start` picks (127.32/16 to
        // 127.231/16): a test may start a second wharf in this namespace.
        let w = Wharf::start(&["--service-cidr", &format!("127.235.0.0/16,{v6}")]);
        test(w, v6);
    });
}

fn manifest(name: &str, policy: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ipFamilyPolicy: {policy}\n{extra}  selector:\n    app: {name}\n  ports:\n  - port: 80\n"
    )
}

fn field(w: &Wharf, name: &str, path: &str) -> String {
    w.kubectl_ok(&["get", "svc", name, "-o", &format!("jsonpath={path}")])
}

#[test]
fn prefer_dual_stack_services_get_an_address_of_each_family_and_dns_answers_both() {
    dual_stack(prefer_dual_stack);
}

fn prefer_dual_stack(w: Wharf, v6_range: String) {
    let out = w.apply_text(&manifest("web", "PreferDualStack", ""));
    assert!(out.status.success(), "{out:?}");
    let ips = field(&w, "web", "{.spec.clusterIPs[*]}");
    let ips: Vec<&str> = ips.split_whitespace().collect();
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert_eq!(field(&w, "web", "{.spec.ipFamilies[*]}"), "IPv4 IPv6");
    let v6: std::net::Ipv6Addr = ips[1].parse().expect("an IPv6 cluster IP");
    let range: ipnet::Ipv6Net = v6_range.parse().unwrap();
    assert!(range.contains(&v6), "{v6} is outside {range}");
    assert_eq!(field(&w, "web", "{.spec.clusterIP}"), ips[0]);

    // The cluster DNS: A and AAAA, and the reverse name of each.
    let name = "web.default.svc.cluster.local";
    assert_eq!(w.dig_short(name, "A").trim(), ips[0]);
    assert_eq!(w.dig_short(name, "AAAA").trim(), ips[1]);
    let reverse = w.dig_short("-x", &v6.to_string());
    assert_eq!(reverse.trim(), format!("{name}."), "PTR of {v6}");

    // A single-stack service has no AAAA.
    assert!(w.apply_text(&manifest("one", "SingleStack", "")).status.success());
    assert_eq!(field(&w, "one", "{.spec.ipFamilies[*]}"), "IPv4");
    assert_eq!(w.dig_short("one.default.svc.cluster.local", "AAAA").trim(), "");

    // IPv6 first, by asking for it.
    assert!(w.apply_text(&manifest("six", "RequireDualStack", "  ipFamilies: [IPv6]\n")).status.success());
    assert_eq!(field(&w, "six", "{.spec.ipFamilies[*]}"), "IPv6 IPv4");
    assert!(field(&w, "six", "{.spec.clusterIP}").contains(':'));

    // Moving to SingleStack releases the secondary address: another
    // service may then ask for it.
    let secondary = ips[1].to_string();
    w.kubectl_ok(&["patch", "svc", "web", "-p", r#"{"spec":{"ipFamilyPolicy":"SingleStack"}}"#]);
    assert_eq!(field(&w, "web", "{.spec.clusterIPs[*]}"), ips[0]);
    assert_eq!(w.dig_short(name, "AAAA").trim(), "");
    let taker = manifest("taker", "SingleStack", &format!("  clusterIP: {secondary}\n"));
    let out = w.apply_text(&taker);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(field(&w, "taker", "{.spec.ipFamilies[*]}"), "IPv6");
}

#[test]
fn family_fields_are_refused_as_kube_apiserver_refuses_them() {
    dual_stack(|w, _| refusals(&w));
}

fn refusals(w: &Wharf) {
    let refused = |yaml: &str| {
        let out = w.apply_text(yaml);
        assert!(!out.status.success(), "accepted: {yaml}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(&manifest("a", "SingleStack", "  ipFamilies: [IPv4, IPv6]\n"));
    assert!(err.contains("spec.ipFamilyPolicy: Invalid value: \"SingleStack\": must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified"), "{err}");
    let err = refused(&manifest("b", "PreferDualStack", "  ipFamilies: [IPv4, IPv4]\n"));
    assert!(err.contains("spec.ipFamilies[1]: Duplicate value: \"IPv4\""), "{err}");
    let err = refused(&manifest("c", "PreferDualStack", "  clusterIP: 127.0.0.1\n  clusterIPs: [127.0.0.1, 127.0.0.2]\n"));
    assert!(err.contains("may specify no more than one IP for each IP family"), "{err}");
    let err = refused(&manifest("d", "SingleStack", "  clusterIP: fd00:1::5\n"));
    assert!(err.contains("failed to allocate IP fd00:1::5: the provided IP (fd00:1::5) is not in the valid range"), "{err}");
    assert_eq!(w.kubectl_ok(&["get", "svc", "-o", "name"]), "service/kubernetes\n");

    // A single-stack cluster refuses to require two families.
    let single = Wharf::start(&[]);
    let out = single.apply_text(&manifest("e", "RequireDualStack", ""));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"),
        "{err}"
    );
    let out = single.apply_text(&manifest("f", "SingleStack", "  ipFamilies: [IPv6]\n"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster"),
        "{out:?}"
    );
}

/// Traffic through both families, in a network namespace of the test's
/// own (wharf adds the IPv6 range's local route there): an IPv6 cluster
/// IP and node port reach IPv6 endpoints (the pods' `::1`), an IPv4 one
/// IPv4 endpoints, as kube-proxy's per-family proxiers do.
#[test]
fn traffic_goes_through_each_family_to_endpoints_of_that_family() {
    support::net::in_own_netns(|| {
        let v6_range = "fd77:6861:7266:5::/112";
        let mut w = Wharf::start(&["--service-cidr", &format!("127.234.0.0/16,{v6_range}"), "--node-ip", "127.254.70.1,::1"]);
        // Pods listening on IPv6 only, and pods listening on IPv4 only.
        let _six = support::Backend::start("[::1]:18090", true);
        let _four = support::Backend::start("127.254.70.1:18091", true);
        applied(&w, &pods("six", &[18090], "TCP", false));
        applied(&w, &pods("four", &[18091], "TCP", false));
        applied(&w, &service("six", "  type: NodePort\n  ipFamilyPolicy: PreferDualStack\n", "TCP"));
        applied(&w, &service("four", "  ipFamilyPolicy: PreferDualStack\n", "TCP"));
        let slices = |svc: &str| {
            w.kubectl_ok(&[
                "get",
                "endpointslices",
                "-l",
                &format!("kubernetes.io/service-name={svc}"),
                "-o",
                "jsonpath={.items[*].addressType}",
            ])
        };
        wait_for("an IPv4 and an IPv6 slice", || {
            let types = slices("six");
            types.contains("IPv4") && types.contains("IPv6")
        });
        let ips = svc_field(&w, "six", ".spec.clusterIPs[*]");
        let (v4, v6) = ips.split_once(' ').expect("two cluster IPs");
        let v6_frontend = format!("[{v6}]:80");
        wait_for("the IPv6 cluster IP", || http_get(&v6_frontend).is_ok_and(|b| b == "18090"));
        assert!(http_get(&format!("{v4}:80")).is_err(), "IPv4 traffic went to an IPv6 endpoint");
        let node_port = svc_field(&w, "six", ".spec.ports[0].nodePort");
        wait_for("the IPv6 node port", || http_get(&format!("[::1]:{node_port}")).is_ok_and(|b| b == "18090"));

        let ips = svc_field(&w, "four", ".spec.clusterIPs[*]");
        let (v4, v6) = ips.split_once(' ').expect("two cluster IPs");
        wait_for("the IPv4 cluster IP", || http_get(&format!("{v4}:80")).is_ok_and(|b| b == "18091"));
        assert!(http_get(&format!("[{v6}]:80")).is_err(), "IPv6 traffic went to an IPv4 endpoint");

        // The local route goes with wharf.
        let routes = || String::from_utf8_lossy(&support::net::run("ip", &["-6", "route", "show", "table", "local"]).stdout).into_owned();
        assert!(routes().contains(v6_range), "{}", routes());
        w.sigterm();
        assert_eq!(w.wait_exit(std::time::Duration::from_secs(30)), Some(0));
        assert!(!routes().contains(v6_range), "{}", routes());
    });
}
