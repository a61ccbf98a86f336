//! Authorization: every request is resolved into [`Attributes`] and
//! allowed only if RBAC grants it to the caller (members of
//! `system:masters` always) and, for a node, only on its own objects. Impersonation (`kubectl --as`) is honoured
//! for callers RBAC allows to `impersonate` each part of the identity.
//! Writes and refusals are audited here.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use wharf_auth::attributes::from_request;
use wharf_auth::user::{ANONYMOUS, UNAUTHENTICATED};
use wharf_auth::{Attributes, Policy, ResourceAttributes, User};

use crate::audit::{self, AuditLog, Entry};
use crate::authn::{Authenticator, Peer};
use crate::error::ApiError;
use crate::policy::PolicyCache;
use crate::App;

/// Who may do what, and the record of it.
pub struct Auth {
    pub authenticator: Authenticator,
    pub policy: Arc<PolicyCache>,
    pub audit: AuditLog,
    pub node_signer: crate::nodecert::NodeSigner,
}

impl Auth {
    /// Authentication by the cluster CA, the admin token and `tokens`;
    /// authorization by the RBAC objects in `registry`'s store (followed
    /// until `shutdown`); writes and refusals into `audit`; node
    /// certificates valid for `node_certificate_validity`.
    pub fn new(
        creds: &crate::pki::Credentials,
        tokens: wharf_auth::tokens::TokenFile,
        audit: AuditLog,
        registry: crate::Registry,
        node_certificate_validity: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Arc<Self>, String> {
        let authenticator = Authenticator::new(&creds.ca_cert_pem, creds.admin_token.clone(), tokens)?;
        let node_signer = crate::nodecert::NodeSigner { creds: creds.clone(), validity: node_certificate_validity };
        Ok(Arc::new(Self { authenticator, policy: PolicyCache::start(registry, shutdown), audit, node_signer }))
    }
}

/// Who a request acts as: the authenticated user, or the user it
/// impersonates (with the real caller kept for the audit trail).
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: User,
    pub impersonator: Option<User>,
}

fn attributes_of(request: &Request) -> Attributes {
    from_request(request.method().as_str(), request.uri().path(), request.uri().query().unwrap_or_default())
}

/// Audits a request refused before it had a caller.
pub fn audit_unauthenticated(audit: &AuditLog, request: &Request) {
    let attributes = attributes_of(request);
    let source = request.extensions().get::<Peer>().map(|p| p.addr);
    audit.record(&Entry { user: None, impersonator: None, attributes: &attributes, code: 401, source });
}

fn header_values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect()
}

/// The identity a request asks to act as, each part checked: `users` (or
/// `serviceaccounts`), `groups`, `uids` and `userextras`, verb `impersonate`.
fn impersonate(policy: &Policy, requester: User, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let name = header_values(headers, "impersonate-user").first().map(|s| s.to_string());
    let groups: Vec<String> = header_values(headers, "impersonate-group").iter().map(|s| s.to_string()).collect();
    let uid = header_values(headers, "impersonate-uid").first().map(|s| s.to_string());
    let extras: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().strip_prefix("impersonate-extra-")?.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let Some(name) = name else {
        if groups.is_empty() && uid.is_none() && extras.is_empty() {
            return Ok(Caller { user: requester, impersonator: None });
        }
        return Err(ApiError::BadRequest("requested impersonation of groups, a uid or extras without impersonating a user".into()));
    };
    let mut checks = vec![match name.strip_prefix(wharf_auth::user::SERVICE_ACCOUNT_PREFIX).and_then(|s| s.split_once(':')) {
        Some((ns, sa)) => ResourceAttributes::new("impersonate", "", "serviceaccounts", ns, sa),
        None => ResourceAttributes::new("impersonate", "", "users", "", &name),
    }];
    checks.extend(groups.iter().map(|g| ResourceAttributes::new("impersonate", "", "groups", "", g)));
    checks.extend(uid.iter().map(|u| ResourceAttributes::new("impersonate", "authentication.k8s.io", "uids", "", u)));
    checks.extend(
        extras
            .iter()
            .map(|(k, v)| ResourceAttributes::new("impersonate", "authentication.k8s.io", "userextras", "", v).with_subresource(k)),
    );
    for check in checks {
        let attrs = Attributes::Resource(check);
        if !policy.allows(&requester, &attrs) {
            return Err(ApiError::Forbidden(attrs.forbidden_message(&requester.name)));
        }
    }
    let mut user = if name == ANONYMOUS {
        User { name, groups: groups.into_iter().chain([UNAUTHENTICATED.to_string()]).collect(), ..User::default() }
    } else {
        User::authenticated(name, uid.unwrap_or_default(), groups)
    };
    for (k, v) in extras {
        user.extra.entry(k).or_default().push(v);
    }
    Ok(Caller { user, impersonator: Some(requester) })
}

/// Middleware: impersonation, then RBAC; the [`Caller`] goes on to the
/// handlers (reviews and admission need it).
pub async fn authorize(State(app): State<App>, mut request: Request, next: Next) -> Response {
    let Some(user) = request.extensions_mut().remove::<User>() else { return ApiError::Unauthorized.into_response() };
    let attributes = attributes_of(&request);
    let source = request.extensions().get::<Peer>().map(|p| p.addr);
    let auth = &app.auth;
    let decided = {
        let policy = auth.policy.read();
        match impersonate(&policy, user.clone(), request.headers()) {
            Err(e) => Err((e, Caller { user, impersonator: None })),
            Ok(caller) => match wharf_auth::authorize(&policy, &caller.user, &attributes) {
                Ok(()) => Ok(caller),
                Err(why) => Err((ApiError::Forbidden(why), caller)),
            },
        }
    };
    let caller = match decided {
        Ok(caller) => caller,
        Err((e, caller)) => {
            let response = e.into_response();
            let code = response.status().as_u16();
            let entry =
                Entry { user: Some(&caller.user), impersonator: caller.impersonator.as_ref(), attributes: &attributes, code, source };
            auth.audit.record(&entry);
            return response;
        }
    };
    request.extensions_mut().insert(caller.clone());
    // The effective user, for parts outside this crate (the dashboard).
    request.extensions_mut().insert(caller.user.clone());
    let response = next.run(request).await;
    let code = response.status().as_u16();
    if audit::is_write(attributes.verb()) || code == 401 || code == 403 {
        let entry = Entry { user: Some(&caller.user), impersonator: caller.impersonator.as_ref(), attributes: &attributes, code, source };
        auth.audit.record(&entry);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};

    fn policy_letting_alice_impersonate(resources: &[&str]) -> Policy {
        let mut p = Policy::default();
        let rule = PolicyRule {
            api_groups: Some(vec!["".into(), "authentication.k8s.io".into()]),
            resources: Some(resources.iter().map(|r| r.to_string()).collect()),
            verbs: vec!["impersonate".into()],
            ..Default::default()
        };
        p.put_cluster_role(&ClusterRole {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta { name: Some("imp".into()), ..Default::default() },
            rules: Some(vec![rule]),
            ..Default::default()
        });
        p.put_cluster_role_binding(&ClusterRoleBinding {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta { name: Some("imp".into()), ..Default::default() },
            role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "ClusterRole".into(), name: "imp".into() },
            subjects: Some(vec![Subject { kind: "User".into(), name: "alice".into(), ..Default::default() }]),
        });
        p
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn impersonation_needs_the_impersonate_verb_on_every_part() {
        let alice = User::authenticated("alice", "", []);
        let p = policy_letting_alice_impersonate(&["users"]);
        let caller = impersonate(&p, alice.clone(), &headers(&[("Impersonate-User", "bob")])).unwrap();
        assert_eq!(caller.user.name, "bob");
        assert_eq!(caller.user.groups, ["system:authenticated"]);
        assert_eq!(caller.impersonator.unwrap().name, "alice");
        let err =
            impersonate(&p, alice.clone(), &headers(&[("Impersonate-User", "bob"), ("Impersonate-Group", "system:masters")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"groups "system:masters" is forbidden: User "alice" cannot impersonate resource "groups" in API group "" at the cluster scope"#
        );
        let both = policy_letting_alice_impersonate(&["users", "groups"]);
        let caller = impersonate(&both, alice.clone(), &headers(&[("Impersonate-User", "bob"), ("Impersonate-Group", "ops")])).unwrap();
        assert_eq!(caller.user.groups, ["ops", "system:authenticated"]);
        let mallory = User::authenticated("mallory", "", []);
        assert!(impersonate(&p, mallory, &headers(&[("Impersonate-User", "alice")])).is_err());
        assert!(impersonate(&p, alice.clone(), &headers(&[("Impersonate-Group", "ops")])).is_err(), "groups without a user");
        assert!(impersonate(&p, alice, &headers(&[])).unwrap().impersonator.is_none());
    }
}
