//! `wharf.dev/v1` `NodeCertificateRequest`: how a node obtains, and later
//! renews, its client certificate. Answered at once and never stored,
//! like a review: the request carries a PEM certificate signing request
//! made on the node (the key never leaves it), and the answer's status the
//! certificate, `system:node:<nodeName>` in `system:nodes`, signed by the
//! cluster CA. RBAC decides who may ask at all (bootstrap tokens and
//! nodes); a node may ask only for itself, and a bootstrap token only for
//! a node that does not exist yet.

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use wharf_api::field::{FieldError, Value as FieldValue};
use wharf_auth::user::{NODES, NODE_PREFIX};

use crate::authz::Caller;
use crate::error::{ApiError, ApiResult};
use crate::http::json_response;
use crate::pki::Credentials;
use crate::App;

pub const KIND: &str = "NodeCertificateRequest";
const GROUP: &str = "wharf.dev";
/// A CSR is well under this; more is not a CSR.
const MAX_REQUEST_PEM: usize = 16 << 10;

/// Signs node certificates with the cluster CA.
pub struct NodeSigner {
    pub creds: Credentials,
    /// How long a node certificate is valid.
    pub validity: std::time::Duration,
}

fn invalid(name: &str, cause: FieldError) -> ApiError {
    ApiError::Invalid { kind: KIND, group: GROUP, name: name.into(), causes: vec![cause] }
}

/// The node name and CSR a request asks to have signed.
fn spec(review: &Value) -> ApiResult<(String, String)> {
    let node = review["spec"]["nodeName"].as_str().unwrap_or_default().to_string();
    let problems = wharf_api::names::dns1123_subdomain(&node);
    if node.is_empty() {
        return Err(invalid("", FieldError::required("spec.nodeName", "")));
    }
    if let Some(problem) = problems.first() {
        return Err(invalid(&node, FieldError::invalid("spec.nodeName", FieldValue::Str(node.clone()), problem.clone())));
    }
    let request = review["spec"]["request"].as_str().unwrap_or_default().to_string();
    if request.is_empty() {
        return Err(invalid(&node, FieldError::required("spec.request", "a PEM certificate signing request")));
    }
    if request.len() > MAX_REQUEST_PEM {
        return Err(invalid(
            &node,
            FieldError::invalid("spec.request", FieldValue::Raw("...".into()), "too long for a certificate request"),
        ));
    }
    Ok((node, request))
}

/// A bootstrap token may not mint the identity of a node that exists: it
/// would take over that node's tunnel and pod status.
async fn is_new_node(app: &App, node: &str) -> ApiResult<()> {
    match app.registry.get(&crate::kind::NODE, "", node).await {
        Err(ApiError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Err(ApiError::Forbidden(format!(
            "node {node:?} already exists: a bootstrap token joins new nodes only (kubectl delete node {node} first to join another machine under its name)"
        ))),
    }
}

async fn sign(app: &App, caller: &Caller, headers: &HeaderMap, body: &[u8]) -> ApiResult<Response> {
    let mut review = crate::handlers::decode_body(headers, body)?;
    if !review.is_object() {
        return Err(ApiError::BadRequest("the request body must be an object".into()));
    }
    let (node, request) = spec(&review)?;
    if let Some(me) = caller.user.node_name() {
        if me != node {
            return Err(ApiError::Forbidden(format!("node {me:?} may only renew its own certificate, not node {node:?}'s")));
        }
    } else if caller.user.in_group(wharf_auth::bootstrap::GROUP) {
        is_new_node(app, &node).await?;
    }
    let signer = &app.auth.node_signer;
    let user = format!("{NODE_PREFIX}{node}");
    let certificate = crate::pki::sign_request(&signer.creds, &request, &user, NODES, signer.validity).map_err(|e| {
        invalid(&node, FieldError::invalid("spec.request", FieldValue::Raw("...".into()), format!("not a valid certificate request: {e}")))
    })?;
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::try_from(signer.validity).unwrap_or(jiff::SignedDuration::ZERO);
    tracing::info!(node = %node, requester = %caller.user.name, "signed a node certificate");
    review["kind"] = json!(KIND);
    review["apiVersion"] = json!(format!("{GROUP}/v1"));
    review["metadata"] = json!({"name": node, "creationTimestamp": null});
    review["status"] = json!({"certificate": certificate, "expirationTimestamp": expires.to_string()});
    Ok(json_response(StatusCode::CREATED, &review))
}

pub async fn create(State(app): State<App>, Extension(caller): Extension<Caller>, headers: HeaderMap, body: Bytes) -> Response {
    sign(&app, &caller, &headers, &body).await.unwrap_or_else(IntoResponse::into_response)
}
