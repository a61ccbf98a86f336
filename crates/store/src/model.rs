use std::sync::Arc;

use bytes::Bytes;

pub use wharf_packed::Value;

/// A global, strictly increasing transaction counter (etcd's revision).
pub type Revision = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// Shared with the backend's own copy (a listing or an event holds no
    /// copy of its own).
    pub key: Arc<str>,
    pub value: Value,
    pub create_revision: Revision,
    pub mod_revision: Revision,
}

/// A precondition of a transaction, on a key's modification revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key exists and was last modified at exactly this revision.
    ModRevision(String, Revision),
    /// The key does not exist.
    Absent(String),
}

impl Compare {
    pub fn key(&self) -> &str {
        match self {
            Compare::ModRevision(key, _) | Compare::Absent(key) => key,
        }
    }

    /// Whether the precondition holds for a key last modified at `current`
    /// (`None` when the key is absent).
    pub fn holds(&self, current: Option<Revision>) -> bool {
        match self {
            Compare::ModRevision(_, want) => current == Some(*want),
            Compare::Absent(_) => current.is_none(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Bytes },
    Delete { key: String },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }

    pub fn then(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }

    pub fn put(self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.then(Op::Put { key: key.into(), value: value.into() })
    }

    pub fn delete(self, key: impl Into<String>) -> Self {
        self.then(Op::Delete { key: key.into() })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// The compares held and the ops were committed at this revision.
    Committed(Revision),
    /// A compare failed; nothing was written.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
    /// Not a change: every change under the watched prefix through
    /// `revision` has been delivered (no key, no value). It lets a quiet
    /// watcher's bookmark follow the store, so it can resume from a recent
    /// revision.
    Progress,
}

/// One change to one key. For a delete, `value` is empty and `prev` holds
/// the last state, as etcd reports it with `prev_kv`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: Arc<str>,
    pub value: Value,
    pub revision: Revision,
    pub create_revision: Revision,
    pub prev: Option<Value>,
}

static NO_KEY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));

impl Event {
    /// A watcher's position: nothing more under its prefix through `revision`.
    pub fn progress(revision: Revision) -> Self {
        Event { kind: EventKind::Progress, key: NO_KEY.clone(), value: Value::default(), revision, create_revision: 0, prev: None }
    }
}
