//! How fresh a get or list must be, from `resourceVersion` and
//! `resourceVersionMatch`, with kube-apiserver's rules: unset is the
//! latest state; `0` is any state; a revision N is "not older than N"
//! (the default for a named revision, or `NotOlderThan`), or exactly N
//! (`Exact`, lists only). wharf serves the current state, so a read at a
//! revision this server has not reached yet waits up to
//! [`MAX_WAIT`] and then is 504 `Too large resource version`; an
//! `Exact` read of an older revision is 410, as for a compacted one.

use std::collections::HashMap;
use std::time::Duration;

use wharf_api::field::{FieldError, Value as FieldValue};

use crate::error::{ApiError, ApiResult};

/// How long a read waits for this server to reach the revision asked for.
pub const MAX_WAIT: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadAt {
    /// The current state (rv unset or "0").
    Latest,
    NotOlderThan(u64),
    Exact(u64),
}

fn invalid(field: &str, value: &str, detail: &str) -> ApiError {
    ApiError::Invalid {
        kind: "ListOptions",
        group: "meta.k8s.io",
        name: String::new(),
        causes: vec![FieldError::invalid(field, FieldValue::Str(value.into()), detail.to_string())],
    }
}

/// What a get (`list` false) or list asks for.
pub fn read_at(q: &HashMap<String, String>, list: bool) -> ApiResult<ReadAt> {
    let rv = q.get("resourceVersion").map(String::as_str).unwrap_or_default();
    let matching = q.get("resourceVersionMatch").map(String::as_str).unwrap_or_default();
    if q.get("continue").is_some_and(|c| !c.is_empty()) && !rv.is_empty() {
        return Err(ApiError::BadRequest("specifying resource version is not allowed when using continue".into()));
    }
    if !matching.is_empty() && !list {
        return Err(ApiError::BadRequest("resourceVersionMatch is only supported for list".into()));
    }
    if !matching.is_empty() && rv.is_empty() {
        return Err(invalid("resourceVersionMatch", matching, "resourceVersionMatch is forbidden unless resourceVersion is provided"));
    }
    let revision = match rv {
        "" => return Ok(ReadAt::Latest),
        rv => rv.parse::<u64>().map_err(|_| ApiError::BadRequest(format!("invalid resource version: {rv}")))?,
    };
    match matching {
        "" | "NotOlderThan" if revision == 0 => Ok(ReadAt::Latest),
        "" | "NotOlderThan" => Ok(ReadAt::NotOlderThan(revision)),
        "Exact" if revision == 0 => {
            Err(invalid("resourceVersionMatch", matching, r#"resourceVersionMatch "Exact" is forbidden for resourceVersion "0""#))
        }
        "Exact" => Ok(ReadAt::Exact(revision)),
        other => Err(invalid("resourceVersionMatch", other, r#"supported values: "Exact", "NotOlderThan""#)),
    }
}

/// Whether a read that saw the store at `current` answers `at`: `Ok(true)`
/// yes, `Ok(false)` not yet (wait and read again), else the error.
pub fn served(at: ReadAt, current: u64) -> ApiResult<bool> {
    match at {
        ReadAt::Latest => Ok(true),
        ReadAt::NotOlderThan(n) => Ok(current >= n),
        ReadAt::Exact(n) if n == current => Ok(true),
        ReadAt::Exact(n) if n < current => Err(ApiError::Gone(format!("too old resource version: {n} ({current})"))),
        ReadAt::Exact(_) => Ok(false),
    }
}

/// The requested revision, for the 504 after waiting.
pub fn too_large(at: ReadAt, current: u64) -> ApiError {
    let requested = match at {
        ReadAt::Latest => current,
        ReadAt::NotOlderThan(n) | ReadAt::Exact(n) => n,
    };
    ApiError::TooLargeResourceVersion { requested, current }
}

/// Reads with `read` (which returns what it read and the store revision
/// it saw) until the result answers `at`, polling for at most [`MAX_WAIT`].
pub async fn read_fresh<T, F, Fut>(at: ReadAt, read: F) -> ApiResult<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ApiResult<(T, u64)>>,
{
    let deadline = tokio::time::Instant::now() + MAX_WAIT;
    loop {
        let (value, current) = read().await?;
        if served(at, current)? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(too_large(at, current));
        }
        // Each try is a whole read: a dozen at most per request.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parameters_as_kube_apiserver_reads_them() {
        assert_eq!(read_at(&q(&[]), true).unwrap(), ReadAt::Latest);
        assert_eq!(read_at(&q(&[("resourceVersion", "0")]), true).unwrap(), ReadAt::Latest);
        assert_eq!(read_at(&q(&[("resourceVersion", "7")]), false).unwrap(), ReadAt::NotOlderThan(7));
        assert_eq!(read_at(&q(&[("resourceVersion", "7"), ("resourceVersionMatch", "Exact")]), true).unwrap(), ReadAt::Exact(7));
        let err = |pairs: &[(&str, &str)], list| read_at(&q(pairs), list).unwrap_err().to_string();
        assert!(err(&[("resourceVersionMatch", "Exact")], true).contains("forbidden unless resourceVersion is provided"));
        assert!(err(&[("resourceVersion", "0"), ("resourceVersionMatch", "Exact")], true).contains(r#"forbidden for resourceVersion "0""#));
        assert!(err(&[("resourceVersion", "3"), ("resourceVersionMatch", "Newest")], true).contains("supported values"));
        assert!(err(&[("resourceVersion", "x")], true).contains("invalid resource version"));
        assert!(err(&[("resourceVersion", "3"), ("continue", "t")], true).contains("not allowed when using continue"));
        assert!(err(&[("resourceVersion", "3"), ("resourceVersionMatch", "Exact")], false).contains("only supported for list"));
    }

    #[test]
    fn reads_wait_for_newer_revisions_and_exact_old_ones_are_gone() {
        assert!(served(ReadAt::NotOlderThan(5), 5).unwrap());
        assert!(!served(ReadAt::NotOlderThan(6), 5).unwrap());
        assert!(served(ReadAt::Exact(5), 5).unwrap());
        assert!(matches!(served(ReadAt::Exact(4), 5), Err(ApiError::Gone(_))));
        assert!(!served(ReadAt::Exact(6), 5).unwrap());
        assert_eq!(too_large(ReadAt::Exact(9), 5).to_string(), "Too large resource version: 9, current: 5");
    }
}
