//! The controllers' work queue, as client-go's workqueue behaves: a key is
//! queued at most once, never handed to two workers at once (a key added
//! while it runs is queued again when it is done), never dropped, and a
//! failed key is retried after an exponential backoff.
//!
//! Bound: one entry per key, so the queue never holds more entries than
//! the controller has objects.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::QueueHandles;

/// Delay before the n-th consecutive retry of a key: `base * 2^(n-1)`,
/// at most `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base: Duration::from_millis(50), max: Duration::from_secs(60) }
    }
}

impl Backoff {
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

struct State<K> {
    ready: VecDeque<K>,
    /// Keys in `ready`, with the time they were added.
    waiting: HashMap<K, Instant>,
    running: HashSet<K>,
    /// Keys added while they were running.
    again: HashSet<K>,
    failures: HashMap<K, u32>,
    /// Retries by due time (the sequence number keeps entries distinct).
    delayed: BTreeMap<(Instant, u64), K>,
    delayed_at: HashMap<K, (Instant, u64)>,
    sequence: u64,
}

/// Room an empty queue keeps for its keys. A burst (every service at a
/// relist) grows the queue to the number of objects; once it has drained,
/// that room goes back (1.3 MB at 10,000 services), and a later burst
/// grows it again.
const IDLE_ROOM: usize = 64;

impl<K: Eq + Hash> State<K> {
    fn release_burst_room(&mut self) {
        if self.ready.capacity() > IDLE_ROOM {
            self.ready.shrink_to(IDLE_ROOM);
        }
        if self.waiting.capacity() > IDLE_ROOM {
            self.waiting.shrink_to(IDLE_ROOM);
        }
    }
}

impl<K> Default for State<K> {
    fn default() -> Self {
        Self {
            ready: VecDeque::new(),
            waiting: HashMap::new(),
            running: HashSet::new(),
            again: HashSet::new(),
            failures: HashMap::new(),
            delayed: BTreeMap::new(),
            delayed_at: HashMap::new(),
            sequence: 0,
        }
    }
}

pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    wake: Notify,
    backoff: Backoff,
    metrics: QueueHandles,
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    pub fn new(backoff: Backoff, metrics: QueueHandles) -> Self {
        Self { state: Mutex::new(State::default()), wake: Notify::new(), backoff, metrics }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        // The state is consistent after every statement; a panicking holder
        // leaves nothing half-done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` unless it is queued already; a running key runs again
    /// once it is done.
    pub fn add(&self, key: K) {
        let mut state = self.lock();
        if state.running.contains(&key) {
            state.again.insert(key);
            return;
        }
        if Self::enqueue(&mut state, key) {
            self.metrics.adds.inc();
            self.metrics.depth.set(state.ready.len() as i64);
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Puts a key that is not running into `ready`; false if it was there.
    fn enqueue(state: &mut State<K>, key: K) -> bool {
        if state.waiting.contains_key(&key) {
            return false;
        }
        if let Some(slot) = state.delayed_at.remove(&key) {
            state.delayed.remove(&slot);
        }
        state.waiting.insert(key.clone(), Instant::now());
        state.ready.push_back(key);
        true
    }

    /// Whether `key` is queued, running or waiting for a retry.
    pub fn is_pending(&self, key: &K) -> bool {
        let state = self.lock();
        state.waiting.contains_key(key) || state.running.contains(key) || state.delayed_at.contains_key(key)
    }

    /// Keys queued and not yet taken.
    pub fn depth(&self) -> usize {
        self.lock().ready.len()
    }

    /// The room the queue holds for queued keys.
    #[cfg(test)]
    pub(crate) fn room(&self) -> usize {
        let state = self.lock();
        state.ready.capacity() + state.waiting.capacity()
    }

    /// The next key to work on, marked running; None once `token` is
    /// cancelled.
    pub async fn next(&self, token: &CancellationToken) -> Option<K> {
        loop {
            let notified = self.wake.notified();
            let deadline = {
                let mut state = self.lock();
                let now = Instant::now();
                while let Some(entry) = state.delayed.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let key = entry.remove();
                    state.delayed_at.remove(&key);
                    if !state.running.contains(&key) {
                        Self::enqueue(&mut state, key);
                    }
                }
                if let Some(key) = state.ready.pop_front() {
                    if let Some(added) = state.waiting.remove(&key) {
                        self.metrics.queue_seconds.observe(added.elapsed().as_secs_f64());
                    }
                    state.running.insert(key.clone());
                    self.metrics.depth.set(state.ready.len() as i64);
                    if state.ready.is_empty() {
                        state.release_burst_room();
                    }
                    return Some(key);
                }
                state.delayed.keys().next().map(|(at, _)| *at)
            };
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = token.cancelled() => return None,
                _ = notified => {}
                _ = sleep => {}
            }
        }
    }

    /// Marks `key` done. A failure schedules a retry after the backoff and
    /// returns its delay; a success forgets the key's failures.
    pub fn done(&self, key: K, succeeded: bool) -> Option<Duration> {
        let mut state = self.lock();
        state.running.remove(&key);
        let retry = if succeeded {
            state.failures.remove(&key);
            None
        } else {
            let failures = state.failures.entry(key.clone()).or_insert(0);
            *failures = failures.saturating_add(1);
            self.metrics.retries.inc();
            Some(self.backoff.delay(*failures))
        };
        if state.again.remove(&key) {
            Self::enqueue(&mut state, key);
            self.metrics.depth.set(state.ready.len() as i64);
            drop(state);
            self.wake.notify_one();
        } else if let Some(delay) = retry {
            let slot = (Instant::now() + delay, state.sequence);
            state.sequence += 1;
            state.delayed.insert(slot, key.clone());
            state.delayed_at.insert(key, slot);
            drop(state);
            // Every idle worker recomputes when it must wake.
            self.wake.notify_waiters();
        }
        retry
    }
}
