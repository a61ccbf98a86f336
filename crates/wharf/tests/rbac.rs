//! Users, RBAC and the audit trail, driven with stock kubectl: client
//! certificates from `wharf kubeconfig --user`, token-file users and
//! groups, `kubectl auth can-i`/`whoami`, impersonation, escalation
//! prevention, certificate expiry and the audit log.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use support::Wharf;

/// Writes a kubeconfig for `user` (from `wharf kubeconfig --user`).
fn user_kubeconfig(w: &Wharf, user: &str, extra: &[&str]) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["kubeconfig", "--data-dir", w.data_dir().to_str().unwrap(), "--user", user])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let path = w.dir.path().join(format!("{user}.kubeconfig"));
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

fn as_config(w: &Wharf, config: &std::path::Path, args: &[&str]) -> Output {
    let mut all = vec!["--kubeconfig", config.to_str().unwrap()];
    all.extend_from_slice(args);
    w.kubectl(&all)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn audit_lines(w: &Wharf) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(w.data_dir().join("audit.log")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).expect("an audit line is JSON")).collect()
}

#[test]
fn certificate_users_get_exactly_what_their_bindings_grant() {
    let w = Wharf::start(&[]);
    let alice = user_kubeconfig(&w, "alice", &[]);
    let out = as_config(&w, &alice, &["get", "svc"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains(r#"services is forbidden: User "alice" cannot list resource "services" in API group "" in the namespace "default""#),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&as_config(&w, &alice, &["auth", "whoami"])).contains("alice"));

    w.kubectl_ok(&["create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice", "-n", "default"]);
    let created = as_config(&w, &alice, &["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let elsewhere = as_config(&w, &alice, &["create", "service", "clusterip", "web", "--tcp=80:8080", "-n", "kube-system"]);
    assert!(stderr(&elsewhere).contains(r#"User "alice" cannot create resource "services" in API group "" in the namespace "kube-system""#));
    assert_eq!(w.kubectl_ok(&["auth", "can-i", "create", "services", "--as", "alice", "-n", "default"]).trim(), "yes");
    let no = w.kubectl(&["auth", "can-i", "create", "services", "--as", "alice", "-n", "kube-system"]);
    assert_eq!((stdout(&no).trim(), no.status.code()), ("no", Some(1)));

    // edit may not bind roles at all; admin may, but only what it holds.
    let grab = as_config(&w, &alice, &["create", "rolebinding", "grab", "--clusterrole=cluster-admin", "--user=alice"]);
    assert!(stderr(&grab).contains("forbidden"), "{}", stderr(&grab));
    w.kubectl_ok(&["create", "rolebinding", "bob-admin", "--clusterrole=admin", "--user=bob", "-n", "default"]);
    let bob = user_kubeconfig(&w, "bob", &["--group", "team"]);
    let escalate = as_config(&w, &bob, &["create", "rolebinding", "bob-root", "--clusterrole=cluster-admin", "--user=bob"]);
    assert!(stderr(&escalate).contains("is attempting to grant RBAC permissions not currently held"), "{}", stderr(&escalate));
    let delegate = as_config(&w, &bob, &["create", "rolebinding", "carol-edit", "--clusterrole=edit", "--user=carol"]);
    assert!(delegate.status.success(), "admin holds everything edit grants: {}", stderr(&delegate));
    assert!(stdout(&as_config(&w, &bob, &["auth", "whoami"])).contains("team"));
    let none = w.kubectl_ok(&["get", "rolebindings", "-n", "default", "-o", "name"]);
    assert!(!none.contains("bob-root") && !none.contains("grab"), "{none}");

    // An expired certificate is a 401, not a TLS failure.
    let late = user_kubeconfig(&w, "late", &["--expires", "1s"]);
    std::thread::sleep(Duration::from_secs(3));
    let out = as_config(&w, &late, &["get", "svc"]);
    assert!(stderr(&out).contains("Unauthorized"), "{}", stderr(&out));

    let lines = audit_lines(&w);
    let line = |user: &str, verb: &str, code: u64| lines.iter().any(|l| l["user"] == user && l["verb"] == verb && l["code"] == code);
    assert!(line("alice", "create", 201), "allowed write audited: {lines:?}");
    assert!(line("alice", "create", 403), "refused write audited");
    assert!(line("alice", "list", 403), "refused read audited");
    assert!(lines.iter().any(|l| l["code"] == 401), "unauthenticated audited");
    assert!(!lines.iter().any(|l| l["verb"] == "list" && l["code"] == 200), "allowed reads are not audited");
    let token = std::fs::read_to_string(w.data_dir().join("pki/admin.token")).unwrap();
    let text = std::fs::read_to_string(w.data_dir().join("audit.log")).unwrap();
    assert!(!text.contains(token.trim()), "credentials are never logged");
}

#[test]
fn token_file_users_groups_and_impersonation() {
    let files = tempfile::tempdir().unwrap();
    let tokens = files.path().join("tokens.csv");
    std::fs::write(&tokens, "t-dave,dave,2001,\"devs,ops\"\nt-erin,erin,2002\n").unwrap();
    let w = Wharf::start(&["--token-auth-file", tokens.to_str().unwrap()]);
    w.kubectl_ok(&["create", "clusterrole", "reader", "--verb=get,list,watch", "--resource=services"]);
    w.kubectl_ok(&["create", "clusterrolebinding", "devs-read", "--clusterrole=reader", "--group=devs"]);

    let dave = w.kubectl(&["--token", "t-dave", "get", "svc", "-A", "-o", "name"]);
    assert!(stdout(&dave).contains("service/kubernetes"), "{}", stderr(&dave));
    let whoami = w.kubectl_ok(&["--token", "t-dave", "auth", "whoami"]);
    assert!(whoami.contains("dave") && whoami.contains("devs") && whoami.contains("ops"), "{whoami}");
    let list = w.kubectl_ok(&["--token", "t-dave", "auth", "can-i", "--list"]);
    assert!(list.lines().any(|l| l.starts_with("services ") && l.contains("list")), "{list}");
    let erin = w.kubectl(&["--token", "t-erin", "get", "svc"]);
    assert!(stderr(&erin).contains(r#"User "erin" cannot list resource "services""#), "{}", stderr(&erin));
    let wrong = w.kubectl(&["--token", "t-nobody", "get", "svc"]);
    assert!(stderr(&wrong).contains("Unauthorized"), "{}", stderr(&wrong));

    // Impersonation needs the impersonate verb on each part of the identity.
    let out = w.kubectl(&["--token", "t-erin", "--as", "dave", "get", "svc"]);
    assert!(
        stderr(&out)
            .contains(r#"users "dave" is forbidden: User "erin" cannot impersonate resource "users" in API group "" at the cluster scope"#),
        "{}",
        stderr(&out)
    );
    w.kubectl_ok(&["create", "clusterrole", "impersonator", "--verb=impersonate", "--resource=users,groups"]);
    w.kubectl_ok(&["create", "clusterrolebinding", "erin-impersonates", "--clusterrole=impersonator", "--user=erin"]);
    let out = w.kubectl(&["--token", "t-erin", "--as", "dave", "--as-group", "devs", "get", "svc", "-o", "name"]);
    assert!(stdout(&out).contains("service/kubernetes"), "{}", stderr(&out));
    let out = w.kubectl(&["--token", "t-erin", "--as", "dave", "get", "svc"]);
    assert!(!out.status.success(), "impersonating dave without his groups gives dave without devs");
    let lines = audit_lines(&w);
    assert!(lines.iter().any(|l| l["user"] == "dave" && l["impersonatedBy"] == "erin" && l["code"] == 403), "{lines:?}");
}

/// A `NodeCertificateRequest` body for `node` with a fresh CSR.
fn node_certificate_request(dir: &std::path::Path, node: &str, csr: Option<&str>) -> PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let made = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&key).unwrap().pem().unwrap();
    let body = serde_json::json!({
        "apiVersion": "wharf.dev/v1",
        "kind": "NodeCertificateRequest",
        "spec": {"nodeName": node, "request": csr.unwrap_or(&made)},
    });
    let path = dir.join(format!("ncr-{node}.json"));
    std::fs::write(&path, body.to_string()).unwrap();
    path
}

const REQUESTS: &str = "/apis/wharf.dev/v1/nodecertificaterequests";

#[test]
fn bootstrap_tokens_buy_node_certificates_and_nothing_else() {
    let w = Wharf::start(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["token", "create", "--data-dir", w.data_dir().to_str().unwrap(), "--ttl", "1h"])
        .env("KUBECONFIG", w.data_dir().join("admin.kubeconfig"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    let dir = w.dir.path();

    // The token buys a certificate for a node of any name, and only that.
    let asked = node_certificate_request(dir, "n9", None);
    let signed = w.kubectl(&["--token", &token, "create", "--raw", REQUESTS, "-f", asked.to_str().unwrap()]);
    assert!(signed.status.success(), "{}", stderr(&signed));
    let answer: serde_json::Value = serde_json::from_slice(&signed.stdout).unwrap();
    let pem = answer["status"]["certificate"].as_str().expect("a certificate");
    let (_, cert) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = cert.parse_x509().unwrap();
    assert_eq!(cert.subject().to_string(), "CN=system:node:n9, O=system:nodes");
    let whoami = w.kubectl_ok(&["--token", &token, "auth", "whoami"]);
    assert!(whoami.contains("system:bootstrap:") && whoami.contains("system:bootstrappers"), "{whoami}");
    let out = w.kubectl(&["--token", &token, "get", "svc"]);
    assert!(stderr(&out).contains("cannot list resource \"services\""), "{}", stderr(&out));

    // A wrong secret, an expired token, and a CSR that is not one.
    let (id, _) = token.split_once('.').unwrap();
    let out = w.kubectl(&["--token", &format!("{id}.0000000000000000"), "get", "svc"]);
    assert!(stderr(&out).contains("Unauthorized"), "{}", stderr(&out));
    w.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "bootstrap-token-old000",
        "-n",
        "kube-system",
        "--type",
        "bootstrap.kubernetes.io/token",
        "--from-literal=token-id=old000",
        "--from-literal=token-secret=0123456789abcdef",
        "--from-literal=expiration=2020-01-01T00:00:00Z",
        "--from-literal=usage-bootstrap-authentication=true",
    ]);
    let out = w.kubectl(&["--token", "old000.0123456789abcdef", "create", "--raw", REQUESTS, "-f", asked.to_str().unwrap()]);
    assert!(stderr(&out).contains("Unauthorized"), "expired: {}", stderr(&out));
    let garbage =
        node_certificate_request(dir, "n7", Some("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"));
    let out = w.kubectl(&["--token", &token, "create", "--raw", REQUESTS, "-f", garbage.to_str().unwrap()]);
    assert!(stderr(&out).contains("spec.request"), "{}", stderr(&out));
    let bad_name = node_certificate_request(dir, "Not_A_Name", None);
    let out = w.kubectl(&["--token", &token, "create", "--raw", REQUESTS, "-f", bad_name.to_str().unwrap()]);
    assert!(stderr(&out).contains("spec.nodeName"), "{}", stderr(&out));

    // A node renews only its own certificate; other users may not ask.
    let node = user_kubeconfig(&w, "system:node:n9", &["--group", "system:nodes"]);
    let own = as_config(&w, &node, &["create", "--raw", REQUESTS, "-f", asked.to_str().unwrap()]);
    assert!(own.status.success(), "{}", stderr(&own));
    let other = node_certificate_request(dir, "n8", None);
    let out = as_config(&w, &node, &["create", "--raw", REQUESTS, "-f", other.to_str().unwrap()]);
    assert!(stderr(&out).contains(r#"node "n9" may only renew its own certificate"#), "{}", stderr(&out));
    let alice = user_kubeconfig(&w, "alice", &[]);
    let out = as_config(&w, &alice, &["create", "--raw", REQUESTS, "-f", asked.to_str().unwrap()]);
    assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));

    // A token never mints the identity of a node that exists.
    let node = dir.join("node.yaml");
    std::fs::write(&node, "apiVersion: v1\nkind: Node\nmetadata:\n  name: n9\n").unwrap();
    w.kubectl_ok(&["apply", "-f", node.to_str().unwrap()]);
    let out = w.kubectl(&["--token", &token, "create", "--raw", REQUESTS, "-f", asked.to_str().unwrap()]);
    assert!(stderr(&out).contains("already exists: a bootstrap token joins new nodes only"), "{}", stderr(&out));
}
