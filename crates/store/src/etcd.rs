//! The etcd backend: every key in etcd (v3 API), revisions are etcd's,
//! transactions are etcd transactions and watches etcd watches. Several
//! API servers can share one etcd.
//!
//! The gRPC client is generated at build time from `proto/etcd.proto` (the
//! part of etcd's API wharf uses) by a pure-Rust protobuf compiler, so the
//! one binary every build makes speaks etcd with nothing but Rust and gcc
//! on the machine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::model::{Compare, Event, EventKind, KeyValue, Op, Revision, Txn, TxnOutcome};
use crate::{Result, SharedSnapshot, Snapshot, Store, StoreError, WatchStream};

#[allow(clippy::all, clippy::pedantic)]
mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::auth_client::AuthClient;
use pb::kv_client::KvClient;
use pb::watch_client::WatchClient;
use tonic::service::interceptor::InterceptedService;

/// The channel every request goes through, with the auth token (if any).
type Authed = InterceptedService<Channel, TokenHeader>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Detects a dead etcd connection (so watches fail over and restart).
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A request that does not finish in this time fails (watches excepted).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys per range request of a list.
const LIST_PAGE: usize = 500;

#[derive(Clone)]
pub struct EtcdStore {
    kv: KvClient<Authed>,
    watch: WatchClient<Authed>,
    /// The newest revision any response has shown.
    seen: Arc<AtomicU64>,
    login: Option<Arc<Login>>,
}

/// An etcd user and password (etcd's `--auth` enabled).
#[derive(Clone)]
pub struct EtcdCredentials {
    pub user: String,
    pub password: String,
}

/// Puts the current auth token into each request's metadata.
#[derive(Clone, Default)]
pub struct TokenHeader(Arc<std::sync::RwLock<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>>>);

impl tonic::service::Interceptor for TokenHeader {
    fn call(&mut self, mut request: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = self.0.read().unwrap_or_else(|p| p.into_inner()).clone() {
            request.metadata_mut().insert("token", token);
        }
        Ok(request)
    }
}

/// How the store gets (and, when etcd expires it, renews) its token.
struct Login {
    auth: AuthClient<Channel>,
    credentials: EtcdCredentials,
    token: TokenHeader,
}

impl Login {
    async fn authenticate(&self) -> Result<()> {
        let request = pb::AuthenticateRequest { name: self.credentials.user.clone(), password: self.credentials.password.clone() };
        let mut auth = self.auth.clone();
        let answer =
            tokio::time::timeout(REQUEST_TIMEOUT, auth.authenticate(request)).await.map_err(|_| backend("authenticate timed out"))?;
        let token =
            answer.map_err(|e| backend(format!("authenticating as {:?}: {}", self.credentials.user, e.message())))?.into_inner().token;
        let value = token.parse().map_err(|_| backend("etcd sent an auth token that is not ASCII"))?;
        *self.token.0.write().unwrap_or_else(|p| p.into_inner()) = Some(value);
        Ok(())
    }
}

/// Whether etcd refused a request for its (expired) auth token.
fn token_expired(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unauthenticated || status.message().contains("invalid auth token")
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

fn revision(r: i64) -> Revision {
    u64::try_from(r).unwrap_or(0)
}

fn key_value(kv: &pb::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: std::str::from_utf8(&kv.key).map_err(|e| StoreError::Backend(e.to_string()))?.into(),
        value: kv.value.as_slice().into(),
        create_revision: revision(kv.create_revision),
        mod_revision: revision(kv.mod_revision),
    })
}

/// The end of the range of keys starting with `prefix` (etcd's
/// convention: the prefix with its last byte incremented).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the key space.
    vec![0]
}

/// Client TLS to etcd, as PEM: the CA that signed etcd's serving
/// certificates and, when etcd asks for one, this client's certificate.
#[derive(Clone, Default)]
pub struct EtcdTls {
    pub ca_pem: String,
    pub client: Option<(String, String)>,
}

impl EtcdTls {
    fn config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        match &self.client {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

fn endpoint(url: &str, tls: Option<&EtcdTls>) -> Result<Endpoint> {
    let bad = |e: tonic::transport::Error| StoreError::Backend(format!("etcd endpoint {url:?}: {e}"));
    let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(bad)?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.config()).map_err(bad)?;
    }
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true))
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (requests go to any that answers),
    /// over `tls` when given (`https://` endpoints), as `credentials`'s
    /// user when given.
    pub async fn connect(endpoints: &[String], tls: Option<&EtcdTls>, credentials: Option<EtcdCredentials>) -> Result<Self> {
        let endpoints = endpoints.iter().map(|e| endpoint(e, tls)).collect::<Result<Vec<_>>>()?;
        let channel = Channel::balance_list(endpoints.into_iter());
        let token = TokenHeader::default();
        let login =
            credentials.map(|credentials| Arc::new(Login { auth: AuthClient::new(channel.clone()), credentials, token: token.clone() }));
        if let Some(login) = &login {
            tokio::time::timeout(CONNECT_TIMEOUT, login.authenticate()).await.map_err(|_| backend("etcd did not answer"))??;
        }
        let store = Self {
            kv: KvClient::with_interceptor(channel.clone(), token.clone()),
            watch: WatchClient::with_interceptor(channel, token),
            seen: Arc::new(AtomicU64::new(0)),
            login,
        };
        // Learn the current revision, and that etcd answers at all.
        tokio::time::timeout(CONNECT_TIMEOUT, store.get("/wharf/ping"))
            .await
            .map_err(|_| StoreError::Backend("etcd did not answer".into()))??;
        Ok(store)
    }

    fn observe(&self, header: Option<&pb::ResponseHeader>) -> Revision {
        let rev = header.map_or(0, |h| revision(h.revision));
        self.seen.fetch_max(rev, Ordering::Relaxed);
        rev
    }

    /// Runs `call` (timed out after REQUEST_TIMEOUT); when etcd says the
    /// auth token expired, logs in again and runs it once more.
    async fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let timed = || async { tokio::time::timeout(REQUEST_TIMEOUT, call()).await.map_err(|_| backend(format!("{what} timed out"))) };
        match (timed().await?, &self.login) {
            (Err(status), Some(login)) if token_expired(&status) => {
                tracing::info!("etcd auth token expired; logging in again");
                login.authenticate().await?;
                Ok(timed().await?.map_err(backend)?.into_inner())
            }
            (answer, _) => Ok(answer.map_err(backend)?.into_inner()),
        }
    }

    /// Up to `limit` keys under `prefix` from `start` on, at revision `at`
    /// (None: the newest), in pages of `LIST_PAGE` keys, every page read at
    /// the first one's revision: one consistent snapshot, however large,
    /// without a reply over gRPC's message bound (10,000 services are about
    /// 6 MB).
    async fn list_at(&self, prefix: &str, start: &str, limit: usize, mut at: Option<Revision>) -> Result<(Vec<KeyValue>, Revision)> {
        let end = prefix_end(prefix);
        let mut items = Vec::new();
        let mut from = start.max(prefix).as_bytes().to_vec();
        while items.len() < limit {
            let page = (limit - items.len()).min(LIST_PAGE) as i64;
            // 0 asks etcd for its newest.
            let revision = at.map_or(0, |r| r as i64);
            let request = pb::RangeRequest { key: from, range_end: end.clone(), limit: page, revision };
            let resp = self.range_request(request).await.map_err(|e| compacted(e, at))?;
            at.get_or_insert_with(|| self.observe(resp.header.as_ref()));
            for kv in &resp.kvs {
                items.push(key_value(kv)?);
            }
            match resp.kvs.last() {
                Some(last) if resp.more => from = [last.key.as_slice(), &[0]].concat(),
                _ => break,
            }
        }
        Ok((items, at.unwrap_or_default()))
    }

    async fn range(&self, key: &str, range_end: Vec<u8>) -> Result<pb::RangeResponse> {
        self.range_request(pb::RangeRequest { key: key.as_bytes().to_vec(), range_end, ..Default::default() }).await
    }

    async fn range_request(&self, request: pb::RangeRequest) -> Result<pb::RangeResponse> {
        self.call("range", || {
            let (mut kv, request) = (self.kv.clone(), request.clone());
            async move { kv.range(request).await }
        })
        .await
    }
}

/// etcd's refusal of a read at a compacted revision, as the store's own.
fn compacted(e: StoreError, at: Option<Revision>) -> StoreError {
    match (e, at) {
        (StoreError::Backend(why), Some(requested)) if why.contains("required revision has been compacted") => {
            StoreError::Compacted { requested, oldest: requested + 1 }
        }
        (e, _) => e,
    }
}

/// etcd at one revision: pages are read there until etcd compacts it.
struct EtcdSnapshot {
    store: EtcdStore,
    revision: Revision,
}

#[async_trait::async_trait]
impl Snapshot for EtcdSnapshot {
    fn revision(&self) -> Revision {
        self.revision
    }

    async fn list_from(&self, prefix: &str, start: &str, limit: usize) -> Result<Vec<KeyValue>> {
        Ok(self.store.list_at(prefix, start, limit, Some(self.revision)).await?.0)
    }
}

fn compare(c: &Compare) -> pb::Compare {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let (target, union, key) = match c {
        Compare::ModRevision(key, rev) => (CompareTarget::Mod, TargetUnion::ModRevision(*rev as i64), key),
        // A missing key has create revision 0.
        Compare::Absent(key) => (CompareTarget::Create, TargetUnion::CreateRevision(0), key),
    };
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: target as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(union),
        range_end: Vec::new(),
    }
}

fn request_op(op: &Op) -> pb::RequestOp {
    use pb::request_op::Request;
    let request = match op {
        Op::Put { key, value } => Request::RequestPut(pb::PutRequest { key: key.as_bytes().to_vec(), value: value.to_vec() }),
        Op::Delete { key } => Request::RequestDeleteRange(pb::DeleteRangeRequest { key: key.as_bytes().to_vec(), range_end: Vec::new() }),
    };
    pb::RequestOp { request: Some(request) }
}

/// One watch response's events, in wharf's form.
fn events(response: &pb::WatchResponse, seen: &AtomicU64) -> Vec<Event> {
    response
        .events
        .iter()
        .filter_map(|e| {
            let kv = e.kv.as_ref()?;
            let kind = if e.r#type == pb::event::EventType::Delete as i32 { EventKind::Delete } else { EventKind::Put };
            let rev = revision(kv.mod_revision);
            seen.fetch_max(rev, Ordering::Relaxed);
            Some(Event {
                kind,
                key: String::from_utf8_lossy(&kv.key).into(),
                value: kv.value.as_slice().into(),
                revision: rev,
                create_revision: e.prev_kv.as_ref().map_or(revision(kv.create_revision), |p| revision(p.create_revision)),
                prev: e.prev_kv.as_ref().map(|p| p.value.as_slice().into()),
            })
        })
        .collect()
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    fn revision(&self) -> Revision {
        self.seen.load(Ordering::Relaxed)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self.range(key, Vec::new()).await?;
        self.observe(resp.header.as_ref());
        resp.kvs.first().map(key_value).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        self.list_at(prefix, prefix, usize::MAX, None).await
    }

    async fn snapshot(&self) -> Result<SharedSnapshot> {
        // Any read answers with the revision etcd stands at; this one is
        // inside the key space an etcd user for the API server may read.
        let resp = self.range("/registry/", Vec::new()).await?;
        Ok(Arc::new(EtcdSnapshot { store: self.clone(), revision: self.observe(resp.header.as_ref()) }))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        let request = pb::TxnRequest {
            compare: txn.compares.iter().map(compare).collect(),
            success: txn.ops.iter().map(request_op).collect(),
            failure: Vec::new(),
        };
        let resp = self
            .call("txn", || {
                let (mut kv, request) = (self.kv.clone(), request.clone());
                async move { kv.txn(request).await }
            })
            .await?;
        let rev = self.observe(resp.header.as_ref());
        Ok(if resp.succeeded { TxnOutcome::Committed(rev) } else { TxnOutcome::Failed })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let create = pb::WatchCreateRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix),
            start_revision: after as i64 + 1,
            progress_notify: false,
            prev_kv: true,
        };
        if self.login.is_some() {
            // A cheap read first: it logs in again if the token expired,
            // which a watch's own start cannot.
            self.range("/wharf/ping", Vec::new()).await?;
        }
        // The request stream stays open for as long as the watch: etcd
        // ends a watch whose client stream closed.
        let (requests, outgoing) = tokio::sync::mpsc::channel(1);
        requests
            .send(pb::WatchRequest { request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)) })
            .await
            .map_err(|_| backend("watch request not sent"))?;
        let stream = self.watch.clone().watch(tokio_stream::wrappers::ReceiverStream::new(outgoing)).await.map_err(backend)?.into_inner();
        let seen = self.seen.clone();
        let state = (stream, requests, Vec::<Event>::new().into_iter(), false);
        let events = futures::stream::unfold(state, move |(mut stream, requests, mut pending, done)| {
            let seen = seen.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    if let Some(event) = pending.next() {
                        return Some((Ok(event), (stream, requests, pending, false)));
                    }
                    let message = match stream.message().await {
                        Ok(Some(m)) => m,
                        Ok(None) => return None,
                        Err(e) => return Some((Err(backend(e)), (stream, requests, pending, true))),
                    };
                    if message.compact_revision > 0 {
                        let oldest = revision(message.compact_revision);
                        return Some((Err(StoreError::Compacted { requested: after, oldest }), (stream, requests, pending, true)));
                    }
                    if message.canceled {
                        return None;
                    }
                    pending = events(&message, &seen).into_iter();
                }
            }
        });
        Ok(events.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_end_after_the_last_key_with_the_prefix() {
        assert_eq!(prefix_end("/registry/services/"), b"/registry/services0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
