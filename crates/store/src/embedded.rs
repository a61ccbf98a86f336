//! The default backend: the key space in a redb file, every write durable
//! before it is acknowledged; in memory only the recent events, for
//! watchers.
//!
//! One writer thread applies transactions in batches (group commit): every
//! transaction in a batch is checked against the state left by the ones
//! before it, the batch is committed to redb with one fsync, and only then
//! are its events and a read snapshot of the file as of its revision
//! published. Readers read that snapshot (redb's MVCC): a read never sees
//! a write that watchers have not been sent, and a list read in pages
//! reads every page from the first one's snapshot.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{mpsc, Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use crate::model::{Event, EventKind, KeyValue, Op, Revision, Txn, TxnOutcome};
use crate::{Result, SharedSnapshot, Snapshot, Store, StoreError, StoreMetrics, WatchStream};
use wharf_packed::{Packer, Value};

/// key -> (create_revision, mod_revision, value)
const KV: TableDefinition<&str, (u64, u64, &[u8])> = TableDefinition::new("kv");
type Row<'a> = (u64, u64, &'a [u8]);
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";

/// How many events are kept, by default, for watches that resume from an
/// older revision; a watcher further behind gets 410 Gone and relists.
pub const DEFAULT_WATCH_HISTORY: usize = 100_000;
/// Events younger than this are kept (up to the cap): kube-apiserver's
/// watch cache keeps 75 s, its bookmark interval and a margin, so that a
/// watcher resuming from its last bookmark finds its place.
const FRESH_FOR: Duration = Duration::from_secs(75);
/// Events kept however old they are: an idle store still resumes watchers
/// a little behind.
const HISTORY_FLOOR: usize = 1_000;
/// How often, at most, the writer wakes to drop aged events: once a burst
/// ages out, its thousands of batches go a second's worth at a time.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// A watcher passing this many events of other prefixes is told its
/// position (at most; a quarter of the history's floor).
const PROGRESS_EVERY: usize = 256;
/// How far a live watcher may fall behind before it is re-fed from history
/// (at most; a quarter of a smaller history).
const BROADCAST_CAPACITY: usize = 16_384;
/// Reads come from the file through the kernel's page cache (not the
/// process's memory); redb's own cache only has to hold the upper levels of
/// the tree. 1 MiB, not 4: 4-5 MiB less RSS at 100,000 endpoints, with the
/// same CPU and latency (docs/BENCHMARKS.md, ninth round).
const REDB_CACHE_BYTES: usize = 1 << 20;
/// Upper bound of transactions committed with one fsync.
const MAX_BATCH: usize = 512;

/// How long the store keeps events for watchers that resume from an older
/// revision: at most `events`; of those, the ones younger than `fresh_for`,
/// and at least `floor`.
#[derive(Clone, Copy, Debug)]
pub struct WatchHistory {
    pub events: usize,
    pub fresh_for: Duration,
    pub floor: usize,
}

impl Default for WatchHistory {
    fn default() -> Self {
        Self::events(DEFAULT_WATCH_HISTORY)
    }
}

impl WatchHistory {
    /// At most `events`, kept for 75 s beyond the floor.
    pub fn events(events: usize) -> Self {
        let events = events.max(1);
        WatchHistory { events, fresh_for: FRESH_FOR, floor: HISTORY_FLOOR.min(events) }
    }
}

struct State {
    /// The file as of `revision`: every read is served from it.
    snapshot: Arc<FileSnapshot>,
    retention: WatchHistory,
    revision: Revision,
    history: VecDeque<Arc<Event>>,
    /// When each batch in `history` was published, and its last revision:
    /// at most one per event kept.
    published: VecDeque<(Instant, Revision)>,
    /// Every event with a revision at or above this one is in `history`.
    history_start: Revision,
    /// Where each key the history names stands now: its next event's
    /// previous value is these bytes (not read from the file and packed
    /// again) and its key this copy. Bounded by the history.
    latest: Latest,
}

type Latest = HashMap<Arc<str>, Current>;

/// A key as its last event left it.
#[derive(Clone)]
struct Current {
    revision: Revision,
    value: Stored,
}

/// A key's create revision and value as an event carries it; None: absent.
type Stored = Option<(Revision, Value)>;

/// Retained events a new watcher is fed before the live ones.
type Backlog = VecDeque<Arc<Event>>;

struct Shared {
    state: RwLock<State>,
    events: broadcast::Sender<Arc<Event>>,
}

impl Shared {
    fn snapshot(&self) -> Arc<FileSnapshot> {
        self.read().snapshot.clone()
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A poisoned lock means a panic in the writer while publishing; each
        // field is whole (a snapshot, a revision, the events), so keep
        // serving them.
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The retained events after `after` under `prefix`, plus a live
    /// subscription taken under the same lock, so nothing falls between,
    /// and the revision the backlog runs through.
    fn open_watch(&self, prefix: &str, after: Revision) -> Result<(Backlog, broadcast::Receiver<Arc<Event>>, Revision)> {
        let state = self.read();
        if after.saturating_add(1) < state.history_start {
            return Err(StoreError::Compacted { requested: after, oldest: state.history_start - 1 });
        }
        let backlog = state.history.iter().filter(|e| e.revision > after && e.key.starts_with(prefix)).cloned().collect();
        Ok((backlog, self.events.subscribe(), state.revision))
    }
}

struct WriteRequest {
    txn: Txn,
    reply: oneshot::Sender<Result<TxnOutcome>>,
}

/// The embedded store. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    writer: Arc<Writer>,
}

/// The writer thread; dropping the last handle closes the database file.
struct Writer {
    requests: Option<mpsc::Sender<WriteRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_measured(path, StoreMetrics::default())
    }

    /// As `open`, recording commits in `metrics`.
    pub fn open_measured(path: &Path, metrics: StoreMetrics) -> Result<Self> {
        Self::open_with(path, metrics, WatchHistory::default())
    }

    /// As `open_measured`, keeping events for watchers that fall behind as
    /// `retention` says.
    pub fn open_with(path: &Path, metrics: StoreMetrics, retention: WatchHistory) -> Result<Self> {
        // The store holds every object, secrets among them: owner only,
        // from the moment the file exists.
        create_private(path)?;
        let db = redb::Builder::new().set_cache_size(REDB_CACHE_BYTES).create(path).map_err(backend)?;
        let snapshot = Arc::new(open_tables(&db)?);
        let revision = snapshot.revision;
        let (events, _) = broadcast::channel((retention.events / 4).clamp(1, BROADCAST_CAPACITY));
        let state = State {
            snapshot,
            retention,
            revision,
            history: VecDeque::new(),
            published: VecDeque::new(),
            history_start: revision + 1,
            latest: Latest::new(),
        };
        let shared = Arc::new(Shared { state: RwLock::new(state), events });
        let (sender, requests) = mpsc::channel();
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("wharf-store-writer".into())
            .spawn(move || write_loop(db, writer_shared, requests, metrics))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let writer = Arc::new(Writer { requests: Some(sender), thread: Some(thread) });
        Ok(Self { shared, writer })
    }
}

/// Creates `path` with mode 0600 if it does not exist yet.
fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Backend(format!("{}: {e}", path.display()))),
    }
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(e.into().to_string())
}

/// Makes sure both tables exist, then reads the file as it stands.
fn open_tables(db: &redb::Database) -> Result<FileSnapshot> {
    let init = db.begin_write().map_err(backend)?;
    init.open_table(KV).map_err(backend)?;
    init.open_table(META).map_err(backend)?;
    init.commit().map_err(backend)?;
    let read = db.begin_read().map_err(backend)?;
    let revision = read.open_table(META).map_err(backend)?.get(META_REVISION).map_err(backend)?.map(|v| v.value()).unwrap_or(0);
    FileSnapshot::read(db, revision)
}

/// The file as it stood at one revision: a redb read transaction, which
/// keeps the pages it sees until it is dropped.
struct FileSnapshot {
    table: Arc<Table>,
    revision: Revision,
}

type Table = redb::ReadOnlyTable<&'static str, Row<'static>>;

impl FileSnapshot {
    /// The file as the last commit, at `revision`, left it.
    fn read(db: &redb::Database, revision: Revision) -> Result<Self> {
        let table = db.begin_read().map_err(backend)?.open_table(KV).map_err(backend)?;
        Ok(FileSnapshot { table: Arc::new(table), revision })
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.table.get(key).map_err(backend)?.map(|row| key_value(key.into(), row.value())))
    }
}

#[async_trait::async_trait]
impl Snapshot for FileSnapshot {
    fn revision(&self) -> Revision {
        self.revision
    }

    async fn list_from(&self, prefix: &str, start: &str, limit: usize) -> Result<Vec<KeyValue>> {
        let (table, prefix, start) = (self.table.clone(), prefix.to_string(), start.to_string());
        // A long read of the file must not hold up an async worker.
        tokio::task::spawn_blocking(move || range(&table, &prefix, &start, limit)).await.map_err(|e| StoreError::Backend(e.to_string()))?
    }
}

fn range(table: &Table, prefix: &str, start: &str, limit: usize) -> Result<Vec<KeyValue>> {
    let mut items = Vec::new();
    for row in table.range(start.max(prefix)..).map_err(backend)? {
        let (key, row) = row.map_err(backend)?;
        let key = key.value();
        if items.len() == limit || !key.starts_with(prefix) {
            break;
        }
        items.push(key_value(key.into(), row.value()));
    }
    Ok(items)
}

fn key_value(key: Arc<str>, (create_revision, mod_revision, value): Row) -> KeyValue {
    KeyValue { key, value: value.into(), create_revision, mod_revision }
}

fn write_loop(db: redb::Database, shared: Arc<Shared>, requests: mpsc::Receiver<WriteRequest>, metrics: StoreMetrics) {
    let mut packer = Packer::default();
    loop {
        // Between writes the thread wakes only when retained events age out.
        // Its own statement: the read lock is not held while waiting.
        let expiry = shared.read().next_expiry(Instant::now());
        let next = match expiry {
            Some(wait) => requests.recv_timeout(wait).map_err(|e| e == mpsc::RecvTimeoutError::Timeout),
            None => requests.recv().map_err(|_| false),
        };
        let first = match next {
            Ok(first) => first,
            Err(true) => {
                shared.write().trim_history(Instant::now());
                continue;
            }
            Err(false) => break,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        metrics.batch_size.observe(batch.len() as f64);
        commit_batch(&db, &shared, &mut packer, batch);
        metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
    }
}

/// What one batch did: the events in commit order, the revision it
/// reached, and where the keys it touched stand; each transaction applied
/// straight to the batch's redb write transaction, so the next one is
/// checked against what it left.
struct Staged<'p> {
    packer: &'p mut Packer,
    events: Vec<Arc<Event>>,
    revision: Revision,
    latest: Latest,
}

impl Staged<'_> {
    /// Where `key` stands, with the key as already held, when this batch or
    /// the history knows it.
    fn known<'a>(&'a self, state: &'a State, key: &str) -> Option<(&'a Arc<str>, &'a Current)> {
        self.latest.get_key_value(key).or_else(|| state.latest.get_key_value(key))
    }

    /// Where `key` stands: known, else read from the file (its value
    /// packed, as an event carries it).
    fn current(&mut self, state: &State, kv: &redb::Table<&str, Row>, key: &str) -> Result<(Arc<str>, Stored)> {
        if let Some((held, current)) = self.known(state, key) {
            return Ok((held.clone(), current.value.clone()));
        }
        let row = kv.get(key).map_err(backend)?;
        let value = row.map(|row| {
            let (create_revision, _, value) = row.value();
            (create_revision, self.packer.pack(value))
        });
        Ok((key.into(), value))
    }

    fn mod_revision(&self, state: &State, kv: &redb::Table<&str, Row>, key: &str) -> Result<Option<Revision>> {
        match self.known(state, key) {
            Some((_, current)) => Ok(current.value.as_ref().map(|_| current.revision)),
            None => Ok(kv.get(key).map_err(backend)?.map(|row| row.value().1)),
        }
    }

    fn apply(&mut self, state: &State, kv: &mut redb::Table<&str, Row>, txn: &Txn) -> Result<TxnOutcome> {
        for compare in &txn.compares {
            if !compare.holds(self.mod_revision(state, kv, compare.key())?) {
                return Ok(TxnOutcome::Failed);
            }
        }
        if txn.ops.is_empty() {
            return Ok(TxnOutcome::Committed(self.revision));
        }
        self.revision += 1;
        let revision = self.revision;
        for op in &txn.ops {
            let (key, prev) = self.current(state, kv, op.key())?;
            let event = match op {
                Op::Put { value, .. } => {
                    let create_revision = prev.as_ref().map_or(revision, |(created, _)| *created);
                    kv.insert(&*key, (create_revision, revision, value.as_ref())).map_err(backend)?;
                    let value = self.packer.pack(value);
                    self.latest.insert(key.clone(), Current { revision, value: Some((create_revision, value.clone())) });
                    Event { kind: EventKind::Put, key, value, revision, create_revision, prev: prev.map(|(_, value)| value) }
                }
                Op::Delete { .. } => {
                    let Some((create_revision, prev)) = prev else { continue };
                    kv.remove(&*key).map_err(backend)?;
                    self.latest.insert(key.clone(), Current { revision, value: None });
                    Event { kind: EventKind::Delete, key, value: Value::default(), revision, create_revision, prev: Some(prev) }
                }
            };
            self.events.push(Arc::new(event));
        }
        Ok(TxnOutcome::Committed(revision))
    }

    fn changed(&self) -> bool {
        !self.events.is_empty()
    }
}

fn commit_batch(db: &redb::Database, shared: &Shared, packer: &mut Packer, batch: Vec<WriteRequest>) {
    let revision = shared.read().revision;
    let mut staged = Staged { packer, events: Vec::new(), revision, latest: Latest::new() };
    match write(db, shared, &mut staged, &batch) {
        Err(e) => {
            tracing::error!(error = %e, "store commit failed; batch rejected");
            for request in batch {
                let _ = request.reply.send(Err(StoreError::Backend(e.to_string())));
            }
        }
        Ok(outcomes) => {
            if staged.changed() {
                publish(db, shared, staged);
            }
            for (request, outcome) in batch.into_iter().zip(outcomes) {
                let _ = request.reply.send(Ok(outcome));
            }
        }
    }
}

/// Applies the batch in one redb transaction, committed (one fsync) if it
/// changed anything; any error rejects the whole batch, nothing written.
fn write(db: &redb::Database, shared: &Shared, staged: &mut Staged, batch: &[WriteRequest]) -> Result<Vec<TxnOutcome>> {
    let txn = db.begin_write().map_err(backend)?;
    let outcomes = {
        // Only this thread writes the state: reading it here holds up no one.
        let state = shared.read();
        let mut kv = txn.open_table(KV).map_err(backend)?;
        batch.iter().map(|request| staged.apply(&state, &mut kv, &request.txn)).collect::<Result<Vec<_>>>()?
    };
    if !staged.changed() {
        txn.abort().map_err(backend)?;
        return Ok(outcomes);
    }
    txn.open_table(META).map_err(backend)?.insert(META_REVISION, staged.revision).map_err(backend)?;
    txn.commit().map_err(backend)?;
    Ok(outcomes)
}

fn publish(db: &redb::Database, shared: &Shared, staged: Staged) {
    // Committed: the revision and the events go out whatever happens. A
    // snapshot that cannot be taken leaves reads on the previous one (still
    // a consistent listing, at its own revision) until the next commit.
    let snapshot = FileSnapshot::read(db, staged.revision)
        .inspect_err(|e| tracing::error!(error = %e, "cannot read the store file after a commit; reads stay at the previous revision"))
        .ok();
    let mut state = shared.write();
    if let Some(snapshot) = snapshot {
        state.snapshot = Arc::new(snapshot);
    }
    state.revision = staged.revision;
    state.latest.extend(staged.latest);
    // Published only when it changed something: there are events.
    let now = Instant::now();
    state.published.push_back((now, staged.revision));
    for event in staged.events {
        state.history.push_back(event.clone());
        // No receivers is fine: nobody is watching.
        let _ = shared.events.send(event);
    }
    state.trim_history(now);
}

impl State {
    /// Drops the oldest events, whole revisions at a time, beyond the cap,
    /// then those older than `fresh_for` beyond the floor.
    fn trim_history(&mut self, now: Instant) {
        let WatchHistory { events, fresh_for, floor } = self.retention;
        while self.history.len() > events {
            self.drop_oldest_revision();
        }
        while self.history.len() > floor {
            let Some(&(at, through)) = self.published.front() else { break };
            if now.saturating_duration_since(at) < fresh_for {
                break;
            }
            if self.history.front().is_some_and(|e| e.revision <= through) {
                self.drop_oldest_revision();
            } else {
                self.published.pop_front();
            }
        }
        while self.published.front().is_some_and(|&(_, through)| through < self.history_start) {
            self.published.pop_front();
        }
        // After a burst has aged out, give its room back.
        if self.latest.capacity() > 4 * self.latest.len().max(floor) {
            self.latest.shrink_to(2 * self.latest.len());
            self.history.shrink_to(2 * self.history.len());
        }
    }

    fn drop_oldest_revision(&mut self) {
        let Some(oldest) = self.history.pop_front() else { return };
        self.forget(&oldest);
        while let Some(event) = self.history.pop_front_if(|e| e.revision == oldest.revision) {
            self.forget(&event);
        }
        self.history_start = oldest.revision + 1;
    }

    /// An event leaves the history: if it was its key's last, the history
    /// no longer names the key.
    fn forget(&mut self, event: &Event) {
        if self.latest.get(&event.key).is_some_and(|current| current.revision == event.revision) {
            self.latest.remove(&event.key);
        }
    }

    /// How long to wait before dropping aged events: until the oldest
    /// retained batch ages out, and at least `TRIM_EVERY` (None: nothing
    /// would be dropped).
    fn next_expiry(&self, now: Instant) -> Option<Duration> {
        if self.history.len() <= self.retention.floor {
            return None;
        }
        let &(at, _) = self.published.front()?;
        // A window too long to add is one that never ends.
        Some(at.checked_add(self.retention.fresh_for)?.saturating_duration_since(now).max(TRIM_EVERY))
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    fn revision(&self) -> Revision {
        self.shared.read().revision
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.shared.snapshot().get(key)
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let snapshot = self.shared.snapshot();
        Ok((snapshot.list_from(prefix, prefix, usize::MAX).await?, snapshot.revision))
    }

    async fn snapshot(&self) -> Result<SharedSnapshot> {
        Ok(self.shared.snapshot())
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        let (reply, outcome) = oneshot::channel();
        let requests = self.writer.requests.as_ref().ok_or(StoreError::Closed)?;
        requests.send(WriteRequest { txn, reply }).map_err(|_| StoreError::Closed)?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let (backlog, live, backlog_through) = self.shared.open_watch(prefix, after)?;
        let progress_every = (self.shared.read().retention.floor / 4).clamp(1, PROGRESS_EVERY);
        let cursor = WatchCursor {
            shared: self.shared.clone(),
            prefix: prefix.to_string(),
            last: after,
            delivered_at_last: 0,
            last_complete: true,
            skip: 0,
            backlog,
            backlog_through,
            live,
            failed: false,
            passed_quietly: 0,
            progress_every,
        };
        Ok(futures::stream::unfold(cursor, |mut c| async move {
            let item = c.next().await?;
            Some((item, c))
        })
        .boxed())
    }
}

/// Position of one watcher: first the retained backlog, then live events.
/// A watcher that lags behind the live channel is re-fed from history.
struct WatchCursor {
    shared: Arc<Shared>,
    prefix: String,
    /// Revision of the last event passed (delivered, or skipped for
    /// another prefix: a quiet watcher's position moves with the store, so
    /// a re-feed after lagging starts inside the history), and how many
    /// events of that revision (one transaction may touch several keys)
    /// were delivered.
    last: Revision,
    delivered_at_last: usize,
    /// Whether every event of revision `last` has been passed (true only
    /// at the start, where `last` is the revision watched after).
    last_complete: bool,
    /// Events of revision `last` to drop because they were delivered
    /// before a re-feed from history.
    skip: usize,
    backlog: VecDeque<Arc<Event>>,
    /// Every event up to this revision is in `backlog` or was passed: once
    /// the backlog is drained the position moves here.
    backlog_through: Revision,
    live: broadcast::Receiver<Arc<Event>>,
    failed: bool,
    /// Events of other prefixes passed since the last item handed out; at
    /// `progress_every` a `Progress` goes out, so that a resume from it
    /// stays inside the history's floor.
    passed_quietly: usize,
    progress_every: usize,
}

impl WatchCursor {
    async fn next(&mut self) -> Option<Result<Event>> {
        if self.failed {
            return None;
        }
        loop {
            if self.backlog.is_empty() && self.passed_backlog() {
                // Moved past events of other prefixes without passing them.
                self.passed_quietly = 0;
                return Some(Ok(Event::progress(self.last)));
            }
            let event = match self.backlog.pop_front() {
                Some(event) => event,
                None => match self.live.recv().await {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Closed) => return None,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Err(e) = self.refeed() {
                            self.failed = true;
                            return Some(Err(e));
                        }
                        continue;
                    }
                },
            };
            if event.revision > self.last {
                self.last = event.revision;
                self.delivered_at_last = 0;
                self.last_complete = false;
            }
            if !event.key.starts_with(&self.prefix) {
                self.passed_quietly += 1;
                if self.passed_quietly < self.progress_every {
                    continue;
                }
                // Events of this revision may follow: the one before is done.
                self.passed_quietly = 0;
                return Some(Ok(Event::progress(event.revision - 1)));
            }
            if event.revision == self.last && self.skip > 0 {
                self.skip -= 1;
                continue;
            }
            self.delivered_at_last += 1;
            self.passed_quietly = 0;
            return Some(Ok((*event).clone()));
        }
    }

    /// The backlog is drained: every event through `backlog_through` has
    /// been passed, whether it was under the prefix or not. True when that
    /// moved the position.
    fn passed_backlog(&mut self) -> bool {
        let moved = self.backlog_through > self.last;
        if moved {
            self.last = self.backlog_through;
            self.delivered_at_last = 0;
        }
        if self.backlog_through >= self.last {
            self.last_complete = true;
        }
        moved
    }

    fn refeed(&mut self) -> Result<()> {
        // Revision `last` again, unless all of it was passed already.
        let from = if self.last_complete { self.last } else { self.last - 1 };
        let (backlog, live, through) = self.shared.open_watch(&self.prefix, from)?;
        self.backlog = backlog;
        self.backlog_through = through;
        self.live = live;
        // Only a re-read revision `last` has events to skip.
        self.skip = if self.last_complete { 0 } else { self.delivered_at_last };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(events: usize, floor: usize) -> State {
        let retention = WatchHistory { events, fresh_for: Duration::from_secs(75), floor };
        let db = redb::Builder::new().create_with_backend(redb::backends::InMemoryBackend::new()).unwrap();
        let snapshot = Arc::new(open_tables(&db).unwrap());
        State {
            snapshot,
            retention,
            revision: 0,
            history: VecDeque::new(),
            published: VecDeque::new(),
            history_start: 1,
            latest: Latest::new(),
        }
    }

    /// Publishes one batch of `events` single-key revisions at `at`.
    fn publish_at(state: &mut State, at: Instant, events: usize) {
        for _ in 0..events {
            state.revision += 1;
            state.history.push_back(Arc::new(Event::progress(state.revision)));
        }
        state.published.push_back((at, state.revision));
        state.trim_history(at);
    }

    #[test]
    fn history_keeps_fresh_events_up_to_the_cap_and_old_ones_down_to_the_floor() {
        let start = Instant::now();
        let mut state = state(1_000, 100);
        for second in 0..10 {
            publish_at(&mut state, start + Duration::from_secs(second), 200);
        }
        assert_eq!(state.history.len(), 1_000, "the cap holds however fresh");
        assert_eq!((state.history_start, state.published.len()), (1_001, 5), "batches dropped with their events");

        let later = start + Duration::from_secs(8 + 75);
        assert_eq!(
            state.next_expiry(later - Duration::from_secs(10)),
            Some(Duration::from_secs(7)),
            "until the oldest (published at 5 s) ages out"
        );
        assert_eq!(state.next_expiry(later), Some(TRIM_EVERY), "not sooner than a second: a burst ages out in few wakeups");
        state.trim_history(later);
        assert_eq!(state.history.len(), 200, "beyond the floor, only the last, fresh, batch");
        state.trim_history(later + Duration::from_secs(1));
        assert_eq!((state.history.len(), state.history_start), (100, 1_901), "the floor, whole revisions");
        assert_eq!(state.next_expiry(later), None, "nothing left to age out: the writer sleeps until a write");
    }

    /// The value an event replaces is the previous event's, not a second
    /// copy, and a key's events share one key; what the history no longer
    /// names is forgotten, so this bookkeeping stays within the history.
    #[tokio::test]
    async fn events_share_what_the_history_already_holds_and_forget_what_it_drops() {
        let dir = tempfile::tempdir().unwrap();
        let history = WatchHistory { events: 4, fresh_for: Duration::from_secs(75), floor: 4 };
        let store = EmbeddedStore::open_with(&dir.path().join("s.redb"), StoreMetrics::default(), history).unwrap();
        let mut watch = store.watch("/k/", 0).await.unwrap();
        let json = |n: u32| format!(r#"{{"kind":"ConfigMap","data":{{"n":"{n}","pad":"{}"}}}}"#, "x".repeat(100));
        store.txn(Txn::new().put("/k/a", json(1))).await.unwrap();
        store.txn(Txn::new().put("/k/a", json(2))).await.unwrap();
        store.txn(Txn::new().delete("/k/a")).await.unwrap();
        let again = store.txn(Txn::new().when(crate::Compare::Absent("/k/a".into())).put("/k/a", json(3))).await.unwrap();
        let (created, updated, deleted, recreated) = (
            watch.next().await.unwrap().unwrap(),
            watch.next().await.unwrap().unwrap(),
            watch.next().await.unwrap().unwrap(),
            watch.next().await.unwrap().unwrap(),
        );
        assert!(updated.prev.as_ref().is_some_and(|prev| prev.shares(&created.value)), "the value replaced is the one held");
        assert!(deleted.prev.as_ref().is_some_and(|prev| prev.shares(&updated.value)));
        assert!(Arc::ptr_eq(&created.key, &deleted.key), "one key for the key's events");
        assert_eq!(again, TxnOutcome::Committed(recreated.revision), "known deleted: absent");
        assert_eq!((recreated.create_revision, recreated.prev.is_none()), (recreated.revision, true), "a new object");
        assert_eq!(store.get("/k/a").await.unwrap().unwrap().value.bytes(), json(3));

        for i in 0..20 {
            store.txn(Txn::new().put(format!("/other/{i}"), json(i))).await.unwrap();
        }
        let state = store.shared.read();
        assert_eq!(state.history.len(), 4);
        assert!(state.latest.len() <= 4 && !state.latest.contains_key("/k/a"), "{} keys named", state.latest.len());
        assert!(state.latest.capacity() <= 16, "room given back: {}", state.latest.capacity());
    }
}
