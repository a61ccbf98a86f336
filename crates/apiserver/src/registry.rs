//! The generic object store of the API: keys, resource versions, the
//! create / update / delete paths with their Kubernetes semantics, and
//! watches. Kind-specific rules come from the codecs; Services also take
//! and release their allocations in the same transaction as the object.

use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use serde_json::{json, Value};
use wharf_api::kinds::{self, KindInfo};

use crate::kind::{self, Kind, Lifecycle};
use crate::limits::MAX_OBJECT_BYTES;
use wharf_api::selector::{FieldSelector, LabelSelector};
use wharf_store::{Compare, Event, EventKind, KeyValue, Revision, SharedSnapshot, Snapshot, Store, Txn, TxnOutcome};

use crate::alloc::Allocator;
use crate::error::{ApiError, ApiResult};
use crate::object::{self, FieldValidation};

/// How often a write is retried when another writer got in between.
const MAX_ATTEMPTS: usize = 16;

#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub validation: FieldValidation,
    pub dry_run: bool,
}

/// The result of a write: the object as stored, and warnings for the client.
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
}

/// Which objects a list or watch returns.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    /// Whether it selects every object (no decoding needed to know).
    pub fn is_everything(&self) -> bool {
        self.labels.is_empty() && self.fields.0.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        (self.labels.is_empty() || self.labels.matches(&object::labels(obj))) && self.fields.matches(|f| object::field_string(obj, f))
    }
}

/// Encoded objects as the store returned them.
pub struct Stored(Vec<KeyValue>);

/// One page of a list (`limit`/`continue`): its objects as stored,
/// decoded only as they are written out, so a page of large objects never
/// exists decoded all at once.
pub struct Page {
    items: Vec<KeyValue>,
    /// The revision of the snapshot every page of this list reads.
    pub revision: Revision,
    next: Option<NextPage>,
}

/// Where the next page of a list starts, and the snapshot it reads (kept
/// for the token only once the page is served: a read retried for
/// freshness pins nothing).
struct NextPage {
    snapshot: SharedSnapshot,
    kept: Option<u64>,
    key: String,
}

impl Page {
    /// Its objects, decoded one at a time, those `filter` selects.
    pub fn items<'a>(&'a self, filter: &'a Filter) -> impl Iterator<Item = ApiResult<Value>> + 'a {
        selected(&self.items, filter)
    }
}

impl Stored {
    /// Decodes the objects one at a time, keeping those `filter` selects.
    pub fn decode<'a>(&'a self, filter: &'a Filter) -> impl Iterator<Item = ApiResult<Value>> + 'a {
        selected(&self.0, filter)
    }
}

/// Keys read from a snapshot at a time while filling a page (at most).
const PAGE_READ: usize = 10_000;

/// Reads `snapshot` from `start` until `limit` objects `filter` selects (0:
/// no limit); returns them and the key the next page starts at, if any
/// remain. Finding them decodes each object once and drops those not
/// selected at once; without a filter nothing is decoded.
async fn read_page(
    snapshot: &dyn Snapshot,
    prefix: &str,
    start: String,
    filter: &Filter,
    limit: usize,
) -> ApiResult<(Vec<KeyValue>, Option<String>)> {
    let limit = if limit == 0 { usize::MAX } else { limit };
    // One more than the page, to know whether anything follows it; with a
    // filter that skips most, twice as many each time.
    let mut read = limit.saturating_add(1).min(PAGE_READ);
    let mut page = Vec::new();
    let mut from = start;
    loop {
        let chunk = snapshot.list_from(prefix, &from, read).await.map_err(|e| match e {
            wharf_store::StoreError::Compacted { .. } => crate::pager::expired(),
            e => e.into(),
        })?;
        let more = chunk.len() == read;
        if let Some(last) = chunk.last() {
            from = format!("{}\0", last.key);
        }
        for kv in chunk {
            if page.len() == limit {
                return Ok((page, Some(kv.key.to_string())));
            }
            if filter.is_everything() || filter.matches(&decode_kv(&kv)?) {
                page.push(kv);
            }
        }
        if !more {
            return Ok((page, None));
        }
        read = read.saturating_mul(2).min(PAGE_READ);
    }
}

/// The objects of `kvs` that `filter` selects, decoded one at a time; an
/// object that does not decode is passed on as its error.
fn selected<'a>(kvs: &'a [KeyValue], filter: &'a Filter) -> impl Iterator<Item = ApiResult<Value>> + 'a {
    kvs.iter().map(decode_kv).filter(move |obj| obj.as_ref().map_or(true, |o| filter.matches(o)))
}

/// Refuses a field selector on a field the kind cannot select by.
pub fn check_field_selector(kind: &Kind, sel: &FieldSelector) -> ApiResult<()> {
    for req in &sel.0 {
        let f = req.field.as_str();
        if f != "metadata.name" && f != "metadata.namespace" && !kind.selectable_fields.contains(&f) {
            return Err(ApiError::BadRequest(format!("field label not supported: {f}")));
        }
    }
    Ok(())
}

/// One event of a watch, as sent to clients.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub kind: &'static str,
    pub object: Value,
}

/// The kind of a watch item that is never sent: the watch has passed
/// every change it would show through the object's resourceVersion. A
/// BOOKMARK carries the latest one.
pub const PROGRESS: &str = "PROGRESS";

impl WatchEvent {
    fn progress(revision: Revision) -> Self {
        WatchEvent { kind: PROGRESS, object: json!({"metadata": {"resourceVersion": revision.to_string()}}) }
    }
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchStart {
    /// The changes after this revision.
    After(Revision),
    /// The objects as they are now, then their changes;
    /// `end_bookmark` marks the end of the initial events
    /// (`sendInitialEvents=true`).
    Current { end_bookmark: bool },
}

/// The bookmark that ends a streaming list's initial events.
fn initial_events_end(info: &KindInfo, rv: Revision) -> Value {
    serde_json::json!({
        "kind": info.kind,
        "apiVersion": info.api_version(),
        "metadata": {"resourceVersion": rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}},
    })
}

/// What an update may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteTarget {
    /// The object without its status (`PUT/PATCH .../NAME`).
    Main,
    /// Only the status (`.../NAME/status`).
    Status,
    /// Anything but identity: the registry's own writes, such as marking
    /// an object for deletion.
    System,
}

impl WriteTarget {
    /// The target a URL's subresource names.
    pub fn from_subresource(subresource: Option<&str>) -> Self {
        match subresource {
            Some("status") => WriteTarget::Status,
            _ => WriteTarget::Main,
        }
    }
}

/// `DeleteOptions`: preconditions and the grace period.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// Seconds a pod stays Terminating; None takes the pod's own setting.
    pub grace_period: Option<i64>,
    pub dry_run: bool,
}

pub fn object_key(info: &KindInfo, namespace: &str, name: &str) -> String {
    if info.namespaced {
        format!("/registry/{}/{namespace}/{name}", info.resource)
    } else {
        format!("/registry/{}/{name}", info.resource)
    }
}

pub fn list_prefix(info: &KindInfo, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if info.namespaced => format!("/registry/{}/{ns}/", info.resource),
        _ => format!("/registry/{}/", info.resource),
    }
}

fn decode(bytes: &[u8], revision: Revision) -> ApiResult<Value> {
    let mut obj: Value = serde_json::from_slice(bytes).map_err(|e| ApiError::Internal(format!("corrupt object in store: {e}")))?;
    object::metadata_mut(&mut obj).insert("resourceVersion".into(), json!(revision.to_string()));
    Ok(obj)
}

fn decode_kv(kv: &KeyValue) -> ApiResult<Value> {
    decode(&kv.value.bytes(), kv.mod_revision)
}

/// The stored form: the object without its resource version, which is
/// the store's revision and is filled in on every read.
/// Refuses objects over `MAX_OBJECT_BYTES`: every write path (create,
/// update, each patch type, apply) stores through here.
fn encode(obj: &Value) -> ApiResult<bytes::Bytes> {
    let mut stored = obj.clone();
    object::metadata_mut(&mut stored).remove("resourceVersion");
    let mut bytes = serde_json::to_vec(&stored).map_err(|e| ApiError::Internal(e.to_string()))?;
    // Kept in memory for as long as the object lives: no spare capacity.
    bytes.shrink_to_fit();
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(ApiError::TooLarge(format!("the object would be {} bytes; the limit is {MAX_OBJECT_BYTES}", bytes.len())));
    }
    Ok(bytes.into())
}

fn without_version(obj: &Value) -> Value {
    let mut v = obj.clone();
    object::metadata_mut(&mut v).remove("resourceVersion");
    v
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect()
}

/// Namespaces that always exist and cannot be deleted.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    allocator: Allocator,
    /// Where pods without `spec.nodeName` are bound.
    default_node: Option<Arc<str>>,
    /// Namespaces (by uid) whose finalizer is running: one at a time each.
    finalizing: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    pager: Arc<crate::pager::Pager>,
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, allocator: Allocator) -> Self {
        Self { store, allocator, default_node: None, finalizing: Arc::default(), pager: Arc::default() }
    }

    /// Binds pods created without `spec.nodeName` to `node`.
    pub fn with_default_node(mut self, node: &str) -> Self {
        self.default_node = Some(node.into());
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    pub async fn get(&self, kind: &Kind, namespace: &str, name: &str) -> ApiResult<Value> {
        let info = kind.info;
        let kv = self.store.get(&object_key(info, namespace, name)).await?;
        let kv = kv.ok_or_else(|| ApiError::not_found(info, name))?;
        decode_kv(&kv)
    }

    pub async fn list(&self, kind: &Kind, namespace: Option<&str>, filter: &Filter) -> ApiResult<(Vec<Value>, Revision)> {
        let (stored, revision) = self.list_stored(kind, namespace).await?;
        let items = stored.decode(filter).collect::<ApiResult<Vec<_>>>()?;
        Ok((items, revision))
    }

    /// The stored objects of a list, still encoded: large lists are
    /// rendered one object at a time from this.
    pub async fn list_stored(&self, kind: &Kind, namespace: Option<&str>) -> ApiResult<(Stored, Revision)> {
        let info = kind.info;
        let (kvs, revision) = self.store.list(&list_prefix(info, namespace)).await?;
        Ok((Stored(kvs), revision))
    }

    /// At most `limit` objects `filter` selects (0: all), from a new
    /// listing or the one `token` continues, and the token for the rest.
    pub async fn list_page(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        filter: &Filter,
        limit: usize,
        token: Option<&str>,
    ) -> ApiResult<Page> {
        self.pager.sweep();
        let prefix = list_prefix(kind.info, namespace);
        let (snapshot, kept, start) = match token {
            Some(token) => {
                let (snapshot, id, start) = self.pager.resume(token, &prefix)?;
                (snapshot, Some(id), start)
            }
            None => (self.store.snapshot().await?, None, prefix.clone()),
        };
        let (items, next) = read_page(snapshot.as_ref(), &prefix, start, filter, limit).await?;
        let revision = snapshot.revision();
        if let (None, Some(id)) = (&next, kept) {
            self.pager.finish(id);
        }
        Ok(Page { items, revision, next: next.map(|key| NextPage { snapshot, kept, key }) })
    }

    /// The continue token of a page being served: its snapshot is kept
    /// for the next page from now on.
    pub fn continue_token(&self, page: &Page) -> Option<String> {
        let next = page.next.as_ref()?;
        let id = next.kept.unwrap_or_else(|| self.pager.keep(next.snapshot.clone()));
        Some(crate::pager::encode(id, page.revision, &next.key))
    }

    /// Fills `apiVersion` and `kind`, refusing a body of another kind.
    fn check_type(info: &KindInfo, body: &mut Value) -> ApiResult<()> {
        let api_version = info.api_version();
        for (field, want) in [("apiVersion", api_version.as_str()), ("kind", info.kind)] {
            match body.get(field).and_then(Value::as_str) {
                None | Some("") => body[field] = json!(want),
                Some(got) if got == want => {}
                Some(got) => {
                    return Err(ApiError::BadRequest(format!(
                        "the API version in the data ({}) does not match the expected API version ({api_version}) or kind ({got}) does not match {}",
                        body.get("apiVersion").and_then(Value::as_str).unwrap_or_default(),
                        info.kind
                    )))
                }
            }
        }
        if !body.is_object() {
            return Err(ApiError::BadRequest("the object must be a JSON object".into()));
        }
        Ok(())
    }

    /// Reads the namespace an object goes into, refusing a missing or
    /// terminating one; the returned compare keeps it so until commit.
    async fn live_namespace(&self, namespace: &str) -> ApiResult<Compare> {
        let key = object_key(&kinds::NAMESPACE, "", namespace);
        let kv = self.store.get(&key).await?.ok_or_else(|| ApiError::namespace_not_found(namespace))?;
        let ns = decode_kv(&kv)?;
        if !ns["metadata"]["deletionTimestamp"].is_null() {
            return Err(ApiError::Forbidden(format!(
                "unable to create new content in namespace {namespace} because it is being terminated"
            )));
        }
        Ok(Compare::ModRevision(key, kv.mod_revision))
    }

    pub async fn create(&self, kind: &Kind, namespace: &str, mut body: Value, opts: &WriteOptions) -> ApiResult<Written> {
        let info = kind.info;
        Self::check_type(info, &mut body)?;
        let meta = object::metadata_mut(&mut body);
        if info.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    meta.insert("namespace".into(), json!(namespace));
                }
                Some(ns) if ns == namespace => {}
                Some(_) => {
                    return Err(ApiError::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    ))
                }
            }
        } else {
            meta.remove("namespace");
        }
        let has_name = meta.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
        if !has_name {
            if let Some(prefix) = meta.get("generateName").and_then(Value::as_str).filter(|p| !p.is_empty()) {
                let name = format!("{prefix}{}", random_suffix());
                meta.insert("name".into(), json!(name));
            }
        }
        for field in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"] {
            meta.remove(field);
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if kind.lifecycle == Lifecycle::Pod {
            if let (Some(node), Some(spec)) = (&self.default_node, body.get_mut("spec").and_then(Value::as_object_mut)) {
                if spec.get("nodeName").and_then(Value::as_str).is_none_or(str::is_empty) {
                    spec.insert("nodeName".into(), json!(node.as_ref()));
                }
            }
        }
        if kind.status_reset_on_create {
            if let Some(obj) = body.as_object_mut() {
                obj.remove("status");
            }
        }
        let (prepared, warnings) = kind.codec.prepare(body, None, opts.validation)?;
        let name = object::name(&prepared).to_string();
        let key = object_key(info, namespace, &name);

        for _ in 0..MAX_ATTEMPTS {
            // Checked first so that a duplicate is reported as such, not as
            // an allocation clash with its own cluster IP.
            if self.store.get(&key).await?.is_some() {
                return Err(ApiError::already_exists(info, &name));
            }
            let mut obj = prepared.clone();
            let mut txn = Txn::new().when(Compare::Absent(key.clone()));
            if info.namespaced {
                txn = txn.when(self.live_namespace(namespace).await?);
            }
            if kind.lifecycle == Lifecycle::Service {
                txn = self.allocate(&key, &mut obj, None, txn).await?;
            }
            let encoded = encode(&obj)?;
            if opts.dry_run {
                return Ok(Written { object: obj, warnings });
            }
            let txn = txn.put(key.clone(), encoded);
            match self.store.txn(txn).await? {
                TxnOutcome::Committed(revision) => {
                    object::metadata_mut(&mut obj).insert("resourceVersion".into(), json!(revision.to_string()));
                    return Ok(Written { object: obj, warnings });
                }
                TxnOutcome::Failed if self.store.get(&key).await?.is_some() => {
                    return Err(ApiError::already_exists(info, &name));
                }
                // The namespace changed or an allocation was taken meanwhile.
                TxnOutcome::Failed => continue,
            }
        }
        Err(ApiError::Internal(format!("too many concurrent changes while creating {}", info.resource)))
    }

    /// Takes and releases the Service's allocations within `txn`.
    async fn allocate(&self, key: &str, obj: &mut Value, old: Option<&Value>, mut txn: Txn) -> ApiResult<Txn> {
        let typed =
            |v: &Value| serde_json::from_value::<Service>(v.clone()).map_err(|e| ApiError::Internal(format!("service decode: {e}")));
        let mut svc = typed(obj)?;
        let old = old.map(typed).transpose()?;
        let plan = self.allocator.plan(self.store.as_ref(), key, &mut svc, old.as_ref()).await?;
        let rv = obj["metadata"]["resourceVersion"].clone();
        *obj = serde_json::to_value(&svc).map_err(|e| ApiError::Internal(e.to_string()))?;
        if !rv.is_null() {
            object::metadata_mut(obj).insert("resourceVersion".into(), rv);
        }
        txn.compares.extend(plan.compares);
        txn.ops.extend(plan.ops);
        Ok(txn)
    }

    /// Reads the object, lets `mutate` compute its new state, and writes it
    /// if it changed, retrying from a fresh read when another writer got in
    /// between. A resourceVersion in the new state is a precondition.
    pub async fn update_with<F>(
        &self,
        kind: &Kind,
        namespace: &str,
        name: &str,
        target: WriteTarget,
        opts: &WriteOptions,
        mutate: F,
    ) -> ApiResult<Written>
    where
        F: Fn(&Value) -> ApiResult<Value>,
    {
        let info = kind.info;
        let key = object_key(info, namespace, name);
        for _ in 0..MAX_ATTEMPTS {
            let kv = self.store.get(&key).await?.ok_or_else(|| ApiError::not_found(info, name))?;
            let current = decode_kv(&kv)?;
            let mut desired = mutate(&current)?;
            Self::check_type(info, &mut desired)?;
            let wanted_rv = object::resource_version(&desired);
            if !wanted_rv.is_empty() && wanted_rv != object::resource_version(&current) {
                return Err(ApiError::conflict(info, name));
            }
            if object::name(&desired) != name && !object::name(&desired).is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    object::name(&desired)
                )));
            }
            let candidate = carry_over(info, desired, &current, target);
            let (mut obj, warnings) = kind.codec.prepare(candidate, Some(&current), opts.validation)?;
            object::metadata_mut(&mut obj).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
            let mut txn = Txn::new().when(Compare::ModRevision(key.clone(), kv.mod_revision));
            if kind.lifecycle == Lifecycle::Service {
                txn = self.allocate(&key, &mut obj, Some(&current), txn).await?;
            }
            if without_version(&obj) == without_version(&current) {
                return Ok(Written { object: obj, warnings });
            }
            let encoded = encode(&obj)?;
            if opts.dry_run {
                return Ok(Written { object: obj, warnings });
            }
            match self.store.txn(txn.put(key.clone(), encoded)).await? {
                TxnOutcome::Committed(revision) => {
                    object::metadata_mut(&mut obj).insert("resourceVersion".into(), json!(revision.to_string()));
                    return Ok(Written { object: obj, warnings });
                }
                TxnOutcome::Failed => continue,
            }
        }
        Err(ApiError::conflict(info, name))
    }

    /// Deletes the object (a Namespace: starts its finalization).
    pub async fn delete(&self, kind: &Kind, namespace: &str, name: &str, pre: &DeleteOptions) -> ApiResult<Value> {
        match kind.lifecycle {
            Lifecycle::Pod => return self.delete_pod(namespace, name, pre).await,
            Lifecycle::Namespace => {}
            Lifecycle::Plain | Lifecycle::Service => return self.delete_now(kind, namespace, name, pre).await,
        }
        let info = kind.info;
        if SYSTEM_NAMESPACES.contains(&name) {
            return Err(ApiError::Forbidden(format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted")));
        }
        let current = self.get(kind, "", name).await?;
        check_preconditions(info, name, &current, pre)?;
        if pre.dry_run {
            return Ok(current);
        }
        self.begin_namespace_deletion(name).await
    }

    /// Pods are deleted gracefully, as a kubelet-backed API server does: a
    /// pod bound to a node is marked Terminating for its grace period, and
    /// its node agent removes it when the period ends or the workload stops.
    async fn delete_pod(&self, namespace: &str, name: &str, pre: &DeleteOptions) -> ApiResult<Value> {
        let current = self.get(&kind::POD, namespace, name).await?;
        check_preconditions(&kinds::POD, name, &current, pre)?;
        let grace = pre.grace_period.or_else(|| current["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30).max(0);
        let bound = current["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
        if grace == 0 || !bound {
            return self.delete_now(&kind::POD, namespace, name, pre).await;
        }
        // Grace periods are validated (at most ten years), so this holds.
        let deadline = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(grace))
            .map_err(|e| ApiError::BadRequest(format!("gracePeriodSeconds {grace}: {e}")))?;
        let opts = WriteOptions { dry_run: pre.dry_run, ..Default::default() };
        let written = self
            .update_with(&kind::POD, namespace, name, WriteTarget::System, &opts, |cur| {
                let mut pod = cur.clone();
                let meta = object::metadata_mut(&mut pod);
                let earlier = meta
                    .get("deletionTimestamp")
                    .and_then(Value::as_str)
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .is_some_and(|t| t <= deadline);
                if !earlier {
                    meta.insert("deletionTimestamp".into(), json!(deadline.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()));
                    meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
                }
                Ok(pod)
            })
            .await?;
        Ok(written.object)
    }

    /// Removes the object from the store at once, with its allocations.
    async fn delete_now(&self, kind: &Kind, namespace: &str, name: &str, pre: &DeleteOptions) -> ApiResult<Value> {
        let info = kind.info;
        let key = object_key(info, namespace, name);
        for _ in 0..MAX_ATTEMPTS {
            let kv = self.store.get(&key).await?.ok_or_else(|| ApiError::not_found(info, name))?;
            let current = decode_kv(&kv)?;
            check_preconditions(info, name, &current, pre)?;
            if pre.dry_run {
                return Ok(current);
            }
            let mut txn = Txn::new().when(Compare::ModRevision(key.clone(), kv.mod_revision)).delete(key.clone());
            if kind.lifecycle == Lifecycle::Service {
                let svc: Service = serde_json::from_value(current.clone()).map_err(|e| ApiError::Internal(e.to_string()))?;
                for held in self.allocator.held(&svc) {
                    txn = txn.delete(held);
                }
            }
            if let TxnOutcome::Committed(_) = self.store.txn(txn).await? {
                return Ok(current);
            }
        }
        Err(ApiError::conflict(info, name))
    }

    /// Marks a namespace Terminating and removes its contents in the
    /// background; the namespace itself goes last.
    async fn begin_namespace_deletion(&self, name: &str) -> ApiResult<Value> {
        let opts = WriteOptions::default();
        let written = self
            .update_with(&kind::NAMESPACE, "", name, WriteTarget::System, &opts, |cur| {
                let mut ns = cur.clone();
                let meta = object::metadata_mut(&mut ns);
                if meta.get("deletionTimestamp").is_none_or(Value::is_null) {
                    meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                }
                ns["status"]["phase"] = json!("Terminating");
                Ok(ns)
            })
            .await?;
        let uid = object::uid(&written.object).to_string();
        let claimed = self.finalizing.lock().unwrap_or_else(|p| p.into_inner()).insert(uid.clone());
        if claimed {
            let registry = self.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                if let Err(e) = registry.finalize_namespace(&name, &uid).await {
                    tracing::warn!(namespace = %name, error = %e, "namespace finalization failed; retried at next start");
                }
                registry.finalizing.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
            });
        }
        Ok(written.object)
    }

    /// The namespace's store revision if it is still the one with `uid`
    /// (not deleted, not recreated under the same name).
    async fn same_namespace(&self, name: &str, uid: &str) -> ApiResult<Option<Revision>> {
        let kv = self.store.get(&object_key(&kinds::NAMESPACE, "", name)).await?;
        let Some(kv) = kv else { return Ok(None) };
        Ok((object::uid(&decode_kv(&kv)?) == uid).then_some(kv.mod_revision))
    }

    /// Deletes everything in the terminating namespace `name` with `uid`,
    /// then the namespace; stops if it is no longer that namespace.
    pub async fn finalize_namespace(&self, name: &str, uid: &str) -> ApiResult<()> {
        for kind in kind::ALL.iter().filter(|k| k.info.namespaced) {
            if self.same_namespace(name, uid).await?.is_none() {
                return Ok(());
            }
            let (items, _) = self.list(kind, Some(name), &Filter::default()).await?;
            for item in items {
                match self.delete_now(kind, name, object::name(&item), &DeleteOptions::default()).await {
                    Ok(_) | Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        // Deleted only if it is still this namespace at this revision.
        let key = object_key(&kinds::NAMESPACE, "", name);
        for _ in 0..MAX_ATTEMPTS {
            let Some(revision) = self.same_namespace(name, uid).await? else { return Ok(()) };
            let txn = Txn::new().when(Compare::ModRevision(key.clone(), revision)).delete(key.clone());
            if let TxnOutcome::Committed(_) = self.store.txn(txn).await? {
                return Ok(());
            }
        }
        Err(ApiError::conflict(&kinds::NAMESPACE, name))
    }

    /// Resumes the deletion of namespaces left Terminating by a restart.
    pub async fn resume_namespace_deletions(&self) -> ApiResult<()> {
        let (namespaces, _) = self.list(&kind::NAMESPACE, None, &Filter::default()).await?;
        for ns in namespaces.iter().filter(|ns| !ns["metadata"]["deletionTimestamp"].is_null()) {
            self.finalize_namespace(object::name(ns), object::uid(ns)).await?;
        }
        Ok(())
    }

    /// Events after `since` (or, without it, the current objects as ADDED
    /// followed by every later change), filtered like a list.
    /// Changes from `start`: after a revision; or the current objects as
    /// ADDED first (a watch from "now"); or, for a streaming list, those and
    /// then a BOOKMARK marking the end of the initial events.
    pub async fn watch(
        &self,
        kind: &'static Kind,
        namespace: Option<&str>,
        filter: Filter,
        start: WatchStart,
    ) -> ApiResult<BoxStream<'static, ApiResult<WatchEvent>>> {
        self.pager.sweep();
        let prefix = list_prefix(kind.info, namespace);
        let (initial, from) = match start {
            WatchStart::After(rv) => (Vec::new(), rv),
            WatchStart::Current { end_bookmark } => {
                let (items, rv) = self.list(kind, namespace, &filter).await?;
                let mut events: Vec<ApiResult<WatchEvent>> =
                    items.into_iter().map(|object| Ok(WatchEvent { kind: "ADDED", object })).collect();
                if end_bookmark {
                    events.push(Ok(WatchEvent { kind: "BOOKMARK", object: initial_events_end(kind.info, rv) }));
                } else {
                    // The list's revision, not its newest object's, is where a resume starts.
                    events.push(Ok(WatchEvent::progress(rv)));
                }
                (events, rv)
            }
        };
        let live = self.store.watch(&prefix, from).await?;
        let live = live.map(move |event| match event {
            Ok(event) if event.kind == EventKind::Progress => Ok(WatchEvent::progress(event.revision)),
            // Filtered out: passed, though events of its revision may follow.
            Ok(event) => to_watch_event(&event, &filter).map(|shown| shown.unwrap_or_else(|| WatchEvent::progress(event.revision - 1))),
            Err(e) => Err(e.into()),
        });
        Ok(stream::iter(initial).chain(live).boxed())
    }
}

fn check_preconditions(info: &KindInfo, name: &str, current: &Value, pre: &DeleteOptions) -> ApiResult<()> {
    let uid_differs = pre.uid.as_deref().is_some_and(|u| u != object::uid(current));
    let rv_differs = pre.resource_version.as_deref().is_some_and(|rv| rv != object::resource_version(current));
    if uid_differs || rv_differs {
        return Err(ApiError::conflict(info, name));
    }
    Ok(())
}

/// What an update keeps from the stored object: identity always; system
/// metadata and the status on a main-resource write; everything but the
/// status on a status write.
fn carry_over(info: &KindInfo, desired: Value, current: &Value, target: WriteTarget) -> Value {
    let mut out = match target {
        WriteTarget::Status => {
            let mut obj = current.clone();
            obj["status"] = desired.get("status").cloned().unwrap_or(Value::Null);
            obj
        }
        WriteTarget::Main if info.has_status => {
            let mut obj = desired;
            match current.get("status") {
                Some(status) => obj["status"] = status.clone(),
                None => {
                    if let Some(o) = obj.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            obj
        }
        WriteTarget::Main | WriteTarget::System => desired,
    };
    let identity: &[&str] = &["name", "namespace", "uid", "creationTimestamp", "generateName"];
    let system: &[&str] = &["deletionTimestamp", "deletionGracePeriodSeconds"];
    let kept = identity.iter().chain(if target == WriteTarget::System { &[][..] } else { system });
    let meta = object::metadata_mut(&mut out);
    for field in kept {
        match current["metadata"].get(*field) {
            Some(v) => meta.insert((*field).into(), v.clone()),
            None => meta.remove(*field),
        };
    }
    meta.remove("resourceVersion");
    // Field managers: what the write brings, else what was there.
    if !meta.contains_key("managedFields") {
        if let Some(m) = current["metadata"].get("managedFields") {
            meta.insert("managedFields".into(), m.clone());
        }
    }
    out
}

/// Turns a store event into the watch event a filtered watcher sees: an
/// object that starts or stops matching is ADDED or DELETED for it.
fn to_watch_event(event: &Event, filter: &Filter) -> ApiResult<Option<WatchEvent>> {
    let prev = event.prev.as_ref().map(|p| decode(&p.bytes(), event.revision)).transpose()?;
    let prev_matches = prev.as_ref().is_some_and(|p| filter.matches(p));
    Ok(match event.kind {
        EventKind::Progress => None,
        EventKind::Delete => prev.filter(|_| prev_matches).map(|object| WatchEvent { kind: "DELETED", object }),
        EventKind::Put => {
            let object = decode(&event.value.bytes(), event.revision)?;
            match (prev_matches, filter.matches(&object)) {
                (true, true) => Some(WatchEvent { kind: "MODIFIED", object }),
                (false, true) => Some(WatchEvent { kind: "ADDED", object }),
                (true, false) => Some(WatchEvent { kind: "DELETED", object }),
                (false, false) => None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Keys `/p/00000`.. whose objects carry `tier: web` every `every`th.
    struct Counted {
        kvs: Vec<KeyValue>,
        reads: AtomicUsize,
    }

    impl Counted {
        fn new(n: usize, every: usize) -> Self {
            let kvs = (0..n)
                .map(|i| {
                    let tier = if i % every == 0 { "web" } else { "db" };
                    let object = format!(r#"{{"metadata":{{"name":"o{i}","labels":{{"tier":"{tier}"}}}}}}"#);
                    KeyValue { key: format!("/p/{i:05}").into(), value: object.as_bytes().into(), create_revision: 1, mod_revision: 1 }
                })
                .collect();
            Counted { kvs, reads: AtomicUsize::new(0) }
        }
    }

    #[async_trait::async_trait]
    impl Snapshot for Counted {
        fn revision(&self) -> Revision {
            1
        }
        async fn list_from(&self, _: &str, start: &str, limit: usize) -> wharf_store::Result<Vec<KeyValue>> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            Ok(self.kvs.iter().filter(|kv| *kv.key >= *start).take(limit).cloned().collect())
        }
    }

    fn web() -> Filter {
        Filter { labels: LabelSelector::parse("tier=web").unwrap(), fields: FieldSelector::default() }
    }

    #[tokio::test]
    async fn a_page_holds_limit_selected_objects_and_says_where_the_next_starts() {
        let snapshot = Counted::new(100, 10);
        let (page, next) = read_page(&snapshot, "/p/", "/p/".into(), &web(), 3).await.unwrap();
        let keys: Vec<&str> = page.iter().map(|kv| &*kv.key).collect();
        assert_eq!((keys, next.as_deref()), (vec!["/p/00000", "/p/00010", "/p/00020"], Some("/p/00021")));
        let (page, next) = read_page(&snapshot, "/p/", "/p/00021".into(), &web(), 0).await.unwrap();
        assert_eq!((page.len(), next), (7, None), "no limit: the rest");
        let (page, next) = read_page(&snapshot, "/p/", "/p/".into(), &Filter::default(), 100).await.unwrap();
        assert_eq!((page.len(), next), (100, None), "exactly the rest: no continue");
    }

    /// A selector that matches almost nothing does not read two keys at a
    /// time: each read doubles, up to `PAGE_READ`.
    #[tokio::test]
    async fn a_sparse_selector_reads_in_growing_chunks() {
        let snapshot = Counted::new(50_000, 25_000);
        let (page, next) = read_page(&snapshot, "/p/", "/p/".into(), &web(), 2).await.unwrap();
        assert_eq!((page.len(), next.as_deref()), (2, Some("/p/25001")));
        // 3, 6, ... 6,144 keys, then 10,000 at a time: 14 reads (8,334 at 3 a time).
        let reads = snapshot.reads.load(Ordering::Relaxed);
        assert!(reads <= 14, "{reads} reads for 25,002 keys");
    }
}
