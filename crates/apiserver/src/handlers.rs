//! The REST endpoints of the served resources: one handler that maps the
//! method and URL onto the registry's verbs and renders the answer as an
//! object, a list, a Table or a watch stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{json, Value};
use wharf_api::kinds::KindInfo;
use wharf_api::selector::{FieldSelector, LabelSelector};
use wharf_store::Revision;

use crate::admission;
use crate::authz::Caller;
use crate::consistency;
use crate::error::{ApiError, ApiResult};
use crate::http::{header_str, json_response, with_warnings, CACHE_CONTROL};
use crate::kind::Kind;
use crate::object::{self, FieldValidation};
use crate::patch::{self, PatchKind};
use crate::registry::{check_field_selector, DeleteOptions, Filter, WatchEvent, WatchStart, WriteOptions, WriteTarget, PROGRESS};
use crate::request::{self, Target};
use crate::ssa;
use crate::table::{self, IncludeObject, Printer};
use crate::App;

type Query = HashMap<String, String>;

/// A boolean parameter; absent is false, anything Go would not parse is 400.
fn query_flag(q: &Query, name: &str) -> ApiResult<bool> {
    q.get(name).map_or(Ok(false), |v| request::parse_bool(v).ok_or_else(|| ApiError::BadRequest(format!("{name}: invalid boolean {v:?}"))))
}

/// Whether the client asked for server-side printing.
fn wants_table(headers: &HeaderMap) -> bool {
    header_str(headers, header::ACCEPT).contains("as=Table")
}

fn include_object(q: &Query) -> IncludeObject {
    match q.get("includeObject").map(String::as_str) {
        Some("Object") => IncludeObject::Object,
        Some("None") => IncludeObject::None,
        _ => IncludeObject::Metadata,
    }
}

/// `dryRun`: absent, or `All` (the only value Kubernetes defines); any
/// other is refused, never taken for a real write.
fn dry_run<'a>(values: impl IntoIterator<Item = &'a str>, options: &'static str) -> ApiResult<bool> {
    let mut dry = false;
    for value in values {
        if value != "All" {
            let cause = wharf_api::field::FieldError::not_supported("dryRun", wharf_api::field::Value::Str(value.into()), &["All"]);
            return Err(ApiError::Invalid { kind: options, group: "meta.k8s.io", name: String::new(), causes: vec![cause] });
        }
        dry = true;
    }
    Ok(dry)
}

fn write_options(q: &Query) -> ApiResult<WriteOptions> {
    Ok(WriteOptions {
        validation: FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?,
        dry_run: dry_run(q.get("dryRun").map(String::as_str), "CreateOptions")?,
    })
}

fn filter(kind: &Kind, q: &Query) -> ApiResult<Filter> {
    let bad = |e: wharf_api::selector::SelectorError| ApiError::BadRequest(e.to_string());
    let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str)).map_err(bad)?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str)).map_err(bad)?;
    check_field_selector(kind, &fields)?;
    Ok(Filter { labels, fields })
}

pub async fn resource(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match serve(&app, &caller, method, &uri, &headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// The admission checks on an object about to be stored.
fn admit(app: &App, caller: &Caller, kind: &Kind, namespace: &str, obj: &Value, current: Option<&Value>) -> ApiResult<()> {
    admission::admit(&app.auth.policy, caller, kind, namespace, obj, current)
}

async fn serve(app: &App, caller: &Caller, method: Method, uri: &Uri, headers: &HeaderMap, body: Bytes) -> ApiResult<Response> {
    let registry = &app.registry;
    let target = request::parse(uri.path())?;
    let q: Query = uri.query().map(url_decode_pairs).unwrap_or_default();
    let ns = target.namespace.clone().unwrap_or_default();
    let kind = target.kind;
    let info = kind.info;
    match (&method, target.name.as_deref()) {
        (&Method::GET, Some(name)) => {
            let at = consistency::read_at(&q, false)?;
            let obj =
                consistency::read_fresh(at, || async { Ok((registry.get(kind, &ns, name).await?, registry.store().revision())) }).await?;
            if wants_table(headers) {
                let rv = object::resource_version(&obj).to_string();
                return Ok(ok(table::table(kind.printer, &[obj], &rv, include_object(&q), true)));
            }
            Ok(ok(obj))
        }
        (&Method::GET, None) if query_flag(&q, "watch")? => watch(app, &target, &q, wants_table(headers)).await,
        (&Method::GET, None) => {
            let filter = filter(kind, &q)?;
            let limit = match q.get("limit").map(|l| l.parse::<i64>()) {
                None => 0,
                Some(Ok(l)) => l.max(0) as usize,
                Some(Err(_)) => return Err(ApiError::BadRequest("limit: not an integer".into())),
            };
            let token = q.get("continue").map(String::as_str).filter(|t| !t.is_empty());
            let at = consistency::read_at(&q, true)?;
            let body = if limit > 0 || token.is_some() {
                let page = consistency::read_fresh(at, || async {
                    let page = registry.list_page(kind, target.namespace.as_deref(), &filter, limit, token).await?;
                    let revision = page.revision;
                    Ok((page, revision))
                })
                .await?;
                let continue_token = registry.continue_token(&page);
                write_listing(kind, headers, &q, page.items(&filter), list_metadata(page.revision, continue_token.as_deref()))?
            } else {
                let (stored, rv) = consistency::read_fresh(at, || async {
                    let (stored, rv) = registry.list_stored(kind, target.namespace.as_deref()).await?;
                    Ok(((stored, rv), rv))
                })
                .await?;
                write_listing(kind, headers, &q, stored.decode(&filter), list_metadata(rv, None))?
            };
            Ok(raw_json(body))
        }
        (&Method::POST, None) => {
            let obj = decode_body(headers, &body)?;
            admit(app, caller, kind, &ns, &obj, None)?;
            let written = registry.create(kind, &ns, obj, &write_options(&q)?).await?;
            Ok(with_warnings(json_response(StatusCode::CREATED, &written.object), &written.warnings))
        }
        (&Method::PUT, Some(name)) => {
            let obj = decode_body(headers, &body)?;
            let opts = write_options(&q)?;
            let written = registry
                .update_with(kind, &ns, name, WriteTarget::from_subresource(target.subresource.as_deref()), &opts, |current| {
                    admit(app, caller, kind, &ns, &obj, Some(current))?;
                    Ok(obj.clone())
                })
                .await?;
            Ok(with_warnings(ok(written.object), &written.warnings))
        }
        (&Method::PATCH, Some(name)) => patch(app, caller, &target, name, headers, &body, &q).await,
        (&Method::DELETE, Some(name)) => {
            let mut opts = delete_options(&body, &q)?;
            if caller.user.node_name().is_some() {
                let current = registry.get(kind, &ns, name).await?;
                admit(app, caller, kind, &ns, &current, Some(&current))?;
                // Exactly the object judged, not one recreated meanwhile.
                opts.uid = Some(object::uid(&current).to_string());
            }
            let obj = registry.delete(kind, &ns, name, &opts).await?;
            Ok(ok(obj))
        }
        (&Method::DELETE, None) => {
            let opts = delete_options(&body, &q)?;
            let (items, _) = registry.list(kind, target.namespace.as_deref(), &filter(kind, &q)?).await?;
            let mut deleted = Vec::new();
            for item in items {
                match registry.delete(kind, object::namespace(&item), object::name(&item), &opts).await {
                    Ok(obj) => deleted.push(obj),
                    Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(ok(list(info, deleted, registry.store().revision())))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn url_decode_pairs(raw: &str) -> Query {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
            (decode(k), decode(v))
        })
        .collect()
}

fn ok(body: Value) -> Response {
    json_response(StatusCode::OK, &body)
}

fn raw_json(body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static(CACHE_CONTROL));
    response
}

/// A `<Kind>List`, serialized while the items are decoded one by one.
/// A list's `metadata`: its revision and, when there is more, the token
/// of the next page.
fn list_metadata(revision: u64, continue_token: Option<&str>) -> Value {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    metadata
}

/// A list, or the Table kubectl asks for, streamed from `items`.
fn write_listing(
    kind: &Kind,
    headers: &HeaderMap,
    q: &Query,
    items: impl Iterator<Item = ApiResult<Value>>,
    metadata: Value,
) -> ApiResult<Vec<u8>> {
    if wants_table(headers) {
        table::write_table(kind.printer, items, metadata, include_object(q))
    } else {
        write_list(kind.info, items, metadata)
    }
}

fn write_list(info: &KindInfo, items: impl Iterator<Item = ApiResult<Value>>, metadata: Value) -> ApiResult<Vec<u8>> {
    let head = format!(r#"{{"kind":{},"apiVersion":{},"metadata":{metadata},"items":["#, json!(info.list_kind), json!(info.api_version()));
    let mut out = head.into_bytes();
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, &item?).map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

fn list(info: &KindInfo, items: Vec<Value>, revision: u64) -> Value {
    json!({
        "kind": info.list_kind,
        "apiVersion": info.api_version(),
        "metadata": {"resourceVersion": revision.to_string()},
        "items": items,
    })
}

/// Reads a create or update body: JSON, YAML, or the protobuf envelope
/// `kubectl create namespace` and `kubectl create service` send.
pub(crate) fn decode_body(headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let content_type = header_str(headers, header::CONTENT_TYPE);
    if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        return crate::protobuf::decode(body);
    }
    if content_type.starts_with("application/yaml") {
        return serde_norway::from_slice(body).map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("error decoding request body: {e}")))
}

/// `gracePeriodSeconds` from the body or the query: a whole number of
/// seconds within the pod rule's range, else 422 naming the field.
fn grace_period(body: &Value, query: Option<&String>) -> ApiResult<Option<i64>> {
    let invalid = |shown: String, detail: &str| ApiError::Invalid {
        kind: "DeleteOptions",
        group: "",
        name: String::new(),
        causes: vec![wharf_api::field::FieldError::invalid("gracePeriodSeconds", wharf_api::field::Value::Raw(shown), detail.to_string())],
    };
    let seconds = match (body, query) {
        (Value::Null, None) => return Ok(None),
        (Value::Null, Some(text)) => text.parse::<i64>().map_err(|_| invalid(text.clone(), "must be a whole number of seconds"))?,
        (value, _) => value.as_i64().ok_or_else(|| invalid(value.to_string(), "must be a whole number of seconds"))?,
    };
    match wharf_api::pod::validate_grace_period("gracePeriodSeconds", seconds) {
        Some(error) => Err(ApiError::Invalid { kind: "DeleteOptions", group: "", name: String::new(), causes: vec![error] }),
        None => Ok(Some(seconds)),
    }
}

fn delete_options(body: &[u8], q: &Query) -> ApiResult<DeleteOptions> {
    let opts: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("error decoding DeleteOptions: {e}")))?
    };
    Ok(DeleteOptions {
        uid: opts["preconditions"]["uid"].as_str().map(String::from),
        resource_version: opts["preconditions"]["resourceVersion"].as_str().map(String::from),
        grace_period: grace_period(&opts["gracePeriodSeconds"], q.get("gracePeriodSeconds"))?,
        dry_run: dry_run(
            q.get("dryRun")
                .map(String::as_str)
                .into_iter()
                .chain(opts["dryRun"].as_array().into_iter().flatten().map(|d| d.as_str().unwrap_or("?"))),
            "DeleteOptions",
        )?,
    })
}

async fn patch(
    app: &App,
    caller: &Caller,
    target: &Target,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
    q: &Query,
) -> ApiResult<Response> {
    let registry = &app.registry;
    let format = PatchKind::from_content_type(header_str(headers, header::CONTENT_TYPE))?;
    let patch_doc = patch::parse_body(format, body)?;
    let ns = target.namespace.clone().unwrap_or_default();
    let opts = write_options(q)?;
    let sub = WriteTarget::from_subresource(target.subresource.as_deref());
    let manager = q.get("fieldManager").map_or("unknown", String::as_str);
    let force = query_flag(q, "force")?;
    let result = registry
        .update_with(target.kind, &ns, name, sub, &opts, |current| {
            let patched = match format {
                PatchKind::Apply => ssa::server_side_apply(target.kind, current, &patch_doc, manager, force),
                _ => patch::apply(format, target.kind, current, &patch_doc),
            }?;
            admit(app, caller, target.kind, &ns, &patched, Some(current))?;
            Ok(patched)
        })
        .await;
    match result {
        Ok(written) => Ok(with_warnings(ok(written.object), &written.warnings)),
        // Server-side apply creates what does not exist yet (the object,
        // never through one of its subresources).
        Err(ApiError::NotFound { .. }) if format == PatchKind::Apply && target.subresource.is_none() => {
            let mut obj = patch_doc.clone();
            object::metadata_mut(&mut obj).insert("name".into(), json!(name));
            ssa::record_apply(&mut obj, &ssa::field_set(target.kind, &patch_doc), manager, &patch_doc);
            admit(app, caller, target.kind, &ns, &obj, None)?;
            let written = registry.create(target.kind, &ns, obj, &opts).await?;
            Ok(with_warnings(json_response(StatusCode::CREATED, &written.object), &written.warnings))
        }
        Err(e) => Err(e),
    }
}

/// One line of a watch stream: `{"type":..,"object":..}\n`.
fn watch_line(event: &WatchEvent, printer: &Printer, as_table: bool, first: bool) -> Bytes {
    // A bookmark carries only a resourceVersion, even in a Table watch.
    let object = if as_table && event.kind != "BOOKMARK" {
        let rv = object::resource_version(&event.object).to_string();
        table::table(printer, std::slice::from_ref(&event.object), &rv, IncludeObject::Metadata, first)
    } else {
        event.object.clone()
    };
    let mut line = serde_json::to_vec(&json!({"type": event.kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn error_line(e: &ApiError) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": e.status()})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// The watch's lines: columns go with the first event only; an error
/// event ends the stream.
fn watch_lines(events: BoxStream<'static, ApiResult<WatchEvent>>, printer: &'static Printer, as_table: bool) -> BoxStream<'static, Bytes> {
    events
        .scan((true, false), move |(first, failed), event| {
            let line = match event {
                _ if *failed => None,
                Ok(event) => Some(watch_line(&event, printer, as_table, std::mem::take(first))),
                Err(e) => {
                    *failed = true;
                    Some(error_line(&e))
                }
            };
            futures::future::ready(line)
        })
        .boxed()
}

/// Adds a BOOKMARK every `interval` (when the client allows them) with the
/// latest resourceVersion the watch has passed: its own events and the
/// store's progress (`PROGRESS`, never sent), so a quiet or filtered watch
/// resumes from a recent revision, inside the store's history.
fn with_bookmarks(
    events: BoxStream<'static, ApiResult<WatchEvent>>,
    info: &'static KindInfo,
    interval: Option<Duration>,
    since: Option<Revision>,
) -> BoxStream<'static, ApiResult<WatchEvent>> {
    let Some(interval) = interval else {
        return events.filter(|event| futures::future::ready(!matches!(event, Ok(e) if e.kind == PROGRESS))).boxed();
    };
    enum Item {
        Event(ApiResult<WatchEvent>),
        Tick,
        /// The watch itself ended: so does the stream, ticks or not.
        End,
    }
    let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval_at(tokio::time::Instant::now() + interval, interval));
    let events = events.map(Item::Event).chain(futures::stream::once(futures::future::ready(Item::End)));
    futures::stream::select(events, ticks.map(|_| Item::Tick))
        .scan(since, move |latest: &mut Option<Revision>, item| {
            let out = match item {
                Item::Event(Ok(event)) => {
                    // Never backwards: a progress may name the revision before
                    // one whose events were sent.
                    let passed = object::resource_version(&event.object).parse().ok();
                    *latest = (*latest).max(passed);
                    Some((event.kind != PROGRESS).then_some(Ok(event)))
                }
                Item::Event(Err(e)) => Some(Some(Err(e))),
                // Nothing sent yet: nothing to bookmark.
                Item::Tick => Some(latest.map(|rv| Ok(WatchEvent { kind: "BOOKMARK", object: bookmark(info, &rv.to_string()) }))),
                Item::End => None,
            };
            futures::future::ready(out)
        })
        .filter_map(futures::future::ready)
        .boxed()
}

fn bookmark(info: &KindInfo, rv: &str) -> Value {
    json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": {"resourceVersion": rv}})
}

/// Where a watch starts, from `resourceVersion` and, for a streaming list,
/// `sendInitialEvents` (which kube-apiserver allows only with
/// `resourceVersionMatch=NotOlderThan` and bookmarks).
fn watch_start(q: &Query) -> ApiResult<WatchStart> {
    let since = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(rv.parse::<u64>().map_err(|_| ApiError::BadRequest(format!("invalid resource version: {rv}")))?),
    };
    if !query_flag(q, "sendInitialEvents")? {
        return Ok(since.map_or(WatchStart::Current { end_bookmark: false }, WatchStart::After));
    }
    let invalid = |field: &str, detail: &str| ApiError::Invalid {
        kind: "ListOptions",
        group: "meta.k8s.io",
        name: String::new(),
        causes: vec![wharf_api::field::FieldError::forbidden(field, detail)],
    };
    if q.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") {
        return Err(invalid(
            "sendInitialEvents",
            "sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan",
        ));
    }
    if !query_flag(q, "allowWatchBookmarks")? {
        return Err(invalid("allowWatchBookmarks", "allowWatchBookmarks must be set to true when sendInitialEvents is true"));
    }
    // The current state is never older than any revision the client names.
    Ok(WatchStart::Current { end_bookmark: true })
}

/// Kubernetes keeps a watch without `timeoutSeconds` open for 30 to 60 minutes.
const DEFAULT_WATCH_SECONDS: u64 = 1800;

async fn watch(app: &App, target: &Target, q: &Query, as_table: bool) -> ApiResult<Response> {
    let registry = &app.registry;
    let kind = target.kind;
    let info = kind.info;
    let mut filter = filter(kind, q)?;
    if let Some(name) = &target.name {
        filter.fields.0.push(wharf_api::selector::FieldRequirement { field: "metadata.name".into(), value: name.clone(), equal: true });
    }
    let start = watch_start(q)?;
    let timeout = q.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(DEFAULT_WATCH_SECONDS);
    let bookmarks = query_flag(q, "allowWatchBookmarks")?.then_some(app.bookmark_interval);
    let since = match start {
        WatchStart::After(rv) => Some(rv),
        WatchStart::Current { .. } => None,
    };
    let lines = match registry.watch(kind, target.namespace.as_deref(), filter, start).await {
        Ok(events) => watch_lines(with_bookmarks(events, kind.info, bookmarks, since), kind.printer, as_table),
        // A resource version that is too old ends the stream with an ERROR
        // event, as kube-apiserver answers it; reflectors then relist.
        Err(e @ ApiError::Gone(_)) => futures::stream::once(async move { error_line(&e) }).boxed(),
        Err(e) => return Err(e),
    };
    let deadline = tokio::time::sleep(Duration::from_secs(timeout));
    // Shutdown ends the stream cleanly; the client reconnects elsewhere.
    let open = app.metrics.watch_started(info.resource);
    let body = lines.take_until(deadline).take_until(app.shutdown.clone().cancelled_owned()).map(move |line| {
        let _counted = &open;
        Ok::<_, Infallible>(line)
    });
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, CACHE_CONTROL)
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_is_all_or_refused() {
        assert!(!dry_run(None, "CreateOptions").unwrap());
        assert!(dry_run(Some("All"), "CreateOptions").unwrap());
        let err = dry_run(Some("Server"), "CreateOptions").unwrap_err();
        assert_eq!(err.to_string(), r#"CreateOptions "" is invalid: dryRun: Unsupported value: "Server": supported values: "All""#);
        assert!(dry_run(["All", "nope"], "DeleteOptions").is_err(), "every value counts");
    }

    fn event(rv: &str) -> ApiResult<WatchEvent> {
        Ok(WatchEvent { kind: "ADDED", object: json!({"metadata": {"resourceVersion": rv}}) })
    }

    fn progress(rv: &str) -> ApiResult<WatchEvent> {
        Ok(WatchEvent { kind: PROGRESS, object: json!({"metadata": {"resourceVersion": rv}}) })
    }

    /// A quiet watch's bookmark follows the store's progress, never goes
    /// back, and a progress item itself is never sent, bookmarks or not.
    #[tokio::test(start_paused = true)]
    async fn progress_moves_bookmarks_and_is_never_sent() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let stream = with_bookmarks(rx.boxed(), &wharf_api::kinds::CONFIG_MAP, Some(Duration::from_secs(1)), Some(5));
        futures::pin_mut!(stream);
        for item in [progress("900"), event("950"), progress("949")] {
            tx.unbounded_send(item).expect("send");
        }
        assert_eq!(stream.next().await.and_then(Result::ok).map(|e| e.kind), Some("ADDED"));
        let bookmark = stream.next().await.and_then(Result::ok).expect("a bookmark");
        assert_eq!((bookmark.kind, &bookmark.object["metadata"]["resourceVersion"]), ("BOOKMARK", &json!("950")));

        let (tx, rx) = futures::channel::mpsc::unbounded();
        let plain = with_bookmarks(rx.boxed(), &wharf_api::kinds::CONFIG_MAP, None, Some(5));
        for item in [progress("900"), event("950")] {
            tx.unbounded_send(item).expect("send");
        }
        drop(tx);
        let kinds: Vec<&str> = plain.filter_map(|e| async move { e.ok().map(|e| e.kind) }).collect().await;
        assert_eq!(kinds, ["ADDED"]);
    }

    /// The ticks never end; the stream must end with the watch, or a client
    /// cut off from the store would wait for events that never come.
    #[tokio::test(start_paused = true)]
    async fn bookmarks_carry_the_latest_revision_and_end_with_the_watch() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let stream = with_bookmarks(rx.boxed(), &wharf_api::kinds::CONFIG_MAP, Some(Duration::from_secs(1)), Some(5));
        futures::pin_mut!(stream);
        let first = stream.next().await.and_then(Result::ok).expect("a bookmark");
        assert_eq!((first.kind, &first.object["metadata"]["resourceVersion"]), ("BOOKMARK", &json!("5")));
        tx.unbounded_send(event("7")).expect("send");
        assert_eq!(stream.next().await.and_then(Result::ok).map(|e| e.kind), Some("ADDED"));
        let next = stream.next().await.and_then(Result::ok).expect("a bookmark");
        assert_eq!(next.object["metadata"]["resourceVersion"], "7");
        drop(tx);
        assert!(stream.next().await.is_none(), "the watch ended, so must the stream");
    }
}
