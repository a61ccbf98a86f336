//! API errors, answered as Kubernetes `Status` objects with the HTTP code
//! and reason kubectl expects.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use wharf_api::field::FieldError;
use wharf_api::kinds::KindInfo;

use crate::ssa::FieldConflict;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{resource} \"{name}\" not found")]
    NotFound { resource: String, group: &'static str, name: String },
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists { resource: String, group: &'static str, name: String },
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {reason}")]
    Conflict { resource: String, group: &'static str, name: String, reason: String },
    /// Server-side apply changing fields other appliers own.
    #[error("{}", conflict_message(.0))]
    ApplyConflict(Vec<FieldConflict>),
    #[error("{kind} \"{name}\" is invalid: {}", summary(.causes))]
    Invalid { kind: &'static str, group: &'static str, name: String, causes: Vec<FieldError> },
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Gone(String),
    /// A read at a revision this server has not reached (yet).
    #[error("Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion { requested: u64, current: u64 },
    /// A request or the object it would store is over a size limit.
    #[error("Request entity too large: {0}")]
    TooLarge(String),
    /// Over the limit of requests in flight; try again after a second.
    #[error("Too many requests, please try again later.")]
    TooManyRequests,
    #[error("{0}")]
    Internal(String),
}

fn summary(causes: &[FieldError]) -> String {
    match causes {
        [one] => one.to_string(),
        many => format!("[{}]", many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// kube-apiserver's wording: one conflict on a line, several grouped by manager.
fn conflict_message(conflicts: &[FieldConflict]) -> String {
    if let [one] = conflicts {
        return format!("Apply failed with 1 conflict: conflict with \"{}\": {}", one.manager, one.field());
    }
    let mut managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
    managers.sort_unstable();
    managers.dedup();
    let mut lines = Vec::new();
    for manager in managers {
        lines.push(format!("conflicts with \"{manager}\":"));
        lines.extend(conflicts.iter().filter(|c| c.manager == manager).map(|c| format!("- {}", c.field())));
    }
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

impl ApiError {
    pub fn not_found(info: &KindInfo, name: &str) -> Self {
        ApiError::NotFound { resource: info.qualified_resource(), group: info.group, name: name.into() }
    }
    pub fn already_exists(info: &KindInfo, name: &str) -> Self {
        ApiError::AlreadyExists { resource: info.qualified_resource(), group: info.group, name: name.into() }
    }
    pub fn conflict(info: &KindInfo, name: &str) -> Self {
        ApiError::Conflict {
            resource: info.qualified_resource(),
            group: info.group,
            name: name.into(),
            reason: "the object has been modified; please apply your changes to the latest version and try again".into(),
        }
    }
    pub fn invalid(info: &KindInfo, name: &str, causes: Vec<FieldError>) -> Self {
        ApiError::Invalid { kind: info.kind, group: info.group, name: name.into(), causes }
    }
    pub fn namespace_not_found(ns: &str) -> Self {
        ApiError::NotFound { resource: "namespaces".into(), group: "", name: ns.into() }
    }

    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } | ApiError::ApplyConflict(_) => StatusCode::CONFLICT,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::TooLargeResourceVersion { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::ApplyConflict(_) => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Gone(_) => "Expired",
            ApiError::TooLargeResourceVersion { .. } => "Timeout",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::TooManyRequests => "TooManyRequests",
            ApiError::Internal(_) => "InternalError",
        }
    }

    fn details(&self) -> Option<Value> {
        let with_group = |mut v: Value, group: &str| {
            if !group.is_empty() {
                v["group"] = json!(group);
            }
            v
        };
        match self {
            ApiError::NotFound { resource, group, name }
            | ApiError::AlreadyExists { resource, group, name }
            | ApiError::Conflict { resource, group, name, .. } => {
                let kind = resource.split('.').next().unwrap_or(resource);
                Some(with_group(json!({"name": name, "kind": kind}), group))
            }
            ApiError::Invalid { kind, group, name, causes } => {
                let causes: Vec<Value> =
                    causes.iter().map(|c| json!({"reason": c.kind.reason(), "message": c.body(), "field": c.field})).collect();
                Some(with_group(json!({"name": name, "kind": kind, "causes": causes}), group))
            }
            ApiError::ApplyConflict(conflicts) => {
                let causes: Vec<Value> = conflicts
                    .iter()
                    .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.field()}))
                    .collect();
                Some(json!({"causes": causes}))
            }
            ApiError::TooManyRequests => Some(json!({"retryAfterSeconds": 1})),
            ApiError::TooLargeResourceVersion { .. } => Some(json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
            })),
            _ => None,
        }
    }

    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        if let Some(details) = self.details() {
            status["details"] = details;
        }
        status
    }
}

impl From<wharf_store::StoreError> for ApiError {
    fn from(e: wharf_store::StoreError) -> Self {
        match e {
            wharf_store::StoreError::Compacted { requested, oldest } => {
                ApiError::Gone(format!("too old resource version: {requested} ({oldest})"))
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code().is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = crate::http::json_response(self.code(), &self.status());
        if matches!(self, ApiError::TooManyRequests) {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
