//! The review resources, answered from the policy and never stored:
//! `SelfSubjectAccessReview` (`kubectl auth can-i`), `SubjectAccessReview`,
//! `LocalSubjectAccessReview`, `SelfSubjectRulesReview` (`can-i --list`)
//! and `SelfSubjectReview` (`kubectl auth whoami`).

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{json, Value};
use wharf_api::field::FieldError;
use wharf_auth::{Attributes, ResourceAttributes, User};

use crate::authz::Caller;
use crate::error::{ApiError, ApiResult};
use crate::http::json_response;
use crate::App;

fn parse(headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let v = crate::handlers::decode_body(headers, body)?;
    if !v.is_object() {
        return Err(ApiError::BadRequest("the request body must be an object".into()));
    }
    Ok(v)
}

fn text(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or_default().to_string()
}

fn invalid(kind: &'static str, field: &str, detail: &str) -> ApiError {
    ApiError::Invalid { kind, group: "authorization.k8s.io", name: String::new(), causes: vec![FieldError::required(field, detail)] }
}

/// The attributes a review's spec asks about.
fn spec_attributes(kind: &'static str, spec: &Value) -> ApiResult<Attributes> {
    match (spec.get("resourceAttributes"), spec.get("nonResourceAttributes")) {
        (Some(r), None) => Ok(Attributes::Resource(ResourceAttributes {
            verb: text(r, "verb"),
            group: text(r, "group"),
            resource: text(r, "resource"),
            subresource: text(r, "subresource"),
            namespace: text(r, "namespace"),
            name: text(r, "name"),
        })),
        (None, Some(n)) => Ok(Attributes::NonResource { verb: text(n, "verb"), path: text(n, "path") }),
        _ => Err(invalid(kind, "spec.resourceAttributes", "exactly one of nonResourceAttributes or resourceAttributes must be specified")),
    }
}

fn answered(kind: &str, group: &str, mut review: Value, status: Value) -> Response {
    review["kind"] = json!(kind);
    review["apiVersion"] = json!(format!("{group}/v1"));
    review["metadata"] = json!({"creationTimestamp": null});
    review["status"] = status;
    json_response(StatusCode::CREATED, &review)
}

fn access(app: &App, kind: &'static str, user: &User, review: Value, attrs: &Attributes) -> Response {
    let allowed = wharf_auth::authorize(&app.auth.policy.read(), user, attrs).is_ok();
    answered(kind, "authorization.k8s.io", review, json!({"allowed": allowed}))
}

fn or_error(result: ApiResult<Response>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

pub async fn self_subject_access(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    or_error((|| {
        let review = parse(&headers, &body)?;
        let attrs = spec_attributes("SelfSubjectAccessReview", &review["spec"])?;
        Ok(access(&app, "SelfSubjectAccessReview", &caller.user, review, &attrs))
    })())
}

/// The user a SubjectAccessReview names.
fn spec_user(kind: &'static str, spec: &Value) -> ApiResult<User> {
    let name = text(spec, "user");
    let groups: Vec<String> = spec["groups"].as_array().into_iter().flatten().filter_map(|g| g.as_str().map(String::from)).collect();
    if name.is_empty() && groups.is_empty() {
        return Err(invalid(kind, "spec.user", "at least one of user or group must be specified"));
    }
    Ok(User { name, uid: text(spec, "uid"), groups, ..User::default() })
}

pub async fn subject_access(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    or_error((|| {
        let review = parse(&headers, &body)?;
        let user = spec_user("SubjectAccessReview", &review["spec"])?;
        let attrs = spec_attributes("SubjectAccessReview", &review["spec"])?;
        Ok(access(&app, "SubjectAccessReview", &user, review, &attrs))
    })())
}

pub async fn local_subject_access(State(app): State<App>, Path(namespace): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    or_error((|| {
        let review = parse(&headers, &body)?;
        let kind = "LocalSubjectAccessReview";
        let user = spec_user(kind, &review["spec"])?;
        let attrs = spec_attributes(kind, &review["spec"])?;
        if attrs.namespace() != namespace {
            return Err(invalid(kind, "spec.resourceAttributes.namespace", "must match the namespace of the request"));
        }
        Ok(access(&app, kind, &user, review, &attrs))
    })())
}

fn strings(v: &Option<Vec<String>>) -> Value {
    json!(v.clone().unwrap_or_default())
}

fn rules_status(rules: &[PolicyRule]) -> Value {
    let (paths, resources): (Vec<&PolicyRule>, Vec<&PolicyRule>) =
        rules.iter().partition(|r| r.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()));
    let resource_rules: Vec<Value> = resources
        .iter()
        .map(|r| json!({"verbs": r.verbs, "apiGroups": strings(&r.api_groups), "resources": strings(&r.resources), "resourceNames": strings(&r.resource_names)}))
        .collect();
    let path_rules: Vec<Value> =
        paths.iter().map(|r| json!({"verbs": r.verbs, "nonResourceURLs": strings(&r.non_resource_urls)})).collect();
    json!({"resourceRules": resource_rules, "nonResourceRules": path_rules, "incomplete": false})
}

pub async fn self_subject_rules(State(app): State<App>, Extension(caller): Extension<Caller>, headers: HeaderMap, body: Bytes) -> Response {
    or_error((|| {
        let review = parse(&headers, &body)?;
        let namespace = text(&review["spec"], "namespace");
        let rules = app.auth.policy.read().rules_for(&caller.user, &namespace);
        Ok(answered("SelfSubjectRulesReview", "authorization.k8s.io", review, rules_status(&rules)))
    })())
}

pub async fn self_subject(Extension(caller): Extension<Caller>, headers: HeaderMap, body: Bytes) -> Response {
    or_error((|| {
        let review = if body.is_empty() { json!({}) } else { parse(&headers, &body)? };
        let u = &caller.user;
        let info = json!({"username": u.name, "uid": u.uid, "groups": u.groups, "extra": u.extra});
        Ok(answered("SelfSubjectReview", "authentication.k8s.io", review, json!({"userInfo": info})))
    })())
}
